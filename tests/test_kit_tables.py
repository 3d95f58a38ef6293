"""The kit's own tables: ``db init`` makes them all, no DDL ever runs inside a caller's
transaction, and processes starting at once on one database make them exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import peewee
import pytest

from czo_kit import Kit, Settings, hookimpl
from czo_kit.apps.permissions import ShopMember
from czo_kit.db import Model, create_mutations
from czo_kit.errors import ConfigurationError
from czo_kit.kit import KIT_MODELS

KIT_TABLES = {m._meta.table_name for m in KIT_MODELS}


class Booking(Model):
    shop_id = peewee.IntegerField()
    name = peewee.CharField()

    class Meta:
        table_name = "czo_test_booking"


class Bookings:
    __name__ = "czo_test_bookings"

    @hookimpl
    def czo_register_models(self, register: Callable[..., None]) -> None:
        register(Booking)


@pytest.fixture
def kit_for(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., Kit]]:
    kits: list[Kit] = []

    models = [Booking, ShopMember, *KIT_MODELS]

    def make(url: str, **changes: object) -> Kit:
        kit = Kit(settings_for(url, plugins=(), **changes), plugins=[Bookings()])
        kits.append(kit)
        # PostgreSQL tests share a schema: start where no kit table exists yet.
        with kit.db.bind_ctx(models):
            kit.db.drop_tables(models, safe=True)
        return kit

    yield make
    for kit in kits:
        # Close first: a kit without a queue prunes its tables on a thread of its own, and a
        # DROP racing that prune can deadlock. The closed kit's database reconnects for the DROP.
        kit.close()
        try:
            with kit.db.bind_ctx(models):
                kit.db.drop_tables(models, safe=True)
        finally:
            kit.db.close()


def test_db_init_creates_every_kit_table(database_url: str, kit_for: Callable[..., Kit]) -> None:
    kit = kit_for(database_url)
    report = kit.create_tables()
    assert KIT_TABLES <= set(kit.db.get_tables())
    assert report["czo-kit"] == [f"created table {m._meta.table_name}" for m in KIT_MODELS]
    assert kit.create_tables()["czo-kit"] == []


@pytest.mark.parametrize("queue_url", ["", "sqlite:///czo-queue.sqlite3"], ids=["no-queue", "queue"])
def test_a_rolled_back_first_shop_write_leaves_later_writes_working(
    database_url: str, queue_url: str, kit_for: Callable[..., Kit]
) -> None:
    """The issue's repro: `db init`, a first shop write rolled back, then a shop write; the
    event goes out from inside the write's transaction (async events), where the webhook tap
    looks for the shop's subscriptions."""
    kit = kit_for(database_url, queue_url=queue_url)
    kit.create_tables()
    bookings = create_mutations(Booking, db=kit.db, hooks=kit.hooks, events=kit.events, async_events=True)
    with pytest.raises(RuntimeError, match="changed my mind"):
        with kit.db.atomic():
            bookings.create({"shop_id": 1, "name": "first"})
            raise RuntimeError("changed my mind")
    created = bookings.create({"shop_id": 1, "name": "second"})
    assert Booking.select().where(Booking.id == created.id).count() == 1
    assert KIT_TABLES <= set(kit.db.get_tables())


def test_no_ddl_inside_a_callers_transaction(database_url: str, kit_for: Callable[..., Kit]) -> None:
    """Without `db init`, a transaction that needs the outbox gets a clear error and makes
    nothing; a shop event without async work needs no app table, so it makes none either."""
    kit = kit_for(database_url)
    with kit.db.bind_ctx([Booking]):
        kit.db.create_tables([Booking])
    bookings = create_mutations(Booking, db=kit.db, hooks=kit.hooks, events=kit.events)
    heard: list[object] = []
    kit.events.on("czo_test_booking.created", lambda payload, ctx: heard.append(payload))

    with pytest.raises(ConfigurationError, match=r"czo-kit db init") as caught:
        with kit.db.atomic():
            kit.events.emit_async("czo_test.ping", {"shop_id": 1})
    assert "czo_event_outbox" in str(caught.value)
    assert not KIT_TABLES & set(kit.db.get_tables())

    with kit.db.atomic():
        kit.events.emit("czo_test.ping", {"shop_id": 1})  # a shop event, heard by no app
    assert not KIT_TABLES & set(kit.db.get_tables())

    # Outside a transaction the kit makes what it needs, then the same work succeeds.
    kit.events.emit_async("czo_test.ping", {"shop_id": 1})
    assert {m._meta.table_name for m in KIT_MODELS[:4]} <= set(kit.db.get_tables())


def drop_column(kit: Kit, table: str, column: str) -> None:
    """Make the table as an older kit made it, without ``column``."""
    kit.db.execute_sql(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    assert column not in {c.name for c in kit.db.get_columns(table)}


def test_db_init_and_migrate_add_the_columns_a_newer_kit_has(database_url: str, kit_for: Callable[..., Kit]) -> None:
    kit = kit_for(database_url)
    kit.create_tables()
    drop_column(kit, "czo_event_outbox", "subscribers")
    assert kit.create_tables()["czo-kit"] == ["added column czo_event_outbox.subscribers"]
    assert "subscribers" in {c.name for c in kit.db.get_columns("czo_event_outbox")}
    drop_column(kit, "czo_event_outbox", "subscribers")
    assert kit.create_kit_tables() == ["added column czo_event_outbox.subscribers"]  # db migrate
    assert kit.create_kit_tables() == []


def test_an_older_kits_tables_are_upgraded_on_first_use_never_in_a_transaction(
    database_url: str, kit_for: Callable[..., Kit], settings_for: Callable[..., Settings]
) -> None:
    old = kit_for(database_url)
    old.create_tables()
    drop_column(old, "czo_event_outbox", "subscribers")
    # A process of the newer kit starting on that database.
    with Kit(settings_for(database_url, plugins=()), plugins=[Bookings()]) as kit:
        with pytest.raises(ConfigurationError, match=r"columns czo_event_outbox\.subscribers .*czo-kit db migrate"):
            with kit.db.atomic():
                kit.events.emit_async("czo_test.ping", {"n": 1})
        assert "subscribers" not in {c.name for c in kit.db.get_columns("czo_event_outbox")}
        kit.events.emit_async("czo_test.ping", {"n": 2})  # outside a transaction: upgraded, then written
        assert "subscribers" in {c.name for c in kit.db.get_columns("czo_event_outbox")}


def test_an_older_kits_tables_get_the_indexes_of_a_newer_one_outside_transactions(
    database_url: str, kit_for: Callable[..., Kit], settings_for: Callable[..., Settings]
) -> None:
    old = kit_for(database_url)
    old.create_tables()
    for index in ("czo_event_delivery_live", "czo_event_dead_letter_open"):
        old.db.execute_sql(f'DROP INDEX "{index}"')
    drop_column(old, "czo_event_dead_letter", "discarded_at")  # the open letters' index covers it
    assert old.create_kit_tables() == [
        "added column czo_event_dead_letter.discarded_at",
        "created index czo_event_delivery_live",
        "created index czo_event_dead_letter_open",
    ]
    for index in ("czo_event_delivery_live", "czo_event_outbox_live"):
        old.db.execute_sql(f'DROP INDEX "{index}"')
    with Kit(settings_for(database_url, plugins=()), plugins=[Bookings()]) as kit:
        with kit.db.atomic():  # a missing index fails nobody, and is not made in here
            kit.events.emit_async("czo_test.ping", {"n": 1})
        names = {i.name for t in ("czo_event_outbox", "czo_event_delivery") for i in kit.db.get_indexes(t)}
        assert not names & {"czo_event_delivery_live", "czo_event_outbox_live"}
    with Kit(settings_for(database_url, plugins=()), plugins=[Bookings()]) as kit:
        kit.outbox.sweep()  # a worker's first use, outside any transaction: made
        names = {i.name for t in ("czo_event_outbox", "czo_event_delivery") for i in kit.db.get_indexes(t)}
        assert {"czo_event_delivery_live", "czo_event_outbox_live"} <= names


def test_create_tables_refuses_to_run_inside_a_transaction(
    database_url: str, kit_for: Callable[..., Kit]
) -> None:
    kit = kit_for(database_url)
    with pytest.raises(ConfigurationError, match="inside a transaction"):
        with kit.db.atomic():
            kit.create_tables()
    assert not KIT_TABLES & set(kit.db.get_tables())


STARTER = textwrap.dedent(
    """
    import sys
    from czo_kit import Kit, Settings

    url, init = sys.argv[1], sys.argv[2] == "init"
    kit = Kit(Settings(database_url=url, secret_key="k" * 40, queue_url="", plugins=()))
    print("ready", flush=True)
    sys.stdin.readline()  # every process is built before any of them goes on
    try:
        print(len(kit.apps.list(1)), flush=True)
        kit.permission_service.roles("user:1", 1)
    finally:
        kit.close()
    """
)


@pytest.fixture
def fresh_schema_url(pg_base_url: str) -> Iterator[Callable[[], str]]:
    """URLs of new, empty PostgreSQL schemas, dropped afterwards."""
    import psycopg2
    from psycopg2 import sql

    from czo_kit.default_plugins.postgres import parse_postgresql_url

    dbname, params = parse_postgresql_url(pg_base_url)
    conn = psycopg2.connect(dbname=dbname, **params)
    conn.autocommit = True
    made: list[str] = []

    def make() -> str:
        schema = f"czotest_race_{uuid.uuid4().hex[:10]}"
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        made.append(schema)
        separator = "&" if "?" in pg_base_url else "?"
        return pg_base_url + separator + urlencode({"options": f"-csearch_path={schema}"})

    yield make
    with conn.cursor() as cur:
        for schema in made:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    conn.close()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("init", [True, False], ids=["after-db-init", "without-db-init"])
def test_six_processes_starting_at_once_all_succeed(
    init: bool, fresh_schema_url: Callable[[], str], tmp_path: Path
) -> None:
    script = tmp_path / "starter.py"
    script.write_text(STARTER)
    for _ in range(3):
        url = fresh_schema_url()
        if init:
            with Kit(Settings(database_url=url, secret_key="k" * 40, queue_url="", plugins=())) as kit:
                kit.create_tables()
        processes = [
            subprocess.Popen(
                [sys.executable, str(script), url, "init" if init else "-"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "CZO_LOG_LEVEL": "WARNING"},
            )
            for _ in range(6)
        ]
        try:
            for process in processes:
                assert process.stdout is not None and process.stdout.readline() == "ready\n"
            for process in processes:  # release them together
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
            outcomes = [process.communicate(timeout=120) for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        failures = [err for (out, err), p in zip(outcomes, processes) if p.returncode != 0]
        assert not failures, failures[0]
        assert all(out == "0\n" for out, _ in outcomes)
