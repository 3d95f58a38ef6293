"""``dictcache://``: a deliberately plain cache driver, written as a third party would.

It shares no code with the built-in memory driver (one dict, one lock, no LRU), so
``CacheDriverContract`` passing on it shows the contract is about behaviour, not about
one implementation. Only the public helpers of ``czo_kit.cache`` are used.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

from czo_kit import hookimpl
from czo_kit.cache.glob import glob_to_regex

__all__ = ["DictCacheDriver", "create_dict_cache"]


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class DictCacheDriver:
    """Keys map to ``(value, expires_at_ms)``; 0 means no expiry. Locks live in the same dict."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Lock()

    def _get(self, key: str, now: int) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] and item[1] <= now:
            del self._items[key]
            return None
        return item[0]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = _now_ms()
        with self._lock:
            return [self._get(key, now) for key in keys]

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        now = _now_ms()
        with self._lock:
            for key, value, ttl_ms in items:
                self._items[key] = (value, now + ttl_ms if ttl_ms > 0 else 0)

    def delete_many(self, keys: Sequence[str]) -> int:
        now = _now_ms()
        removed = 0
        with self._lock:
            for key in keys:
                if self._get(key, now) is not None:
                    del self._items[key]
                    removed += 1
        return removed

    def tag_versions(self, tags: Sequence[str], tag_prefix: str, ttl_ms: int) -> list[bytes]:
        now = _now_ms()
        versions = []
        with self._lock:
            for tag in tags:
                key = tag_prefix + tag
                version = self._get(key, now)
                if version is None:
                    version = secrets.token_hex(8).encode()
                # Never sooner than asked: an entry may depend on it that long.
                self._items[key] = (version, max(self._items.get(key, (b"", 0))[1], now + ttl_ms))
                versions.append(version)
        return versions

    def bump_tags(self, tags: Sequence[str], tag_prefix: str) -> None:
        with self._lock:
            for tag in tags:
                self._items.pop(tag_prefix + tag, None)

    def delete_matching(self, pattern: str, *, batch: int = 1000) -> int:
        regex = glob_to_regex(pattern)
        with self._lock:
            doomed = [key for key in self._items if regex.fullmatch(key)]
            for key in doomed:
                del self._items[key]
        return len(doomed)

    def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        now = _now_ms()
        with self._lock:
            if self._get(key, now) is not None:
                return False
            self._items[key] = (token.encode(), now + ttl_ms)
            return True

    def release_lock(self, key: str, token: str) -> bool:
        with self._lock:
            if self._get(key, _now_ms()) != token.encode():
                return False
            del self._items[key]
            return True

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._items.clear()


def create_dict_cache(url: str, *, settings: Any) -> DictCacheDriver:
    """``dictcache://``: a new, empty store for every cache created."""
    return DictCacheDriver()


@hookimpl
def czo_register_cache_drivers(register: Any) -> None:
    register("dictcache", create_dict_cache)
