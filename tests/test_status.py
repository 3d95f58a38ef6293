"""`czo-kit status`: servers reachable (with latency) or not, live work and its oldest age, dead
letters, open circuits and recent workers, as text and as JSON; exit 1 when a server is down."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.settings import Settings

SECRET = "status-secret-" + "k" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    environ.update(
        CZO_DATABASE_URL=database_url, CZO_QUEUE_URL=f"sqlite:///{tmp_path / 'queue.sqlite3'}",
        CZO_SECRET_KEY=SECRET, CZO_PLUGINS="",
    )
    with Kit(Settings.from_env(environ)) as kit:
        kit.create_tables()
        with kit.db.atomic():  # a clean slate on the shared PostgreSQL schema
            for table in ("czo_event_delivery", "czo_event_outbox", "czo_event_dead_letter",
                          "czo_webhook_circuit", "czo_worker"):
                kit.db.execute_sql(f'DELETE FROM "{table}"')
    yield environ


def czo(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("czo-kit", path=os.path.dirname(sys.executable)) or "czo-kit"
    return subprocess.run([script, *args], capture_output=True, text=True, env=environ, timeout=120)


def test_status_shows_servers_work_dead_letters_circuits_and_workers(env: dict[str, str]) -> None:
    from czo_kit.apps._webhook_models import WebhookCircuit
    from czo_kit.db.model import utcnow

    with Kit(Settings.from_env(env)) as kit:
        for n in range(3):
            kit.events.emit_async("czo_test.status", {"n": n}, delay=3600)  # held back an hour
        kit.outbox.flush()
        kit.outbox.heartbeat("thread").beat()  # as a worker's sweeper does every few seconds
        WebhookCircuit.insert(
            origin="https://flaky.example", failures=5, opened_until=utcnow() + dt.timedelta(seconds=90),
            updated_at=utcnow(),
        ).execute(kit.db)
    done = czo(env, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("czo-kit status at ")
    by_name = {line.split()[0]: line for line in lines[1:] if line.strip()}
    for server in ("database", "cache", "queue"):
        assert by_name[server].split()[1] == "ok" and " ms" in by_name[server]
    assert "queued 3" in by_name["outbox"] and "pending 0" in by_name["outbox"]
    assert "dead letters 0" in by_name["events"]
    assert by_name["circuit"].startswith("circuit    https://flaky.example: open after 5 failure(s), next probe in ")
    assert "1 seen recently" in by_name["workers"]
    assert f"pid {os.getpid()} (thread" in done.stdout and "plugins: czo_kit.default_plugins." in done.stdout

    as_json = czo(env, "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data: dict[str, Any] = json.loads(as_json.stdout)
    assert [(c["name"], c["ok"]) for c in data["checks"]] == [("database", True), ("cache", True), ("queue", True)]
    assert data["outbox"]["outbox"]["queued"]["count"] == 3 and data["outbox"]["dead_letters"] == 0
    assert data["circuits"][0]["origin"] == "https://flaky.example" and data["circuits"][0]["state"] == "open"
    assert data["workers"][0]["pid"] == os.getpid() and data["errors"] == []


def test_a_queue_that_does_not_answer_is_down_and_fails_the_command(env: dict[str, str]) -> None:
    env = {**env, "CZO_QUEUE_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = czo(env, "status")
    assert done.returncode == 1, done.stderr
    queue = next(line for line in done.stdout.splitlines() if line.startswith("queue"))
    assert queue.split()[1] == "DOWN" and "Connection refused" in queue
    assert "outbox" in done.stdout  # the rest is still read and shown
    assert "Traceback" not in done.stdout + done.stderr


def test_a_database_that_does_not_answer_is_down_and_nothing_else_is_read(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    environ.update(
        CZO_DATABASE_URL=f"postgresql://postgres:pw@127.0.0.1:{free_port()}/test", CZO_QUEUE_URL="",
        CZO_SECRET_KEY=SECRET, CZO_PLUGINS="",
    )
    done = czo(environ, "status", "--json")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    database = data["checks"][0]
    assert (database["name"], database["ok"]) == ("database", False)
    assert "Connection refused" in database["detail"] and ":***@" in database["url"] and "pw@" not in done.stdout
    assert data["outbox"] is None and data["workers"] is None
    assert data["checks"][2]["detail"].startswith("none: events and webhooks are delivered in-process")


def test_the_kit_starts_while_the_caches_redis_is_down_and_status_says_so(env: dict[str, str]) -> None:
    env = {**env, "CZO_CACHE_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = czo(env, "status")
    assert done.returncode == 1, done.stderr
    cache = next(line for line in done.stdout.splitlines() if line.startswith("cache"))
    assert cache.split()[1] == "DOWN" and "served as misses" in cache
    database = next(line for line in done.stdout.splitlines() if line.startswith("database"))
    assert database.split()[1] == "ok" and "outbox" in done.stdout  # everything else still works
