"""Shop-event emits read webhook subscriptions from memory, and every change made by another
process (install, uninstall, secret rotation, a webhook turned off or on) is seen by the
next emit after its commit: two real processes on one PostgreSQL database and on one SQLite
file. Also: a dropped listener, read-your-writes inside a transaction, and the memory being
used at all."""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import peewee
import pytest

from apps_support import OWNER, app_kit, app_settings, manifest, wait_for
from czo_kit import Kit
from czo_kit.apps import SubscriptionCache
from czo_kit.apps.webhooks import WebhookDelivery
from czo_kit.errors import InvalidDataError, NotFoundError
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
HERE = Path(__file__).parent
TARGET = "http://127.0.0.1:9"  # never called: nothing here delivers


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


# A queue nobody consumes (app_settings' SQLite one): deliveries are recorded and stay queued.
@pytest.fixture
def kit(db_url: str, settings_for: SettingsFor, tmp_path: Path) -> Iterator[Kit]:
    manager: AbstractContextManager[Kit] = app_kit(app_settings(settings_for, db_url, str(tmp_path)))
    with manager as kit:
        yield kit


class ProcessA:
    """``subscriptions_process.py`` in a process of its own, spoken to line by line."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        self.stderr = tmp_path / "process-a.err"
        with open(self.stderr, "wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, str(HERE / "subscriptions_process.py"), url],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=tmp_path,
            )

    def ask(self, command: str) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()
        ready, _, _ = select.select([self.popen.stdout], [], [], 60)
        line = self.popen.stdout.readline() if ready else ""
        assert line, f"process A gave no answer to {command!r}: {self.stderr.read_text()[-3000:]}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def emit(self, shop_id: int = 1) -> str:
        return str(self.ask(f"emit {shop_id}")["event_id"])

    def warm(self, shop_id: int = 1) -> dict[str, Any]:
        """Emit until the shop's subscriptions are held in A's memory (the listener or the
        data_version watch is up): from then on a missed change would be served stale."""
        status: dict[str, Any] = {}

        def held() -> bool:
            nonlocal status
            self.emit(shop_id)
            status = self.ask("status")
            return status["state"] != "querying" and shop_id in status["cached"]

        wait_for(held, timeout=30, what="process A to hold the shop's subscriptions in memory")
        return status

    def close(self) -> None:
        try:
            if self.popen.poll() is None:
                assert self.popen.stdin is not None
                self.popen.stdin.close()  # end of input: A closes its kit and exits
                self.popen.wait(timeout=30)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
            if self.popen.stdout is not None:
                self.popen.stdout.close()


@pytest.fixture
def process_a(kit: Kit, db_url: str, tmp_path: Path) -> Iterator[ProcessA]:
    process = ProcessA(db_url, tmp_path)
    try:
        yield process
    finally:
        process.close()


def delivered(kit: Kit, event_id: str) -> int:
    """Delivery rows the emit of ``event_id`` recorded (read by this process, B)."""
    return int(WebhookDelivery.select().where(WebhookDelivery.event_id == event_id).count(kit.db))


def install(kit: Kit, shop_id: int = 1) -> None:
    kit.apps.install(shop_id=shop_id, installer_id=OWNER, manifest=manifest(TARGET))


def test_the_next_emit_of_another_process_sees_each_change(kit: Kit, process_a: ProcessA) -> None:
    steps: list[tuple[str, Callable[[], object], int]] = [
        ("install", lambda: install(kit), 1),
        ("deactivate", lambda: kit.apps.set_webhook_active(shop_id=1, app_id="acme", name="orders", active=False), 0),
        ("reactivate", lambda: kit.apps.set_webhook_active(shop_id=1, app_id="acme", name="orders", active=True), 1),
        ("rotate", lambda: kit.apps.rotate_webhook_secret(shop_id=1, app_id="acme"), 1),
        ("uninstall", lambda: kit.apps.uninstall(shop_id=1, app_id="acme"), 0),
    ]
    for what, change, expected in steps:
        process_a.warm()  # A holds the shop's subscriptions from before the change
        change()  # B commits
        assert delivered(kit, process_a.emit()) == expected, f"A's emit after B's {what}"


def test_a_change_to_another_shop_leaves_this_one_right(kit: Kit, process_a: ProcessA) -> None:
    install(kit, shop_id=1)
    process_a.warm(1)
    process_a.warm(2)
    install(kit, shop_id=2)
    assert delivered(kit, process_a.emit(2)) == 1
    assert delivered(kit, process_a.emit(1)) == 1


@pytest.mark.postgres
def test_a_dropped_listener_falls_back_to_the_database_and_listens_again(
    pg_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    with app_kit(app_settings(settings_for, pg_url, str(tmp_path))) as kit:
        process = ProcessA(pg_url, tmp_path)
        try:
            before = process.warm()["listener"]
            assert isinstance(before, int)
            kit.db.execute_sql("SELECT pg_terminate_backend(%s)", (before,))
            # The listener's backend is gone before the change commits: the change is made
            # while nobody can notify A, whose next emit must still see it.
            wait_for(
                lambda: not kit.db.execute_sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (before,)).fetchone(),
                what="the listener's backend to end",
            )
            install(kit)
            assert delivered(kit, process.emit()) == 1
            # A listens again (a new backend) and serves from memory again, still exact.
            after = process.warm()["listener"]
            assert after not in (None, before)
            kit.apps.set_webhook_active(shop_id=1, app_id="acme", name="orders", active=False)
            assert delivered(kit, process.emit()) == 0
        finally:
            process.close()


def warm(kit: Kit, shop_id: int = 1) -> None:
    cache = kit.apps.subscription_cache

    def held() -> bool:
        kit.events.emit("order.created", {"shop_id": shop_id, "id": 0})
        return cache.state != "querying" and shop_id in cache.cached_shops()

    wait_for(held, timeout=30, what="the kit to hold the shop's subscriptions in memory")


def emit(kit: Kit, shop_id: int = 1) -> str:
    return kit.events.emit("order.created", {"shop_id": shop_id, "id": 1}).event_id


def test_a_transaction_sees_its_own_install_and_a_rollback_leaves_nothing(kit: Kit) -> None:
    warm(kit)
    with pytest.raises(RuntimeError):
        with kit.db.atomic():
            install(kit)
            assert delivered(kit, emit(kit)) == 1  # its own uncommitted install
            raise RuntimeError("rolled back")
    assert delivered(kit, emit(kit)) == 0
    assert kit.apps.list(1) == []


def test_a_transaction_sees_its_own_uninstall_and_a_rollback_keeps_the_app(kit: Kit) -> None:
    install(kit)
    warm(kit)
    with pytest.raises(RuntimeError):
        with kit.db.atomic():
            kit.apps.uninstall(shop_id=1, app_id="acme")
            assert delivered(kit, emit(kit)) == 0  # its own uncommitted uninstall
            raise RuntimeError("rolled back")
    assert delivered(kit, emit(kit)) == 1
    with kit.db.atomic():
        kit.apps.set_webhook_active(shop_id=1, app_id="acme", name="orders", active=False)
        assert delivered(kit, emit(kit)) == 0
    assert delivered(kit, emit(kit)) == 0  # committed: this process's memory forgot it


def test_emits_read_subscriptions_from_memory(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    install(kit)
    warm(kit)
    queries: list[int] = []
    real = SubscriptionCache._query

    def counted(self: SubscriptionCache, shop_id: int) -> Any:
        queries.append(shop_id)
        return real(self, shop_id)

    monkeypatch.setattr(SubscriptionCache, "_query", counted)
    ids = [emit(kit) for _ in range(20)]
    assert [delivered(kit, event_id) for event_id in ids] == [1] * 20
    assert queries == []
    kit.events.emit("order.created", {"shop_id": 3, "id": 1})  # a shop not held yet: read once
    kit.events.emit("order.created", {"shop_id": 3, "id": 2})
    assert queries == [3]


def test_lookups_query_the_database_once_the_cache_is_closed(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    install(kit)
    warm(kit)
    kit.apps.subscription_cache.close()
    queries: list[int] = []
    real = SubscriptionCache._query
    monkeypatch.setattr(SubscriptionCache, "_query", lambda self, shop_id: queries.append(shop_id) or real(self, shop_id))
    assert delivered(kit, emit(kit)) == 1
    assert delivered(kit, emit(kit)) == 1
    assert queries == [1, 1]
    assert kit.apps.subscription_cache.cached_shops() == []


def test_a_database_that_cannot_say_what_changed_is_queried_each_time(tmp_path: Path) -> None:
    class OtherDatabase(peewee.Database):  # not SQLite, not PostgreSQL: no change signal known
        pass

    cache = SubscriptionCache(OtherDatabase(None))
    assert cache.state == "querying"
    assert cache._fresh() is False


def test_an_in_memory_sqlite_database_is_this_process_alone() -> None:
    cache = SubscriptionCache(peewee.SqliteDatabase(":memory:"))  # no other process can open it
    assert cache.state == "memory"
    assert cache._fresh() is True


@pytest.mark.parametrize("shop_id", ["1", 1.0, True, None])
def test_changed_refuses_what_is_not_a_shop_id(kit: Kit, shop_id: Any) -> None:
    with pytest.raises(TypeError, match=r"shop_id must be a shop's integer id, got \w+ "):
        kit.apps.subscription_cache.changed(shop_id)


@pytest.mark.parametrize(
    ("changes", "error", "named"),
    [
        ({"name": 7}, InvalidDataError, "webhook name must be a non-empty string, got '7'"),
        ({"name": ""}, InvalidDataError, "webhook name must be a non-empty string"),
        ({"active": "no"}, InvalidDataError, "active must be True or False, got 'no'"),
        ({"name": "nope"}, NotFoundError, "nope of acme in shop 1 (its webhooks: orders)"),
        ({"app_id": "other"}, NotFoundError, "other in shop 1"),
    ],
)
def test_set_webhook_active_refuses_bad_input(kit: Kit, changes: dict[str, Any], error: type[Exception], named: str) -> None:
    install(kit)
    arguments: dict[str, Any] = {"shop_id": 1, "app_id": "acme", "name": "orders", "active": False, **changes}
    with pytest.raises(error, match=named.replace("(", r"\(").replace(")", r"\)")):
        kit.apps.set_webhook_active(**arguments)
    assert delivered(kit, emit(kit)) == 1  # nothing changed


@pytest.mark.postgres
def test_a_listener_that_does_not_acknowledge_is_cut_off_before_the_change_returns(
    pg_url: str, settings_for: SettingsFor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    from czo_kit.apps import _subscriptions
    from czo_kit.default_plugins.postgres import parse_postgresql_url

    monkeypatch.setattr(_subscriptions, "ACK_TIMEOUT", 0.5)
    with app_kit(app_settings(settings_for, pg_url, str(tmp_path))) as kit:
        dbname, params = parse_postgresql_url(pg_url)
        # A process hung with its listener connected: it hears the change but never forgets.
        stuck = psycopg2.connect(dbname=dbname, **{**params, "application_name": _subscriptions.LISTENER_NAME})
        stuck.autocommit = True
        try:
            with stuck.cursor() as cursor:
                cursor.execute(f"LISTEN {_subscriptions.CHANNEL}")
            pid = stuck.get_backend_pid()
            install(kit)  # returns once the stuck listener's connection is gone
            alive = kit.db.execute_sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            assert alive is None
            with pytest.raises(psycopg2.OperationalError):
                with stuck.cursor() as cursor:
                    cursor.execute("SELECT 1")
        finally:
            stuck.close()


def test_a_listener_that_cannot_be_ended_leaves_the_change_committed_and_says_so(
    pg_url: str, settings_for: SettingsFor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database role without the right to end another's connection: the install is kept
    (it committed before the wait), the kit says which listener may lag, and nothing raises."""
    import psycopg2

    from czo_kit.apps import _subscriptions
    from czo_kit.default_plugins.postgres import parse_postgresql_url

    monkeypatch.setattr(_subscriptions, "ACK_TIMEOUT", 0.5)
    with app_kit(app_settings(settings_for, pg_url, str(tmp_path))) as kit:
        dbname, params = parse_postgresql_url(pg_url)
        stuck = psycopg2.connect(dbname=dbname, **{**params, "application_name": _subscriptions.LISTENER_NAME})
        stuck.autocommit = True
        execute_sql = kit.db.execute_sql

        def refusing(sql: str, *args: Any, **kwargs: Any) -> Any:
            if "pg_terminate_backend" in sql:
                raise peewee.ProgrammingError("permission denied to terminate process")
            return execute_sql(sql, *args, **kwargs)

        monkeypatch.setattr(kit.db, "execute_sql", refusing)
        try:
            with stuck.cursor() as cursor:
                cursor.execute(f"LISTEN {_subscriptions.CHANNEL}")
            pid = stuck.get_backend_pid()
            with caplog.at_level(logging.WARNING, logger=_subscriptions.log.name):
                install(kit)
            assert [a.app_id for a in kit.apps.list(1)] == ["acme"]
            assert any(f"could not end subscriptions listener {pid}" in r.getMessage() for r in caplog.records)
        finally:
            stuck.close()


def test_a_forked_child_leaves_the_parents_watch_alone(kit: Kit) -> None:
    install(kit)
    warm(kit)
    cache = kit.apps.subscription_cache
    watched = cache._conn if cache.mode == "postgresql" else cache._sqlite
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own watch, never the parent's connection
        code = 1
        try:
            fresh = cache.cached_shops() == [] and cache._conn is None and cache._sqlite is None
            code = 0 if fresh else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"\x00", "the child inherited the parent's memory or connection"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    # The parent's watch still works, from the same connection.
    assert (cache._conn if cache.mode == "postgresql" else cache._sqlite) is watched
    kit.apps.set_webhook_active(shop_id=1, app_id="acme", name="orders", active=False)
    assert delivered(kit, emit(kit)) == 0


@pytest.mark.postgres
def test_a_change_in_another_schema_of_the_database_is_acknowledged_not_applied(
    pg_base_url: str, pg_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    """Kits in two schemas of one database share the notification channel: a change of the
    other kit's shop 1 leaves this kit's shop 1 in memory, and this kit's listener answers
    it (the other committer waits for every listener of the database), so it stays up."""
    import psycopg2
    from psycopg2 import sql

    from czo_kit.default_plugins.postgres import parse_postgresql_url

    other_schema = f"czotest_other_{os.getpid()}_{tmp_path.name[-8:]}".lower()
    dbname, params = parse_postgresql_url(pg_base_url)
    admin = psycopg2.connect(dbname=dbname, **params)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other_schema)))
    separator = "&" if "?" in pg_base_url else "?"
    other_url = pg_base_url + separator + urlencode({"options": f"-csearch_path={other_schema}"})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        with app_kit(app_settings(settings_for, pg_url, str(tmp_path / "a"))) as kit, app_kit(
            app_settings(settings_for, other_url, str(tmp_path / "b"))
        ) as other:
            install(kit)
            warm(kit)
            pid = kit.apps.subscription_cache.listener_pid()
            assert pid is not None and 1 in kit.apps.subscription_cache.cached_shops()
            install(other)  # shop 1 of the other schema: returns once every listener answered
            assert kit.apps.subscription_cache.cached_shops() == [1]
            assert kit.apps.subscription_cache.listener_pid() == pid  # answered, not cut off
            assert delivered(kit, emit(kit)) == 1
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other_schema)))
        admin.close()


@pytest.mark.postgres
def test_forged_notifications_neither_cut_the_listener_off_nor_hide_a_change(
    pg_url: str, settings_for: SettingsFor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any user of the database may NOTIFY the channels. Payloads that are no change of this
    kit's (a shop id longer than Python parses, garbage, an ack for a pid that large) are
    answered by forgetting more, never by the listener losing its connection: the real change
    that follows is seen, and the change's commit is acknowledged by the same listener."""
    import psycopg2

    from czo_kit.apps import _subscriptions
    from czo_kit.apps._models import AppWebhook
    from czo_kit.default_plugins.postgres import parse_postgresql_url

    with app_kit(app_settings(settings_for, pg_url, str(tmp_path))) as kit:
        install(kit)
        warm(kit)
        cache = kit.apps.subscription_cache
        pid = cache.listener_pid()
        dbname, params = parse_postgresql_url(pg_url)
        forger = psycopg2.connect(dbname=dbname, **params)
        try:
            with forger, forger.cursor() as cursor:  # one transaction: delivered together
                for channel, payload in [
                    (_subscriptions.CHANNEL, "9" * 5000),
                    (_subscriptions.CHANNEL, "1" + "0" * 7000 + ":token"),
                    (_subscriptions.CHANNEL, "garbage"),
                    (_subscriptions.CHANNEL, ""),
                    (_subscriptions.ACK_CHANNEL, "token:" + "9" * 5000),
                ]:
                    cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        finally:
            forger.close()
        warm(kit)  # read the forged ones, and hold shop 1 again
        with caplog.at_level(logging.WARNING, logger=_subscriptions.log.name):
            with kit.db.atomic():  # a direct write, announced as the docs say
                AppWebhook.update(is_active=False).where(AppWebhook.shop_id == 1).execute(kit.db)
                cache.changed(1)
            assert delivered(kit, emit(kit)) == 0
        assert cache.listener_pid() == pid, "a forged notification cut the listener off"
        assert not [r.getMessage() for r in caplog.records if "listener" in r.getMessage()]


@pytest.mark.postgres
@pytest.mark.parametrize("undo", ["transaction", "atomic savepoint", "savepoint"])
def test_a_change_rolled_back_by_hand_neither_waits_for_nor_ends_the_listeners(
    pg_url: str, settings_for: SettingsFor, tmp_path: Path, caplog: pytest.LogCaptureFixture, undo: str
) -> None:
    """``changed()`` followed by an explicit ``rollback()`` (of the transaction handle, or of a
    savepoint): its NOTIFY is undone, so no listener will ever acknowledge it. The commit that
    follows must not wait for that, nor end every listener of the database as unresponsive."""
    from czo_kit.apps import _subscriptions

    with app_kit(app_settings(settings_for, pg_url, str(tmp_path))) as kit:
        install(kit)
        warm(kit)
        cache = kit.apps.subscription_cache
        pid = cache.listener_pid()
        with caplog.at_level(logging.WARNING, logger=_subscriptions.log.name):
            with kit.db.atomic() as txn:
                if undo == "transaction":
                    cache.changed(1)
                    txn.rollback()
                elif undo == "atomic savepoint":
                    with kit.db.atomic() as savepoint:
                        cache.changed(1)
                        savepoint.rollback()
                else:
                    with kit.db.savepoint() as savepoint:
                        cache.changed(1)
                        savepoint.rollback()
        assert not [r.getMessage() for r in caplog.records if "listener" in r.getMessage()]
        assert cache.listener_pid() == pid
        assert delivered(kit, emit(kit)) == 1


@pytest.mark.postgres
def test_a_listener_that_cannot_be_ended_does_not_spare_the_others(
    pg_url: str, settings_for: SettingsFor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two listeners that do not answer, one of a role this kit may not end (kits of other
    schemas and roles share the database and its channel): the other is still ended, so
    its process does not serve what the change made stale."""
    import psycopg2

    from czo_kit.apps import _subscriptions
    from czo_kit.default_plugins.postgres import parse_postgresql_url

    monkeypatch.setattr(_subscriptions, "ACK_TIMEOUT", 0.5)
    with app_kit(app_settings(settings_for, pg_url, str(tmp_path))) as kit:
        dbname, params = parse_postgresql_url(pg_url)
        stuck = [
            psycopg2.connect(dbname=dbname, **{**params, "application_name": _subscriptions.LISTENER_NAME})
            for _ in range(2)
        ]
        refused: list[int] = []
        execute_sql = kit.db.execute_sql

        def refusing_the_first(sql: str, *args: Any, **kwargs: Any) -> Any:
            if "pg_terminate_backend" in sql and not refused:
                refused.append(int(args[0][0]))
                raise peewee.ProgrammingError("permission denied to terminate process")
            return execute_sql(sql, *args, **kwargs)

        monkeypatch.setattr(kit.db, "execute_sql", refusing_the_first)
        try:
            for conn in stuck:
                conn.autocommit = True
                with conn.cursor() as cursor:
                    cursor.execute(f"LISTEN {_subscriptions.CHANNEL}")
            install(kit)
            assert len(refused) == 1
            other = ({conn.get_backend_pid() for conn in stuck} - set(refused)).pop()
            alive = execute_sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (other,)).fetchone()
            assert alive is None, "the listener that could be ended was left running"
        finally:
            for conn in stuck:
                conn.close()


@pytest.mark.postgres
def test_a_listener_ended_by_the_server_is_not_trusted_on_its_last_words(
    pg_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    """``pg_terminate_backend`` (or a shutdown) first sends the listener its FATAL message,
    which libpq hands over as a notice, not an error: the end of the socket comes later, once
    the server cleaned up, and by then the backend is gone from ``pg_stat_activity`` so no
    committer waits for it. The first read after that message must count as the end: a
    change committed meanwhile was never notified to it."""
    import threading

    import psycopg2

    from czo_kit.apps._models import AppWebhook
    from czo_kit.default_plugins.postgres import parse_postgresql_url

    with app_kit(app_settings(settings_for, pg_url, str(tmp_path))) as kit:
        install(kit)
        warm(kit)
        cache = kit.apps.subscription_cache
        pid = cache.listener_pid()
        held = cache._lock
        held.acquire()  # the listener thread reads its socket only under this lock: not now
        try:
            kit.db.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
            wait_for(
                lambda: not kit.db.execute_sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone(),
                what="the listener's backend to end",
            )
            # Committed while nobody listens for this process (as a committer that found the
            # listener gone does): nothing tells it but its connection's end.
            dbname, params = parse_postgresql_url(pg_url)
            writer = psycopg2.connect(dbname=dbname, **params)
            try:
                with writer, writer.cursor() as cursor:
                    cursor.execute(f"UPDATE {AppWebhook._meta.table_name} SET is_active = false WHERE shop_id = 1")
            finally:
                writer.close()
            # This thread reads the socket first (the listener thread waits on the old lock).
            cache._lock = threading.Lock()
            assert delivered(kit, emit(kit)) == 0
        finally:
            held.release()


@pytest.mark.postgres
def test_a_chatty_server_does_not_end_the_listener(
    pg_base_url: str, pg_schema: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    """Notices sent during the listener's queries (``client_min_messages = debug5`` set for
    the database user, a warning at connect) are not the server ending it."""
    separator = "&" if "?" in pg_base_url else "?"
    options = f"-csearch_path={pg_schema} -cclient_min_messages=debug5"
    url = pg_base_url + separator + urlencode({"options": options})
    with app_kit(app_settings(settings_for, url, str(tmp_path))) as kit:
        install(kit)
        warm(kit)
        cache = kit.apps.subscription_cache
        pid = cache.listener_pid()
        kit.apps.set_webhook_active(shop_id=1, app_id="acme", name="orders", active=False)
        assert delivered(kit, emit(kit)) == 0
        kit.apps.set_webhook_active(shop_id=1, app_id="acme", name="orders", active=True)
        assert delivered(kit, emit(kit)) == 1
        assert cache.listener_pid() == pid
