"""Smaller guarantees of czo_kit.db: lazy imports, transactions on any Peewee database, UTC."""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import peewee
import pytest

from czo_kit.db import Model, create_repository, on_commit, transaction
from czo_kit.db.model import UTCDateTimeField
from czo_kit.default_plugins.sqlite import create_sqlite_database, parse_sqlite_url
from czo_kit.errors import ConfigurationError
from czo_kit.settings import Settings


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("from czo_kit.db import create_queries", ["czo_kit.db.mutations", "czo_kit.db.repository"]),
        ("from czo_kit.db import create_mutations", ["czo_kit.db.queries", "czo_kit.db.pagination"]),
        ("import czo_kit", ["czo_kit.db", "czo_kit.kit", "peewee"]),
    ],
)
def test_importing_one_builder_does_not_import_the_others(statement: str, absent: list[str]) -> None:
    code = f"{statement}\nimport sys\nprint(','.join(m for m in {absent!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_on_commit_works_on_a_plain_peewee_database() -> None:
    db = peewee.SqliteDatabase(":memory:")
    ran: list[str] = []
    on_commit(db, lambda: ran.append("outside"))
    assert ran == ["outside"]
    with db.atomic():
        on_commit(db, lambda: ran.append("inside"))
        assert ran == ["outside"]
    assert ran == ["outside", "inside"]


def test_transaction_works_as_a_decorator(sqlite_url: str, settings_for: Callable[..., Settings]) -> None:
    db = create_sqlite_database(sqlite_url, settings=settings_for(sqlite_url))
    ran: list[int] = []

    @transaction(db)
    def work(n: int) -> int:
        assert db.in_transaction()
        on_commit(db, lambda: ran.append(n))
        assert n not in ran  # held until the decorated call commits
        return n * 2

    assert work(3) == 6 and work(4) == 8
    assert ran == [3, 4]
    db.close()


def test_a_failing_on_commit_callback_does_not_stop_the_others(
    sqlite_url: str, settings_for: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    db = create_sqlite_database(sqlite_url, settings=settings_for(sqlite_url))
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    with db.atomic():
        on_commit(db, broken)
        on_commit(db, lambda: ran.append("second"))
    assert ran == ["second"]
    assert "on_commit callback" in caplog.text and "boom" in caplog.text
    db.close()


def test_on_commit_drops_what_an_explicit_rollback_undid(sqlite_url: str, settings_for: Callable[..., Settings]) -> None:
    """``rollback()`` on the handle of a transaction or savepoint undoes the work registered
    since it began: so are its callbacks; those registered after it are kept."""
    db = create_sqlite_database(sqlite_url, settings=settings_for(sqlite_url))
    ran: list[str] = []
    with db.atomic() as txn:
        on_commit(db, lambda: ran.append("undone by the transaction's rollback"))
        txn.rollback()
        on_commit(db, lambda: ran.append("after the transaction's rollback"))
        with db.atomic() as savepoint:
            on_commit(db, lambda: ran.append("undone by an atomic savepoint's rollback"))
            savepoint.rollback()
            on_commit(db, lambda: ran.append("after an atomic savepoint's rollback"))
        on_commit(db, lambda: ran.append("kept before a bare savepoint"))
        with db.savepoint() as bare:
            on_commit(db, lambda: ran.append("undone by a bare savepoint's rollback"))
            with db.atomic():
                on_commit(db, lambda: ran.append("undone with its enclosing savepoint"))
            bare.rollback()
            on_commit(db, lambda: ran.append("after a bare savepoint's rollback"))
    assert ran == [
        "after the transaction's rollback",
        "after an atomic savepoint's rollback",
        "kept before a bare savepoint",
        "after a bare savepoint's rollback",
    ]
    ran.clear()
    with db.transaction():  # no atomic() frame: on_commit falls back to Peewee's list
        on_commit(db, lambda: ran.append("kept"))
        with db.savepoint() as bare:
            on_commit(db, lambda: ran.append("undone"))
            bare.rollback()
    assert ran == ["kept"]
    db.close()


class Stamp(Model):
    at = UTCDateTimeField()

    class Meta:
        table_name = "czo_test_stamp"


def test_datetimes_are_stored_as_utc_and_come_back_aware(database_url: str, settings_for: Callable[..., Settings]) -> None:
    factory = create_sqlite_database
    if not database_url.startswith("sqlite"):
        from czo_kit.default_plugins.postgres import create_postgresql_database as factory  # type: ignore[assignment]
    db = factory(database_url, settings=settings_for(database_url))
    db.bind([Stamp])
    db.create_tables([Stamp])
    try:
        repo = create_repository(Stamp, db=db)
        paris = dt.timezone(dt.timedelta(hours=1))
        local = dt.datetime(2026, 5, 1, 13, 30, tzinfo=paris)
        row = repo.get_by_id(repo.create({"at": local}).id)
        assert row.at == local and row.at.tzinfo == dt.timezone.utc and row.at.hour == 12
        naive = repo.get_by_id(repo.create({"at": dt.datetime(2026, 5, 1, 9, 0)}).id)
        assert naive.at == dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.timezone.utc)
        assert repo.count({"at__gte": dt.datetime(2026, 5, 1, 11, 0, tzinfo=dt.timezone.utc)}) == 1
    finally:
        db.drop_tables([Stamp])
        db.close()
        getattr(db, "close_all", lambda: None)()


@pytest.mark.parametrize(
    ("url", "path", "options"),
    [
        ("sqlite:///czo.sqlite3", "czo.sqlite3", {}),
        ("sqlite:////var/data/czo.db", "/var/data/czo.db", {}),
        ("sqlite:///:memory:", ":memory:", {}),
        ("sqlite:///a.db?timeout=2.5&journal_mode=delete", "a.db", {"timeout": 2.5, "journal_mode": "delete"}),
        ("sqlite:///a.db?transaction_mode=deferred", "a.db", {"transaction_mode": "deferred"}),
    ],
)
def test_sqlite_urls(url: str, path: str, options: dict[str, object]) -> None:
    assert parse_sqlite_url(url) == (path, options)


@pytest.mark.parametrize(
    "url",
    ["sqlite://host/czo.db", "sqlite:///", "sqlite:///a.db?pragma=evil", "sqlite:///a.db?timeout=soon",
     "sqlite:///a.db?transaction_mode=;DROP TABLE x"],
)
def test_bad_sqlite_urls_name_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_sqlite_url(url)
    assert info.value.variable == "CZO_DATABASE_URL"


def test_sqlite_backend_turns_on_wal_and_foreign_keys(sqlite_url: str, settings_for: Callable[..., Settings]) -> None:
    db = create_sqlite_database(sqlite_url, settings=settings_for(sqlite_url))
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    db.close()


def _write_without_waiting(path: str, n: int) -> str | None:
    """Commit one row from a fresh connection that never waits for a lock; the error if any."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("INSERT INTO t (n) VALUES (?)", (n,))
        return None
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        conn.close()


def _read_then_write_while_another_connection_writes(url: str, settings: Settings) -> tuple[str | None, list[int]]:
    """One connection reads then writes in a transaction; between the two, another connection
    tries to commit a row of its own, without waiting. Returns what that write met (``None``
    if it committed) and the rows once the transaction is done.

    The other writer does not wait, so nothing here depends on how fast either side runs: it
    finds the write lock taken or free at that instant, which the transaction mode decides.
    """
    db = create_sqlite_database(url, settings=settings)
    db.execute_sql("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    try:
        with db.atomic():
            db.execute_sql("SELECT count(*) FROM t").fetchone()
            other = _write_without_waiting(db.database, 2)
            db.execute_sql("INSERT INTO t (n) VALUES (1)")
        return other, sorted(row[0] for row in db.execute_sql("SELECT n FROM t").fetchall())
    finally:
        db.close()


def test_a_read_then_write_transaction_holds_the_write_lock_and_never_fails_midway(
    tmp_path: Path, settings_for: Callable[..., Settings]
) -> None:
    url = f"sqlite:///{tmp_path / 'locks.sqlite3'}"
    other, rows = _read_then_write_while_another_connection_writes(url, settings_for(url))
    # Immediate: the lock was taken at BEGIN, so the other writer (which would normally wait
    # out its busy timeout) could not cut in between our read and our write.
    assert other is not None and "locked" in other
    assert rows == [1]
    assert _write_without_waiting(str(tmp_path / "locks.sqlite3"), 2) is None  # free after commit
    # What the default avoids: in a deferred transaction the other write commits at once, and
    # our write then cannot upgrade past it.
    deferred = f"sqlite:///{tmp_path / 'deferred.sqlite3'}?transaction_mode=deferred"
    with pytest.raises(peewee.OperationalError, match="locked"):
        _read_then_write_while_another_connection_writes(deferred, settings_for(deferred))
    assert _write_without_waiting(str(tmp_path / "deferred.sqlite3"), 3) is None


def test_a_password_in_a_bad_sqlite_url_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_sqlite_url("sqlite://admin:hunter2@host/czo.db")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_composition_keeps_options_set_on_either_side(sqlite_url: str, settings_for: Callable[..., Settings]) -> None:
    from czo_kit.cache import CacheManager
    from czo_kit.db import CachedRepository, create_cached_queries, create_mutations
    from czo_kit.default_plugins.memory_cache import MemoryDriver
    from czo_kit.testing import CONTRACT_MODELS, ContractItem

    db = create_sqlite_database(sqlite_url, settings=settings_for(sqlite_url))
    db.bind(CONTRACT_MODELS)
    db.create_tables(CONTRACT_MODELS)
    cache = CacheManager(MemoryDriver())
    try:
        row = create_mutations(ContractItem, db=db).create({"shop_id": 1, "name": "a", "slug": "a", "price": 1})
        for repo in (
            create_cached_queries(ContractItem, db=db, cache=cache) | create_mutations(ContractItem, db=db),
            create_mutations(ContractItem, db=db) | create_cached_queries(ContractItem, db=db, cache=cache),
        ):
            assert isinstance(repo, CachedRepository)
            found = repo.find_by_id(row.id)
            assert found is not None
            price = found.price + 1
            repo.update(row.id, {"price": price})  # must invalidate the cached row
            again = repo.find_by_id(row.id)
            assert again is not None and again.price == price
    finally:
        cache.close()
        db.close()
