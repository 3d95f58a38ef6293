"""What a Redis Cluster changes for the queue (docs/operations.md, "Redis Cluster"): Huey's
Redis storage keys fall in different hash slots and braces cannot pin them to one, so the
queue needs a standalone Redis; ``redis+cluster://`` as CZO_QUEUE_URL is refused saying so,
while the cache runs on the cluster in the same kit."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from redis.crc import key_slot

from czo_kit import Kit
from czo_kit.default_plugins.huey_queue import create_redis_queue
from czo_kit.errors import ConfigurationError
from czo_kit.settings import Settings
from redis_cluster import LocalCluster

pytestmark = pytest.mark.redis


def test_hueys_queue_keys_fall_in_different_slots_and_braces_cannot_pin_them(redis_url: str) -> None:
    settings = Settings()
    queue = create_redis_queue(redis_url, settings=settings, name=settings.queue_name)
    storage = queue.storage
    keys = [storage.queue_key, storage.schedule_key, storage.result_key, storage.counter_key]
    assert keys == ["huey.redis.czo", "huey.schedule.czo", "huey.results.czo", "huey.counters.czo"]
    # The list of ready tasks, the schedule (delays, retries) and the lock hash are on
    # different slots: on a cluster, a single-node client gets MOVED for some of them.
    assert len({key_slot(key.encode()) for key in keys}) > 1
    # A hash tag in the name would put them in one slot, but the name allows no braces,
    # and Huey strips them from its keys anyway.
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"queue_name": "{czo}"}, Settings)
    assert storage.clean_name("{czo}") == "czo"


def test_a_cluster_queue_url_is_refused_and_the_cache_stays_on_the_cluster(
    redis_cluster: LocalCluster, redis_url: str, tmp_path: Path
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    environ.update(
        CZO_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", CZO_PLUGINS="",
        CZO_CACHE_URL=redis_cluster.url, CZO_CACHE_NEAR_ENTRIES="0",
        CZO_QUEUE_URL=redis_cluster.url,
    )
    with pytest.raises(ConfigurationError, match="standalone Redis") as caught:
        Kit(Settings.from_env(environ))
    assert caught.value.variable == "CZO_QUEUE_URL"
    assert "docs/operations.md" in str(caught.value)

    # The supported layout: the cache on the cluster, the queue on a standalone server.
    environ["CZO_QUEUE_URL"] = redis_url
    with Kit(Settings.from_env(environ)) as kit:
        kit.cache.set("layout", "cluster")
        assert kit.cache.get("layout") == "cluster"
        assert kit.cache.stats()["errors"] == 0
        assert kit.queue is not None
        kit.queue.storage.conn.ping()
