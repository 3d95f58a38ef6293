"""What metrics cost: the kit's fastest instrumented calls with metrics on and off, in the same run.

    python -m benchmarks.metrics            # full run, about 15 seconds
    python -m benchmarks.metrics --quick    # smoke run, seconds
    python -m benchmarks.metrics --markdown # tables as markdown (for docs/benchmarks.md)

Two kits in this process, alike but for ``CZO_METRICS``: one with metrics on (the default
sampling, ``metrics_sample=32``), one with them off. Each operation alternates between the
two call by call. The target (issue 10): metrics cost under 3% of ``emit``, the cache ``get``
and ``find_by_id``, i.e. a p50 ratio on/off of at most 1.03. Metrics off still pays the
countdown that picks the calls to time, so ``get`` and ``emit`` are also compared with copies
of themselves as they were before metrics (commit 6a4d413), on a cache and an emitter built
alike. A third kit timing every call (``metrics_sample=1``) shows what sampling saves. Everything runs in memory and on a SQLite
file in a temporary directory: no server is needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import peewee

from benchmarks._stats import Call, Check, Comparison, Pair, compose_report, environment, run_pairs, write_json
from czo_kit.cache import CacheManager
from czo_kit.cache.manager import _MISSING, _now_ms
from czo_kit.events import Event, EventEmitter
from czo_kit.events.types import EventContext, EventHandlerError
from czo_kit.kit import Kit
from czo_kit.settings import Settings

SECRET = "czo-bench-secret-" + "x" * 32
TARGET = 1.03  # metrics on p50 / metrics off p50
KEYS = 1_000


class BenchPinged(Event, name="bench.pinged"):
    id: int
    name: str


class MetricsRow(peewee.Model):
    name = peewee.CharField()
    price = peewee.IntegerField()

    class Meta:
        table_name = "bench_metrics_row"


class _BareCache(CacheManager):
    """``get`` as it was before metrics (commit 6a4d413): no countdown, nothing recorded."""

    def get(self, key: str, default: Any = None, *, type: Any = None, tags: Iterable[str] = ()) -> Any:
        entry = self._read([self.key(key)], self._all_tags(tags) if tags else self._ns_tags)[0]
        shared = self._shared
        if entry is not None and _now_ms() < entry[0]:
            value = self._decode(entry[3], type)
            if value is not _MISSING:
                shared.count("hits")
                return value
        shared.count("misses")
        return default


class _BareEmitter(EventEmitter):
    """``emit`` as it was before metrics (commit 6a4d413)."""

    def emit(self, event: Any, payload: Any = None, *, actor: str | None = None) -> EventContext:
        name, value, _ = self._normalize(event, payload)
        ctx = self._context(name, actor)
        for tap in self._taps:
            write = tap(ctx, value)
            if write is not None:
                write()
        failures = self._run_handlers(self._subs.get(name, ()), value, ctx)
        if not failures:
            return ctx
        if self.strict:
            raise EventHandlerError(name, failures)
        return ctx.with_errors(tuple(f"{sub}: {exc!r}" for sub, exc in failures))


class _SubclassedCache(CacheManager):
    """The kit's own ``get``, through a subclass like ``_BareCache``: both sides of the
    before-metrics rows then reach their methods the same way."""


class _SubclassedEmitter(EventEmitter):
    """The kit's own ``emit``, through a subclass like ``_BareEmitter``."""


class _Standalone:
    """A cache and an emitter built directly (not a kit's), as ``get``/``emit`` were before
    metrics or as they are now with metrics on: built, not converted with ``__class__ =``,
    which would leave the instances' attribute reads on CPython's slow path."""

    def __init__(self, on: Kit, *, bare: bool) -> None:
        cache_class, emitter_class = (_BareCache, _BareEmitter) if bare else (_SubclassedCache, _SubclassedEmitter)
        self.cache = cache_class(on.cache.driver, prefix=on.settings.cache_prefix)  # the same entries as `on`
        self.events = emitter_class(db=on.db)
        self.events.tap(on.webhooks.on_event)  # as in a kit: every event passes the webhook tap
        if not bare:  # what czo_kit.metrics.attach does, on these two
            for target, source in ((self.cache._shared, on.cache._shared), (self.events, on.events)):
                target.meter = source.meter
                target.tick = source.meter.every - 1


def _kit(directory: str, **changes: object) -> Kit:
    return Kit(Settings(
        database_url=f"sqlite:///{os.path.join(directory, 'bench.sqlite3')}", queue_url="", secret_key=SECRET,
        plugins=(), cache_url="memory://", cache_max_entries=100_000, **changes,  # type: ignore[arg-type]
    ))


def run(*, quick: bool, progress: Callable[[str], None]) -> tuple[list[tuple[str, list[Comparison]]], list[Check], list[str]]:
    from czo_kit.db import create_cached_queries

    fast = 40 if quick else 200_000
    slow = 40 if quick else 50_000
    warm = 10 if quick else 2_000
    with tempfile.TemporaryDirectory(prefix="czo-bench-metrics-") as directory:
        on = _kit(directory, metrics=True)
        off = _kit(directory, metrics=False)
        every = _kit(directory, metrics=True, metrics_sample=1)
        kits: dict[str, Any] = {"on": on, "off": off, "every": every}
        # The calls as they were before metrics: what "under 3%" is measured against.
        standalone = {"bare": _Standalone(on, bare=True), "twin": _Standalone(on, bare=False)}
        try:
            on.db.bind([MetricsRow])
            on.db.create_tables([MetricsRow])
            with on.db.atomic():
                MetricsRow.insert_many([{"name": f"row {i}", "price": i} for i in range(KEYS)]).execute()
            queries = {
                label: create_cached_queries(MetricsRow, db=on.db, cache=kit.cache, ttl=3600, secret_key=SECRET)
                for label, kit in kits.items()
            }
            for label, kit in kits.items():
                for i in range(KEYS):
                    kit.cache.set(f"k{i}", {"id": i, "name": f"value {i}", "price": i * 10})
                    queries[label].find_by_id(i + 1)  # every timed read is a hit
            kits.update(standalone)
            for kit in kits.values():
                kit.events.on(BenchPinged, lambda payload, ctx: None)
                kit.events.on("bench.named", lambda payload, ctx: None)
            payload = BenchPinged(id=1, name="x")
            mapping = {"id": 1, "name": "x"}

            def get(label: str) -> Call:
                cache = kits[label].cache
                return Call(cache.get, lambda i: f"k{i % KEYS}")

            def emit_typed(label: str) -> Call:
                emit = kits[label].events.emit
                return Call(lambda event: emit(event), lambda i: payload)

            def emit_named(label: str) -> Call:
                emit = kits[label].events.emit
                return Call(lambda m: emit("bench.named", m), lambda i: mapping)

            def find(label: str) -> Call:
                return Call(queries[label].find_by_id, lambda i: i % KEYS + 1)

            def pair(name: str, make: Callable[[str], Call], iterations: int, kit: str = "on",
                     target: float | None = TARGET, base: str = "off") -> Pair:
                label = "metrics off" if base == "off" else "no metrics code"
                # A group of its own: the two sides alternate call by call, rows keep their order.
                return Pair(name, make(kit), make(base), label, iterations, warm, target=target,
                            check=lambda a, b: None, group=f"{name}|{kit}|{base}")

            pairs = [
                pair("memory cache get hit", get, fast),
                pair("emit typed Event, 1 handler", emit_typed, fast),
                pair("emit by name + mapping, 1 handler", emit_named, fast),
                pair("cached find_by_id hit (memory cache)", find, slow),
                pair("memory cache get hit", get, fast, kit="twin", base="bare"),
                pair("emit typed Event, 1 handler", emit_typed, fast, kit="twin", base="bare"),
                pair("emit by name + mapping, 1 handler", emit_named, fast, kit="twin", base="bare"),
                pair("memory cache get hit, every call timed", get, fast, kit="every", target=None),
                pair("emit typed Event, every call timed", emit_typed, fast, kit="every", target=None),
            ]
            rows = run_pairs(pairs, progress=progress)
            observe_us = _observe_cost(quick)
            countdown_ns = _countdown_cost(quick)
            hits = on.cache.stats()["hits"]
        finally:
            for kit in (on, off, every):
                kit.close()
    notes = [
        f"For context, prometheus_client's own labelled Histogram.labels(...).observe() costs {observe_us:.2f} µs "
        "a call here (single-process mode); the kit calls prometheus_client only when scraped.",
        f"The metrics-on kit's cache counted {hits:,} hits, every one; one read in 32 went into its latency "
        "histogram (CZO_METRICS_SAMPLE=32, the default).",
        "Means, which carry the timed calls' whole cost (the p50 does not: 31 calls in 32 are untimed): "
        + "; ".join(f"{row.operation} {row.kit.mean:.2f} vs {row.base.mean:.2f} µs ({row.kit.mean / row.base.mean:.3f}x)"
                    for row in rows) + ".",
        "Estimated average cost of the timed calls under the default sampling = the every-call-timed p50 "
        "minus the metrics-off p50, divided by 32: "
        + "; ".join(
            f"{timed.operation.removesuffix(', every call timed')} {(timed.kit.p50 - timed.base.p50) * 1000 / 32:.0f} ns "
            f"a call ({(timed.kit.p50 - timed.base.p50) / 32 / timed.base.p50:.1%})"
            for timed in rows[7:]
        ) + ".",
        f"Against metrics off, both sides pay the countdown that picks the calls to time (a decrement and a "
        f"comparison; with metrics off it never reaches zero); the rows against the calls without metrics code "
        f"include it. Alone it costs {countdown_ns:.0f} ns a call here (timeit, against an empty statement): "
        f"{countdown_ns / 1000 / rows[0].base.p50:.1%} of a memory get, {countdown_ns / 1000 / rows[1].base.p50:.1%} "
        "of an emit.",
    ]
    return [
        ("Metrics on vs off", rows[:4]),
        ("Metrics on vs the same calls without metrics code (before metrics)", rows[4:7]),
        ("Context: timing every call", rows[7:]),
    ], [], notes


def _observe_cost(quick: bool) -> float:
    """What a prometheus_client labelled histogram costs per call (µs), for context."""
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    histogram = Histogram("bench_seconds", "bench", ["driver", "result"], registry=registry)
    n = 2_000 if quick else 200_000
    started = time.perf_counter_ns()
    for _ in range(n):
        histogram.labels("memory", "hit").observe(0.000005)
    return (time.perf_counter_ns() - started) / n / 1000


def _countdown_cost(quick: bool) -> float:
    """The per-call price of the sampling countdown (ns): what a call pays with metrics off."""
    import timeit

    class Holder:
        tick = 1 << 62

    setup = "o = Holder()"
    scope = {"Holder": Holder}
    n = 10_000 if quick else 2_000_000
    with_countdown = min(timeit.repeat("o.tick -= 1\nif o.tick < 0: pass", setup, number=n, repeat=5, globals=scope))
    without = min(timeit.repeat("pass", setup, number=n, repeat=5, globals=scope))
    return max(0.0, (with_countdown - without) / n * 1e9)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (40 calls per side)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    env = environment(["prometheus-client", "msgspec", "peewee"])
    try:
        env["load average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    started = time.monotonic()
    sections, checks, notes = run(quick=args.quick, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(compose_report(env, sections, checks, notes=notes, markdown=args.markdown,
                         elapsed=time.monotonic() - started))
    if args.json:
        write_json(args.json, env=env, quick=args.quick, sections=sections, checks=checks, notes=notes)
    rows = [row for _, section in sections for row in section]
    return 1 if any(row.met is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
