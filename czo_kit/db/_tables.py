"""Making the kit's own tables (outbox, apps, webhooks, roles) exist: ``czo-kit db init`` makes
them all; a process that finds some missing makes them on first use, outside any transaction,
one process at a time. DDL never runs inside a caller's transaction: its rollback would take
the tables away again while the process went on believing they were there."""

from __future__ import annotations

from collections.abc import Sequence

import peewee

from czo_kit.errors import ConfigurationError

__all__ = ["create_missing_tables", "ensure_tables"]

# Every czo-kit process creating tables on one PostgreSQL database queues on this lock
# (any fixed number; these are the bytes of "czok").
_PG_DDL_LOCK = 0x637A6F6B


def ensure_tables(db: peewee.Database, models: Sequence[type[peewee.Model]], *, required: bool = True) -> bool:
    """True once every table of ``models`` exists, making the missing ones if no transaction
    is open. Inside a caller's transaction nothing is made: a missing table is a
    ``ConfigurationError`` saying to run ``czo-kit db init``, or, with ``required=False``,
    the answer ``False`` (a caller that can do without the tables, such as the webhook tap:
    no app can have subscribed where the app tables do not exist). Callers remember a True
    answer, so the check costs one query per process."""
    existing = set(db.get_tables())
    missing = sorted(m._meta.table_name for m in models if m._meta.table_name not in existing)
    if missing:
        if db.in_transaction():
            if not required:
                return False
            raise ConfigurationError(
                f"the kit's tables {', '.join(missing)} do not exist, and they are "
                "not created inside a transaction (a rollback would undo them); run `czo-kit db init` "
                "(or kit.create_tables()) once, before the first transaction that needs them"
            )
        create_missing_tables(db, models)
    return True


def create_missing_tables(db: peewee.Database, models: Sequence[type[peewee.Model]]) -> list[str]:
    """Create what is missing of ``models``' tables, in a transaction of its own, serialised
    with every other process doing the same; returns the names of the tables made."""
    if db.in_transaction():
        raise ConfigurationError(
            "tables are not created inside a transaction (a rollback would undo them); "
            "call this outside of db.atomic()"
        )
    # SQLite's transactions take the write lock at BEGIN (transaction_mode=immediate), so one
    # process at a time gets past it; PostgreSQL's IF NOT EXISTS is not race-free (two
    # creators collide on pg_type), so they queue on an advisory lock held until commit.
    with db.atomic():
        if isinstance(db, peewee.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_PG_DDL_LOCK,))
        existing = set(db.get_tables())
        missing = [m for m in models if m._meta.table_name not in existing]
        if missing:
            with db.bind_ctx(missing):
                db.create_tables(missing, safe=True)
    return [m._meta.table_name for m in missing]
