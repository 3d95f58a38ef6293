"""Optimistic locking under contention: 8 threads updating one row with expected_version lose
no update and report every conflict, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable

import peewee

from czo_kit.db import create_repository
from czo_kit.default_plugins.postgres import create_postgresql_database
from czo_kit.default_plugins.sqlite import create_sqlite_database
from czo_kit.errors import OptimisticLockError
from czo_kit.settings import Settings
from czo_kit.testing import CONTRACT_MODELS, ContractItem

THREADS = 8
INCREMENTS = 25


def test_eight_writers_lose_no_update_and_report_every_conflict(
    database_url: str, settings_for: Callable[..., Settings]
) -> None:
    factory = create_sqlite_database if database_url.startswith("sqlite") else create_postgresql_database
    db: peewee.Database = factory(database_url, settings=settings_for(database_url))
    db.bind(CONTRACT_MODELS)
    db.drop_tables(CONTRACT_MODELS, safe=True)
    db.create_tables(CONTRACT_MODELS)
    try:
        repo = create_repository(ContractItem, db=db)
        row = repo.create({"shop_id": 1, "name": "counter", "slug": "counter", "price": 0})
        all_have_read = threading.Barrier(THREADS)
        conflicts = [0] * THREADS
        successes = [0] * THREADS
        errors: list[BaseException] = []

        def writer(index: int) -> None:
            try:
                first = True
                while successes[index] < INCREMENTS:
                    current = repo.get_by_id(row.id)
                    if first:
                        # Every writer holds version 1 before anyone writes: the race is real
                        # on any machine, not only when the scheduler happens to interleave.
                        all_have_read.wait(timeout=30)
                        first = False
                    try:
                        repo.update(
                            row.id, {"price": current.price + 1}, expected_version=current.version
                        )
                    except OptimisticLockError as exc:
                        assert exc.expected == current.version and exc.actual is not None
                        assert exc.actual > current.version
                        conflicts[index] += 1
                    else:
                        successes[index] += 1
            except BaseException as exc:  # surfaced below, with the thread's traceback
                errors.append(exc)
            finally:
                db.close()

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a writer hung"
        assert not errors, errors
        final = repo.get_by_id(row.id)
        # Every successful write is in the row; no increment was lost or applied twice.
        assert final.price == THREADS * INCREMENTS
        assert final.version == 1 + THREADS * INCREMENTS
        # The race was real: of the 8 writes of version 1 one won, and each of the 7 stale
        # ones was reported rather than silently overwriting.
        assert sum(conflicts) >= THREADS - 1
    finally:
        db.drop_tables(CONTRACT_MODELS, safe=True)
        db.close()
        getattr(db, "close_all", lambda: None)()
