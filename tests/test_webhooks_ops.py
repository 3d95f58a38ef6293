"""Operating webhooks: failures an operator can see (tracebacks, logged and stored, without
secrets or target query strings), JSON listings, circuits in view, retention and the CLI's
answers."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from apps_support import OWNER, Receiver, Reply, app_kit, app_settings, manifest, wait_for
from czo_kit import Kit
from czo_kit.apps import InstallResult
from czo_kit.cli import cli
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
KitFactory = Callable[..., Kit]
ORDER = {"shop_id": 1, "id": 7, "total": 1999}
TOKEN = "s3cr3t-query-token"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def make_kit(db_url: str, settings_for: SettingsFor, tmp_path: Path) -> Iterator[KitFactory]:
    opened: list[AbstractContextManager[Kit]] = []

    def make(**changes: Any) -> Kit:
        manager = app_kit(app_settings(settings_for, db_url, str(tmp_path), **changes))
        opened.append(manager)
        return manager.__enter__()

    yield make
    for manager in reversed(opened):
        manager.__exit__(None, None, None)


@pytest.fixture
def kit(make_kit: KitFactory) -> Kit:
    return make_kit()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import SECRET

    monkeypatch.setenv("CZO_DATABASE_URL", db_url)
    monkeypatch.setenv("CZO_QUEUE_URL", f"sqlite:///{tmp_path / 'queue.sqlite3'}")
    monkeypatch.setenv("CZO_SECRET_KEY", SECRET)
    monkeypatch.setenv("CZO_APPS_ALLOW_PRIVATE_URLS", "true")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_cli(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def install(kit: Kit, base: str, *, target: str | None = None, **options: Any) -> InstallResult:
    shop_id = options.pop("shop_id", 1)
    data = manifest(base, **options)
    if target is not None:
        data["webhooks"][0]["target_url"] = target
    return kit.apps.install(shop_id=shop_id, installer_id=OWNER, manifest=data)


def states(kit: Kit) -> dict[str, int]:
    found: dict[str, int] = {}
    for delivery in kit.webhooks.deliveries(limit=10_000):
        found[delivery.state] = found.get(delivery.state, 0) + 1
    return found


# -- failures you can see -----------------------------------------------------------------------


def test_an_attempt_that_raises_is_logged_and_stored_with_its_traceback_and_no_secrets(
    make_kit: KitFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture, cli_env: None
) -> None:
    kit = make_kit(webhooks_breaker_threshold=100)
    target = f"{receiver.url}/hook?token={TOKEN}"
    result = install(kit, receiver.url, target=target)
    real = kit.http.request

    def request(method: str, url: str, **options: Any) -> Any:
        # A library whose error quotes the URL it was given, query string and all, and whose
        # message is far longer than anything worth keeping.
        raise RuntimeError(f"the client broke on {url} " + "x" * 50_000)

    kit.http.request = request  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="czo_kit.webhooks"):
        with kit.consumer(workers=2, sweep_interval=0.5):
            kit.events.emit_async("order.created", ORDER)
            wait_for(lambda: states(kit) == {"dead": 1}, what="the dead letter")
    kit.http.request = real  # type: ignore[method-assign]

    [delivery] = kit.webhooks.deliveries()
    attempts = kit.webhooks.attempts(delivery.id)
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]  # retried, as a network error is
    stored = [delivery.last_error or "", delivery.last_error_detail or ""]
    for attempt in attempts:
        assert attempt.error.startswith("RuntimeError: the client broke on ")
        assert attempt.error_detail.startswith("Traceback (most recent call last):")
        assert "in deliver" in attempt.error_detail and "characters cut" in attempt.error_detail
        assert len(attempt.error_detail) <= 8_100  # bounded (8,000 characters and a marker)
        stored += [attempt.error, attempt.error_detail]
    assert delivery.last_error_detail == attempts[-1].error_detail
    assert "/hook?***" in delivery.last_error
    assert raw_circuits(kit) == []  # a fault on our side is not the target's

    records = [r for r in caplog.records if r.name == "czo_kit.webhooks" and r.exc_info]
    assert [r.levelname for r in records] == ["WARNING"] * 3 + ["ERROR"]
    assert "is dead after 4 attempt(s)" in records[-1].getMessage()
    logged = caplog.text
    assert logged.count("Traceback (most recent call last):") == 4
    assert "in deliver" in logged

    shown = invoke("webhooks", "dead", str(delivery.id))
    assert shown.exit_code == 0, shown.output
    assert "traceback of the last attempt:" in shown.output and "RuntimeError: the client broke" in shown.output
    assert [line.split()[:2] for line in shown.output.splitlines() if line.strip().startswith("attempt ")] == [
        ["attempt", "1"], ["attempt", "2"], ["attempt", "3"], ["attempt", "4"]
    ]
    data = json.loads(run_cli("webhooks", "dead", str(delivery.id), "--json"))
    assert data["state"] == "dead" and data["last_error_detail"] == delivery.last_error_detail
    assert [a["attempt"] for a in data["attempt_log"]] == [1, 2, 3, 4]
    assert data["target"] == f"{receiver.url}/hook?***"

    for text in [*stored, logged, shown.output, json.dumps(data)]:
        assert TOKEN not in text
        assert result.webhook_secret.removeprefix("whsec_") not in text


def test_a_network_failure_is_logged_with_its_traceback(
    make_kit: KitFactory, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    kit = make_kit(webhooks_breaker_threshold=100, webhooks_retry_schedule=(0.2,))
    listener = socket.create_server(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # nothing listens there now
    install(kit, base, target=f"{base}/hook?token={TOKEN}")
    with caplog.at_level(logging.WARNING, logger="czo_kit.webhooks"):
        with kit.consumer(workers=1, sweep_interval=0.5):
            kit.events.emit_async("order.created", ORDER)
            wait_for(lambda: states(kit) == {"dead": 1}, what="the dead letter")
    [delivery] = kit.webhooks.deliveries()
    assert "Connection refused" in (delivery.last_error_detail or "")
    records = [r for r in caplog.records if r.name == "czo_kit.webhooks" and r.exc_info]
    assert [r.levelname for r in records] == ["WARNING", "ERROR"]
    assert "Traceback (most recent call last):" in caplog.text and TOKEN not in caplog.text


def raw_circuits(kit: Kit) -> list[Any]:
    from apps_support import raw_rows

    return raw_rows(kit, "czo_webhook_circuit")


def test_every_listing_of_the_apps_and_webhooks_groups_speaks_json(
    kit: Kit, receiver: Receiver, cli_env: None
) -> None:
    install(kit, receiver.url)
    receiver.script = lambda request: Reply(410, b"gone")
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", ORDER)
        wait_for(lambda: states(kit) == {"dead": 1}, what="the dead letter")
    [delivery] = kit.webhooks.deliveries()

    apps = json.loads(run_cli("apps", "list", "--shop", "1", "--json"))
    assert [(a["app_id"], a["shop_id"], a["version"]) for a in apps] == [("acme", 1, "1.0.0")]
    assert apps[0]["installed_at"].endswith("Z") and apps[0]["permissions"] == ["order:read", "order:write"]
    assert json.loads(run_cli("apps", "list", "--shop", "2", "--json")) == []
    tokens = json.loads(run_cli("apps", "tokens", "acme", "--shop", "1", "--json"))
    assert len(tokens) == 1 and set(tokens[0]) == {"id", "name", "last4", "created_at", "revoked_at"}
    for args in (("webhooks", "deliveries"), ("webhooks", "dead")):
        [row] = json.loads(run_cli(*args, "--json"))
        assert (row["id"], row["state"], row["event"], row["last_status"]) == (delivery.id, "dead", "order.created", 410)
        assert row["attempts"] == 1 and "not retried" in row["last_error"]
    assert json.loads(run_cli("webhooks", "deliveries", "--state", "delivered", "--json")) == []
    assert json.loads(run_cli("webhooks", "circuits", "--json")) == []


# -- circuits in view ---------------------------------------------------------------------------


def test_circuits_show_open_then_probing_with_the_next_attempt_of_each_delivery(
    make_kit: KitFactory, receiver: Receiver, cli_env: None
) -> None:
    import threading

    from czo_kit.apps.webhooks import WebhookCircuit

    kit = make_kit(webhooks_breaker_threshold=2, webhooks_breaker_cooldown=600, webhooks_retry_schedule=(0.2,) * 8)
    install(kit, receiver.url)
    receiver.script = lambda request: Reply(503)
    with kit.consumer(workers=2, sweep_interval=0.5):
        for i in (1, 2):
            kit.events.emit_async("order.created", dict(ORDER, id=i))

        def paused() -> bool:  # the circuit opened, and each delivery then came back paused
            opened = WebhookCircuit.select().first(kit.db)
            return opened is not None and opened.opened_until is not None and all(
                d.state == "retry" and d.next_attempt_at is not None and d.next_attempt_at >= opened.updated_at
                for d in kit.webhooks.deliveries()
            )

        wait_for(paused, what="the circuit to open and both deliveries to wait for it")
    [circuit] = kit.webhooks.circuits()
    origin = receiver.url
    row = WebhookCircuit.select().first(kit.db)
    assert (circuit.origin, circuit.state, circuit.waiting) == (origin, "open", 2)
    assert circuit.failures >= 2 and circuit.next_probe_at == row.opened_until and circuit.probe_started_at is None

    listing = run_cli("webhooks", "deliveries")
    lines = listing.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert f"circuit open  next {circuit.next_probe_at:%Y-%m-%d %H:%M:%S}" in line, line
    for item in json.loads(run_cli("webhooks", "deliveries", "--json")):
        assert item["circuit"]["state"] == "open" and item["state"] == "retry"
        assert item["next_attempt_at"] == item["circuit"]["next_probe_at"]
    [shown] = json.loads(run_cli("webhooks", "circuits", "--json"))
    assert (shown["origin"], shown["state"], shown["waiting"]) == (origin, "open", 2)
    assert f"{origin}  open" in run_cli("webhooks", "circuits")

    # The cool-down is over: the next attempt is the probe, held by the receiver meanwhile.
    WebhookCircuit.update(opened_until=row.opened_until - dt.timedelta(seconds=601)).execute(kit.db)
    release = threading.Event()

    def hold(request: Any) -> Reply:
        release.wait(60)
        return Reply(200)

    receiver.script = hold
    first, second = sorted(d.id for d in kit.webhooks.deliveries())
    outcome: list[str] = []
    probe = threading.Thread(target=lambda: outcome.append(kit.webhooks.deliver(first)), daemon=True)
    probe.start()
    try:
        wait_for(lambda: [c.state for c in kit.webhooks.circuits()] == ["probing"], what="the probe to go out")
        [circuit] = kit.webhooks.circuits()
        assert circuit.probe_started_at is not None and circuit.next_probe_at is not None
        assert circuit.next_probe_at > circuit.probe_started_at
        lines = {int(line.split()[0]): line for line in run_cli("webhooks", "deliveries").splitlines()}
        assert "running" in lines[first] and "circuit probing  next -" in lines[first]
        assert f"circuit probing  next {circuit.next_probe_at:%Y-%m-%d %H:%M:%S}" in lines[second]
        assert "probe out since" in run_cli("webhooks", "circuits")
    finally:
        release.set()
        probe.join(60)
    assert outcome == ["delivered"]
    assert kit.webhooks.circuits() == []  # closed again
    assert "every circuit is closed" in run_cli("webhooks", "circuits")
    assert "circuit closed" in {int(line.split()[0]): line for line in run_cli("webhooks", "deliveries").splitlines()}[second]
