"""Stampede protection: a cold key is computed once, however many threads and processes ask.

Threads of one process wait for one computation (a ``Flight``); processes for the key's lock,
a lease in the driver, polling for the holder's value meanwhile.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from czo_kit.cache.manager import CacheManager

__all__ = ["Flight", "single_flight"]

T = TypeVar("T")


class Flight:
    """One in-process computation of a key that other threads wait on."""

    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def single_flight(
    cache: CacheManager,
    full: str,
    factory: Callable[[], T],
    ttl: float,
    swr: float | None,
    tags: Sequence[str],
    kind: Any,
) -> T:
    """``factory()`` for the cold key ``full``, computed by one thread of one process."""
    shared = cache._shared
    with shared.flights_lock:
        flight = shared.flights.get(full)
        leader = flight is None
        if flight is None:
            flight = shared.flights[full] = Flight()
    if not leader:
        if not flight.event.wait(timeout=shared.lock_timeout * 3):
            return _compute(cache, full, factory, ttl, swr, tags, kind)
        if flight.error is not None:
            raise flight.error
        return flight.value  # type: ignore[no-any-return]
    try:
        flight.value = _compute(cache, full, factory, ttl, swr, tags, kind)
        return flight.value  # type: ignore[no-any-return]
    except BaseException as exc:
        flight.error = exc
        raise
    finally:
        flight.event.set()
        with shared.flights_lock:
            shared.flights.pop(full, None)

def _compute(
    cache: CacheManager,
    full: str,
    factory: Callable[[], T],
    ttl: float,
    swr: float | None,
    tags: Sequence[str],
    kind: Any,
) -> T:
    """Compute under the distributed lock; while another process holds it, wait for its value."""
    from czo_kit.cache.manager import _MISSING, _now_ms  # the manager imports this module

    shared = cache._shared
    driver = shared.driver
    token = secrets.token_hex(16)
    lock_key = shared.lock_prefix + full
    lease_ms = math.ceil(shared.lock_timeout * 1000)
    give_up = time.monotonic() + 2 * shared.lock_timeout
    acquired = cache._call(lambda: driver.acquire_lock(lock_key, token, lease_ms), None)
    delay = 0.005
    waited = False
    while acquired is False:
        if not waited:
            shared.count("lock_waits")
            waited = True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
        entry = cache._read([full], tags)[0]
        if entry is not None and _now_ms() < entry[0]:
            value = cache._decode(entry[3], kind)
            if value is not _MISSING:
                return value  # type: ignore[no-any-return]
        if time.monotonic() >= give_up:
            # Holders keep failing to produce a value: compute it ourselves, unlocked.
            acquired = None
            break
        # Succeeds once the holder releases, or once its lease runs out if it died.
        acquired = cache._call(lambda: driver.acquire_lock(lock_key, token, lease_ms), None)
    try:
        versions = cache._versions(tags, ttl, swr)  # before the factory: old data never looks fresh
        value = factory()
        if versions is not None:
            cache._store([(full, cache._encode(value))], ttl, swr, tags, versions)
        return value
    finally:
        if acquired:
            cache._call(lambda: driver.release_lock(lock_key, token), False)
