"""The development cache driver: a bounded, thread-safe LRU in this process.

It stores the same envelopes as the Redis driver and treats tags the same way (tag versions
live in the LRU with the entries, so an evicted version invalidates, as in production).
"""

from __future__ import annotations

import heapq
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from czo_kit.cache.glob import glob_to_regex
from czo_kit.errors import ConfigurationError
from czo_kit.hookspecs import hookimpl

if TYPE_CHECKING:
    from czo_kit.settings import Settings

__all__ = ["MemoryDriver", "create_memory_driver"]

SWEEP_EVERY = 64  # writes between expiry sweeps


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class MemoryDriver:
    """LRU of at most ``max_entries`` keys; expired keys vanish on read and in sweeps."""

    def __init__(self, *, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[bytes, int]] = OrderedDict()  # key -> (value, expires)
        self._expiry: list[tuple[int, str]] = []  # heap of (expires, key), lazily pruned
        self._locks: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._writes = 0

    # -- internals (call with self._lock held) --------------------------------------------

    def _read(self, key: str, now: int) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires and expires <= now:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _write(self, key: str, value: bytes, expires: int) -> None:
        self._data[key] = (value, expires)
        self._data.move_to_end(key)
        if expires:
            heapq.heappush(self._expiry, (expires, key))
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            self._sweep(_now_ms())

    def _sweep(self, now: int) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            item = self._data.get(key)
            if item is not None and item[1] == expires:
                del self._data[key]
        if len(heap) > 2 * len(self._data) + 1024:
            # Overwritten entries leave dead heap items behind; rebuild now and then.
            self._expiry = [(exp, k) for k, (_, exp) in self._data.items() if exp]
            heapq.heapify(self._expiry)

    # -- CacheDriver ----------------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = _now_ms()
        with self._lock:
            return [self._read(key, now) for key in keys]

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        now = _now_ms()
        with self._lock:
            for key, value, ttl_ms in items:
                self._write(key, value, now + ttl_ms if ttl_ms > 0 else 0)

    def delete_many(self, keys: Sequence[str]) -> int:
        now = _now_ms()
        removed = 0
        with self._lock:
            for key in keys:
                if self._read(key, now) is not None:
                    del self._data[key]
                    removed += 1
        return removed

    def tag_versions(self, tags: Sequence[str], tag_prefix: str, ttl_ms: int) -> list[bytes]:
        now = _now_ms()
        hold = now + ttl_ms
        versions = []
        with self._lock:
            for tag in tags:
                key = tag_prefix + tag
                version = self._read(key, now)
                if version is None:
                    # Random, never a counter: a version must not come back once its key went.
                    version = str(secrets.randbits(64)).encode()
                    self._write(key, version, hold)
                elif self._data[key][1] < hold:
                    self._write(key, version, hold)
                versions.append(version)
        return versions

    def bump_tags(self, tags: Sequence[str], tag_prefix: str) -> None:
        with self._lock:
            for tag in tags:
                # A missing version invalidates; the next writer creates a random new one.
                self._data.pop(tag_prefix + tag, None)

    def delete_matching(self, pattern: str, *, batch: int = 1000) -> int:
        regex = glob_to_regex(pattern)
        removed = 0
        with self._lock:
            keys = [key for key in self._data if regex.fullmatch(key)]
        # Remove in batches, releasing the lock between them, as SCAN + UNLINK would.
        for start in range(0, len(keys), batch):
            with self._lock:
                for key in keys[start : start + batch]:
                    if self._data.pop(key, None) is not None:
                        removed += 1
        return removed

    def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        now = _now_ms()
        with self._lock:
            held = self._locks.get(key)
            if held is not None and held[1] > now:
                return False
            self._locks[key] = (token, now + ttl_ms)
            return True

    def release_lock(self, key: str, token: str) -> bool:
        with self._lock:
            held = self._locks.get(key)
            if held is None or held[0] != token:
                return False
            del self._locks[key]
            return True

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._data.clear()
            self._expiry.clear()
            self._locks.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


def create_memory_driver(url: str, *, settings: Settings) -> MemoryDriver:
    """``memory://`` (optionally ``memory://?max_entries=50000``)."""
    parts = urlsplit(url)
    options: dict[str, Any] = {"max_entries": settings.cache_max_entries}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "max_entries":
            raise ConfigurationError(
                f"invalid setting CZO_CACHE_URL={url!r}: unknown memory cache option {key!r}; "
                "allowed: max_entries",
                variable="CZO_CACHE_URL",
            )
        try:
            options["max_entries"] = int(value)
        except ValueError:
            raise ConfigurationError(
                f"invalid setting CZO_CACHE_URL={url!r}: max_entries={value!r} is not an integer",
                variable="CZO_CACHE_URL",
            ) from None
    if options["max_entries"] < 1:
        raise ConfigurationError(
            f"invalid setting CZO_CACHE_URL={url!r}: max_entries must be at least 1",
            variable="CZO_CACHE_URL",
        )
    return MemoryDriver(max_entries=options["max_entries"])


@hookimpl
def czo_register_cache_drivers(register: Any) -> None:
    register("memory", create_memory_driver)
