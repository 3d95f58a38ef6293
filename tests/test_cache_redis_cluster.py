"""The Redis Cluster cache driver beyond the shared contract, on a real local cluster of three
primaries: keys and tag versions spread over every node, tags and namespaces that span slots,
``invalidate`` scanning every primary, redirections followed, a killed primary served as misses
(never MovedError or CrossSlot to the caller), the near cache refused, bad URLs named, and
the single-node driver pointed at a cluster degrading with a message that names the fix.

Tests that kill a node start a cluster of their own (``private_cluster``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from czo_kit.cache import CacheManager, CacheUnavailable, create_cache
from czo_kit.default_plugins.redis_cluster_cache import RedisClusterDriver, parse_cluster_url
from czo_kit.errors import ConfigurationError
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until
from redis_cluster import LocalCluster

pytestmark = pytest.mark.redis


@pytest.fixture
def make_cache() -> Iterator[Callable[..., CacheManager]]:
    made: list[CacheManager] = []

    def make(url: str, **options: Any) -> CacheManager:
        options.setdefault("prefix", f"cl{uuid.uuid4().hex[:10]}:")
        settings = Settings(cache_url=url, cache_timeout=options.pop("timeout", 1.0), cache_near_entries=0)
        manager = create_cache(url, settings=settings, **options)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


@pytest.fixture
def private_cluster(redis_cluster: LocalCluster, tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of this test's own, which it may kill nodes of (binaries as the session's)."""
    with LocalCluster(redis_cluster.server, redis_cluster.cli, tmp_path / "cluster") as cluster:
        yield cluster


def spread_keys(cluster: LocalCluster, prefix: str, stem: str, per_node: int = 3) -> dict[int, list[str]]:
    """``per_node`` names ``stem<n>`` for each primary, whose full keys (``prefix`` + name) it serves."""
    by_port: dict[int, list[str]] = {port: [] for port in cluster.ports}
    n = 0
    while any(len(names) < per_node for names in by_port.values()):
        name = f"{stem}{n}"
        names = by_port[cluster.primary_of(prefix + name)]
        if len(names) < per_node:
            names.append(name)
        n += 1
    return by_port


# -- keys over every primary ---------------------------------------------------------------


def test_entries_spread_over_every_primary_and_bulk_calls_span_slots(
    redis_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    cache = make_cache(redis_cluster.url)
    prefix = cache.key("x")[:-1]
    by_port = spread_keys(redis_cluster, prefix, "item:")
    names = [name for names in by_port.values() for name in names]
    cache.set_many({name: name.upper() for name in names}, tags=["catalog"])
    for port, on_node in by_port.items():
        assert set(redis_cluster.keys_on(port, prefix + "item:*")) == {prefix + n for n in on_node}
    # One get_many over three nodes (and the tag version on whichever node holds it).
    assert cache.get_many(names, tags=["catalog"]) == {name: name.upper() for name in names}
    assert cache.delete_many(names) == len(names)
    assert cache.get_many(names) == {}
    assert cache.stats()["errors"] == 0


def test_a_tag_invalidates_entries_on_every_primary(
    redis_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    cache = make_cache(redis_cluster.url)
    prefix = cache.key("x")[:-1]
    by_port = spread_keys(redis_cluster, prefix, "p", per_node=1)
    tag_node = redis_cluster.primary_of(prefix + "tag:price")
    names = [names[0] for names in by_port.values()]
    for name in names:
        cache.set(name, f"value of {name}", tags=["price"])
    # The entries live on all three primaries, so at least two are away from the tag's version.
    assert sum(redis_cluster.primary_of(prefix + name) != tag_node for name in names) == 2
    assert all(cache.get(name) == f"value of {name}" for name in names)
    assert all(cache.get(name, tags=["price"]) == f"value of {name}" for name in names)
    cache.invalidate_tags(["price"])
    assert [cache.get(name) for name in names] == [None, None, None]
    assert [cache.get(name, tags=["price"]) for name in names] == [None, None, None]
    assert cache.stats()["errors"] == 0


def test_a_namespace_clears_across_slots_and_get_or_set_recomputes(
    redis_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    shop = make_cache(redis_cluster.url).namespace("shop")
    prefix = shop.key("x")[:-1]
    names = [names[0] for names in spread_keys(redis_cluster, prefix, "k", per_node=1).values()]
    for name in names:
        assert shop.get_or_set(name, lambda name=name: f"first {name}") == f"first {name}"
    shop.clear()
    assert [shop.get_or_set(name, lambda name=name: f"second {name}") for name in names] == [
        f"second {name}" for name in names
    ]


def test_invalidate_by_pattern_scans_every_primary(
    redis_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    cache = make_cache(redis_cluster.url)
    prefix = cache.key("x")[:-1]
    doomed = spread_keys(redis_cluster, prefix, "user:", per_node=4)
    kept = spread_keys(redis_cluster, prefix, "order:", per_node=2)
    for names in (*doomed.values(), *kept.values()):
        cache.set_many({name: 1 for name in names})
    assert cache.invalidate("user:*") == 12
    for port in redis_cluster.ports:
        assert redis_cluster.keys_on(port, prefix + "user:*") == []
        assert len(redis_cluster.keys_on(port, prefix + "order:*")) == 2
    assert len(cache.get_many([n for names in kept.values() for n in names])) == 6


def test_a_stale_slot_map_is_followed_not_raised(
    redis_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    """After a failover or resharding a node answers MOVED; the client follows it."""
    cache = make_cache(redis_cluster.url)
    cache.set("moved", "here")
    driver = cache.driver
    assert isinstance(driver, RedisClusterDriver)
    client = driver.client
    slot = client.keyslot(cache.key("moved"))
    owner = client.nodes_manager.slots_cache[slot][0]
    wrong = next(node for node in client.get_primaries() if node.name != owner.name)
    client.nodes_manager.slots_cache[slot] = [wrong]  # as if the slot had moved since
    assert cache.get("moved") == "here"
    assert client.nodes_manager.slots_cache[slot][0].name == owner.name
    assert cache.stats()["errors"] == 0


# -- outages ------------------------------------------------------------------------------


def test_a_killed_primary_is_served_as_misses_and_the_cache_recovers(
    private_cluster: LocalCluster, make_cache: Callable[..., CacheManager], caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(private_cluster.url, timeout=0.2, retry_after=0.05)
    strict = make_cache(private_cluster.url, timeout=0.2, retry_after=0.05, strict=True, prefix=cache.key("x")[:-1])
    prefix = cache.key("x")[:-1]
    by_port = spread_keys(private_cluster, prefix, "k", per_node=1)
    names = [names[0] for names in by_port.values()]
    cache.set_many({name: name for name in names}, tags=["t"])
    assert cache.get_many(names, tags=["t"]) == {name: name for name in names}
    assert cache.ping()
    caplog.set_level(logging.WARNING, logger="czo_kit.cache")

    victim = private_cluster.ports[0]
    private_cluster.kill(victim)  # kill -9
    dead = by_port[victim][0]
    alive = by_port[private_cluster.ports[1]][0]

    def every_call_degrades(errors_before: int) -> bool:
        # Nothing raises: reads are misses (or hits on the live nodes), writes are dropped.
        assert cache.get(dead) is None
        assert cache.get(dead, tags=["t"]) is None
        assert dead not in cache.get_many(names, tags=["t"])
        assert cache.get_or_set(dead, lambda: "computed", tags=["t"]) == "computed"
        cache.set(dead, "lost")
        cache.delete_many(names)
        cache.invalidate("k*")
        cache.invalidate_tags(["t"])
        assert not cache.ping()
        return cache.stats()["errors"] > errors_before + 5

    before = cache.stats()["errors"]
    assert wait_until(lambda: every_call_degrades(before), timeout=10)
    with pytest.raises(CacheUnavailable):
        strict.get(dead)
    assert any("cache unavailable" in r.getMessage() for r in caplog.records)

    # Once the others see the node fail, the whole cluster answers CLUSTERDOWN (every slot
    # must be served): the live primaries' keys are misses too, still never an exception.
    live_port = private_cluster.ports[1]
    assert wait_until(
        lambda: "cluster_state:fail" in private_cluster.command(live_port, "CLUSTER", "INFO"), timeout=30
    )
    before = cache.stats()["errors"]
    assert wait_until(lambda: every_call_degrades(before) and cache.get(alive) is None, timeout=10)

    def the_driver_says_cluster_down() -> bool:
        try:
            cache.driver.get_many([cache.key(alive)])
        except CacheUnavailable as exc:  # what the manager turned into the misses above
            return "ClusterDownError" in str(exc)
        return False

    assert wait_until(the_driver_says_cluster_down, timeout=10)

    private_cluster.start_node(victim)  # back on its port with its node file: it rejoins
    private_cluster.wait_ok()

    def recovered() -> bool:
        cache.set(dead, "after")
        return cache.get(dead, tags=["t"]) == "after" and cache.ping()

    assert wait_until(recovered, timeout=20)
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_the_cache_starts_while_the_cluster_is_down_and_catches_up(
    redis_cluster: LocalCluster, make_cache: Callable[..., CacheManager], tmp_path: Path
) -> None:
    cluster = LocalCluster(redis_cluster.server, redis_cluster.cli, tmp_path / "late")
    cache = make_cache(cluster.url, timeout=0.2, retry_after=0.05)  # nothing listens yet
    assert cache.get("k") is None
    cache.set("k", "dropped")
    assert not cache.ping()
    assert cache.stats()["errors"] >= 3
    with cluster:
        assert wait_until(cache.ping, timeout=10)
        cache.set("k", "stored")
        assert cache.get("k") == "stored"


# -- configuration ------------------------------------------------------------------------


def test_the_near_cache_is_refused_naming_the_setting(redis_cluster: LocalCluster) -> None:
    settings = Settings(cache_url=redis_cluster.url)  # the default keeps 10,000 values near
    with pytest.raises(ConfigurationError, match="CZO_CACHE_NEAR_ENTRIES=0") as caught:
        create_cache(settings=settings)
    assert caught.value.variable == "CZO_CACHE_NEAR_ENTRIES"


def test_urls_name_every_node_credentials_and_tls() -> None:
    parsed = parse_cluster_url("redis+cluster://ops:p%40ss@10.0.0.1:7000,[::1]:7001,cache-3:7002/")
    assert parsed.nodes == [("10.0.0.1", 7000), ("::1", 7001), ("cache-3", 7002)]
    assert (parsed.username, parsed.password, parsed.tls) == ("ops", "p@ss", False)
    assert parse_cluster_url("rediss+cluster://:pw@h:6379/0").tls
    assert parse_cluster_url("rediss+cluster://:pw@h:6379/0").password == "pw"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "no host"),
        ("redis+cluster://cache-1", "needs a port"),
        ("redis+cluster://cache-1:0", "needs a port"),
        ("redis+cluster://cache-1:70000", "needs a port"),
        ("redis+cluster://cache-1:7000,", "is empty"),
        ("redis+cluster://cache-1:7000,cache 2:7001", "has spaces"),
        ("redis+cluster://[::1:7000", "is not [ipv6]:port"),
        ("redis+cluster://cache-1:7000/3", "only database 0"),
        ("redis+cluster://cache-1:7000?timeout=1", "options after the hosts"),
        ("redis+cluster://user:s3cret@cache-1:port", "needs a port"),
    ],
)
def test_bad_urls_are_refused_with_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis Cluster URL") as caught:
        create_cache(url, settings=Settings(cache_url=url, cache_near_entries=0))
    message = str(caught.value)
    assert says in message and "redis+cluster://10.0.0.1:6379,10.0.0.2:6379" in message
    assert "s3cret" not in message
    assert caught.value.variable == "CZO_CACHE_URL"


def test_the_single_node_driver_on_a_cluster_degrades_and_names_the_cluster_url(
    redis_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """``redis://`` pointed at one cluster node: MOVED and CROSSSLOT replies are misses, not
    exceptions, and the warning says to use ``redis+cluster://``."""
    port = redis_cluster.ports[0]
    url = f"redis://127.0.0.1:{port}/0"
    cache = create_cache(url, settings=Settings(cache_url=url, cache_near_entries=0), retry_after=0.01)
    caplog.set_level(logging.WARNING, logger="czo_kit.cache")
    try:
        prefix = cache.key("x")[:-1]
        elsewhere = next(
            f"k{n}" for n in range(1000) if redis_cluster.primary_of(f"{prefix}k{n}") != port
        )
        assert cache.get(elsewhere) is None  # MOVED
        cache.set(elsewhere, "x")
        assert wait_until(lambda: cache.get_many([elsewhere, "a", "b", "c"], tags=["t"]) == {})  # CROSSSLOT
        assert cache.stats()["errors"] >= 2
    finally:
        cache.close()
    warned = [r.getMessage() for r in caplog.records if "cache unavailable" in r.getMessage()]
    assert warned and "redis+cluster://" in warned[0] and "cluster node" in warned[0]


# -- czo-kit status -----------------------------------------------------------------------


def status_of_cache(cluster: LocalCluster, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    environ.update(
        CZO_DATABASE_URL=f"sqlite:///{tmp_path / 'status.sqlite3'}", CZO_QUEUE_URL="", CZO_PLUGINS="",
        CZO_CACHE_URL=cluster.url.replace("://", "://:s3cret@", 1), CZO_CACHE_NEAR_ENTRIES="0",
    )
    script = shutil.which("czo-kit", path=os.path.dirname(sys.executable)) or "czo-kit"
    done = subprocess.run([script, "status", "--json"], capture_output=True, text=True, env=environ, timeout=120)
    assert "s3cret" not in done.stdout
    checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
    return done.returncode, checks["cache"]


def test_status_shows_the_cluster_cache_reachable_then_names_a_dead_primary(
    private_cluster: LocalCluster, tmp_path: Path
) -> None:
    for port in private_cluster.ports:  # the URL's password reaches every node
        private_cluster.command(port, "CONFIG", "SET", "requirepass", "s3cret")
    code, cache = status_of_cache(private_cluster, tmp_path)
    assert (code, cache["ok"], cache["detail"]) == (0, True, "3 primaries answer")
    assert cache["url"].startswith("redis+cluster://:***@")

    victim = private_cluster.ports[1]
    private_cluster.kill(victim)
    code, cache = status_of_cache(private_cluster, tmp_path)
    assert (code, cache["ok"]) == (1, False)
    assert f"primary 127.0.0.1:{victim} of 3 does not answer" in cache["detail"]
    assert "served as misses" in cache["detail"]


def test_tag_version_keys_expire_with_their_entries_on_the_cluster(
    redis_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    cache = make_cache(redis_cluster.url, lock_timeout=2.0)
    key = cache._shared.tag_prefix + "product:1"
    port = redis_cluster.primary_of(key)

    def pttl() -> int:
        return int(redis_cluster.command(port, "PTTL", key).strip())

    redis_cluster.command(port, "SET", key, "12345")  # written before versions expired: no TTL
    cache.set("p", 1, ttl=30, tags=["product:1"], stale_while_revalidate=10)
    assert cache.get("p") == 1  # the old version was kept, so are its entries
    lifetime = (30 + 10 + 2.0) * 1000  # the TTL, the stale window, the lock's lease
    assert lifetime - 1000 < pttl() <= lifetime
    cache.set("q", 2, ttl=1000, tags=["product:1"])
    assert pttl() > 1000_000
    cache.set("r", 3, ttl=1, tags=["product:1"])  # a shorter entry never shortens it
    assert pttl() > 1000_000
    cache.set("s", 4, ttl=5, tags=["product:2"])  # created with its expiry
    assert 0 < int(redis_cluster.command(redis_cluster.primary_of(key[:-1] + "2"), "PTTL", key[:-1] + "2").strip())
    cache.invalidate_tags(["product:1"])
    assert pttl() == -2  # gone: a version is removed, never counted on
    assert cache.get_many(["p", "q", "r"]) == {} and cache.get("s") == 4


# -- resharding onto a new node -----------------------------------------------------------


def add_empty_primary(cluster: LocalCluster) -> tuple[int, str]:
    """Start a fourth node, join it as a primary without slots; its port and node id."""
    from redis_cluster import free_ports

    port = free_ports(1)[0]
    cluster.start_node(port)
    cluster.command(port, "CLUSTER", "MEET", "127.0.0.1", str(cluster.ports[0]))
    node_id = cluster.command(port, "CLUSTER", "MYID").strip()

    def everyone_knows_everyone() -> bool:
        return all(
            len([line for line in cluster.command(p, "CLUSTER", "NODES").splitlines() if "connected" in line]) == 4
            for p in (*cluster.ports, port)
        ) and "cluster_state:ok" in cluster.command(port, "CLUSTER", "INFO")

    assert wait_until(everyone_knows_everyone, timeout=30)
    return port, node_id


def move_slot_of(cluster: LocalCluster, full: str, port: int, new_id: str) -> None:
    """Migrate the slot of ``full`` (and the key) to the node on ``port``, and wait until every
    node agrees."""
    slot = cluster.command(port, "CLUSTER", "KEYSLOT", full).strip()
    source = cluster.primary_of(full)
    source_id = cluster.command(source, "CLUSTER", "MYID").strip()
    cluster.command(port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    cluster.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", new_id)
    assert cluster.command(source, "MIGRATE", "127.0.0.1", str(port), "", "0", "5000", "KEYS", full).strip() in ("OK", "NOKEY")
    for node in (port, source, *(p for p in cluster.ports if p != source)):
        assert cluster.command(node, "CLUSTER", "SETSLOT", slot, "NODE", new_id).strip() == "OK"
    cluster.wait_ok()


def test_a_slot_migrating_to_a_new_node_is_served_as_misses_not_raised(
    private_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    """Scaling out: a new primary joins and slots migrate to it. A key of a migrating slot
    that has already moved answers ASK with the new node's address; redis-py's cluster client,
    not knowing that node (it holds no slot yet, so no slot map names it), raised
    AttributeError ('NoneType' object has no attribute 'redis_connection'), which reached the
    caller of get and set."""
    cache = make_cache(private_cluster.url, timeout=0.5, retry_after=0.01)
    cache.set("warm", 1)  # the client has its slot map: three primaries
    assert cache.get("warm") == 1
    port, new_id = add_empty_primary(private_cluster)
    full = cache.key("moving")
    slot = private_cluster.command(port, "CLUSTER", "KEYSLOT", full).strip()
    source = private_cluster.primary_of(full)
    source_id = private_cluster.command(source, "CLUSTER", "MYID").strip()
    assert private_cluster.command(port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id).strip() == "OK"
    assert private_cluster.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", new_id).strip() == "OK"
    # "moving" is not on the source: as for a key already migrated, the source answers ASK.
    assert cache.get("moving") is None
    cache.set("moving", "x")
    assert cache.get_or_set("moving", lambda: "computed") == "computed"
    assert cache.delete("moving") is False
    cache.set_many({"moving": 1, "warm": 2}, tags=["t"])  # pipelines, split by slot
    assert "moving" not in cache.get_many(["moving", "warm"], tags=["t"])
    assert cache.delete_many(["moving", "warm"]) in (0, 1)
    assert cache.stats()["errors"] >= 1


def test_invalidate_by_pattern_scans_a_primary_added_since_the_client_last_looked(
    private_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    """The client learns the slot map once and refreshes it only on a redirection or an error.
    After a new primary took slots (scale-out), ``invalidate`` scanned only the primaries the
    client knew, missed the keys now on the new one, said it was done, and the next read,
    following MOVED, served the value it should have removed."""
    cache = make_cache(private_cluster.url)
    cache.set("k1", "old")
    assert cache.get("k1") == "old"  # the client has its slot map: three primaries
    port, new_id = add_empty_primary(private_cluster)
    full = cache.key("k1")
    move_slot_of(private_cluster, full, port, new_id)
    assert private_cluster.keys_on(port, full) == [full]

    assert cache.invalidate("k*") == 1
    assert cache.get("k1") is None
    assert private_cluster.keys_on(port, full) == []
    assert cache.stats()["errors"] == 0


def test_ping_and_status_ask_a_primary_added_since_the_client_last_looked(
    private_cluster: LocalCluster, make_cache: Callable[..., CacheManager]
) -> None:
    """``ping()`` and ``czo-kit status`` asked the primaries of the slot map the client held,
    refreshed only on a redirection or an error: a primary added since, then lost, went unseen
    and the cache was reported healthy while that primary's slots were misses."""
    cache = make_cache(private_cluster.url, timeout=0.3, retry_after=0.01)
    cache.set("k1", 1)
    assert cache.ping()
    port, new_id = add_empty_primary(private_cluster)
    move_slot_of(private_cluster, cache.key("k1"), port, new_id)
    private_cluster.kill(port)
    assert not cache.ping()
    driver = cache.driver
    assert isinstance(driver, RedisClusterDriver)
    ok, detail = driver.health()
    assert not ok and f"127.0.0.1:{port}" in detail and "of 4" in detail
