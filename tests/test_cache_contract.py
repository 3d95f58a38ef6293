"""The cache driver contract on the built-in drivers: memory and a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from czo_kit.cache.driver import CacheDriver
from czo_kit.default_plugins.memory_cache import MemoryDriver
from czo_kit.default_plugins.redis_cache import create_redis_driver
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
