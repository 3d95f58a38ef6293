"""``CacheManager``: one cache API over any driver, with TTLs, tags, namespaces, cache-aside
with stampede protection, stale-while-revalidate, and graceful degradation.

Every entry is an envelope: a one-line header (created, fresh-until and stale-until times in
milliseconds, and the version of each tag it depends on) and a msgpack payload. Invalidating a
tag changes its version, so every entry that recorded the old version is invalid at once
without touching those entries; a tag version that has gone missing also invalidates.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

import msgspec

from czo_kit import metrics as _metrics
from czo_kit._fork import reset_in_children
from czo_kit.cache._refresh import (
    check_refresh_ahead,
    check_stale_window,
    due_ahead,
    refresh_later,
    refresh_many_later,
)
from czo_kit.cache._stampede import Flight, single_flight
from czo_kit.cache.driver import HEADER_MAGIC, CacheDriver, CacheUnavailable
from czo_kit.cache.glob import escape_glob

__all__ = ["CacheManager"]

log = logging.getLogger("czo_kit.cache")

T = TypeVar("T")

MAX_KEY_LENGTH = 512
MAX_TAG_LENGTH = 256
MAX_TTL = 10 * 365 * 86400.0
_BAD_KEY = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control characters, lone surrogates (no UTF-8)
_GOOD_TAG = re.compile(r"[^\x00-\x20,=|\x7f\ud800-\udfff]+")
_GOOD_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]+")
_MISSING: Any = object()
_RESERVED = ("tag:", "lock:")
"""Where the root keeps tag versions and stampede locks: no root key or namespace goes there."""

_Entry = tuple[int, int, list[tuple[str, bytes]], bytes, bytes]
"""An opened envelope: fresh-until and stale-until (ms), recorded tag versions, payload, and
created (ms, as written: only refreshes need the number), which tells one generation of a key
from the next."""

STAT_NAMES = (
    "hits", "misses", "stale_served", "refreshes", "refresh_errors", "errors",
    "sets", "deletes", "invalidations", "lock_waits", "decode_errors",
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Shared:
    """State shared by a root manager and all its namespaces."""

    def __init__(
        self,
        driver: CacheDriver,
        *,
        prefix: str,
        default_ttl: float,
        strict: bool,
        lock_timeout: float,
        retry_after: float,
    ) -> None:
        self.driver = driver
        self.prefix = prefix
        self.tag_prefix = prefix + "tag:"
        self.lock_prefix = prefix + "lock:"
        self.default_ttl = default_ttl
        self.strict = strict
        self.lock_timeout = lock_timeout
        self.retry_after = retry_after
        self.encoder = msgspec.msgpack.Encoder()
        self.any_decoder = msgspec.msgpack.Decoder()
        self.decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
        self.counts = dict.fromkeys(STAT_NAMES, 0)
        self.count_lock = threading.Lock()
        self.outage = False
        self.down_until = 0.0
        self.flights: dict[str, Flight] = {}
        self.flights_lock = threading.Lock()
        self.refreshing: set[str] = set()
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.closed = False
        # Set here, not later: an attribute added after __init__ slows every attribute read.
        self.tick = _metrics.NEVER  # reads left before the next timed one (czo_kit.metrics)
        self.meter: Any = None
        reset_in_children(self)

    def _after_fork(self) -> None:
        # The refresh pool's threads, and the flights they were on, stayed in the parent: a
        # child submitting to the inherited pool would queue refreshes no thread ever runs.
        self.executor = None
        self.flights = {}
        self.refreshing = set()
        self.flights_lock = threading.Lock()  # a parent's refresh thread may have held it

    def count(self, name: str, n: int = 1) -> None:
        with self.count_lock:
            self.counts[name] += n

    def decoder(self, kind: Any) -> msgspec.msgpack.Decoder[Any]:
        if kind is None:
            return self.any_decoder
        decoder = self.decoders.get(kind)
        if decoder is None:
            decoder = self.decoders[kind] = msgspec.msgpack.Decoder(kind)
        return decoder

    def submit(self, fn: Callable[[], None]) -> None:
        if self.executor is None:
            with self.flights_lock:
                if self.executor is None:
                    self.executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=4, thread_name_prefix="czo-cache-refresh"
                    )
        self.executor.submit(fn)


class CacheManager:
    """The cache API. Create one with ``create_cache(url)``; namespaces share its driver.

    ``strict=False`` (the default) turns a driver outage into misses and no-op writes,
    counted in ``stats()`` and logged once per outage; ``strict=True`` raises instead.
    """

    def __init__(
        self,
        driver: CacheDriver,
        *,
        prefix: str = "czo:",
        default_ttl: float = 300.0,
        strict: bool = False,
        lock_timeout: float = 10.0,
        retry_after: float = 1.0,
    ) -> None:
        if not isinstance(prefix, str) or _BAD_KEY.search(prefix):
            raise ValueError(f"cache prefix must be a plain string, got {prefix!r}")
        self._shared = _Shared(
            driver,
            prefix=prefix,
            default_ttl=_check_ttl(default_ttl, "default_ttl"),
            strict=strict,
            lock_timeout=_check_ttl(lock_timeout, "lock_timeout"),
            retry_after=retry_after,
        )
        self._path: tuple[str, ...] = ()
        self._key_prefix = prefix
        self._ns_tags: tuple[str, ...] = ()

    # -- structure ----------------------------------------------------------------------

    @property
    def driver(self) -> CacheDriver:
        return self._shared.driver

    @property
    def path(self) -> tuple[str, ...]:
        """The namespace names from the root to this view (empty for the root)."""
        return self._path

    def namespace(self, name: str) -> CacheManager:
        """A view whose keys live under ``name``; nestable. Clearing it is one tag bump."""
        if not isinstance(name, str) or not _GOOD_NAMESPACE.fullmatch(name):
            raise ValueError(
                f"namespace names are letters, digits, '_', '.', '-'; got {name!r}"
            )
        if not self._path and name + ":" in _RESERVED:
            raise ValueError(f"namespace {name!r} is reserved at the root: the cache keeps its {name} keys there")
        child = object.__new__(CacheManager)
        child._shared = self._shared
        child._path = (*self._path, name)
        child._key_prefix = self._key_prefix + name + ":"
        child._ns_tags = (*self._ns_tags, "ns:" + ":".join(child._path))
        return child

    def key(self, key: str) -> str:
        """The full storage key of ``key`` in this namespace."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"cache keys are non-empty strings, got {key!r}")
        if len(key) > MAX_KEY_LENGTH or _BAD_KEY.search(key):
            raise ValueError(
                f"cache key {key[:40]!r}... must be at most {MAX_KEY_LENGTH} characters "
                "without control characters or lone surrogates"
            )
        if not self._path and key.startswith(_RESERVED):
            raise ValueError(
                f"cache key {key[:40]!r}: keys starting with 'tag:' or 'lock:' are reserved at the root "
                "(tag versions and stampede locks live there); use a namespace"
            )
        return self._key_prefix + key

    # -- outage handling ----------------------------------------------------------------

    def _call(self, fn: Callable[[], T], fallback: T) -> T:
        shared = self._shared
        if shared.down_until and time.monotonic() < shared.down_until:
            shared.count("errors")
            if shared.strict:
                raise CacheUnavailable("cache backend is down (retrying shortly)")
            return fallback
        try:
            result = fn()
        except CacheUnavailable as exc:
            shared.count("errors")
            shared.down_until = time.monotonic() + shared.retry_after
            if not shared.outage:
                shared.outage = True
                log.warning("cache unavailable, serving without it until it is back: %s", exc)
            if shared.strict:
                raise
            return fallback
        if shared.outage:
            shared.outage = False
            shared.down_until = 0.0
            log.warning("cache is reachable again")
        return result

    # -- envelopes ----------------------------------------------------------------------

    def _encode(self, value: Any) -> bytes:
        try:
            return self._shared.encoder.encode(value)
        except RecursionError:
            raise TypeError(
                f"cannot cache a {type(value).__name__}: it is nested too deeply (hundreds of "
                "levels), or contains itself"
            ) from None
        except OverflowError:
            raise TypeError(
                f"cannot cache a {type(value).__name__}: it holds an integer out of range; "
                "cached integers go from -2**63 to 2**64-1 (store larger ones as strings or Decimals)"
            ) from None
        except (TypeError, msgspec.EncodeError) as exc:
            raise TypeError(
                f"cannot cache a {type(value).__name__}: values must be msgspec-encodable "
                f"(dict, list, str, numbers, datetime, Decimal, UUID, Struct, dataclass); {exc}"
            ) from None

    def _envelope(
        self, payload: bytes, ttl: float, swr: float | None, tags: Sequence[str], versions: Sequence[bytes]
    ) -> tuple[bytes, int]:
        now = _now_ms()
        fresh = now + math.ceil(ttl * 1000)
        stale = fresh + (math.ceil(swr * 1000) if swr else 0)
        spec = b",".join(tag.encode() + b"=" + version for tag, version in zip(tags, versions))
        header = b"CZ1|%d|%d|%d|%s\n" % (now, fresh, stale, spec)
        return header + payload, stale - now

    @staticmethod
    def _open(raw: bytes) -> _Entry | None:
        """(fresh-until, stale-until, recorded tag versions, payload, created) of an envelope."""
        newline = raw.find(b"\n")
        if newline < 0 or not raw.startswith(HEADER_MAGIC):
            return None
        parts = raw[:newline].split(b"|", 4)
        try:
            fresh, stale = int(parts[2]), int(parts[3])
        except (IndexError, ValueError):
            return None
        tags: list[tuple[str, bytes]] = []
        if parts[4]:
            for item in parts[4].split(b","):
                tag, _, version = item.partition(b"=")
                try:
                    tags.append((tag.decode(), version))
                except UnicodeDecodeError:  # not written by the kit, whose tags are str
                    return None
        return fresh, stale, tags, raw[newline + 1 :], parts[1]

    def _decode(self, payload: bytes, kind: Any) -> Any:
        try:
            return self._shared.decoder(kind).decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._shared.count("decode_errors")
            log.debug("cached value does not decode as %r: %s", kind, exc)
            return _MISSING

    def _all_tags(self, tags: Iterable[str]) -> list[str]:
        extra = _check_tags(tags)
        return [*self._ns_tags, *extra] if self._ns_tags else extra

    # -- reads --------------------------------------------------------------------------

    def _read(self, full_keys: Sequence[str], hint: Iterable[str] = ()) -> list[_Entry | None]:
        """The envelopes of ``full_keys`` whose recorded tag versions all still hold.

        The versions of the ``hint`` tags (the namespace's, and any the caller names) are read
        in the same round trip as the values (one MGET); a tag an entry records that was not
        hinted costs one more. A tag whose version is gone (evicted) invalidates.
        """
        shared = self._shared
        count = len(full_keys)
        keys: Sequence[str] = full_keys
        hinted: list[str] = []
        if hint:
            hinted = list(dict.fromkeys(hint))
            keys = [*full_keys, *(shared.tag_prefix + tag for tag in hinted)]
        raw = self._call(lambda: shared.driver.get_many(keys), None)
        if raw is None:
            return [None] * count
        current: dict[str, bytes | None] = dict(zip(hinted, raw[count:])) if hinted else {}
        entries: list[_Entry | None] = []
        unknown: list[str] = []
        for value in raw[:count]:
            entry = self._open(value) if value is not None else None
            if entry is not None:
                unknown.extend(tag for tag, _ in entry[2] if tag not in current)
            entries.append(entry)
        if unknown:
            names = list(dict.fromkeys(unknown))
            more = self._call(lambda: shared.driver.get_many([shared.tag_prefix + t for t in names]), None)
            if more is None:
                return [None] * count
            current.update(zip(names, more))
        return [
            entry if entry is not None and all(current.get(tag) == version for tag, version in entry[2]) else None
            for entry in entries
        ]

    @overload
    def get(self, key: str, default: Any = None, *, type: None = None, tags: Iterable[str] = ()) -> Any: ...

    @overload
    def get(
        self, key: str, default: T | None = None, *, type: type[T], tags: Iterable[str] = ()
    ) -> T | None: ...

    def get(self, key: str, default: Any = None, *, type: Any = None, tags: Iterable[str] = ()) -> Any:
        """The value of ``key`` (decoded as ``type`` if given), else ``default``.

        A value stored with ``stale_while_revalidate`` is still returned in its stale window
        (counted as ``stale_served``; ``has`` says whether it is fresh): ``get`` has no factory
        to refresh it with, ``get_or_set`` does. Naming the ``tags`` the entry was stored with
        saves a round trip for their versions.
        """
        shared = self._shared
        shared.tick -= 1
        if shared.tick < 0:  # this call is one czo_kit.metrics times
            return _metrics.timed_get(self, key, default, type, tags)
        # _get inlined: this is the hottest path of the cache.
        entry = self._read([self.key(key)], self._all_tags(tags) if tags else self._ns_tags)[0]
        if entry is not None:
            now = _now_ms()
            if now < entry[1]:
                value = self._decode(entry[3], type)
                if value is not _MISSING:
                    shared.count("hits" if now < entry[0] else "stale_served")
                    return value
        shared.count("misses")
        return default

    def _get(self, key: str, default: Any, type: Any, tags: Iterable[str]) -> tuple[Any, str]:
        """``get``'s value, and whether it was a hit, stale or a miss (for the metrics)."""
        shared = self._shared
        entry = self._read([self.key(key)], self._all_tags(tags) if tags else self._ns_tags)[0]
        if entry is not None:
            now = _now_ms()
            if now < entry[1]:
                value = self._decode(entry[3], type)
                if value is not _MISSING:
                    if now < entry[0]:
                        shared.count("hits")
                        return value, "hit"
                    shared.count("stale_served")
                    return value, "stale"
        shared.count("misses")
        return default, "miss"

    def has(self, key: str) -> bool:
        """Whether ``key`` holds a fresh value."""
        entry = self._read([self.key(key)], self._ns_tags)[0]
        return entry is not None and _now_ms() < entry[0]

    def get_many(self, keys: Iterable[str], *, type: Any = None, tags: Iterable[str] = ()) -> dict[str, Any]:
        """The values among ``keys`` (fresh, or in their stale window as ``get`` returns them),
        in one round trip; missing keys are left out."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        shared = self._shared
        shared.tick -= 1
        started = _metrics.clock() if shared.tick < 0 else 0
        entries = self._read([self.key(k) for k in wanted], self._all_tags(tags))
        now = _now_ms()
        found: dict[str, Any] = {}
        stale = 0
        for key, entry in zip(wanted, entries):
            if entry is None or now >= entry[1]:
                continue
            value = self._decode(entry[3], type)
            if value is not _MISSING:
                found[key] = value
                stale += now >= entry[0]
        shared.count("hits", len(found) - stale)
        if stale:
            shared.count("stale_served", stale)
        shared.count("misses", len(wanted) - len(found))
        if started:
            result = "miss" if len(found) < len(wanted) else "stale" if stale else "hit"
            _metrics.cache_read(shared, started, "get_many", result)
        return found

    # -- writes -------------------------------------------------------------------------

    def _versions(self, tags: Sequence[str], ttl: float, swr: float | None) -> list[bytes] | None:
        """The current versions of ``tags``, for entries that live ``ttl`` + ``swr`` seconds.

        Each version key is kept at least that long, plus the stampede lease: versions are
        read before a factory runs, so the entry is stored up to a lease later. A version key
        that went earlier would only turn its entries into misses; one that never went would
        stay in the server forever."""
        if not tags:
            return []
        shared = self._shared
        hold_ms = math.ceil((ttl + (swr or 0.0) + shared.lock_timeout) * 1000)
        return self._call(lambda: shared.driver.tag_versions(tags, shared.tag_prefix, hold_ms), None)

    def set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        stale_while_revalidate: float | None = None,
    ) -> None:
        """Store ``value`` for ``ttl`` seconds (float, millisecond precision), tagged.

        With ``stale_while_revalidate``, the value outlives its TTL by that many seconds as a
        stale value: ``get`` still returns it, and ``get_or_set`` returns it while one caller
        across processes recomputes it in the background.
        """
        self.set_many({key: value}, ttl=ttl, tags=tags, stale_while_revalidate=stale_while_revalidate)

    def set_many(
        self,
        mapping: Mapping[str, Any],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        stale_while_revalidate: float | None = None,
    ) -> None:
        """Store several values with one TTL and tag set: one round trip for the values."""
        ttl_s = self._shared.default_ttl if ttl is None else _check_ttl(ttl, "ttl")
        swr = check_stale_window(stale_while_revalidate)
        all_tags = self._all_tags(tags)
        items = [(self.key(k), self._encode(v)) for k, v in mapping.items()]
        if not items:
            return
        versions = self._versions(all_tags, ttl_s, swr)
        if versions is None:
            return  # unreachable: nothing can be stored
        self._store(items, ttl_s, swr, all_tags, versions)

    def _store(
        self,
        items: Sequence[tuple[str, bytes]],
        ttl: float,
        swr: float | None,
        tags: Sequence[str],
        versions: Sequence[bytes],
    ) -> None:
        shared = self._shared
        batch = []
        for full, payload in items:
            envelope, ttl_ms = self._envelope(payload, ttl, swr, tags, versions)
            batch.append((full, envelope, ttl_ms))
        self._call(lambda: shared.driver.set_many(batch), None)
        shared.count("sets", len(batch))

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        return self.delete_many([key]) > 0

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove keys in one round trip; how many existed."""
        full = [self.key(k) for k in keys]
        if not full:
            return 0
        removed = self._call(lambda: self._shared.driver.delete_many(full), 0)
        self._shared.count("deletes", removed)
        return removed

    def invalidate(self, pattern: str) -> int:
        """Remove keys of this namespace matching a glob ``pattern`` (SCAN + UNLINK batches)."""
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_KEY_LENGTH:
            raise ValueError(f"invalidate needs a glob pattern such as 'item:*', got {pattern!r}")
        full = escape_glob(self._key_prefix) + pattern
        removed = self._call(lambda: self._shared.driver.delete_matching(full), 0)
        self._shared.count("invalidations")
        return removed

    def invalidate_tags(self, tags: Iterable[str]) -> None:
        """Invalidate every entry carrying any of ``tags``: one version bump per tag."""
        checked = _check_tags(tags)
        if not checked:
            return
        shared = self._shared
        self._call(lambda: shared.driver.bump_tags(checked, shared.tag_prefix), None)
        shared.count("invalidations", len(checked))

    def clear(self) -> None:
        """Empty this namespace (one tag bump), or, at the root, every key under the prefix."""
        shared = self._shared
        if self._ns_tags:
            self._call(lambda: shared.driver.bump_tags([self._ns_tags[-1]], shared.tag_prefix), None)
        else:
            self._call(lambda: shared.driver.delete_matching(escape_glob(shared.prefix) + "*"), 0)
        shared.count("invalidations")

    # -- cache-aside --------------------------------------------------------------------

    def get_or_set(
        self,
        key: str,
        factory: Callable[[], T],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        stale_while_revalidate: float | None = None,
        *,
        type: Any = None,
        refresh_ahead: float | None = None,
    ) -> T:
        """The cached value of ``key``, or ``factory()`` stored for ``ttl`` seconds.

        However many threads and processes ask for a cold key at once, ``factory`` runs once:
        threads of one process wait for one computation, processes for a lock with a lease.
        With ``stale_while_revalidate``, the value is stored to be served that many seconds
        past its TTL; a stale value (this call's, or one ``set`` stored) is returned while
        one background refresh runs. With ``refresh_ahead`` (0.8: 80% of the TTL), a read of
        a value past that share of its TTL returns it and starts one background refresh.
        """
        shared = self._shared
        shared.tick -= 1
        started = _metrics.clock() if shared.tick < 0 else 0
        ttl_s = shared.default_ttl if ttl is None else _check_ttl(ttl, "ttl")
        # Checked only when given: this is every cached read's path.
        swr = None if stale_while_revalidate is None else check_stale_window(stale_while_revalidate)
        ahead = None if refresh_ahead is None else check_refresh_ahead(refresh_ahead)
        all_tags = self._all_tags(tags)
        full = self.key(key)
        entry = self._read([full], all_tags)[0]
        if entry is not None:
            fresh_until, stale_until, _, payload, created = entry
            now = _now_ms()
            if now < stale_until:
                value = self._decode(payload, type)
                if value is not _MISSING:
                    if now < fresh_until:
                        shared.count("hits")
                        if started:
                            _metrics.cache_read(shared, started, "get_or_set", "hit")
                        if ahead is not None and due_ahead(created, fresh_until, now, ahead):
                            refresh_later(self, full, factory, ttl_s, swr, all_tags, created)
                        return value  # type: ignore[no-any-return]
                    shared.count("stale_served")
                    if started:
                        _metrics.cache_read(shared, started, "get_or_set", "stale")
                    refresh_later(self, full, factory, ttl_s, swr, all_tags, created)
                    return value  # type: ignore[no-any-return]
        shared.count("misses")
        if started:  # the read only: what the factory costs on a miss is the caller's
            _metrics.cache_read(shared, started, "get_or_set", "miss")
        return single_flight(self, full, factory, ttl_s, swr, all_tags, type)

    def get_or_set_many(
        self,
        keys: Mapping[str, Iterable[str]],
        factory: Callable[[list[str]], Mapping[str, Any]],
        ttl: float | None = None,
        *,
        type: Any = None,
        stale_while_revalidate: float | None = None,
        refresh_ahead: float | None = None,
    ) -> dict[str, Any]:
        """Cache-aside for many keys, each mapped to its own tags: the fresh values in one
        round trip, the rest from one ``factory(missing_keys)`` call, stored in one more.

        As in ``get_or_set``, tag versions are read before ``factory`` runs, so values computed
        from data that changes meanwhile are never stored as fresh. Keys the factory leaves
        out are neither stored nor returned. There is no stampede lock: the factory is meant
        to be one cheap batch query. Stale values, and with ``refresh_ahead`` values near the
        end of their TTL, are returned and refreshed together by one background
        ``factory(keys)`` call, each key once across processes, as in ``get_or_set``.
        """
        shared = self._shared
        ttl_s = shared.default_ttl if ttl is None else _check_ttl(ttl, "ttl")
        swr = check_stale_window(stale_while_revalidate)
        ahead = check_refresh_ahead(refresh_ahead)
        own = {key: _check_tags(tags) for key, tags in keys.items()}
        tagged = {key: [*self._ns_tags, *key_tags] for key, key_tags in own.items()}
        hint = [tag for key_tags in own.values() for tag in key_tags]
        found = self._get_many_due(tagged, type, [*self._ns_tags, *hint], ahead, factory, ttl_s, swr)
        missing = [key for key in tagged if key not in found]
        if not missing:
            return found
        tags = list(dict.fromkeys(tag for key in missing for tag in tagged[key]))
        versions = self._versions(tags, ttl_s, swr)
        computed = factory(missing)
        if versions is not None:
            version_of = dict(zip(tags, versions))
            batch = []
            for key in missing:
                if key in computed:
                    envelope, ttl_ms = self._envelope(
                        self._encode(computed[key]), ttl_s, swr, tagged[key],
                        [version_of[tag] for tag in tagged[key]],
                    )
                    batch.append((self.key(key), envelope, ttl_ms))
            if batch:
                self._call(lambda: shared.driver.set_many(batch), None)
                shared.count("sets", len(batch))
        found.update((key, computed[key]) for key in missing if key in computed)
        return found

    def _get_many_due(
        self,
        tagged: Mapping[str, list[str]],
        kind: Any,
        hint: list[str],
        ahead: float | None,
        factory: Callable[[list[str]], Mapping[str, Any]],
        ttl: float,
        swr: float | None,
    ) -> dict[str, Any]:
        """``get_many`` for ``get_or_set_many``, scheduling the refresh of the keys it finds
        stale or, with ``ahead``, near the end of their TTL."""
        shared = self._shared
        wanted = list(tagged)
        if not wanted:
            return {}
        shared.tick -= 1
        started = _metrics.clock() if shared.tick < 0 else 0
        fulls = [self.key(key) for key in wanted]
        entries = self._read(fulls, hint)
        now = _now_ms()
        found: dict[str, Any] = {}
        due: dict[str, tuple[str, bytes]] = {}
        stale = 0
        for key, full, entry in zip(wanted, fulls, entries):
            if entry is None or now >= entry[1]:
                continue
            value = self._decode(entry[3], kind)
            if value is _MISSING:
                continue
            found[key] = value
            if now >= entry[0]:
                stale += 1
                due[full] = (key, entry[4])
            elif ahead is not None and due_ahead(entry[4], entry[0], now, ahead):
                due[full] = (key, entry[4])
        shared.count("hits", len(found) - stale)
        if stale:
            shared.count("stale_served", stale)
        shared.count("misses", len(wanted) - len(found))
        if started:
            result = "miss" if len(found) < len(wanted) else "stale" if stale else "hit"
            _metrics.cache_read(shared, started, "get_many", result)
        if due:
            tags_of = {full: tagged[key] for full, (key, _generation) in due.items()}
            refresh_many_later(self, due, factory, ttl, swr, tags_of)
        return found

    # -- introspection and lifecycle ----------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since creation (shared by every namespace of one cache)."""
        with self._shared.count_lock:
            return dict(self._shared.counts)

    def ping(self) -> bool:
        """Whether the backend answers (never raises, even when strict)."""
        driver = self._shared.driver

        def check() -> bool:
            # Drivers answer a failed ping with False rather than raise; treat it as the outage
            # it is, or a failed ping would end the outage (logging a recovery) while it goes on.
            if not driver.ping():
                raise CacheUnavailable("cache backend did not answer a ping")
            return True

        try:
            return self._call(check, False)
        except CacheUnavailable:  # only a strict cache lets it through
            return False

    def close(self) -> None:
        """Stop background refreshes and release the driver's connections."""
        shared = self._shared
        shared.closed = True
        if shared.executor is not None:
            shared.executor.shutdown(wait=True, cancel_futures=True)
        shared.driver.close()

    def __repr__(self) -> str:
        where = ":".join(self._path) or "root"
        return f"<CacheManager {type(self._shared.driver).__name__} {where}>"


def _check_ttl(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0 or value > MAX_TTL:
        raise ValueError(f"{name} must be more than 0 and at most {MAX_TTL:.0f} seconds, got {value!r}")
    return float(value)


def _check_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise ValueError(f"tags must be a list of strings, not a single string {tags!r}")
    checked = []
    for tag in tags:
        if not isinstance(tag, str) or len(tag) > MAX_TAG_LENGTH or not _GOOD_TAG.fullmatch(tag):
            raise ValueError(
                f"invalid tag {tag!r}: tags are 1-{MAX_TAG_LENGTH} characters without spaces, "
                "control characters, lone surrogates, ',', '=' or '|'"
            )
        if tag.startswith("ns:"):
            raise ValueError(f"invalid tag {tag!r}: tags starting with 'ns:' are the namespaces' own (use clear())")
        checked.append(tag)
    return list(dict.fromkeys(checked))
