"""Stale-while-revalidate and refresh-ahead on cached repositories, on SQLite and PostgreSQL,
each with the memory and the Redis cache: answers past their TTL are served while one
background refresh re-reads the database on a connection of its own, writes still invalidate
at once, reads inside a transaction never start a refresh, and bad options are refused."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest

from cached_support import CACHES, DATABASES, database_url_of, open_cache, open_database
from czo_kit.cache import CacheManager, in_background_refresh
from czo_kit.db import Model, create_mutations, create_repository
from czo_kit.db.cached import create_cached_queries
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until

SECRET = b"s" * 32


class Gizmo(Model):
    name = peewee.CharField(max_length=50)
    stock = peewee.IntegerField(default=0)

    class Meta:
        table_name = "czo_swr_gizmo"


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
    yield from open_database(database_url_of(request), settings_for, [Gizmo])


@pytest.fixture(params=CACHES)
def cache(request: pytest.FixtureRequest) -> Iterator[CacheManager]:
    yield from open_cache(request, "sw")


def behind_its_back(db: peewee.Database, id: int, **changes: Any) -> None:
    """A write that bypasses the repository (raw Peewee, another program): nothing is invalidated."""
    with db.atomic():
        Gizmo.update(**changes).where(Gizmo.id == id).execute()


def reads(repo: Any, id: int) -> tuple[Any, ...]:
    """The answers of every cached read of the row ``id``."""
    row = repo.find_by_id(id)
    (by_ids,) = repo.find_by_ids([id])
    page = repo.find_many({"id": id})
    one = repo.find_one({"id": id})
    return row.name, by_ids.name, [r.name for r in page.items], one.name, repo.count({"name": row.name})


# -- stale-while-revalidate ---------------------------------------------------------------------


@pytest.mark.parametrize("build", ["create_repository", "composed"])
def test_stale_answers_are_served_while_one_background_refresh_rereads_them(
    db: peewee.Database, cache: CacheManager, build: str
) -> None:
    if build == "create_repository":
        repo: Any = create_repository(Gizmo, db=db, cache=cache, ttl=0.2, stale_while_revalidate=30, secret_key=SECRET)
    else:
        repo = create_cached_queries(
            Gizmo, db=db, cache=cache, ttl=0.2, stale_while_revalidate=30, secret_key=SECRET
        ) | create_mutations(Gizmo, db=db, cache=cache)
    row = repo.create({"name": "old"})
    assert reads(repo, row.id) == ("old", "old", ["old"], "old", 1)
    behind_its_back(db, row.id, name="new")
    entry = cache.namespace("db").namespace("czo_swr_gizmo")
    assert wait_until(lambda: not entry.has(f"r:{row.id}"))  # past its TTL, still stored
    stale_before = cache.stats()["stale_served"]
    # Every read answers at once from the stale copy and starts a refresh; one of them at
    # least is still the old answer (the refreshes have not run yet), then they all turn.
    first = reads(repo, row.id)
    assert first[0] == "old" and cache.stats()["stale_served"] > stale_before
    misses = cache.stats()["misses"]
    assert wait_until(lambda: reads(repo, row.id)[:4] == ("new", "new", ["new"], "new"))
    # Turned by refreshes (the row, the page, find_one), not by misses: nothing was
    # invalidated, and the stale window is 30 s. (The count of "new" is a key of its own.)
    assert cache.stats()["refreshes"] >= 3
    assert cache.stats()["misses"] - misses == 1  # the count of "new", read for the first time
    assert repo.count({"name": "new"}) == 1


def test_a_write_through_the_repository_is_seen_at_once_even_in_the_stale_window(
    db: peewee.Database, cache: CacheManager
) -> None:
    repo: Any = create_repository(Gizmo, db=db, cache=cache, ttl=0.2, stale_while_revalidate=30, secret_key=SECRET)
    stale = repo.create({"name": "a"})
    fresh_repo: Any = create_repository(Gizmo, db=db, cache=cache, ttl=60, stale_while_revalidate=30, secret_key=SECRET)
    fresh = fresh_repo.create({"name": "b"})
    assert reads(repo, stale.id)[0] == "a" and reads(fresh_repo, fresh.id)[0] == "b"
    entry = cache.namespace("db").namespace("czo_swr_gizmo")
    assert wait_until(lambda: not entry.has(f"r:{stale.id}"))
    repo.update(stale.id, {"name": "a2"})  # invalidation drops the entries, never marks them stale
    fresh_repo.update(fresh.id, {"name": "b2"})
    assert reads(repo, stale.id) == ("a2", "a2", ["a2"], "a2", 1)
    assert reads(fresh_repo, fresh.id) == ("b2", "b2", ["b2"], "b2", 1)
    repo.delete(stale.id)
    assert repo.find_by_id(stale.id) is None and repo.find_by_ids([stale.id]) == []


def test_a_failing_refresh_keeps_the_stale_answer_and_is_logged(
    db: peewee.Database, cache: CacheManager, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo: Any = create_repository(Gizmo, db=db, cache=cache, ttl=0.2, stale_while_revalidate=30, secret_key=SECRET)
    row = repo.create({"name": "kept"})
    assert repo.find_by_id(row.id).name == "kept"
    entry = cache.namespace("db").namespace("czo_swr_gizmo")
    assert wait_until(lambda: not entry.has(f"r:{row.id}"))
    from czo_kit.db.queries import Queries

    real = Queries.find_by_id

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        if in_background_refresh():
            raise peewee.OperationalError("database went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Queries, "find_by_id", broken)
    with caplog.at_level("ERROR", logger="czo_kit.cache"):
        assert repo.find_by_id(row.id).name == "kept"
        assert wait_until(lambda: cache.stats()["refresh_errors"] >= 1)
    assert any("background refresh" in r.getMessage() and r.exc_info for r in caplog.records)
    assert repo.find_by_id(row.id).name == "kept"


def test_a_background_refresh_closes_its_connection(db: peewee.Database, cache: CacheManager) -> None:
    repo: Any = create_repository(Gizmo, db=db, cache=cache, ttl=0.2, stale_while_revalidate=30, secret_key=SECRET)
    row = repo.create({"name": "x"})
    repo.find_by_id(row.id)
    closed_by: list[str] = []
    real_close = db._close

    def spy(conn: Any, *args: Any, **kwargs: Any) -> Any:
        closed_by.append(threading.current_thread().name)
        return real_close(conn, *args, **kwargs)

    db._close = spy  # type: ignore[method-assign]
    try:
        behind_its_back(db, row.id, name="y")
        entry = cache.namespace("db").namespace("czo_swr_gizmo")
        assert wait_until(lambda: not entry.has(f"r:{row.id}"))
        assert wait_until(lambda: repo.find_by_id(row.id).name == "y")
        # The refresh thread gave its connection back (closed it, or returned it to the pool).
        assert wait_until(lambda: any(name.startswith("czo-cache-refresh") for name in closed_by))
    finally:
        del db._close


def test_reads_inside_a_transaction_start_no_refresh_and_a_refresh_never_sees_uncommitted_rows(
    db: peewee.Database, cache: CacheManager
) -> None:
    repo: Any = create_repository(Gizmo, db=db, cache=cache, ttl=0.2, stale_while_revalidate=30, secret_key=SECRET)
    row = repo.create({"name": "committed"})
    assert repo.find_by_id(row.id).name == "committed"
    entry = cache.namespace("db").namespace("czo_swr_gizmo")
    assert wait_until(lambda: not entry.has(f"r:{row.id}"))
    before = cache.stats()

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), db.atomic():
        Gizmo.update(name="uncommitted").where(Gizmo.id == row.id).execute()
        # The transaction's own reads go to the database, and leave the cache alone.
        assert repo.find_by_id(row.id).name == "uncommitted"
        assert repo.find_many({"id": row.id}).items[0].name == "uncommitted"
        after = cache.stats()
        assert (after["stale_served"], after["hits"], after["misses"]) == (
            before["stale_served"], before["hits"], before["misses"]
        )
        assert not cache._shared.refreshing
        raise Rollback
    assert repo.find_by_id(row.id).name == "committed"  # the stale copy, refreshing meanwhile
    assert wait_until(lambda: entry.has(f"r:{row.id}"))  # refreshed, from committed data only
    assert repo.find_by_id(row.id).name == "committed"


# -- refresh-ahead ------------------------------------------------------------------------------


def test_refresh_ahead_rereads_a_hot_row_before_it_expires(db: peewee.Database, cache: CacheManager) -> None:
    repo: Any = create_repository(Gizmo, db=db, cache=cache, ttl=6, refresh_ahead=0.2, secret_key=SECRET)
    row = repo.create({"name": "v1"})
    assert reads(repo, row.id)[:4] == ("v1", "v1", ["v1"], "v1")
    behind_its_back(db, row.id, name="v2")
    entry = cache.namespace("db").namespace("czo_swr_gizmo")
    # Past 20% of the TTL a read answers from the cache and starts a refresh; the key never
    # goes stale or missing meanwhile, and the new answer arrives before the old one expires.
    assert wait_until(lambda: reads(repo, row.id)[:4] == ("v2", "v2", ["v2"], "v2"))
    assert entry.has(f"r:{row.id}")
    assert cache.stats()["stale_served"] == 0
    assert cache.stats()["refreshes"] >= 3  # the row, the page and find_one


# -- input checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("stale_while_revalidate", -1, r"stale_while_revalidate must be from 0 to"),
        ("stale_while_revalidate", "30", r"stale_while_revalidate must be a number of seconds"),
        ("stale_while_revalidate", float("inf"), r"stale_while_revalidate must be from 0 to"),
        ("refresh_ahead", 1, r"refresh_ahead must be more than 0 and less than 1"),
        ("refresh_ahead", 0, r"refresh_ahead must be more than 0 and less than 1"),
        ("refresh_ahead", "0.8", r"refresh_ahead must be a fraction of the TTL"),
    ],
)
def test_bad_options_are_refused_naming_them(
    db: peewee.Database, cache: CacheManager, option: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_cached_queries(Gizmo, db=db, cache=cache, **{option: value})
    with pytest.raises(ValueError, match=message):
        create_repository(Gizmo, db=db, cache=cache, **{option: value})


def test_refresh_options_without_a_cache_are_refused(db: peewee.Database) -> None:
    with pytest.raises(ValueError, match=r"stale_while_revalidate=30 needs cache="):
        create_repository(Gizmo, db=db, stale_while_revalidate=30)
    with pytest.raises(ValueError, match=r"refresh_ahead=0.8 needs cache="):
        create_repository(Gizmo, db=db, refresh_ahead=0.8)
