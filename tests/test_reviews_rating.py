"""The outside reviews module (tests/plugins/czo-test-reviews, found by its entry point only)
caches its shop rating with stale-while-revalidate and refresh-ahead: on SQLite with the
memory cache and on PostgreSQL with Redis, a new review shows up through a background refresh,
and no read after the first waits for the database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.redis])])
def kit(request: pytest.FixtureRequest, settings_for: Callable[..., Settings]) -> Iterator[Kit]:
    if request.param == "sqlite":
        settings = settings_for(request.getfixturevalue("sqlite_url"), queue_url="", plugins=("czo_test_reviews",))
    else:
        settings = settings_for(
            request.getfixturevalue("pg_url"), queue_url="", plugins=("czo_test_reviews",),
            cache_url=request.getfixturevalue("redis_url"), cache_prefix=f"rv{uuid.uuid4().hex[:10]}:",
        )
    with Kit(settings) as kit:
        # PostgreSQL tables outlive a test (one schema per session): count only this test's
        # reviews, not those other tests (the payload field tests) left in shop 1.
        review = reviews_module().Review
        with kit.db.bind_ctx([review]):
            kit.db.drop_tables([review], safe=True)
        kit.create_tables()
        try:
            yield kit
        finally:
            kit.cache.clear()


def reviews_module() -> Any:
    (entry,) = [ep for ep in metadata.entry_points(group="czo_kit") if ep.name == "czo_test_reviews"]
    return entry.load()


def test_the_shop_rating_is_refreshed_in_the_background_without_a_miss(kit: Kit) -> None:
    module = reviews_module()
    assert kit.plugins.get_plugin("czo_test_reviews") is module
    repo = kit.services.get_abstract(module.ReviewRepository)
    for rating in (5, 3):
        repo.create({"shop_id": 1, "rating": rating, "body": "ok", "author_email": "a@example.com"})
    assert module.shop_rating(kit, 1, ttl=0.3) == {"reviews": 2, "average": 4.0}
    repo.create({"shop_id": 1, "rating": 1, "body": "meh", "author_email": "b@example.com"})
    misses = kit.cache.stats()["misses"]
    # Each read answers from the cache; a refresh started ahead of expiry (or, on a slow
    # machine, while stale) brings the new review in.
    assert wait_until(lambda: module.shop_rating(kit, 1, ttl=0.3) == {"reviews": 3, "average": 3.0})
    assert kit.cache.stats()["misses"] == misses
    assert kit.cache.stats()["refreshes"] >= 1
    assert module.shop_rating(kit, 2) == {"reviews": 0, "average": None}
