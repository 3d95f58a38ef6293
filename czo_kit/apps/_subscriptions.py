"""The webhook subscriptions of each shop, held in memory and kept exact across processes.

Every emit of a shop event asks which apps of the shop hear it. Asking the database each
time cost more than the rest of the emit together, so the answer is kept per shop in this
process, and dropped when it may have changed:

- PostgreSQL: every change sends ``NOTIFY czo_app_subscriptions`` in its own transaction
  (delivered at commit, never on rollback). A connection of this process ``LISTEN``s; each
  lookup reads what arrived on that socket first (no round trip: a non-blocking read). A
  notification may still be on its way when the change's commit returns, so the change then
  waits until every listening process has forgotten the shop and acknowledged it; one that
  does not answer in time has its connection ended. While this process's connection is down
  (a restart, ``pg_terminate_backend``) or not yet listening, every lookup queries the
  database; once it listens again the memory starts empty.
- SQLite (a file): ``PRAGMA data_version`` on a connection of this cache, which changes
  whenever any other connection, of any process, commits to the file (no round trip: a
  read of the file's shared header). When it did, the counter each change of subscriptions
  bumps in its transaction (``czo_app_subscriptions_version``) says whether to forget.
- Any other database: no memory, a query per lookup (nothing says when another process
  changed the subscriptions).

Changes made through ``AppRegistry`` also empty the memory of this process at commit, and
the transaction that makes them reads the database for its own lookups until it ends
(read-your-writes). See docs/apps.md, "Where emits find subscriptions", for what is
guaranteed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import peewee

from czo_kit.apps._models import AppInstallation, AppWebhook
from czo_kit.apps.permissions import Pair
from czo_kit.db._sql import Slot, model_info
from czo_kit.db.transactions import TransactionalDatabaseMixin, on_commit

__all__ = ["ACK_CHANNEL", "ACK_TIMEOUT", "CHANNEL", "MAX_SHOPS", "Subscription", "SubscriptionCache"]

log = logging.getLogger("czo_kit.apps")

CHANNEL = "czo_app_subscriptions"
"""The PostgreSQL notification channel; the payload is ``<shop id>:<change token>``."""
ACK_CHANNEL = "czo_app_subscriptions_ack"
"""Where listeners acknowledge a change, ``<change token>:<backend pid>``, once they forgot it."""
ACK_TIMEOUT = 5.0
"""Seconds a committed change waits for the acknowledgements of the listening processes."""
MAX_SHOPS = 100_000
"""Shops whose subscriptions one process keeps at most; past it the memory starts over."""
LISTENER_NAME = "czo-kit subscriptions listener"
"""``application_name`` of the listening connection (``pg_stat_activity`` shows it)."""
_PROBE_EVERY = 5.0  # seconds of silence after which the listener checks its connection
_RECONNECT_MAX = 5.0

Subscription = tuple[int, str, tuple[str, ...], str, frozenset[Pair]]
"""(installation id, webhook name, events, target URL, permissions granted to the app)."""
_Entry = dict[str, tuple[Subscription, ...]]  # event name -> subscriptions hearing it


class SubscriptionCache:
    """Which active subscriptions of a shop hear an event, from memory when it is known exact."""

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self._map: dict[int, _Entry] = {}
        self._generation = 0  # bumped whenever the memory is emptied: a load from before is not kept
        self._lock = threading.Lock()
        self._local = threading.local()
        self._closed = False
        # What tells this process that another one changed something.
        self._sqlite: sqlite3.Connection | None = None  # reads data_version and the counter
        self._data_version: int | None = None
        self._version: int | None = None  # of czo_app_subscriptions_version, as last read
        self._conn: Any = None  # the psycopg2 connection that LISTENs, once it does
        self._scope = ""  # this kit's schema, read by the listener: a change names it
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._acks: dict[str, set[int]] = {}  # change token -> listener pids that acknowledged it
        self._forked: list[Any] = []  # a forked child's inherited connection: never closed there
        if isinstance(db, peewee.PostgresqlDatabase):
            self.mode = "postgresql"
        elif isinstance(db, peewee.SqliteDatabase):
            name = str(db.database)
            in_memory = name in ("", ":memory:") or "mode=memory" in name
            # Each connection to ":memory:" is its own database: this process is the only one.
            self.mode = "memory" if in_memory else "sqlite"
        else:
            self.mode = "none"
        # Weakly: a cache that is gone must not be kept alive by the fork hook.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    # -- what emits call --------------------------------------------------------------------

    def lookup(self, shop_id: int, event: str) -> tuple[Subscription, ...]:
        """The active subscriptions of ``shop_id`` that hear ``event``."""
        mark = getattr(self._local, "txn", None)
        if mark is not None:
            if self._same_transaction(mark):
                return _index(self._query(shop_id)).get(event, ())  # its own uncommitted changes
            self._local.txn = None
        if not self._fresh():
            return _index(self._query(shop_id)).get(event, ())
        entry = self._map.get(shop_id)
        if entry is None:
            entry = self._fill(shop_id)
        return entry.get(event, ())

    @property
    def state(self) -> str:
        """``listening`` / ``data_version`` / ``memory`` when lookups may use memory;
        ``querying`` when each lookup asks the database (not exact otherwise)."""
        if self.mode == "postgresql":
            return "listening" if self._conn is not None else "querying"
        if self.mode == "sqlite":
            return "data_version" if self._sqlite is not None else "querying"
        return "memory" if self.mode == "memory" else "querying"

    def cached_shops(self) -> list[int]:
        """The shops whose subscriptions this process holds now (for tests and operators)."""
        return sorted(self._map)

    def listener_pid(self) -> int | None:
        """The PostgreSQL backend pid of the listening connection, while it listens."""
        conn = self._conn
        return int(conn.get_backend_pid()) if conn is not None else None

    def _fresh(self) -> bool:
        """True when the memory is exact now (emptied first if something changed)."""
        mode = self.mode
        if mode == "postgresql":
            with self._lock:
                conn = self._conn
                if conn is None:
                    self._start()
                    return False
                try:
                    _read(conn)  # what reached the socket, without waiting
                    if conn.notifies:
                        self._notified(conn)
                except Exception:
                    self._lost(conn)  # a notification read may not have been applied
                    return False
            return True
        if mode == "sqlite":
            with self._lock:
                connection = self._sqlite
                if connection is None:
                    connection = self._open_sqlite()
                    if connection is None:
                        return False
                try:
                    data_version = connection.execute("PRAGMA data_version").fetchone()[0]
                    if data_version != self._data_version:
                        # Something was committed: was it a change of subscriptions?
                        version = _read_version(connection)
                        self._data_version = data_version
                        if version != self._version:
                            self._version = version
                            self._empty()
                except sqlite3.Error:
                    self._data_version = None  # busy, or no table yet: ask the database this time
                    return False
            return True
        return mode == "memory"

    def _fill(self, shop_id: int) -> _Entry:
        generation = self._generation
        entry = _index(self._query(shop_id))
        # A transaction may read an older snapshot (or its own uncommitted rows): not kept.
        if self.db.in_transaction():
            return entry
        with self._lock:
            if generation == self._generation and not self._closed:
                if len(self._map) >= MAX_SHOPS:
                    self._map.clear()
                self._map[shop_id] = entry
        return entry

    def _query(self, shop_id: int) -> list[Subscription]:
        info = model_info(AppWebhook, self.db)
        template = info.template(
            ("shop_subscriptions",),
            lambda: AppWebhook.select(
                AppWebhook.installation, AppWebhook.name, AppWebhook.events, AppWebhook.target_url,
                AppInstallation.permissions,
            )
            .join(AppInstallation)
            .where((AppWebhook.shop_id == Slot("shop")) & (AppWebhook.is_active == True)),  # noqa: E712
        )
        found: list[Subscription] = []
        for installation_id, name, events, target_url, permissions in info.execute(template, {"shop": shop_id}).fetchall():
            granted = frozenset((r, a) for r, _, a in (item.partition(":") for item in json.loads(permissions)))
            found.append((int(installation_id), str(name), tuple(json.loads(events)), str(target_url), granted))
        return found

    # -- what changes call ------------------------------------------------------------------

    def changed(self, shop_id: int) -> None:
        """Call inside the transaction that changes a shop's subscriptions (install,
        uninstall, secret rotation, a webhook turned on or off): other processes hear of it
        at commit, this one empties its memory then, and until the transaction ends this
        thread's lookups read the database, its own changes included. On PostgreSQL the
        commit returns once every listening process has emptied its memory (below)."""
        if not isinstance(shop_id, int) or isinstance(shop_id, bool):
            raise TypeError(f"shop_id must be a shop's integer id, got {type(shop_id).__name__} {str(shop_id)[:24]!r}")
        after: Callable[[], None] = lambda: self._forget(shop_id)
        if self.mode == "postgresql":
            listening = self._ensure_listening()
            # The token names this kit's schema: listeners of other schemas that share the
            # database (and so the channel) acknowledge it without forgetting anything.
            token = f"{secrets.token_hex(8)}@{self._scope}" if self._scope else secrets.token_hex(8)
            with self._lock:
                # Before the commit: a fast listener's ack may arrive before ``after`` runs.
                # (A rolled-back change leaves its few bytes here.)
                self._acks[token] = set()
            self.db.execute_sql("SELECT pg_notify(%s, %s)", (CHANNEL, f"{shop_id}:{token}"))

            def after() -> None:
                self._forget(shop_id)
                if listening:
                    self._await_acks(token)

        elif self.mode == "sqlite":
            self.db.execute_sql(
                "INSERT INTO czo_app_subscriptions_version (id, version) VALUES (1, 1) ON CONFLICT (id) "
                "DO UPDATE SET version = czo_app_subscriptions_version.version + 1"
            )
        if self.db.in_transaction():
            self._local.txn = self._transaction_mark()
            on_commit(self.db, after)
        else:
            after()

    def _transaction_mark(self) -> Any:
        """What names the thread's outermost transaction (an object it holds while open)."""
        db = self.db
        if isinstance(db, TransactionalDatabaseMixin):
            frames = db._czo_frames()
            if frames:
                return frames[0]
        return True  # a bare transaction: read the database until none is open

    def _same_transaction(self, mark: Any) -> bool:
        db = self.db
        if mark is True:
            return bool(db.in_transaction())
        assert isinstance(db, TransactionalDatabaseMixin)
        frames = db._czo_frames()
        return bool(frames) and frames[0] is mark

    def _forget(self, shop_id: int) -> None:
        with self._lock:
            self._generation += 1
            self._map.pop(shop_id, None)

    def _empty(self) -> None:
        """Under the lock: nothing in memory may be trusted any more."""
        self._generation += 1
        self._map.clear()

    def _notified(self, conn: Any) -> None:
        """Under the lock: drop the shops the notifications name, and acknowledge each change
        (its committer waits for every listener's acknowledgement); note the acks awaited here."""
        notifies = list(conn.notifies)
        del conn.notifies[:]
        tokens: list[str] = []
        for notify in notifies:
            payload = str(notify.payload)
            if notify.channel == ACK_CHANNEL:
                token, _, pid = payload.rpartition(":")
                if token in self._acks and _is_id(pid):
                    self._acks[token].add(int(pid))
                continue
            shop, _, token = payload.partition(":")
            scope = token.partition("@")[2]
            if scope and scope != self._scope:
                # Another schema's kit in the same database (the channel is per database): its
                # shops are not ours. Acknowledged all the same, since its committer waits for
                # every listener of the database.
                if token:
                    tokens.append(token)
                continue
            self._generation += 1
            if _is_id(shop):
                self._map.pop(int(shop), None)
            else:
                self._map.clear()
            if token:
                tokens.append(token)
        if tokens:
            pid = conn.get_backend_pid()
            with conn.cursor() as cursor:  # after the memory is emptied: the ack promises it
                for token in tokens:
                    cursor.execute("SELECT pg_notify(%s, %s)", (ACK_CHANNEL, f"{token}:{pid}"))

    def _ensure_listening(self) -> bool:
        """Start listening, if not yet, and wait for it (a committer hears the acks there)."""
        deadline = time.monotonic() + ACK_TIMEOUT
        while True:
            with self._lock:
                if self._conn is not None:
                    return True
                self._start()
                if self._closed:
                    return False
            if time.monotonic() > deadline:
                log.warning("subscriptions listener is not connected: a change is committed without waiting "
                            "for other processes to forget what they hold")
                return False
            self._stop.wait(0.01)

    def _listeners(self) -> set[int]:
        rows = self.db.execute_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            (LISTENER_NAME,),
        ).fetchall()
        return {int(row[0]) for row in rows}

    def _await_acks(self, token: str) -> None:
        """After a change's commit: wait until every process listening then has emptied its
        memory (it acknowledges the notification after doing so). A listener that does not
        answer within ``ACK_TIMEOUT`` has its connection ended, which makes its process query
        the database until it listens again."""
        try:
            waiting = self._listeners()
            deadline = time.monotonic() + ACK_TIMEOUT
            rounds = 0
            while waiting:
                with self._lock:
                    conn = self._conn
                    if conn is not None:
                        try:
                            _read(conn)
                            if conn.notifies:
                                self._notified(conn)
                        except Exception:
                            self._lost(conn)
                            conn = None
                    waiting -= self._acks.get(token, set())
                if not waiting:
                    return
                rounds += 1
                if rounds % 10 == 0:
                    waiting &= self._listeners()  # a listener that ended owes no answer
                if time.monotonic() > deadline or conn is None:
                    self._end_listeners(waiting)
                    return
                try:
                    select.select([conn], [], [], 0.02)
                except (OSError, ValueError):
                    pass
        finally:
            with self._lock:
                self._acks.pop(token, None)

    def _end_listeners(self, pids: set[int]) -> None:
        """End the connections of listeners that did not acknowledge a change, and wait until
        they are gone: their processes then query the database until they listen again."""
        if not pids:
            return
        log.warning("subscriptions listeners %s did not acknowledge a change in %gs: ending their connections",
                    sorted(pids), ACK_TIMEOUT)
        ended: set[int] = set()
        for pid in pids:
            try:
                self.db.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
            except peewee.DatabaseError:
                # Not allowed to (another role without pg_signal_backend): the change is
                # committed all the same; that process may serve what it holds until it hears.
                # The others are still ended.
                log.warning("could not end subscriptions listener %s: its process may lag this change", pid,
                            exc_info=True)
                continue
            ended.add(pid)
        deadline = time.monotonic() + ACK_TIMEOUT
        while ended & self._listeners() and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- SQLite -----------------------------------------------------------------------------

    def _open_sqlite(self) -> sqlite3.Connection | None:
        """Under the lock: this cache's own connection, which only reads (``data_version``
        and the counter); the first check after it opens empties the memory."""
        if self._closed:
            return None
        uri = bool(getattr(self.db, "connect_params", {}).get("uri"))
        try:
            connection = sqlite3.connect(
                str(self.db.database), uri=uri, check_same_thread=False, isolation_level=None, timeout=1.0
            )
        except sqlite3.Error:
            log.warning("cannot open %s to watch it: each emit reads its subscriptions", self.db.database, exc_info=True)
            return None
        self._sqlite = connection
        self._data_version = self._version = None
        return connection

    # -- PostgreSQL -------------------------------------------------------------------------

    def _start(self) -> None:
        """Under the lock: start the listener thread, once (again after a fork)."""
        if self._thread is not None or self._closed:
            return
        self._stop.clear()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._listen, name="czo-subscriptions-listener", daemon=True)
        self._thread.start()

    def _connect(self) -> Any:
        import psycopg2

        params: dict[str, Any] = dict(getattr(self.db, "connect_params", {}))
        # Named once it listens: a committer waits for the acks of the connections so named.
        params["application_name"] = LISTENER_NAME + " (starting)"
        # A peer that vanishes without closing (a network cut) is noticed within seconds.
        params.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        conn = psycopg2.connect(dbname=self.db.database, **params)
        conn.autocommit = True
        with conn.cursor() as cursor:
            # Only errors reach this connection from now on: a notice is the server ending it.
            cursor.execute("SET client_min_messages = error")
            cursor.execute(f"LISTEN {CHANNEL}")
            cursor.execute(f"LISTEN {ACK_CHANNEL}")
            cursor.execute("SET application_name = %s", (LISTENER_NAME,))
            cursor.execute("SELECT current_schema()")
            (schema,) = cursor.fetchone()
        # What the server said on the way in (a collation version warning, say) is no end.
        del conn.notices[:]
        self._scope = str(schema or "")
        return conn

    def _listen(self) -> None:
        """The listener thread: connect and LISTEN, drain notifications, reconnect when lost."""
        backoff = 0.05
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:
                log.warning("subscriptions listener cannot connect (%s); each emit reads its subscriptions", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX)
                continue
            backoff = 0.05
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                # LISTEN is in place before the memory restarts: a change committed from now on
                # is notified, and one committed before is read by the next load.
                self._conn = conn
                self._empty()
            self._watch(conn)
            with self._lock:
                self._lost(conn)
            try:
                conn.close()
            except Exception:
                pass

    def _watch(self, conn: Any) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([conn, self._wake_r], [], [], _PROBE_EVERY)
            except (OSError, ValueError):
                return
            with self._lock:
                if self._conn is not conn:
                    return  # a lookup found it broken
                try:
                    if conn in ready:
                        _read(conn)
                    elif not ready:
                        with conn.cursor() as cursor:  # silence: is the connection still there?
                            cursor.execute("SELECT 1")
                    if conn.notifies:
                        self._notified(conn)
                except Exception as exc:
                    log.warning("subscriptions listener lost its connection (%s); reconnecting", exc)
                    return

    def _lost(self, conn: Any) -> None:
        """Under the lock: the listening connection is gone; lookups query until it is back."""
        if self._conn is conn:
            self._conn = None
            self._empty()

    def _after_fork(self) -> None:
        # The child shares the parent's sockets: it must neither read the parent's
        # notifications nor close its connections. It starts its own when it first looks up.
        if self._conn is not None:
            self._forked.append(self._conn)
        if self._sqlite is not None:
            self._forked.append(self._sqlite)
        self._lock = threading.Lock()
        self._conn = None
        self._sqlite = None
        self._thread = None
        self._stop = threading.Event()
        self._map = {}
        self._generation += 1

    def close(self) -> None:
        """Stop listening and forget everything (lookups query the database afterwards)."""
        with self._lock:
            self._closed = True
            self._empty()
            thread, self._thread = self._thread, None
            sqlite_conn, self._sqlite = self._sqlite, None
        self._stop.set()
        if thread is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            thread.join(timeout=10)
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
        if sqlite_conn is not None:
            sqlite_conn.close()


def _after_fork(ref: weakref.ref[SubscriptionCache]) -> None:
    cache = ref()
    if cache is not None:
        cache._after_fork()


def _read(conn: Any) -> None:
    """``conn.poll()``, raising when the server is ending the connection. Its FATAL message
    (``pg_terminate_backend``, a shutdown) reaches libpq as a notice, not an error; the end of
    the socket follows only once the server has cleaned up, after the backend has left
    ``pg_stat_activity`` (so no committer waits for it any more): a change committed in
    between is never notified here. The listening connection is told only errors
    (``client_min_messages``), so a notice is one sent while no query runs: the end."""
    conn.poll()
    if conn.notices:
        message = str(conn.notices[-1]).strip()
        del conn.notices[:]
        raise ConnectionError(f"the server said: {message}")


def _is_id(text: str) -> bool:
    """Whether a notification's ``text`` is an id ``int()`` takes: any database user may send
    any payload, up to 8000 bytes (more digits than ``int()`` converts)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def _read_version(connection: sqlite3.Connection) -> int:
    row = connection.execute("SELECT version FROM czo_app_subscriptions_version WHERE id = 1").fetchone()
    return int(row[0]) if row is not None else 0


def _index(subscriptions: list[Subscription]) -> _Entry:
    by_event: dict[str, list[Subscription]] = {}
    for subscription in subscriptions:
        for event in dict.fromkeys(subscription[2]):  # an event listed twice is one delivery
            by_event.setdefault(event, []).append(subscription)
    return {event: tuple(found) for event, found in by_event.items()}
