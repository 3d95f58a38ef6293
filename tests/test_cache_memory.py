"""The memory cache driver beyond the shared contract: its LRU bound, expiry (on read and in
sweeps), thread safety, URL options, and how ``create_cache`` and ``Kit`` pick it up."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.cache import CacheManager, create_cache
from czo_kit.default_plugins import memory_cache
from czo_kit.default_plugins.memory_cache import SWEEP_EVERY, MemoryDriver
from czo_kit.errors import ConfigurationError
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until


@pytest.fixture
def make_cache() -> Iterator[Callable[..., tuple[CacheManager, MemoryDriver]]]:
    made: list[CacheManager] = []

    def make(max_entries: int = 10_000, **options: Any) -> tuple[CacheManager, MemoryDriver]:
        driver = MemoryDriver(max_entries=max_entries)
        manager = CacheManager(driver, prefix="mem:", **options)
        made.append(manager)
        return manager, driver

    yield make
    for manager in made:
        manager.close()


def wait_for_clock(deadline_ms: int) -> None:
    """Wait until the driver's clock passes ``deadline_ms`` without touching any entry."""
    assert wait_until(lambda: memory_cache._now_ms() > deadline_ms, timeout=5)


# -- LRU bound ------------------------------------------------------------------------------


def test_the_least_recently_used_entries_go_first(make_cache: Callable[..., Any]) -> None:
    cache, driver = make_cache(max_entries=3)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("c", 3)
    assert cache.get("a") == 1  # a read makes "a" recent: "b" is now the oldest untouched
    cache.set("d", 4)
    assert len(driver) == 3
    assert cache.get("b") is None
    assert [cache.get(k) for k in ("a", "c", "d")] == [1, 3, 4]  # recency now a < c < d
    cache.set("c", 30)  # overwriting counts as a use too: a < d < c
    cache.set("e", 5)
    assert cache.get("a") is None
    assert [cache.get(k) for k in ("c", "d", "e")] == [30, 4, 5]
    assert cache.has("d")  # has() reads, so it refreshes as well: c < e < d
    cache.set("f", 6)
    assert cache.get("c") is None and cache.get("d") == 4


def test_the_bound_holds_under_many_writes(make_cache: Callable[..., Any]) -> None:
    cache, driver = make_cache(max_entries=100)
    for n in range(1000):
        cache.set(f"k{n}", n)
        assert len(driver) <= 100
    assert len(driver) == 100
    assert cache.get_many(f"k{n}" for n in range(1000)) == {f"k{n}": n for n in range(900, 1000)}


# -- expiry ---------------------------------------------------------------------------------


def test_an_expired_entry_is_removed_when_read(make_cache: Callable[..., Any]) -> None:
    _, driver = make_cache()
    written_at = memory_cache._now_ms()
    driver.set_many([("short", b"v", 50), ("long", b"w", 60_000)])
    assert len(driver) == 2
    wait_for_clock(written_at + 50)
    assert len(driver) == 2  # expired but not yet looked at
    assert driver.get_many(["short", "long"]) == [None, b"w"]
    assert len(driver) == 1  # the read removed it, it did not only hide it


def test_expired_entries_are_swept_even_if_never_read(make_cache: Callable[..., Any]) -> None:
    cache, driver = make_cache()
    written_at = memory_cache._now_ms()
    cache.set_many({f"old{n}": n for n in range(100)}, ttl=0.05)
    assert len(driver) == 100
    wait_for_clock(written_at + 60)
    assert len(driver) == 100  # nothing has read them
    for n in range(SWEEP_EVERY):  # enough writes to reach the next sweep
        cache.set(f"new{n}", n, ttl=60)
    assert len(driver) == SWEEP_EVERY
    assert cache.get_many(f"new{n}" for n in range(SWEEP_EVERY)) == {f"new{n}": n for n in range(SWEEP_EVERY)}


def test_overwrites_do_not_grow_the_expiry_heap_without_bound(make_cache: Callable[..., Any]) -> None:
    cache, driver = make_cache()
    for n in range(20_000):
        cache.set("same", n, ttl=60)
    assert len(driver) == 1 and cache.get("same") == 19_999
    assert len(driver._expiry) <= 2 * len(driver) + 1024 + SWEEP_EVERY


# -- batch cache-aside ---------------------------------------------------------------------


def test_get_or_set_many_computes_all_misses_at_once_and_snapshots_tags_first(
    make_cache: Callable[..., Any],
) -> None:
    cache, _ = make_cache()
    cache.set("a", "cached a", tags=["t:a"])
    asked: list[list[str]] = []

    def load(missing: list[str]) -> dict[str, str]:
        asked.append(missing)
        cache.invalidate_tags(["t:c"])  # c's data changes while it is being computed
        return {key: f"computed {key}" for key in missing if key != "d"}  # d does not exist

    wanted = {"a": ["t:a"], "b": ["t:b"], "c": ["t:c"], "d": ["t:d"]}
    assert cache.get_or_set_many(wanted, load) == {"a": "cached a", "b": "computed b", "c": "computed c"}
    assert asked == [["b", "c", "d"]]
    assert cache.get("b") == "computed b"
    assert cache.get("c") is None  # computed from data that changed meanwhile: not kept as fresh
    assert cache.get("d") is None
    cache.invalidate_tags(["t:b"])  # each key carries its own tags
    assert cache.get("b") is None and cache.get("a") == "cached a"
    assert cache.get_or_set_many({"a": ["t:a"]}, load) == {"a": "cached a"}
    assert len(asked) == 1  # nothing missing, factory not called


# -- thread safety --------------------------------------------------------------------------


@pytest.mark.parametrize("max_entries", [10_000, 40], ids=["roomy", "evicting"])
def test_many_threads_mixing_every_operation(make_cache: Callable[..., Any], max_entries: int) -> None:
    cache, driver = make_cache(max_entries=max_entries, lock_timeout=5.0)
    roomy = max_entries > 1000  # with evictions, a thread's own key may vanish at any time
    errors: list[BaseException] = []
    last: dict[int, int] = {}
    start = threading.Barrier(8)

    def work(n: int) -> None:
        rng = random.Random(n)
        own = f"own{n}"
        i = 0
        try:
            start.wait(timeout=10)
            stop = time.monotonic() + 0.6
            while time.monotonic() < stop:
                i += 1
                cache.set(own, [n, i], tags=[f"mine{n}"])  # nobody else touches this tag
                if roomy:
                    assert cache.get(own) == [n, i]
                key = f"s{rng.randrange(60)}"
                op = rng.randrange(7)
                if op == 0:
                    cache.set(key, key, tags=["shared", f"group{rng.randrange(4)}"])
                elif op == 1:
                    assert cache.get(key) in (None, key)
                elif op == 2:
                    cache.delete(key)
                elif op == 3:
                    cache.invalidate_tags([f"group{rng.randrange(4)}"])
                elif op == 4:
                    assert cache.get_or_set(key, lambda: key, tags=["shared"]) == key
                elif op == 5:
                    found = cache.get_many([key, own])
                    assert found.get(key, key) == key
                    if roomy:
                        assert found[own] == [n, i]
                else:
                    cache.invalidate(f"s{rng.randrange(6)}*")
            last[n] = i
        except BaseException as exc:  # reported below, with the thread that raised it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads far more often than every 5 ms: races show sooner
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        sys.setswitchinterval(switch)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sorted(last) == list(range(8)) and min(last.values()) > 10
    assert len(driver) <= max_entries
    if roomy:
        assert cache.get_many(f"own{n}" for n in range(8)) == {f"own{n}": [n, last[n]] for n in range(8)}


# -- configuration --------------------------------------------------------------------------


def test_the_url_sets_max_entries() -> None:
    cache = create_cache("memory://?max_entries=50", settings=Settings(cache_max_entries=7))
    try:
        assert isinstance(cache.driver, MemoryDriver) and cache.driver.max_entries == 50  # the URL wins
        cache.set_many({f"k{n}": n for n in range(60)})
        assert len(cache.driver) == 50
        assert cache.get("k9") is None and cache.get("k59") == 59
    finally:
        cache.close()
    default = create_cache("memory://", settings=Settings(cache_max_entries=7))
    try:
        assert isinstance(default.driver, MemoryDriver) and default.driver.max_entries == 7
    finally:
        default.close()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("memory://?colour=red", ["'colour'", "max_entries"]),
        ("memory://?max_entries=lots", ["'lots'", "not an integer"]),
        ("memory://?max_entries=", ["max_entries", "not an integer"]),
        ("memory://?max_entries=0", ["max_entries", "at least 1"]),
        ("memory://?max_entries=-5", ["max_entries", "at least 1"]),
    ],
)
def test_bad_url_options_name_the_setting(url: str, named: list[str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_cache(url, settings=Settings())
    assert info.value.variable == "CZO_CACHE_URL"
    message = str(info.value)
    assert "CZO_CACHE_URL" in message
    for part in named:
        assert part in message


def test_an_unknown_scheme_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        create_cache("nope://somewhere", settings=Settings())
    message = str(info.value)
    assert info.value.variable == "CZO_CACHE_URL"
    assert "CZO_CACHE_URL" in message and "'nope'" in message
    allowed = message.split("allowed:", 1)[1]
    assert {"memory", "redis", "rediss"} <= {name.strip() for name in allowed.split(",")}


def test_the_kit_builds_the_cache_and_registers_it(sqlite_url: str, settings_for: Callable[..., Settings]) -> None:
    with Kit(settings_for(sqlite_url, cache_url="memory://?max_entries=123", cache_prefix="kit:")) as kit:
        assert isinstance(kit.cache, CacheManager)
        assert kit.services.get(CacheManager) is kit.cache
        driver = kit.cache.driver
        assert isinstance(driver, MemoryDriver) and driver.max_entries == 123
        assert kit.cache.key("k") == "kit:k"
        kit.cache.set("k", {"v": 1})
        assert kit.cache.get("k") == {"v": 1}
    assert len(driver) == 0  # closing the kit closed the cache


def test_an_unknown_scheme_does_not_echo_the_url() -> None:
    # The URL may carry a password (rediss://:secret@host): the error names the scheme only.
    with pytest.raises(ConfigurationError) as info:
        create_cache("redis+sentinel://:hunter2@cache.internal:26379/0", settings=Settings())
    assert "'redis+sentinel'" in str(info.value) and "hunter2" not in str(info.value)
