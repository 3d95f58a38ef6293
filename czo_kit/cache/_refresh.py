"""Background refreshes of cached values: stale-while-revalidate and refresh-ahead.

A refresh recomputes a key that is still being served (stale, or fresh but near its end) on
the cache's small thread pool, so no caller waits for it. It runs once per key and process
(the ``refreshing`` set), and once per *generation* across processes: it takes the key's
stampede lock, then re-reads the entry, and gives up if the entry is no longer the one whose
age triggered it (another process refreshed it between our read and our lock).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from czo_kit.cache.manager import CacheManager

__all__ = ["check_refresh_ahead", "check_stale_window", "in_background_refresh", "refresh_later", "refresh_many_later"]

log = logging.getLogger("czo_kit.cache")

MAX_WINDOW = 10 * 365 * 86400.0

_local = threading.local()


def in_background_refresh() -> bool:
    """Whether the calling code runs inside a cache refresh on the refresh thread pool.

    A factory that opens resources per thread (a database connection, say) uses it to release
    them when done: pool threads live as long as the cache, and would otherwise keep them.
    """
    return bool(getattr(_local, "active", False))


def check_stale_window(value: Any, name: str = "stale_while_revalidate") -> float | None:
    """``value`` as seconds a value may be served stale after its TTL (``None``: not at all)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds (0 to {MAX_WINDOW:.0f}) or None, got {value!r}")
    if not math.isfinite(value) or value < 0 or value > MAX_WINDOW:
        raise ValueError(f"{name} must be from 0 to {MAX_WINDOW:.0f} seconds, got {value!r}")
    return float(value) or None


def check_refresh_ahead(value: Any, name: str = "refresh_ahead") -> float | None:
    """``value`` as the fraction of the TTL after which a read triggers a refresh."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} must be a fraction of the TTL, more than 0 and less than 1 (0.8 for 80%), got {value!r}"
        )
    if not math.isfinite(value) or not 0 < value < 1:
        raise ValueError(f"{name} must be more than 0 and less than 1 (0.8 for 80% of the TTL), got {value!r}")
    return float(value)


def due_ahead(created: bytes, fresh_until: int, now: int, ahead: float | None) -> bool:
    """Whether a fresh entry (``created`` as its header holds it) has lived past ``ahead`` of its TTL."""
    if ahead is None:
        return False
    try:
        born = int(created)
    except ValueError:  # not the kit's header: never refreshed ahead, it expires as usual
        return False
    return now >= born + (fresh_until - born) * ahead


def refresh_later(
    cache: CacheManager,
    full: str,
    factory: Callable[[], Any],
    ttl: float,
    swr: float | None,
    tags: Sequence[str],
    generation: bytes,
) -> None:
    """Recompute ``full`` in the background, unless this process is already on it."""
    shared = cache._shared
    with shared.flights_lock:
        if full in shared.refreshing or shared.closed:
            return
        shared.refreshing.add(full)

    def refresh() -> None:
        try:
            _refresh_keys(cache, [full], {full: generation}, lambda keys: {full: factory()}, ttl, swr, {full: tags})
        finally:
            with shared.flights_lock:
                shared.refreshing.discard(full)

    if not _submit(cache, refresh):
        with shared.flights_lock:
            shared.refreshing.discard(full)


def refresh_many_later(
    cache: CacheManager,
    due: Mapping[str, tuple[str, bytes]],
    factory: Callable[[list[str]], Mapping[str, Any]],
    ttl: float,
    swr: float | None,
    tags: Mapping[str, Sequence[str]],
) -> None:
    """Recompute several keys (``full key -> (key, generation)``) with one ``factory`` call."""
    shared = cache._shared
    with shared.flights_lock:
        if shared.closed:
            return
        mine = [full for full in due if full not in shared.refreshing]
        shared.refreshing.update(mine)
    if not mine:
        return
    key_of = {full: due[full][0] for full in mine}

    def compute(fulls: list[str]) -> dict[str, Any]:
        computed = factory([key_of[full] for full in fulls])
        return {full: computed[key_of[full]] for full in fulls if key_of[full] in computed}

    def refresh() -> None:
        try:
            _refresh_keys(cache, mine, {full: due[full][1] for full in mine}, compute, ttl, swr, tags)
        finally:
            with shared.flights_lock:
                shared.refreshing.difference_update(mine)

    if not _submit(cache, refresh):
        with shared.flights_lock:
            shared.refreshing.difference_update(mine)


def _submit(cache: CacheManager, job: Callable[[], None]) -> bool:
    def run() -> None:
        _local.active = True
        try:
            job()
        finally:
            _local.active = False

    try:
        cache._shared.submit(run)
    except RuntimeError:  # the pool was shut down by close() meanwhile
        return False
    return True


def _refresh_keys(
    cache: CacheManager,
    fulls: list[str],
    generations: Mapping[str, bytes],
    compute: Callable[[list[str]], Mapping[str, Any]],
    ttl: float,
    swr: float | None,
    tags: Mapping[str, Sequence[str]],
) -> None:
    """Lock each key, keep those still at the generation seen, compute and store them."""
    shared = cache._shared
    driver = shared.driver
    token = secrets.token_hex(16)
    lease_ms = math.ceil(shared.lock_timeout * 1000)
    locked: list[str] = []
    try:
        for full in fulls:
            lock_key = shared.lock_prefix + full
            # None (cache down) refreshes nothing: the value could not be stored anyway.
            if cache._call(lambda: driver.acquire_lock(lock_key, token, lease_ms), None):
                locked.append(full)
        if not locked:
            return  # another process is refreshing them
        hint = list(dict.fromkeys(tag for full in locked for tag in tags[full]))
        todo = [
            full
            for full, entry in zip(locked, cache._read(locked, hint))
            # A newer entry than the one whose age triggered us: someone else refreshed it
            # between our read and our lock. A vanished one (expired, invalidated) is computed.
            if entry is None or entry[4] == generations[full]
        ]
        if not todo:
            return
        every_tag = list(dict.fromkeys(tag for full in todo for tag in tags[full]))
        versions = cache._versions(every_tag, ttl, swr)  # before the factory: old data never looks fresh
        computed = compute(todo)
        if versions is not None:
            version_of = dict(zip(every_tag, versions))
            for full in todo:
                if full in computed:
                    key_tags = tags[full]
                    cache._store(
                        [(full, cache._encode(computed[full]))], ttl, swr, key_tags,
                        [version_of[tag] for tag in key_tags],
                    )
        shared.count("refreshes", len(todo))
    except Exception:
        log.error(
            "background refresh of %s failed; the current value is still served until its stale window ends",
            ", ".join(repr(full) for full in fulls), exc_info=True,
        )
        shared.count("refresh_errors")  # after the log: whoever sees the count finds the record
    finally:
        for full in locked:
            lock_key = shared.lock_prefix + full
            cache._call(lambda: driver.release_lock(lock_key, token), False)
