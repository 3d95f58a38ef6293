"""Helpers shared by the app-system tests: scripted HTTP receivers on loopback, manifests,
and a kit wired for apps (private URLs allowed, a small retry schedule).

The receivers are ``http.server.ThreadingHTTPServer`` with HTTP/1.1 keep-alive and Nagle off
(see ``BASELINES.md``: without it every request stalls ~44 ms).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peewee
import pytest

from czo_kit import Kit
from czo_kit.settings import Settings

OWNER = "owner-1"
APP_TABLES = (
    "czo_webhook_attempt",
    "czo_webhook_delivery",
    "czo_webhook_circuit",
    "czo_app_token",
    "czo_app_install_pending",
    "czo_app_idempotency_key",
    "czo_app_webhook",
    "czo_app_secret",
    "czo_app_installation",
    "shop_members",
    "order_payment",  # references are unique per shop: each test starts without any
    "order_refund",
)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    client_port: int = 0  # the same for requests over one kept-alive connection

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0


Script = Callable[[Request], Reply]


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away mid-request (a killed worker, a timed-out attempt) is expected.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Receiver:
    """A loopback HTTP server answering with ``script(request)`` and recording every request."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda request: Reply())
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time(),
                    int(self.client_address[1]),
                )
                with receiver.lock:
                    receiver.requests.append(request)
                reply = receiver.script(request)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def posts(self, path: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST" and (path is None or r.path == path)]

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def manifest(
    base: str,
    *,
    app_id: str = "acme",
    permissions: list[dict[str, Any]] | None = None,
    events: list[str] | None = None,
    token_target: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A valid manifest whose webhook posts ``events`` to ``<base>/hook``."""
    data: dict[str, Any] = {
        "id": app_id,
        "name": "Acme app",
        "version": "1.0.0",
        "about": "test app",
        "app_url": base + "/",
        "permissions": permissions
        if permissions is not None
        else [{"resource": "order", "actions": ["read", "write"], "scope": "shop"}],
        "webhooks": [
            {"name": "orders", "events": events or ["order.created"], "target_url": base + "/hook", "is_active": True}
        ],
    }
    if token_target:
        data["token_target_url"] = base + "/token"
    data.update(extra)
    return data


def reset_app_tables(url: str) -> None:
    """PostgreSQL tables live for the whole session: start each test from empty app tables."""
    if not url.startswith("postgres"):
        return
    from czo_kit.default_plugins.postgres import parse_postgresql_url

    dbname, params = parse_postgresql_url(url)
    db = peewee.PostgresqlDatabase(dbname, **params)
    try:
        with db.atomic():
            for table in APP_TABLES:
                db.execute_sql(f'DROP TABLE IF EXISTS "{table}" CASCADE')
    finally:
        db.close()


EVENT_TABLES = ("czo_event_delivery", "czo_event_dead_letter", "czo_event_processed", "czo_event_outbox")


def reset_event_tables(url: str) -> None:
    """Start from an empty outbox on PostgreSQL (one schema per session): a kit's sweep (its
    in-process deliverer, without a queue) would run the events other tests left there, with
    this test's handlers and apps."""
    drop_tables(url, *EVENT_TABLES)


def drop_tables(url: str, *tables: str) -> None:
    """PostgreSQL tables outlive a test (one schema per session): start without these."""
    if not url.startswith("postgres"):
        return
    from czo_kit.default_plugins.postgres import parse_postgresql_url

    dbname, params = parse_postgresql_url(url)
    db = peewee.PostgresqlDatabase(dbname, **params)
    try:
        with db.atomic():
            for table in tables:
                db.execute_sql(f'DROP TABLE IF EXISTS "{table}" CASCADE')
    finally:
        db.close()


def app_settings(settings_for: Callable[..., Settings], url: str, queue_dir: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "apps_allow_private_urls": True,
        "queue_url": f"sqlite:///{os.path.join(queue_dir, 'queue.sqlite3')}",
        "webhooks_retry_schedule": (0.2, 0.2, 0.2),
        "webhooks_timeout": 2.0,
        "events_sweep_interval": 0.5,
    }
    values.update(changes)
    return settings_for(url, **values)


@contextmanager
def app_kit(settings: Settings, *plugins: object) -> Iterator[Kit]:
    """A kit with ``plugins`` on fresh app tables, the owner of shops 1 and 2."""
    reset_app_tables(settings.database_url)
    kit = Kit(settings, plugins=plugins)
    try:
        kit.create_tables()
        kit.webhooks.ensure_tables()
        kit.permission_service.grant(OWNER, 1, "owner")
        kit.permission_service.grant(OWNER, 2, "owner")
        yield kit
    finally:
        kit.close()


def raw_rows(kit: Kit, table: str) -> list[dict[str, Any]]:
    cursor = kit.db.execute_sql(f'SELECT * FROM "{table}"')
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


KitFactory = Callable[..., Kit]

BOTH_MODES = pytest.mark.parametrize("queue_mode", ["queue", "no-queue"], indirect=True)
"""Run a test with a queue and without one (``CZO_QUEUE_URL=""``: the in-process deliverer),
through the ``queue_mode`` fixture (conftest)."""


def kit_factory(
    open_kit: Callable[..., AbstractContextManager[Kit]],
    settings_for: Callable[..., Settings],
    db_url: str,
    queue_dir: str,
    queue_mode: str,
) -> Iterator[KitFactory]:
    """The body of a ``make_kit`` fixture: ``make(*plugins, **changes)`` opens
    ``open_kit(app_settings(...), *plugins)`` on the test's database and queue file (no queue
    in ``no-queue`` mode); every kit it opened is closed afterwards, the last first."""
    opened: list[AbstractContextManager[Kit]] = []

    def make(*plugins: object, **changes: Any) -> Kit:
        if queue_mode == "no-queue":
            changes.setdefault("queue_url", "")
        manager = open_kit(app_settings(settings_for, db_url, queue_dir, **changes), *plugins)
        opened.append(manager)
        return manager.__enter__()

    yield make
    for manager in reversed(opened):
        manager.__exit__(None, None, None)


@contextmanager
def consuming(kit: Kit) -> Iterator[None]:
    """A consumer of the kit's queue on threads of this process or, without a queue, the
    kit's in-process deliverer (which runs until the kit closes)."""
    if kit.queue is None:
        assert kit.deliverer is not None
        kit.deliverer.start()
        yield
        return
    with kit.consumer(workers=2, sweep_interval=0.5):
        yield


def wait_for(condition: Callable[[], bool], *, timeout: float = 15.0, what: str = "condition") -> None:
    from czo_kit.testing.cache import wait_until

    assert wait_until(condition, timeout=timeout, interval=0.02), f"timed out after {timeout}s waiting for {what}"


def recorded_deliveries(kit: Kit, receiver_url: str, count: int = 3) -> list[int]:
    """Install the receiver's app and record ``count`` deliveries (three by default), none in
    the queue (the test runs them itself); their ids, in order."""
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver_url))
    with kit.db.atomic():
        for n in range(count):
            kit.events.emit_async("order.created", {"shop_id": 1, "id": n, "total": n})
    kit.webhooks.flush()
    assert kit.queue is not None
    kit.queue.flush()
    return sorted(int(d.id) for d in kit.webhooks.deliveries())


def start_script(script: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run ``script`` with this interpreter in a process of its own (a worker that a kill -9
    test stops), its output written to ``log`` for the failure report."""
    out = open(log, "wb")  # noqa: SIM115 - the child holds its own descriptor
    try:
        return subprocess.Popen([sys.executable, str(script)], env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


@contextmanager
def worker_processes(
    kit: Kit, script: Path, env: dict[str, str], logs: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``start(name, **more_env)`` runs ``script`` as a worker process (``start_script``, its
    log in ``logs/name.log``); on the way out, whatever happened, the workers still running
    are killed and the kit's queue is emptied, so nothing outlives the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, **more_env: str) -> subprocess.Popen[bytes]:
        process = start_script(script, {**env, **more_env}, logs / f"{name}.log")
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if kit.queue is not None:
            kit.queue.flush()


def kill_9(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` and reap it."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def webhook_worker_env(pg_url: str, redis_url: str, queue_name: str, *, lease: float) -> dict[str, str]:
    """The environment of a webhook worker process in the kill -9 tests: this run's servers, a
    queue of its own, a short lease (so the sweep recovers what a killed worker held) and the
    loopback receiver allowed; no other CZO_ setting leaks in from the test process."""
    from conftest import SECRET as TEST_SECRET

    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CZO_")},
        "CZO_DATABASE_URL": pg_url,
        "CZO_QUEUE_URL": redis_url,
        "CZO_QUEUE_NAME": queue_name,
        "CZO_SECRET_KEY": TEST_SECRET,
        "CZO_WEBHOOKS_LEASE": f"{lease:g}",
        "CZO_APPS_ALLOW_PRIVATE_URLS": "true",
        "CZO_LOG_LEVEL": "WARNING",
    }
