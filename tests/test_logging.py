"""Secrets never reach a log, at any level: not through Peewee's query log (parameters), not
through urllib3's request log (query strings), not through the CLI at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3

from apps_support import OWNER, Receiver, app_settings, manifest, raw_rows, reset_app_tables
from czo_kit import Kit
from czo_kit._logging import MASK
from czo_kit.settings import Settings


@pytest.fixture
def kit(database_url: str, settings_for: Callable[..., Settings], tmp_path: Any) -> Iterator[Kit]:
    settings = app_settings(settings_for, database_url, str(tmp_path))
    reset_app_tables(settings.database_url)
    with Kit(settings, plugins=()) as kit:
        kit.create_tables()
        kit.permission_service.grant(OWNER, 1, "owner")
        yield kit


def test_debug_logs_carry_no_token_and_no_webhook_secret(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Receiver() as app:
        result = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app.url))
        rotated = kit.apps.rotate_webhook_secret(shop_id=1, app_id=result.installation.app_id)
        principal = kit.apps.authenticate(result.token)
    assert principal.shop_id == 1
    secrets = {row["secret"] for row in raw_rows(kit, "czo_app_secret")} | {rotated}
    token_hashes = {row["token_hash"] for row in raw_rows(kit, "czo_app_token")}
    assert secrets and token_hashes
    # The SQL that wrote and read them was logged (so this looks where they would be)...
    queries = [r for r in caplog.records if r.name == "peewee"]
    assert any("czo_app_secret" in r.getMessage() for r in queries)
    assert any(MASK in r.getMessage() for r in queries)
    # ... with none of them in it, nor in any other record.
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (result.token, *secrets, *token_hashes):
        assert str(secret) not in text


def test_request_logs_drop_query_strings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    from czo_kit._logging import install_log_redaction

    install_log_redaction()
    with Receiver() as app, urllib3.PoolManager() as http:
        response = http.request("GET", app.url + "/hook?token=s3cr3t-in-the-url")
    assert response.status == 200
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("/hook?" + MASK in line for line in lines), lines
    assert not any("s3cr3t" in line for line in lines)


def test_the_cli_at_debug_logs_no_token_and_no_secret(tmp_path: Any) -> None:
    """`czo-kit --log-level DEBUG` turns the query log on: an install and a secret rotation
    through the CLI leave their token and secrets out of it."""
    import json
    import os
    import shutil
    import sqlite3
    import subprocess
    import sys

    from apps_support import Reply, Request

    database = tmp_path / "cli.sqlite3"
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CZO_")},
        "CZO_DATABASE_URL": f"sqlite:///{database}",
        "CZO_QUEUE_URL": "",
        "CZO_SECRET_KEY": "k" * 40,
        "CZO_APPS_ALLOW_PRIVATE_URLS": "true",
        "CZO_LOG_LEVEL": "DEBUG",
    }
    script = shutil.which("czo-kit", path=os.path.dirname(sys.executable)) or "czo-kit"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([script, *args], capture_output=True, text=True, env=environ, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    def answer(request: Request) -> Reply:
        if request.path == "/manifest":
            return Reply(body=json.dumps(manifest(app.url, token_target=True)).encode())
        return Reply()

    with Receiver(answer) as app:
        run("db", "init")
        run("users", "grant", OWNER, "1", "owner")
        installed = run("apps", "install", app.url + "/manifest", "--shop", "1", "--user", OWNER)
        rotated = run("apps", "rotate-secret", "acme", "--shop", "1")
        handed = [r.json() for r in app.posts("/token")]
    token = installed.stdout.rsplit(": ", 1)[1].strip()
    with sqlite3.connect(database) as conn:
        secrets = {row[0] for row in conn.execute("SELECT secret FROM czo_app_secret")}
        hashes = {row[0] for row in conn.execute("SELECT token_hash FROM czo_app_token")}
    conn.close()
    assert len(secrets) == 2 and hashes and len(handed) == 2
    logs = installed.stderr + rotated.stderr
    assert "DEBUG peewee:" in logs and "czo_app_secret" in logs and MASK in logs
    for secret in (token, *secrets, *hashes):
        assert secret not in logs


def test_a_dead_webhook_is_logged_without_its_targets_query(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    from apps_support import Reply, wait_for

    caplog.set_level(logging.INFO)
    with Receiver(lambda request: Reply(404, b"gone")) as app:
        data = manifest(app.url)
        data["webhooks"][0]["target_url"] = app.url + "/hook?token=s3cr3t-in-the-target"
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=data)
        with kit.consumer(workers=1, sweep_interval=0.5):
            kit.events.emit_async("order.created", {"id": 1, "shop_id": 1, "total": 100, "currency": "EUR"})
            wait_for(lambda: kit.webhooks.stats() == {"dead": 1}, what="the dead letter")
        assert app.requests and app.requests[0].path == "/hook?token=s3cr3t-in-the-target"
    dead = [r.getMessage() for r in caplog.records if "is dead after" in r.getMessage()]
    assert len(dead) == 1 and f" to {app.url}/hook?*** is dead after 1 attempt(s)" in dead[0]  # query masked
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)
