"""Making the kit's own tables (outbox, apps, webhooks, roles) exist: ``czo-kit db init`` makes
them all; a process that finds some missing makes them on first use, outside any transaction,
one process at a time. DDL never runs inside a caller's transaction: its rollback would take
the tables away again while the process went on believing they were there."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import peewee

from czo_kit.errors import ConfigurationError

__all__ = ["create_missing_tables", "ensure_tables", "upgrade_tables"]

# Every czo-kit process creating tables on one PostgreSQL database queues on this lock
# (any fixed number; these are the bytes of "czok").
_PG_DDL_LOCK = 0x637A6F6B


def _missing_columns(
    db: peewee.Database, models: Sequence[type[peewee.Model]], tables: set[str]
) -> list[tuple[type[peewee.Model], peewee.Field]]:
    """Fields of ``models`` whose table exists without their column (an older kit made it)."""
    missing: list[tuple[type[peewee.Model], peewee.Field]] = []
    for model in models:
        if model._meta.table_name in tables:
            have = {column.name for column in db.get_columns(model._meta.table_name)}
            missing.extend((model, f) for f in model._meta.sorted_fields if f.column_name not in have)
    return missing


def _missing_indexes(
    db: peewee.Database, models: Sequence[type[peewee.Model]], tables: set[str]
) -> list[tuple[type[peewee.Model], peewee.ModelIndex]]:
    """Indexes of ``models`` whose table exists without them (an older kit made it)."""
    missing: list[tuple[type[peewee.Model], peewee.ModelIndex]] = []
    for model in models:
        if model._meta.table_name in tables:
            have = {index.name for index in db.get_indexes(model._meta.table_name)}
            missing.extend((model, i) for i in model._meta.fields_to_index() if getattr(i, "_name") not in have)
    return missing


def ensure_tables(db: peewee.Database, models: Sequence[type[peewee.Model]], *, required: bool = True) -> bool:
    """True once every table of ``models`` exists with every column, making what is missing if
    no transaction is open (the kit's own tables only grow by nullable columns and indexes,
    added here, so a newer kit upgrades an older one's tables on its own; a missing index is
    only made outside a transaction, and its absence never fails a caller). Inside a caller's
    transaction nothing is made: what is missing is a ``ConfigurationError`` saying to run
    ``czo-kit db migrate``; only a missing table with ``required=False`` answers ``False`` instead (a
    caller that can do without it, such as the webhook tap: no app can have subscribed where
    the app tables do not exist). Callers remember a True answer, so the check runs once per
    process."""
    tables = set(db.get_tables())
    missing = sorted(m._meta.table_name for m in models if m._meta.table_name not in tables)
    columns = _missing_columns(db, models, tables)
    if not missing and not columns and _missing_indexes(db, models, tables) and not db.in_transaction():
        upgrade_tables(db, models)  # an index a newer kit added: made here, never in a transaction
    elif missing or columns:
        if db.in_transaction():
            if not required and not columns:
                return False
            what = [f"tables {', '.join(missing)}"] if missing else []
            what += [f"columns {', '.join(f'{m._meta.table_name}.{f.column_name}' for m, f in columns)}"] if columns else []
            raise ConfigurationError(
                f"the kit's {' and '.join(what)} do not exist, and they are not created inside a "
                "transaction (a rollback would undo them); run `czo-kit db init` on a new database "
                "or `czo-kit db migrate` after an upgrade (kit.create_tables() in Python) once, "
                "before the first transaction that needs them"
            )
        upgrade_tables(db, models)
    return True


def upgrade_tables(db: peewee.Database, models: Sequence[type[peewee.Model]]) -> list[str]:
    """Create the missing tables of ``models`` and add their missing columns and indexes, in a
    transaction of its own serialised with every other process doing the same; returns what it
    did. For tables that keep no migrations (the kit's own): a module's tables change through
    its migrations instead. An index added to a large table is built there and then, locking
    the table's writes meanwhile: run ``czo-kit db migrate`` as a deploy step."""
    from playhouse.migrate import SchemaMigrator

    with _ddl(db):
        actions = [f"created table {name}" for name in _create_missing(db, models)]
        tables = set(db.get_tables())
        columns = _missing_columns(db, models, tables)
        if columns:
            migrator = SchemaMigrator.from_database(db)
            for model, field in columns:
                if not field.null and field.default is None:
                    raise ConfigurationError(  # a kit bug, not a user's: say so plainly
                        f"cannot add column {model._meta.table_name}.{field.column_name} to an existing "
                        "table: it is NOT NULL without a default"
                    )
                migrator.add_column(model._meta.table_name, field.column_name, field).run()
                actions.append(f"added column {model._meta.table_name}.{field.column_name}")
        # After the columns: a new index may cover a new column.
        for model, index in _missing_indexes(db, models, tables):
            with db.bind_ctx([model]):
                db.execute(getattr(model, "_schema")._create_index(index, safe=True))
            actions.append(f"created index {getattr(index, '_name')}")
    return actions


def create_missing_tables(db: peewee.Database, models: Sequence[type[peewee.Model]]) -> list[str]:
    """Create what is missing of ``models``' tables, in a transaction of its own, serialised
    with every other process doing the same; returns the names of the tables made."""
    with _ddl(db):
        return _create_missing(db, models)


def _create_missing(db: peewee.Database, models: Sequence[type[peewee.Model]]) -> list[str]:
    """Inside ``_ddl``: the tables of ``models`` not there yet, made from the models."""
    existing = set(db.get_tables())
    missing = [m for m in models if m._meta.table_name not in existing]
    if missing:
        with db.bind_ctx(missing):
            db.create_tables(missing, safe=True)
    return [m._meta.table_name for m in missing]


@contextmanager
def _ddl(db: peewee.Database) -> Iterator[None]:
    """A transaction of its own for DDL, one process at a time, never inside a caller's."""
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
        yield
