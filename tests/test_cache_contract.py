"""The cache driver contract on the built-in drivers (memory, a real Redis) and on a
third-party driver installed as a plugin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from importlib.metadata import entry_points

import pytest

from czo_kit.cache import cache_drivers, create_cache
from czo_kit.cache.driver import CacheDriver
from czo_kit.default_plugins.memory_cache import MemoryDriver
from czo_kit.default_plugins.redis_cache import create_redis_driver
from czo_kit.default_plugins.redis_cluster_cache import create_redis_cluster_driver
from czo_kit.settings import Settings
from czo_kit.testing import CacheDriverContract


class TestMemoryDriver(CacheDriverContract):
    @pytest.fixture
    def driver(self) -> Iterator[CacheDriver]:
        driver = MemoryDriver(max_entries=10_000)
        yield driver
        driver.close()


@pytest.mark.redis
class TestRedisDriver(CacheDriverContract):
    @pytest.fixture
    def driver(self, redis_url: str) -> Iterator[CacheDriver]:
        driver = create_redis_driver(redis_url, settings=Settings(cache_url=redis_url))
        yield driver
        driver.close()


class TestEntryPointPluginDriver(CacheDriverContract):
    """A third-party driver (tests/plugins/czo-test-cache, pip-installed) found through its
    ``czo_kit`` entry point by ``create_cache``, exactly as a user's plugin would be."""

    @pytest.fixture
    def driver(self) -> Iterator[CacheDriver]:
        manager = create_cache("dictcache://", settings=Settings(cache_url="dictcache://"))
        assert type(manager.driver).__module__ == "czo_test_cache.plugin"
        yield manager.driver
        manager.close()

    def test_the_plugin_is_installed_as_an_entry_point(self) -> None:
        found = {ep.name: ep.value for ep in entry_points(group="czo_kit")}
        assert found.get("czo_test_cache") == "czo_test_cache.plugin", (
            "install the test plugin: pip install -e tests/plugins/czo-test-cache"
        )
        assert "dictcache" in cache_drivers()


@pytest.mark.redis
class TestRedisClusterDriver(CacheDriverContract):
    """The same contract on a local three-primary Redis Cluster (the ``redis_cluster`` fixture):
    every test's keys and tag versions spread over the three nodes."""

    @pytest.fixture
    def driver(self, redis_cluster: Any) -> Iterator[CacheDriver]:
        url = redis_cluster.url
        driver = create_redis_cluster_driver(url, settings=Settings(cache_url=url, cache_near_entries=0))
        yield driver
        driver.close()
