"""Operating webhooks: failures an operator can see (tracebacks, logged and stored, without
secrets or target query strings), JSON listings, circuits in view, retention and the CLI's
answers."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from apps_support import OWNER, KitFactory, Receiver, Reply, app_kit, app_settings, kit_factory, manifest, wait_for
from czo_kit import Kit
from czo_kit.apps import InstallResult
from czo_kit.cli import cli
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
ORDER = {"shop_id": 1, "id": 7, "total": 1999}
TOKEN = "s3cr3t-query-token"


@pytest.fixture
def make_kit(db_url: str, settings_for: SettingsFor, tmp_path: Path) -> Iterator[KitFactory]:
    yield from kit_factory(app_kit, settings_for, db_url, str(tmp_path), "queue")


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
        assert "in _attempt" in attempt.error_detail and "characters cut" in attempt.error_detail
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
    assert "in _attempt" in logged  # the frame of the attempt that raised

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


# -- retention ----------------------------------------------------------------------------------


def backdate(kit: Kit, ids: list[int], *, days: float, **changes: Any) -> None:
    from czo_kit.apps.webhooks import WebhookDelivery
    from czo_kit.db.model import utcnow

    then = utcnow() - dt.timedelta(days=days)
    WebhookDelivery.update(updated_at=then, **changes).where(WebhookDelivery.id.in_(ids)).execute(kit.db)


def attempt_counts(kit: Kit) -> dict[int, int]:
    from czo_kit.apps.webhooks import WebhookAttempt

    rows = WebhookAttempt.select(WebhookAttempt.delivery).tuples().execute(kit.db)
    counts: dict[int, int] = {}
    for (delivery_id,) in rows:
        counts[delivery_id] = counts.get(delivery_id, 0) + 1
    return counts


def test_pruning_deletes_old_delivered_deliveries_and_their_attempts_and_never_live_work(
    kit: Kit, receiver: Receiver, cli_env: None
) -> None:
    from czo_kit.db.model import utcnow

    install(kit, receiver.url)
    with kit.consumer(workers=2, sweep_interval=60):
        for i in range(7):
            kit.events.emit_async("order.created", dict(ORDER, id=i))
        wait_for(lambda: states(kit) == {"delivered": 7}, what="seven deliveries")
    queued, running, retry, dead, old, recent, week = sorted(d.id for d in kit.webhooks.deliveries())
    # Every one a month old but the last two: in each state a delivery can be in.
    backdate(kit, [queued], days=30, state="queued")
    backdate(kit, [running], days=30, state="running", lease_until=utcnow() + dt.timedelta(hours=1))
    backdate(kit, [retry], days=30, state="retry", next_attempt_at=utcnow() + dt.timedelta(hours=1))
    backdate(kit, [dead], days=30, state="dead")
    backdate(kit, [old], days=30)
    backdate(kit, [recent], days=1)
    backdate(kit, [week], days=6.9)
    assert set(attempt_counts(kit)) == {queued, running, retry, dead, old, recent, week}

    assert kit.webhooks.prune() == 1  # the retention period: 7 days
    left = {d.id: d.state for d in kit.webhooks.deliveries()}
    assert left == {queued: "queued", running: "running", retry: "retry", dead: "dead", recent: "delivered",
                    week: "delivered"}
    assert set(attempt_counts(kit)) == set(left)  # the pruned one's attempts went with it

    assert run_cli("webhooks", "prune", "--older-than", "12h") == "pruned 2 delivered deliveries older than 12h\n"
    assert run_cli("webhooks", "prune") == "pruned 0 delivered deliveries older than 1w\n"
    assert {d.id: d.state for d in kit.webhooks.deliveries()} == {
        queued: "queued", running: "running", retry: "retry", dead: "dead"
    }
    assert kit.webhooks.prune(older_than=0) == 0  # nothing delivered left; live work stays
    assert set(attempt_counts(kit)) == {queued, running, retry, dead}


def test_pruning_goes_in_small_batches(kit: Kit, receiver: Receiver) -> None:
    install(kit, receiver.url)
    with kit.consumer(workers=2, sweep_interval=60):
        with kit.db.atomic():
            for i in range(12):
                kit.events.emit_async("order.created", dict(ORDER, id=i))
        wait_for(lambda: states(kit) == {"delivered": 12}, what="twelve deliveries")
    backdate(kit, [d.id for d in kit.webhooks.deliveries()], days=30)
    assert kit.webhooks.prune(batch=5, max_batches=2) == 10  # two batches, then it stops
    assert kit.webhooks.prune(batch=5) == 2
    assert kit.webhooks.deliveries() == [] and attempt_counts(kit) == {}


def test_discarding_dead_deliveries_only(kit: Kit, receiver: Receiver, cli_env: None) -> None:
    install(kit, receiver.url)
    receiver.script = lambda request: Reply(410) if request.json()["data"]["id"] < 3 else Reply(200)
    with kit.consumer(workers=2, sweep_interval=60):
        for i in range(4):
            kit.events.emit_async("order.created", dict(ORDER, id=i))
        wait_for(lambda: states(kit) == {"dead": 3, "delivered": 1}, what="three dead, one delivered")
    rows = sorted(kit.webhooks.deliveries(), key=lambda d: d.id)
    first, second, third = [d.id for d in rows if d.state == "dead"]
    [delivered] = [d.id for d in rows if d.state == "delivered"]
    backdate(kit, [first], days=40)
    backdate(kit, [second], days=10)

    result = invoke("webhooks", "discard", str(delivered))
    assert result.exit_code == 1
    assert f"webhook delivery {delivered} is delivered, not dead: only dead deliveries are discarded" in result.output
    assert invoke("webhooks", "discard", "99999").exit_code == 1
    for args, complaint in ((["webhooks", "discard"], "missing DELIVERY_ID or --older-than"),
                            (["webhooks", "discard", "5", "--older-than", "1d"], "not both"),
                            (["webhooks", "discard", "--older-than", "soon"], "'soon' is not a duration")):
        result = invoke(*args)
        assert result.exit_code == 2 and complaint in result.output, result.output

    assert run_cli("webhooks", "discard", "--older-than", "30d", "--yes") == "discarded 1 dead delivery older than 30d\n"
    aborted = CliRunner().invoke(cli, ["webhooks", "discard", "--older-than", "1w"], input="n\n")
    assert aborted.exit_code == 1 and "Aborted" in aborted.output
    assert run_cli("webhooks", "discard", str(third)) == f"discarded dead delivery {third}\n"
    assert {d.id: d.state for d in kit.webhooks.deliveries()} == {second: "dead", delivered: "delivered"}
    assert set(attempt_counts(kit)) == {second, delivered}
    assert kit.webhooks.discard(older_than=7 * 86400) == 1
    assert [d.id for d in kit.webhooks.deliveries()] == [delivered]


@pytest.fixture
def worker_queue(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """SQLite's queue file next to a SQLite database; Redis next to PostgreSQL."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.mark.slow
def test_a_long_run_keeps_the_tables_bounded_with_a_real_worker(
    db_url: str, worker_queue: str, tmp_path: Path, settings_for: SettingsFor, receiver: Receiver
) -> None:
    """Rounds of deliveries, each followed by "a day later": the worker's sweep prunes what
    is past the retention period (one hour here) by itself; dead letters stay."""
    import os
    import subprocess
    import sys
    import uuid

    from conftest import SECRET
    from czo_kit.apps.webhooks import WebhookAttempt, WebhookDelivery

    rounds, per_round = 12, 20
    queue_name = f"czo_retention_{uuid.uuid4().hex[:8]}"
    options = app_settings(settings_for, db_url, str(tmp_path), queue_url=worker_queue, queue_name=queue_name,
                           webhooks_retention=3600.0)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CZO_")},
        "CZO_DATABASE_URL": db_url, "CZO_QUEUE_URL": worker_queue, "CZO_QUEUE_NAME": queue_name,
        "CZO_SECRET_KEY": SECRET, "CZO_APPS_ALLOW_PRIVATE_URLS": "true", "CZO_WEBHOOKS_RETENTION": "3600",
    }
    receiver.script = lambda request: Reply(410) if request.json()["data"]["id"] % per_round == 0 else Reply(200)
    sizes: list[tuple[int, int]] = []
    with app_kit(options) as kit:
        install(kit, receiver.url)
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "czo-kit"), "worker", "-w", "2", "--sweep-interval", "0.2",
             "--max-delay", "0.1"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            def table_sizes() -> tuple[int, int]:
                return WebhookDelivery.select().count(kit.db), WebhookAttempt.select().count(kit.db)

            for n in range(rounds):
                with kit.db.atomic():
                    for i in range(per_round):
                        kit.events.emit_async("order.created", dict(ORDER, id=n * per_round + i))
                wait_for(lambda: kit.webhooks.stats(delivered=True).get("delivered", 0) == per_round - 1,
                         timeout=60, what=f"round {n}'s deliveries")
                sizes.append(table_sizes())
                # A day later: what was delivered is past the retention period.
                delivered = [d.id for d in kit.webhooks.deliveries(state="delivered", limit=1000)]
                backdate(kit, delivered, days=1)
                wait_for(lambda: "delivered" not in kit.webhooks.stats(delivered=True), timeout=60,
                         what=f"the worker's sweep to prune round {n}")
                sizes.append(table_sizes())
        finally:
            worker.kill()
            worker.wait(timeout=30)
            log.close()
            if kit.queue is not None:
                kit.queue.flush()
        dead = kit.webhooks.stats(delivered=True)
    # Each round's delivered rows went; the dead ones (one per round) stay until discarded.
    assert dead == {"dead": rounds}, (tmp_path / "worker.log").read_text()[-3000:]
    assert max(deliveries for deliveries, _ in sizes) == per_round + rounds - 1
    assert max(attempts for _, attempts in sizes) == per_round + rounds - 1
    assert sizes[-1] == (rounds, rounds)


def test_the_sweep_and_stats_read_live_work_through_the_partial_index(kit: Kit, receiver: Receiver) -> None:
    """With a history of delivered rows, every query of the sweep and of stats() that looks
    for live work or dead letters is planned on the partial index that holds only those, and
    pruning on the one that holds only delivered rows: their cost does not grow with history."""
    from czo_kit.apps.webhooks import WebhookDelivery
    from czo_kit.db.model import utcnow

    install(kit, receiver.url)
    kit.events.emit_async("order.created", ORDER)
    [live] = kit.webhooks.deliveries()
    template = {f.name: live.__data__[f.name] for f in WebhookDelivery._meta.sorted_fields if f.name != "id"}
    old = utcnow() - dt.timedelta(days=1)
    rows = [
        {**template, "message_id": f"msg_history_{i}", "state": "delivered", "updated_at": old, "delivered_at": old}
        for i in range(5000)
    ]
    with kit.db.atomic():
        for start in range(0, len(rows), 500):
            WebhookDelivery.insert_many(rows[start:start + 500]).execute(kit.db)
    kit.db.execute_sql("ANALYZE")

    seen: list[tuple[str, Any]] = []
    real = kit.db.execute_sql

    def spy(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        if "czo_webhook_delivery" in sql and not sql.lstrip().upper().startswith(("EXPLAIN", "INSERT")):
            seen.append((sql, params))
        return real(sql, params, *args, **kwargs)

    kit.db.execute_sql = spy  # type: ignore[method-assign]
    try:
        kit.webhooks.sweep()
        assert kit.webhooks.stats() == {"queued": 1}
    finally:
        kit.db.execute_sql = real  # type: ignore[method-assign]
    postgres = not kit.db.__class__.__name__.lower().startswith("sqlite")
    live_queries = [(sql, p) for sql, p in seen if '"state" != ' in sql]
    prune_queries = [(sql, p) for sql, p in seen if "DELETE" in sql.upper() and "czo_webhook_attempt" not in sql]
    assert len(live_queries) >= 4 and len(prune_queries) == 1, seen  # 3 sweep statements, stats; prune
    for queries, index in ((live_queries, "czo_webhook_delivery_live"), (prune_queries, "czo_webhook_delivery_delivered")):
        for sql, params in queries:
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            plan = " ".join(str(part) for row in real(explain + sql, params).fetchall() for part in row)
            assert index in plan, f"{sql}\n{plan}"


def test_an_older_kits_webhook_tables_gain_the_new_columns_and_indexes(
    kit: Kit, receiver: Receiver, settings_for: SettingsFor, db_url: str, tmp_path: Path
) -> None:
    install(kit, receiver.url)
    options = app_settings(settings_for, db_url, str(tmp_path))

    def make_it_old(*, columns: bool) -> None:
        """The tables as the previous kit made them: one index on (state, updated_at) over
        every row, and (with ``columns``) no detail or probe columns."""
        for index in ("czo_webhook_delivery_live", "czo_webhook_delivery_delivered"):
            kit.db.execute_sql(f'DROP INDEX "{index}"')
        kit.db.execute_sql(
            'CREATE INDEX IF NOT EXISTS "czo_webhook_delivery_state_updated_at" ON "czo_webhook_delivery" '
            '("state", "updated_at")'
        )
        if columns:
            for table, column in (("czo_webhook_delivery", "last_error_detail"),
                                  ("czo_webhook_attempt", "error_detail"), ("czo_webhook_circuit", "probe_started_at")):
                kit.db.execute_sql(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')

    def indexes() -> set[str]:
        return {index.name for index in kit.db.get_indexes("czo_webhook_delivery")}

    make_it_old(columns=False)
    with Kit(options) as newer:
        # A missing index stops nothing inside a transaction, and no DDL runs there.
        with newer.db.atomic():
            newer.events.emit_async("order.created", ORDER)
        assert "czo_webhook_delivery_live" not in indexes()
        assert sorted(newer.create_kit_tables()) == [  # czo-kit db migrate
            "created index czo_webhook_delivery_delivered", "created index czo_webhook_delivery_live",
        ]
        assert newer.create_kit_tables() == []

    make_it_old(columns=True)
    with Kit(options) as newer:
        # The first use outside a transaction upgrades the tables by itself.
        assert [d.state for d in newer.webhooks.deliveries()] == ["queued"]
        assert {"czo_webhook_delivery_live", "czo_webhook_delivery_delivered"} <= indexes()
        assert "last_error_detail" in {c.name for c in kit.db.get_columns("czo_webhook_delivery")}
        assert newer.create_kit_tables() == []


# -- the CLI says what it did ---------------------------------------------------------------------


def test_redeliver_says_what_is_missing_and_what_it_did(kit: Kit, receiver: Receiver, cli_env: None) -> None:
    from czo_kit.apps.webhooks import WebhookDelivery
    from czo_kit.db.model import utcnow
    from czo_kit.errors import ConflictError

    install(kit, receiver.url)
    receiver.script = lambda request: Reply(410) if request.json()["data"]["id"] == 2 else Reply(200)
    with kit.consumer(workers=2, sweep_interval=60):
        for i in (1, 2, 3):
            kit.events.emit_async("order.created", dict(ORDER, id=i))
        wait_for(lambda: states(kit) == {"delivered": 2, "dead": 1}, what="two delivered, one dead")
    rows = {int(payload_id(d)): d for d in kit.webhooks.deliveries()}
    delivered, dead, running = rows[1].id, rows[2].id, rows[3].id
    # An attempt in flight on the third.
    WebhookDelivery.update(state="running", lease_until=utcnow() + dt.timedelta(minutes=2)).where(
        WebhookDelivery.id == running
    ).execute(kit.db)
    before = {d.id: (d.state, d.attempts, d.updated_at) for d in kit.webhooks.deliveries()}
    posts = len(receiver.posts())

    missing = invoke("webhooks", "redeliver")
    assert missing.exit_code == 2 and "missing DELIVERY_ID or --all" in missing.output, missing.output
    both = invoke("webhooks", "redeliver", str(dead), "--all")
    assert both.exit_code == 2 and "give a DELIVERY_ID or --all, not both" in both.output
    refused = invoke("webhooks", "redeliver", str(delivered))
    assert refused.exit_code == 1, refused.output
    assert f"webhook delivery {delivered} is delivered: not queued again" in refused.output
    assert "queued again:" not in refused.output
    refused = invoke("webhooks", "redeliver", str(running))
    assert refused.exit_code == 1 and f"webhook delivery {running} is running: not queued again" in refused.output
    with pytest.raises(ConflictError, match="is delivered: not queued again"):
        kit.webhooks.redeliver(delivered)
    assert {d.id: (d.state, d.attempts, d.updated_at) for d in kit.webhooks.deliveries()} == before  # untouched

    assert run_cli("webhooks", "redeliver", str(dead)) == f"queued again: {dead}\n"
    assert kit.webhooks.delivery(dead).state == "queued"
    assert run_cli("webhooks", "redeliver", "--all") == "no dead deliveries: nothing to redeliver\n"
    assert len(receiver.posts()) == posts  # no worker ran meanwhile: nothing was sent


def payload_id(delivery: Any) -> int:
    from czo_kit.apps.webhooks import payload_of

    return int(payload_of(delivery)["data"]["id"])


def queued_webhook_ids(kit: Kit) -> list[int]:
    """The delivery ids in the webhook tasks waiting in the queue (a task may carry several)."""
    from czo_kit.events.queue import WEBHOOK_TASK, WEBHOOKS_TASK

    assert kit.queue is not None
    ids: list[int] = []
    for task in kit.queue.pending():
        if task.name == WEBHOOKS_TASK:
            ids += [int(i) for i in task.args[0]]
        elif task.name == WEBHOOK_TASK:
            ids.append(int(task.args[0]))
    return sorted(ids)


def test_the_sweep_requeues_lost_deliveries_behind_a_backlog_once_per_lease(kit: Kit, receiver: Receiver) -> None:
    """Deliveries whose tasks were lost (a killed worker took them) are queued again although
    an unrelated task waits in the queue, and only once per lease: the sweep's claim moves
    their timestamp, so a second sweep right after queues nothing."""
    from czo_kit.apps.webhooks import WebhookDelivery
    from czo_kit.db.model import utcnow

    assert kit.queue is not None and kit.outbox is not None
    install(kit, receiver.url)
    for _ in range(3):
        kit.events.emit_async("order.created", ORDER)
    assert len(kit.webhooks.deliveries()) == 3
    kit.webhooks.flush()
    kit.outbox.flush()
    kit.queue.flush()  # the tasks are gone with the worker that took them
    kit.outbox.queue.dispatch("unrelated-work", delay=0, priority=50)
    assert kit.queue.pending_count() == 1
    long_ago = utcnow() - dt.timedelta(seconds=kit.webhooks.settings.lease + 60)
    WebhookDelivery.update(updated_at=long_ago).execute(kit.db)
    assert kit.webhooks.sweep()["requeued"] == 3
    assert queued_webhook_ids(kit) == sorted(d.id for d in WebhookDelivery.select().execute(kit.db))
    waiting = kit.queue.pending_count()
    assert kit.webhooks.sweep()["requeued"] == 0
    assert kit.queue.pending_count() == waiting
