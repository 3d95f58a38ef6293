"""``czo_kit.cache.glob``: the memory driver (and plugin drivers) match invalidation patterns
as Redis's ``SCAN ... MATCH`` does, checked against a real Redis, and in time linear in the
key whatever the pattern."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from czo_kit.cache import CacheManager
from czo_kit.cache.glob import escape_glob, glob_to_regex
from czo_kit.default_plugins.memory_cache import MemoryDriver

try:
    import redis
except ImportError:  # pragma: no cover - the dev extra installs it; the redis_url fixture reports it
    redis = None

KEYS = [
    "a", "b", "ab", "ba", "abc", "a-c", "a]c", "a[c", "a\\c", "a*c", "a?c", "a^c", "a!c",
    "]", "[", "-", "^", "\\", "x]", "a]", "zz", "z-a", "aaaaaaaab", "aXbXc", "a.c", "a\nc",
]

PATTERNS = [
    "*", "a*", "*c", "a?c", "a*c", "[ab]", "[^ab]", "[a-c]", "[c-a]", "[z-a]", "[]", "[^]",
    "[]a]", "[^]a]", "[a-]", "[a-]c", "[a-", "[ab", "a[", "a[\\]]c", "a\\*c", "a\\", "[\\",
    "a[!b]c", "a[\\-]c", "*a*a*a*b", "a*b*c", "?", "??", "*]", "[*]", "a[?]c", "[-a]",
    "a[^-]c", "\\[", "*\\\\*", "a[b-]c", "a.c", "a?c*",
]


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[tuple[object, str]]:
    client = redis.Redis.from_url(redis_url)
    prefix = f"glob{uuid.uuid4().hex[:8]}:"
    client.mset({prefix + key: b"1" for key in KEYS})
    yield client, prefix
    client.delete(*(prefix + key for key in KEYS))
    client.close()


@pytest.mark.redis
def test_glob_to_regex_matches_what_redis_matches(redis_client: tuple[object, str]) -> None:
    client, prefix = redis_client
    for pattern in PATTERNS:
        full = escape_glob(prefix) + pattern
        by_redis = sorted(k.decode()[len(prefix):] for k in client.scan_iter(match=full, count=1000))  # type: ignore[attr-defined]
        ours = sorted(key for key in KEYS if glob_to_regex(full).fullmatch(prefix + key))
        assert (pattern, ours) == (pattern, by_redis)


def test_a_pattern_of_many_stars_does_not_backtrack_for_ever() -> None:
    """As a plain regex, ``.*a.*a.*a...b`` tries every way to place each ``a`` on a key of
    ``a``s: about len(key) ** stars steps, years here. The memory driver matched under its
    lock, so one hostile ``invalidate`` hung every thread using the cache."""
    driver = MemoryDriver()
    cache = CacheManager(driver, prefix="mem:")
    cache.set("a" * 500, 1)
    cache.set("a" * 20 + "b", 2)
    assert cache.invalidate("*a" * 40 + "*b") == 0
    assert cache.invalidate("*a" * 20 + "*b") == 1
    assert cache.get("a" * 500) == 1


def test_a_reversed_range_is_a_range_not_an_error() -> None:
    """Redis reads ``[z-a]`` as ``[a-z]``; ``re`` refused it (``re.error`` from invalidate)."""
    cache = CacheManager(MemoryDriver(), prefix="mem:")
    cache.set_many({"k": 1, "K": 2})
    assert cache.invalidate("[z-a]") == 1
    assert cache.get("K") == 2
