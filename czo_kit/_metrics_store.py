"""What ``czo_kit.metrics`` records, per process: histograms and counters in plain Python
numbers, the cache managers' own counters, and, in multiprocess mode, the snapshot file each
process publishes and the scraping process sums.

Nothing here calls ``prometheus_client`` on the hot path: a labelled ``observe()`` costs about
as much as the memory cache's whole ``get``. Recording is a ``bisect`` and two additions under a
lock; turning the numbers into Prometheus metric families happens at scrape time.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["NEVER", "Snapshot", "Store", "merge", "read_snapshots"]

log = logging.getLogger("czo_kit.metrics")

NEVER = sys.maxsize
"""A countdown that never reaches zero: where metrics are off, no call is ever timed."""

PUBLISH_INTERVAL = 1.0
"""Seconds between two snapshot files of a process in multiprocess mode."""

FILE_PREFIX = "czo-metrics-"
FILE_SUFFIX = ".msgpack"

Key = tuple[str, tuple[str, ...]]


class Snapshot(msgspec.Struct, array_like=True, frozen=True):
    """Every number of one process (the format of its file in multiprocess mode)."""

    pid: int
    histograms: list[tuple[str, tuple[str, ...], list[int], float]]
    """(metric, label values, count per bucket (the last one +Inf, not cumulative), sum)."""
    counters: list[tuple[str, tuple[str, ...], float]]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Snapshot)


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0


class _CacheSource:
    """One cache manager's counters (its ``stats()``), less what a forked child inherited."""

    __slots__ = ("baseline", "counts", "driver", "lock", "__weakref__")

    def __init__(self, driver: str, counts: dict[str, int], lock: Any) -> None:
        self.driver = driver
        self.counts = counts
        self.lock = lock
        self.baseline: dict[str, int] = {}

    def current(self) -> dict[str, int]:
        with self.lock:
            counts = dict(self.counts)
        return {name: n - self.baseline.get(name, 0) for name, n in counts.items()}


class Store:
    """The numbers of this process. Thread-safe; a forked child starts from zero."""

    def __init__(self, cache_operations: Mapping[str, str]) -> None:
        self.cache_operations = cache_operations  # stats() name -> operation label
        self.directory: Path | None = None
        self.sources: weakref.WeakSet[_CacheSource] = weakref.WeakSet()
        self._after_fork()
        os.register_at_fork(after_in_child=self._forked)
        atexit.register(self.publish)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()
        self.histograms: dict[Key, _Histogram] = {}
        self.counters: dict[Key, float] = {}
        self.seen: dict[str, set[str]] = {}
        self.retired: dict[Key, float] = {}
        self.retiring: list[_CacheSource] = []
        self._publisher: threading.Thread | None = None
        self._stop = threading.Event()

    def _forked(self) -> None:
        # The child inherited the parent's numbers, which the parent still reports: count
        # only what happens here from now on.
        self._after_fork()
        for source in list(self.sources):
            source.baseline = dict(source.counts)
        if self.directory is not None:
            self._start_publisher()
            _finalize_in_multiprocessing_child(self.publish)

    # -- recording ------------------------------------------------------------------------

    def label(self, kind: str, value: str, limit: int) -> str:
        """``value``, or ``"other"`` once ``limit`` distinct values of ``kind`` have been seen."""
        seen = self.seen.get(kind)
        if seen is not None and value in seen:
            return value
        with self.lock:
            seen = self.seen.setdefault(kind, set())
            if value in seen or len(seen) < limit:
                seen.add(value)
                return value
        return "other"

    def observe(self, key: Key, bounds: Sequence[float], value: float) -> None:
        index = bisect_left(bounds, value)
        with self.lock:
            histogram = self.histograms.get(key)
            if histogram is None:
                histogram = self.histograms[key] = _Histogram(bounds)
            histogram.counts[index] += 1
            histogram.total += value

    def inc(self, key: Key, amount: float = 1) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + amount

    def add_cache(self, driver: str, counts: dict[str, int], lock: Any, owner: object) -> None:
        """Report a cache manager's counters (live ones, then, once it is gone, their totals)."""
        source = _CacheSource(driver, counts, lock)
        self.sources.add(source)
        weakref.finalize(owner, self._retire, source)  # holds the source until the owner goes

    def _retire(self, source: _CacheSource) -> None:
        # A finalizer may run in the middle of any allocation, in a thread that holds a lock
        # of ours: take none here (list.append is atomic) and fold it in at the next snapshot.
        self.retiring.append(source)

    def _cache_counters(self, sources: Iterable[_CacheSource]) -> dict[Key, float]:
        totals: dict[Key, float] = {}
        for source in sources:
            for name, value in source.current().items():
                operation = self.cache_operations.get(name)
                if operation is not None and value:
                    key = ("czo_cache_operations_total", (source.driver, operation))
                    totals[key] = totals.get(key, 0) + value
        return totals

    # -- reading --------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self.lock:
            while self.retiring:
                source = self.retiring.pop()
                self.sources.discard(source)
                for key, value in self._cache_counters([source]).items():
                    self.retired[key] = self.retired.get(key, 0) + value
            histograms = [(name, labels, list(h.counts), h.total) for (name, labels), h in self.histograms.items()]
            counters = dict(self.counters)
            for key, value in self.retired.items():
                counters[key] = counters.get(key, 0) + value
            sources = list(self.sources)
        for key, value in self._cache_counters(sources).items():
            counters[key] = counters.get(key, 0) + value
        return Snapshot(
            pid=os.getpid(),
            histograms=histograms,
            counters=[(name, labels, value) for (name, labels), value in counters.items()],
        )

    # -- multiprocess mode ----------------------------------------------------------------

    def use_directory(self, directory: str | os.PathLike[str] | None) -> None:
        """Publish this process's numbers to ``directory`` (and read its siblings' there)."""
        path = Path(directory) if directory else None
        if path == self.directory:
            return
        if path is not None and not path.is_dir():
            raise FileNotFoundError(
                f"the metrics directory {str(path)!r} (CZO_METRICS_DIR) does not exist; create it, "
                "shared by the processes of one service and emptied when the service starts"
            )
        self.directory = path
        if path is not None:
            self._start_publisher()

    def _start_publisher(self) -> None:
        if self._publisher is not None and self._publisher.is_alive():
            return
        self._stop.clear()
        self._publisher = threading.Thread(target=self._publish_loop, name="czo-metrics-publisher", daemon=True)
        self._publisher.start()

    def _publish_loop(self) -> None:
        while not self._stop.wait(PUBLISH_INTERVAL):
            try:
                self.publish()
            except Exception:  # a full disk must not kill the thread: try again next time
                log.warning("could not write this process's metrics to %s", self.directory, exc_info=True)

    def publish(self) -> None:
        """Write this process's snapshot file now (atomically: readers see whole files only)."""
        directory = self.directory
        if directory is None:
            return
        data = _ENCODER.encode(self.snapshot())
        final = directory / f"{FILE_PREFIX}{os.getpid()}{FILE_SUFFIX}"
        temporary = directory / f".{FILE_PREFIX}{os.getpid()}.tmp"
        try:
            temporary.write_bytes(data)
            os.replace(temporary, final)
        except FileNotFoundError:
            pass  # the directory went away (a worker removing its private one at exit)

    def stop_publishing(self) -> None:
        self._stop.set()
        self.publish()
        self.directory = None


def read_snapshots(directory: Path | None, *, skip_pid: int) -> Iterator[Snapshot]:
    """The snapshots other processes published in ``directory``."""
    if directory is None:
        return
    try:
        paths = sorted(directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
    except OSError:
        return
    for path in paths:
        if path.name == f"{FILE_PREFIX}{skip_pid}{FILE_SUFFIX}":
            continue
        try:
            yield _DECODER.decode(path.read_bytes())
        except FileNotFoundError:
            continue
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("ignoring the unreadable metrics file %s: %s", path, exc)


def merge(snapshots: Iterable[Snapshot]) -> tuple[dict[Key, tuple[list[int], float]], dict[Key, float]]:
    """Histograms and counters summed over ``snapshots``."""
    histograms: dict[Key, tuple[list[int], float]] = {}
    counters: dict[Key, float] = {}
    for snapshot in snapshots:
        for name, labels, counts, total in snapshot.histograms:
            key = (name, tuple(labels))
            found = histograms.get(key)
            if found is None:
                histograms[key] = (list(counts), total)
            elif len(found[0]) == len(counts):  # processes of two kit versions: keep the first
                histograms[key] = ([a + b for a, b in zip(found[0], counts)], found[1] + total)
        for name, labels, value in snapshot.counters:
            key = (name, tuple(labels))
            counters[key] = counters.get(key, 0) + value
    return histograms, counters


def _finalize_in_multiprocessing_child(fn: Any) -> None:
    """Run ``fn`` when a ``multiprocessing`` child ends: such a child leaves through
    ``os._exit``, which skips ``atexit``, but it runs multiprocessing's own finalizers."""
    from multiprocessing import util

    util.Finalize(None, fn, exitpriority=10)
