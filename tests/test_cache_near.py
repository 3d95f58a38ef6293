"""The Redis driver's near cache, on real servers: repeated reads stay in the process, and no
read ever returns a value that changed before it started, whoever changed it (another cache,
a raw client, a tag bump, expiry, FLUSHDB, a restarted server).

Two caches here stand for two processes: each has its own connection pool and its own
tracking connection, which is all a process boundary changes for Redis.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from czo_kit.cache import CacheManager, create_cache
from czo_kit.cache.near import NearCache
from czo_kit.default_plugins.redis_cache import RedisDriver
from czo_kit.errors import ConfigurationError
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until
from test_cache_redis import PrivateRedis, RoundTrips, free_port, private_redis, quiet_redis, redis_server_binary, round_trips  # noqa: F401

try:
    import redis
except ImportError:  # pragma: no cover - the dev extra installs it
    redis = None

pytestmark = pytest.mark.redis


@pytest.fixture
def pair(redis_url: str) -> Iterator[Callable[..., CacheManager]]:
    """Caches on one Redis under one prefix, each with its own near cache."""
    prefix = f"near{uuid.uuid4().hex[:10]}:"
    made: list[CacheManager] = []

    def make(url: str | None = None, *, entries: int = 10_000, timeout: float = 1.0, **options: Any) -> CacheManager:
        target = url or redis_url
        settings = Settings(cache_url=target, cache_near_entries=entries, cache_timeout=timeout)
        manager = create_cache(target, settings=settings, prefix=prefix, **options)
        made.append(manager)
        return manager

    yield make
    if made:
        try:
            made[0].invalidate("*")
        except Exception:  # pragma: no cover - a test that killed its server
            pass
    for manager in made:
        manager.close()


def near_of(cache: CacheManager) -> NearCache:
    driver = cache.driver
    assert isinstance(driver, RedisDriver) and driver.near is not None
    return driver.near


def test_repeated_reads_stay_in_the_process(
    quiet_redis: PrivateRedis, pair: Callable[..., CacheManager], round_trips: RoundTrips
) -> None:
    cache = pair(quiet_redis.url)
    cache.get("warm-up")  # connects, and turns tracking on
    cache.set("k", {"n": 1}, tags=["t"])
    assert round_trips(lambda: cache.get("k", tags=["t"])) == ({"n": 1}, 1)  # MGET of the entry and tag
    assert round_trips(lambda: cache.get("k", tags=["t"])) == ({"n": 1}, 0)
    assert round_trips(lambda: cache.get_or_set("k", lambda: "unused", tags=["t"])) == ({"n": 1}, 0)
    assert near_of(cache).counts["hits"] == 2
    # Storing another entry under the same tag reads the tag's version (unchanged): the copy
    # of it held here stays good, and so does the read of the first entry.
    cache.set("k2", {"n": 2}, tags=["t"])
    assert round_trips(lambda: cache.get("k", tags=["t"])) == ({"n": 1}, 0)
    cache.invalidate_tags(["t"])
    assert round_trips(lambda: cache.get("k", tags=["t"])) == (None, 1)
    assert near_of(cache).tracking


def test_a_write_elsewhere_is_seen_by_the_very_next_read(pair: Callable[..., CacheManager]) -> None:
    reader, writer = pair(), pair()
    for n in range(300):
        writer.set("k", n, tags=["t"])
        assert reader.get("k", tags=["t"]) == n  # no wait: the write had returned
        assert reader.get("k", tags=["t"]) == n  # ... and now from the near cache
    assert near_of(reader).counts["hits"] >= 300


def test_tag_bumps_deletes_and_raw_writes_elsewhere_invalidate(pair: Callable[..., CacheManager], redis_url: str) -> None:
    reader, writer = pair(), pair()
    writer.set("a", "A", tags=["product:1"])
    writer.set("b", "B")
    assert reader.get("a", tags=["product:1"]) == "A" and reader.get("b") == "B"
    writer.invalidate_tags(["product:1"])
    assert reader.get("a", tags=["product:1"]) is None
    writer.delete("b")
    assert reader.get("b") is None
    writer.set("c", "C")
    assert reader.get("c") == "C"
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.delete(writer.key("c"))  # not the kit at all
    finally:
        raw.close()
    assert reader.get("c") is None


def test_a_non_utf8_key_in_a_push_does_not_hide_the_keys_after_it(
    pair: Callable[..., CacheManager], redis_url: str
) -> None:
    """Redis sends the keys written in one event-loop turn in one push, sorted. A key that is
    not UTF-8 (another program's, under the prefix) failed to decode in the handler, redis-py
    logged and swallowed the error, and the keys after it in that push were never dropped: the
    reader served the old value of ``b`` for as long as it held it."""
    reader, writer = pair(), pair()
    writer.set("b", "old")
    assert reader.get("b") == "old" and reader.get("b") == "old"  # the second from the near cache
    raw = redis.Redis.from_url(redis_url)
    try:
        with raw.pipeline(transaction=True) as multi:  # one turn of the event loop: one push
            multi.set(writer.key("a").encode() + b"\xff", b"foreign")
            multi.set(writer.key("b"), b"changed behind the near cache")
            multi.execute()
        assert reader.get("b") is None  # not an envelope of the kit: a miss, not "old"
        writer.set("b", "new")
        assert reader.get("b") == "new"
        raw.delete(writer.key("a").encode() + b"\xff")
    finally:
        raw.close()
    assert near_of(reader).tracking


def test_expiry_and_flushdb_empty_it(private_redis: PrivateRedis, pair: Callable[..., CacheManager]) -> None:
    reader, writer = pair(private_redis.url), pair(private_redis.url)
    writer.set("short", "s", ttl=2.0)  # read back at once: 2 s leave room for a busy machine
    writer.set("long", "l", ttl=60)
    assert reader.get("short") == "s" and reader.get("long") == "l"
    assert wait_until(lambda: reader.get("short") is None, timeout=15)
    admin = private_redis.client()
    try:
        admin.flushdb()
    finally:
        admin.close()
    assert reader.get("long") is None


def test_concurrent_readers_never_go_back_in_time(pair: Callable[..., CacheManager]) -> None:
    # Reads that miss race with writes: a value fetched before a write must not be kept after
    # the write's invalidation was applied (the placeholder check).
    writer = pair()
    reader = pair()
    writer.set("k", 0)
    done = threading.Event()
    problems: list[str] = []

    def read() -> None:
        last = -1
        while not done.is_set():
            value = reader.get("k")
            if value is None or value < last:
                problems.append(f"read {value} after {last}")
                return
            last = value

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for n in range(1, 400):
        writer.set("k", n)
    final = 399
    done.set()
    for thread in threads:
        thread.join(timeout=30)
    assert problems == []
    assert reader.get("k") == final


def test_losing_the_server_empties_it_and_reads_miss_until_tracking_is_back(
    private_redis: PrivateRedis, pair: Callable[..., CacheManager], caplog: pytest.LogCaptureFixture
) -> None:
    cache = pair(private_redis.url, timeout=0.1, retry_after=0.05)
    cache.set("k", "v")
    assert cache.get("k") == "v" and cache.get("k") == "v"
    near = near_of(cache)
    near.retry_after = 0.05
    assert len(near) >= 1
    private_redis.kill()
    with caplog.at_level(logging.WARNING, logger="czo_kit.cache"):
        assert cache.get("k", "gone") == "gone"  # never the copy: nobody can tell us it changed
    assert len(near) == 0 and not near.tracking
    assert any("near cache emptied" in r.getMessage() for r in caplog.records)
    private_redis.start()  # empty: the restarted server has no "k"
    assert wait_until(lambda: cache.get_or_set("k", lambda: "fresh") == "fresh" and near.tracking, timeout=10)
    assert cache.get("k") == "fresh"


def test_a_server_that_stops_answering_empties_it(
    private_redis: PrivateRedis, pair: Callable[..., CacheManager]
) -> None:
    # A paused server looks like a cut network: the socket stays open, nothing arrives, so no
    # invalidation would either. The PING of the drain thread notices within a second.
    cache = pair(private_redis.url, timeout=0.1)
    cache.set("held", "h")
    assert cache.get("held") == "h" and cache.get("held") == "h"
    near = near_of(cache)
    assert near.tracking and len(near) >= 1
    admin = private_redis.client()
    try:
        assert admin.client_pause(3000)
    finally:
        admin.close()
    assert wait_until(lambda: not near.tracking, timeout=5)
    assert len(near) == 0
    assert near.counts["resets"] >= 1
    # Once the server answers again, reads are right and the near cache comes back.
    assert wait_until(lambda: cache.get("held") == "h" and near.tracking, timeout=15)


def test_a_server_that_refuses_tracking_turns_it_off_for_good(
    redis_server_binary: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The tracking connection goes to a server without CLIENT (as one without CLIENT TRACKING
    # would answer); the values come from the usual one.
    with PrivateRedis(redis_server_binary, extra_args=["--rename-command", "CLIENT", ""]) as refusing:
        client = redis.Redis.from_url(redis_url)
        near = NearCache(lambda: redis.Connection(host="127.0.0.1", port=refusing.port, protocol=3),
                         "czo-refused:", retry_after=0.0)
        driver = RedisDriver(client, near=near)
        try:
            client.set("czo-refused:k", b"1")
            with caplog.at_level(logging.INFO, logger="czo_kit.cache"):
                for _ in range(3):
                    assert driver.get_many(["czo-refused:k"]) == [b"1"]  # from Redis, every time
            assert near.refused is not None and "CLIENT" in near.refused.upper()
            assert not near.tracking and len(near) == 0
            refusals = [r for r in caplog.records if "refuses key tracking" in r.getMessage()]
            assert len(refusals) == 1  # not retried, though retry_after is 0
        finally:
            client.delete("czo-refused:k")
            driver.close()


def test_keys_outside_the_tracked_prefix_are_never_held(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"tracked{uuid.uuid4().hex[:8]}:"
    pool = client.connection_pool
    near = NearCache(lambda: pool.connection_class(**{**pool.connection_kwargs, "protocol": 3}), prefix, max_entries=5)
    driver = RedisDriver(client, near=near)
    try:
        client.set("untracked-" + prefix, b"x")
        assert driver.get_many(["untracked-" + prefix]) == [b"x"]
        assert driver.get_many(["untracked-" + prefix]) == [b"x"]
        assert len(near) == 0 and near.counts["hits"] == 0
        keys = [f"{prefix}{n}" for n in range(20)]
        driver.set_many([(key, b"v", 60_000) for key in keys])
        for key in keys:
            assert driver.get_many([key]) == [b"v"]
        assert len(near) <= 5  # bounded, least recently used dropped
        assert driver.get_many([keys[-1]]) == [b"v"] and near.counts["hits"] == 1
    finally:
        client.delete("untracked-" + prefix, *[f"{prefix}{n}" for n in range(20)])
        driver.close()


def test_without_key_tracking_every_read_goes_to_redis(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis.from_url(redis_url)
    dead = free_port()  # nothing listens: the tracking connection cannot be made
    near = NearCache(lambda: redis.Connection(host="127.0.0.1", port=dead, protocol=3, socket_connect_timeout=0.2),
                     "czo-test:", retry_after=60)
    driver = RedisDriver(client, near=near)
    try:
        client.set("czo-test:k", b"1")
        with caplog.at_level(logging.INFO, logger="czo_kit.cache"):
            assert driver.get_many(["czo-test:k"]) == [b"1"]
            client.set("czo-test:k", b"2")
            assert driver.get_many(["czo-test:k"]) == [b"2"]
        assert not near.tracking and len(near) == 0
        offs = [r for r in caplog.records if "near cache off" in r.getMessage()]
        assert len(offs) == 1  # tried once, then left alone for retry_after
    finally:
        client.delete("czo-test:k")
        driver.close()


def test_a_forked_child_opens_its_own_tracking_connection(pair: Callable[..., CacheManager]) -> None:
    cache = pair()
    cache.set("k", "parent")
    assert cache.get("k") == "parent"
    near = near_of(cache)
    assert len(near) >= 1
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            if len(near) != 0 or near.tracking:
                code = 3
            elif cache.get("k") != "parent" or not near.tracking:
                code = 4
        except BaseException:
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert near.tracking and cache.get("k") == "parent"  # the parent's own connection is intact


def test_the_setting_is_checked_and_zero_turns_it_off(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_CACHE_NEAR_ENTRIES", "-1")
    with pytest.raises(ConfigurationError, match="CZO_CACHE_NEAR_ENTRIES"):
        Settings.from_env()
    monkeypatch.setenv("CZO_CACHE_NEAR_ENTRIES", "many")
    with pytest.raises(ConfigurationError, match="CZO_CACHE_NEAR_ENTRIES"):
        Settings.from_env()
    monkeypatch.setenv("CZO_CACHE_NEAR_ENTRIES", "0")
    cache = create_cache(redis_url, settings=Settings.from_env())
    try:
        assert isinstance(cache.driver, RedisDriver) and cache.driver.near is None
    finally:
        cache.close()
    with pytest.raises(ValueError, match="prefix"):
        NearCache(lambda: None, "")
    with pytest.raises(ConfigurationError, match="CZO_CACHE_PREFIX"):
        create_cache(redis_url, settings=Settings(cache_url=redis_url, cache_prefix=""))
    bare = create_cache(redis_url, settings=Settings(cache_url=redis_url, cache_prefix="", cache_near_entries=0))
    bare.close()
