"""Webhooks end to end: kit events -> delivery rows -> a real consumer -> signed POSTs to a
real receiver on loopback; retries, dead letters, the CLI, the circuit breaker, uninstall,
the signature schemes checked by the public verifiers, and a kill -9 of a worker process in
the middle of 1,000 deliveries."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib.metadata
import re
import socket
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import stripe
from click.testing import CliRunner

from apps_support import (
    BOTH_MODES,
    OWNER,
    KitFactory,
    Receiver,
    Reply,
    Request,
    app_kit,
    app_settings,
    consuming,
    kill_9,
    kit_factory,
    manifest,
    raw_rows,
    wait_for,
    webhook_worker_env,
    worker_processes,
)
from czo_kit import Kit
from czo_kit.apps import InstallResult, sign, verify_signature
from czo_kit.apps.webhooks import WebhookDelivery, payload_of
from czo_kit.cli import cli
from czo_kit.errors import WebhookSignatureError
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
SIGNATURE = re.compile(r"^t=(\d+),v1=([0-9a-f]{64})$")
ORDER = {"shop_id": 1, "id": 7, "total": 1999, "currency": "EUR", "customer_email": "grace@example.com"}


@pytest.fixture
def make_kit(db_url: str, settings_for: SettingsFor, tmp_path: Path, queue_mode: str) -> Iterator[KitFactory]:
    """Kits on the test's database and queue file; settings changed per test."""
    yield from kit_factory(app_kit, settings_for, db_url, str(tmp_path), queue_mode)


@pytest.fixture
def kit(make_kit: KitFactory) -> Kit:
    return make_kit()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def install(kit: Kit, base: str, **options: Any) -> InstallResult:
    return kit.apps.install(shop_id=options.pop("shop_id", 1), installer_id=OWNER, manifest=manifest(base, **options))


def only_delivery(kit: Kit) -> WebhookDelivery:
    [delivery] = kit.webhooks.deliveries()
    return delivery


def settled(kit: Kit, state: str, count: int = 1) -> Callable[[], bool]:
    return lambda: kit.webhooks.stats(delivered=True) == {state: count}


def answers(*replies: Reply) -> Callable[[Request], Reply]:
    """Reply with each in turn, then keep repeating the last one."""
    queue = list(replies)
    lock = threading.Lock()

    def script(request: Request) -> Reply:
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]

    return script


def stripe_verifies(request: Request, secret: str) -> bool:
    return bool(
        stripe.WebhookSignature.verify_header(request.body, request.headers["x-czo-signature"], secret, tolerance=300)
    )


def standard_verifies(request: Request, secret: str) -> bool:
    standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    return True


# -- payload and headers ----------------------------------------------------------------------


@BOTH_MODES
def test_payload_headers_and_both_signatures(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url)
    emitted = int(time.time())
    with consuming(kit):
        ctx = kit.events.emit_async("order.created", ORDER)
        wait_for(settled(kit, "delivered"), what="the delivery")
    [post] = receiver.posts("/hook")
    body = post.json()
    assert set(body) >= {"id", "event", "shop_id", "occurred_at", "data"}
    assert body["event"] == "order.created"
    assert body["shop_id"] == 1
    assert body["event_id"] == ctx.event_id
    occurred = dt.datetime.fromisoformat(body["occurred_at"].replace("Z", "+00:00"))
    assert abs((occurred - ctx.timestamp).total_seconds()) < 0.001
    assert body["data"] == {k: v for k, v in ORDER.items() if k != "customer_email"}  # no customer:read
    assert body["id"].startswith("msg_")

    headers = post.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"czo-kit/{importlib.metadata.version('czo-kit')} (+https://github.com/c-zo)"
    assert headers["x-czo-event"] == "order.created"
    assert headers["x-czo-event-id"] == ctx.event_id
    assert headers["x-czo-shop-id"] == "1"
    match = SIGNATURE.match(headers["x-czo-signature"])
    assert match, headers["x-czo-signature"]
    timestamp, hexdigest = int(match.group(1)), match.group(2)
    assert emitted <= timestamp <= post.at  # signed at the attempt, between the emit and the arrival
    expected = hmac.new(result.webhook_secret.encode(), f"{timestamp}.".encode() + post.body, hashlib.sha256)
    assert hexdigest == expected.hexdigest()
    assert headers["webhook-id"] == body["id"]
    assert headers["webhook-timestamp"] == str(timestamp)
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"])

    assert verify_signature(post.body, headers["x-czo-signature"], result.webhook_secret)
    assert stripe_verifies(post, result.webhook_secret)
    assert standard_verifies(post, result.webhook_secret)
    # The same strings the public libraries produce themselves.
    assert headers["x-czo-signature"] == stripe.WebhookSignature.generate_signature_header(
        post.body.decode(), result.webhook_secret, timestamp=timestamp
    )
    assert headers["webhook-signature"] == standardwebhooks.Webhook(result.webhook_secret).sign(
        body["id"], dt.datetime.fromtimestamp(timestamp, dt.timezone.utc), post.body.decode()
    )
    delivery = only_delivery(kit)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    assert payload_of(delivery) == body


def test_sensitive_fields_follow_the_apps_permissions(kit: Kit, receiver: Receiver) -> None:
    install(kit, receiver.url + "/plain", app_id="plain")
    customer = [{"resource": "order", "actions": ["read"]}, {"resource": "customer", "actions": ["read"]}]
    install(kit, receiver.url + "/crm", app_id="crm", permissions=customer)
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", ORDER)
        wait_for(settled(kit, "delivered", 2), what="both deliveries")
    [plain] = receiver.posts("/plain/hook")
    [crm] = receiver.posts("/crm/hook")
    assert "customer_email" not in plain.json()["data"]
    assert b"grace@example.com" not in plain.body
    assert crm.json()["data"]["customer_email"] == "grace@example.com"
    assert plain.json()["id"] != crm.json()["id"]
    assert plain.json()["event_id"] == crm.json()["event_id"]


def test_events_not_subscribed_and_inactive_webhooks_are_not_delivered(kit: Kit, receiver: Receiver) -> None:
    data = manifest(receiver.url)
    data["webhooks"].append(
        {"name": "off", "events": ["order.created"], "target_url": receiver.url + "/off", "is_active": False}
    )
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=data)
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.updated", {"shop_id": 1, "id": 7})
        kit.events.emit_async("order.created", {"shop_id": 1, "id": 8})
        wait_for(settled(kit, "delivered"), what="the subscribed event")
    assert [p.json()["event"] for p in receiver.posts()] == ["order.created"]
    assert receiver.posts("/off") == []


def test_a_rolled_back_write_sends_nothing(kit: Kit, receiver: Receiver) -> None:
    install(kit, receiver.url)
    with pytest.raises(RuntimeError):
        with kit.db.atomic():
            kit.events.emit_async("order.created", ORDER)
            raise RuntimeError("the write failed")
    assert kit.webhooks.deliveries() == []


# -- verify_signature -------------------------------------------------------------------------

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" + "AAAAAAAAAAA="
BODY = b'{"id":"msg_1","event":"order.created","data":{"total":5}}'


def czo_header(body: bytes = BODY, secret: str = SECRET, *, at: float | None = None) -> str:
    return sign(body, [secret], message_id="msg_1", timestamp=int(time.time() if at is None else at))["X-CZO-Signature"]


def test_verify_signature_accepts_fresh_signatures() -> None:
    assert verify_signature(BODY, czo_header(), SECRET)
    assert verify_signature(BODY.decode(), czo_header(), SECRET)
    now = time.time()
    assert verify_signature(BODY, czo_header(at=now - 299), SECRET, now=now)
    assert verify_signature(BODY, czo_header(at=now + 299), SECRET, now=now)
    assert verify_signature(BODY, czo_header(at=now - 3000), SECRET, tolerance=3600)
    two = sign(BODY, [SECRET, "whsec_b3RoZXI="], message_id="m")["X-CZO-Signature"]
    assert verify_signature(BODY, two, SECRET) and verify_signature(BODY, two, "whsec_b3RoZXI=")


@pytest.mark.parametrize("offset", [-301, -86400, 301, 86400 * 365])
def test_verify_signature_rejects_stale_and_future_timestamps(offset: int) -> None:
    now = time.time()
    with pytest.raises(WebhookSignatureError) as info:
        verify_signature(BODY, czo_header(at=now + offset), SECRET, now=now)
    assert "at most 300s is accepted" in str(info.value)
    if offset < 0:  # stripe agrees about stale ones (it does not check future timestamps)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.WebhookSignature.verify_header(BODY, czo_header(at=now + offset), SECRET, tolerance=300)


def test_verify_signature_rejects_tampered_bodies_and_wrong_secrets() -> None:
    header = czo_header()
    for body in (BODY.replace(b"5", b"6"), BODY + b" ", b"", BODY[:-1]):
        with pytest.raises(WebhookSignatureError) as info:
            verify_signature(body, header, SECRET)
        assert "no signature in X-CZO-Signature matches" in str(info.value)
    for secret in ("whsec_" + "B" * 44, SECRET[:-2], SECRET.upper(), "x"):
        with pytest.raises(WebhookSignatureError):
            verify_signature(BODY, header, secret)
    with pytest.raises(WebhookSignatureError):
        verify_signature(BODY, header, "")
    # A signature made for another timestamp does not move to this one.
    match = SIGNATURE.match(header)
    assert match
    moved = f"t={int(match.group(1)) + 1},v1={match.group(2)}"
    with pytest.raises(WebhookSignatureError):
        verify_signature(BODY, moved, SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "v1=" + "a" * 64,
        "t=" + str(int(time.time())),
        "t=" + str(int(time.time())) + ",v0=" + "a" * 64,
        "t=abc,v1=" + "a" * 64,
        "t=-5,v1=" + "a" * 64,
        "t=1e9,v1=" + "a" * 64,
        "t=" + "9" * 40 + ",v1=" + "a" * 64,
        "t=" + str(int(time.time())) + ";v1=" + "a" * 64,
        "t=" + str(int(time.time())) + ",v1=zz" + "\u00e9" * 62,
        "t=" + str(int(time.time())) + ",v1=" + "a" * 64 + "," + "x" * 10240,
        "t=" + str(int(time.time())) + ",v1=",
        "t=\u00b2,v1=" + "a" * 64,
        "t=" + "".join(chr(0x660 + int(d)) for d in str(int(time.time()))) + ",v1=" + "a" * 64,
        ",,,",
    ],
    ids=lambda value: repr(value)[:40],
)
def test_verify_signature_rejects_malformed_headers(header: str | None) -> None:
    with pytest.raises(WebhookSignatureError):
        verify_signature(BODY, header, SECRET)


def test_verify_signature_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behaviour only: every candidate goes through hmac.compare_digest, none through ==."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    now = int(time.time())
    good = czo_header(at=now)
    wrong = f"t={now},v1={'0' * 64},v1={'1' * 64}"
    with pytest.raises(WebhookSignatureError):
        verify_signature(BODY, wrong, SECRET)
    assert len(calls) == 2
    calls.clear()
    assert verify_signature(BODY, good + ",v1=" + "2" * 64, SECRET)
    assert len(calls) == 2  # it does not stop at the first match either


# -- retries, dead letters, the attempt log ---------------------------------------------------


@BOTH_MODES
def test_a_500_then_200_is_delivered_on_the_second_attempt(kit: Kit, receiver: Receiver) -> None:
    install(kit, receiver.url)
    receiver.script = answers(Reply(500, b"oops"), Reply(200))
    with consuming(kit):
        kit.events.emit_async("order.created", ORDER)
        wait_for(settled(kit, "delivered"), what="the retried delivery")
    first, second = receiver.posts("/hook")
    assert first.body == second.body  # the payload, and its id, do not change
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == first.json()["id"]
    assert [first.headers["x-czo-delivery-attempt"], second.headers["x-czo-delivery-attempt"]] == ["1", "2"]
    assert 0.1 < second.at - first.at < 2.0  # the 0.2 s schedule, with jitter
    delivery = only_delivery(kit)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 2, 200)
    attempts = kit.webhooks.attempts(delivery.id)
    assert [(a.attempt, a.status, a.response, a.error) for a in attempts] == [
        (1, 500, "oops", "HTTP 500"),
        (2, 200, '{"ok": true}', None),
    ]


def test_each_attempt_is_signed_afresh_and_429_retry_after_is_honoured(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url)
    receiver.script = answers(Reply(429, b"slow down", {"Retry-After": "2"}), Reply(200))
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", ORDER)
        wait_for(lambda: only_delivery(kit).state == "retry", what="the first attempt")
        delivery = only_delivery(kit)
        [attempt] = kit.webhooks.attempts(delivery.id)
        assert attempt.status == 429
        assert delivery.next_attempt_at is not None
        waited = (delivery.next_attempt_at - delivery.updated_at).total_seconds()
        assert waited == pytest.approx(2.0, abs=0.05)  # Retry-After, not the 0.2 s schedule
        wait_for(settled(kit, "delivered"), what="the second attempt")
    first, second = receiver.posts("/hook")
    assert second.at - first.at >= 1.9  # not before Retry-After (however slowly the worker ran)
    assert first.body == second.body
    stamps = [int(p.headers["webhook-timestamp"]) for p in (first, second)]
    assert stamps[1] > stamps[0]
    assert first.headers["x-czo-signature"] != second.headers["x-czo-signature"]
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    for post in (first, second):
        assert SIGNATURE.match(post.headers["x-czo-signature"]).group(1) == post.headers["webhook-timestamp"]  # type: ignore[union-attr]
        assert stripe_verifies(post, result.webhook_secret)
        assert standard_verifies(post, result.webhook_secret)


def test_retry_after_as_an_http_date(kit: Kit, receiver: Receiver) -> None:
    import email.utils

    install(kit, receiver.url)
    when = email.utils.formatdate(time.time() + 3, usegmt=True)  # whole seconds: 2 to 3 s ahead
    at = email.utils.parsedate_to_datetime(when)
    receiver.script = answers(Reply(503, b"", {"Retry-After": when}), Reply(200))
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", ORDER)
        wait_for(lambda: only_delivery(kit).state == "retry", what="the first attempt")
        delivery = only_delivery(kit)
        assert delivery.next_attempt_at is not None
        # At the date, not after the 0.2 s of the schedule (and never before the date).
        assert delivery.next_attempt_at >= at
        wait_for(settled(kit, "delivered"), what="the second attempt")
    first, second = receiver.posts("/hook")
    assert second.at >= at.timestamp()


def first_time_then_ok(replies: dict[int, Reply]) -> Callable[[Request], Reply]:
    """Each order id's first request gets its reply from ``replies``; later ones 200."""
    seen: set[str] = set()
    lock = threading.Lock()

    def script(request: Request) -> Reply:
        with lock:
            first = request.headers["webhook-id"] not in seen
            seen.add(request.headers["webhook-id"])
        return replies[request.json()["data"]["id"]] if first else Reply(200)

    return script


def test_408_and_5xx_are_retried(make_kit: KitFactory, receiver: Receiver) -> None:
    kit = make_kit(webhooks_breaker_threshold=100)
    install(kit, receiver.url)
    statuses = [408, 500, 502, 503, 504]
    receiver.script = first_time_then_ok({status: Reply(status, b"later") for status in statuses})
    with kit.consumer(workers=2, sweep_interval=0.5):
        for status in statuses:
            kit.events.emit_async("order.created", dict(ORDER, id=status))
        wait_for(settled(kit, "delivered", len(statuses)), what="the retried deliveries")
    for delivery in kit.webhooks.deliveries():
        status = payload_of(delivery)["data"]["id"]
        assert [(a.status, a.response) for a in kit.webhooks.attempts(delivery.id)] == [
            (status, "later"), (200, '{"ok": true}')
        ]


def test_a_malformed_retry_after_falls_back_to_the_schedule(make_kit: KitFactory, receiver: Receiver) -> None:
    kit = make_kit(webhooks_breaker_threshold=100)
    install(kit, receiver.url)
    values = ["\u00b2", "\u00b9", "soon", "-5", "1e9", "Thu, 99 Foo 2026", ""]
    receiver.script = first_time_then_ok(
        {i: Reply(503, b"", {"Retry-After": value}) for i, value in enumerate(values)}
    )
    with kit.consumer(workers=2, sweep_interval=0.5):
        for i in range(len(values)):
            kit.events.emit_async("order.created", dict(ORDER, id=i))
        wait_for(settled(kit, "delivered", len(values)), timeout=10, what="the retried deliveries")
    for delivery in kit.webhooks.deliveries():
        assert [a.status for a in kit.webhooks.attempts(delivery.id)] == [503, 200]


def test_other_3xx_and_4xx_are_dead_at_once(kit: Kit, receiver: Receiver) -> None:
    install(kit, receiver.url)
    statuses = [301, 302, 307, 400, 401, 403, 404, 410, 422]
    receiver.script = lambda request: Reply(
        request.json()["data"]["id"], b"go away", {"Location": receiver.url + "/elsewhere"}
    )
    with kit.consumer(workers=2, sweep_interval=0.5):
        for status in statuses:
            kit.events.emit_async("order.created", dict(ORDER, id=status))
        wait_for(settled(kit, "dead", len(statuses)), what="the dead letters")
    for delivery in kit.webhooks.deliveries():
        status = payload_of(delivery)["data"]["id"]
        assert (delivery.attempts, delivery.last_status) == (1, status)
        assert "not retried" in delivery.last_error
        [attempt] = kit.webhooks.attempts(delivery.id)
        assert (attempt.status, attempt.response) == (status, "go away")
    assert {p.path for p in receiver.requests} == {"/hook"}  # redirects are not followed
    assert len(receiver.requests) == len(statuses)


@BOTH_MODES
def test_network_errors_are_retried_until_dead(make_kit: KitFactory) -> None:
    kit = make_kit(webhooks_breaker_threshold=100)
    listener = socket.create_server(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # nothing listens there now
    install(kit, base)
    with consuming(kit):
        kit.events.emit_async("order.created", ORDER)
        wait_for(settled(kit, "dead"), what="the retries to run out")
    delivery = only_delivery(kit)
    assert (delivery.attempts, delivery.max_attempts, delivery.last_status) == (4, 4, None)
    attempts = kit.webhooks.attempts(delivery.id)
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    for attempt in attempts:
        assert attempt.status is None
        assert "refused" in attempt.error.lower() or "NewConnectionError" in attempt.error
        assert attempt.duration_ms >= 0


def test_timeouts_are_retried(make_kit: KitFactory, receiver: Receiver) -> None:
    kit = make_kit(webhooks_timeout=0.5)
    install(kit, receiver.url)
    receiver.script = answers(Reply(200, delay=1.5), Reply(200))
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", ORDER)
        wait_for(settled(kit, "delivered"), what="the attempt after the timeout")
    first, second = kit.webhooks.attempts(only_delivery(kit).id)
    assert first.status is None and "timed out" in first.error.lower()
    assert first.duration_ms >= 450  # gave up at the read timeout, not before
    assert second.status == 200


@BOTH_MODES
def test_after_the_last_attempt_the_delivery_is_dead_and_every_attempt_is_logged(
    make_kit: KitFactory, receiver: Receiver
) -> None:
    kit = make_kit(webhooks_breaker_threshold=100)
    install(kit, receiver.url)
    long_answer = b"E" * 5000
    receiver.script = lambda request: Reply(500, long_answer, {"Content-Type": "text/plain"})
    with consuming(kit):
        kit.events.emit_async("order.created", ORDER)
        wait_for(settled(kit, "dead"), what="the dead letter")
    assert len(receiver.posts("/hook")) == 4
    delivery = only_delivery(kit)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("dead", 4, 500)
    rows = sorted(raw_rows(kit, "czo_webhook_attempt"), key=lambda row: row["attempt"])
    assert [row["attempt"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert row["status"] == 500
        assert row["response"] == "E" * 1024  # the first KiB of the answer
        assert row["error"] == "HTTP 500"
        assert row["duration_ms"] > 0
        assert row["at"] is not None


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import SECRET as TEST_SECRET

    monkeypatch.setenv("CZO_DATABASE_URL", db_url)
    monkeypatch.setenv("CZO_QUEUE_URL", f"sqlite:///{tmp_path / 'queue.sqlite3'}")
    monkeypatch.setenv("CZO_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("CZO_APPS_ALLOW_PRIVATE_URLS", "true")


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_lists_dead_deliveries_and_redelivers_them(cli_env: None, kit: Kit, receiver: Receiver) -> None:
    install(kit, receiver.url)
    receiver.script = lambda request: Reply(410, b"gone")
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", ORDER)
        kit.events.emit_async("order.created", dict(ORDER, id=8))
        wait_for(settled(kit, "dead", 2), what="two dead letters")
        first, second = sorted(d.id for d in kit.webhooks.deliveries())

        listing = run_cli("webhooks", "deliveries")
        assert f"{first}  dead" in listing and f"{second}  dead" in listing
        assert "order.created" in listing and "attempts 1/4" in listing and "last 410" in listing
        assert f"-> {receiver.url}/hook" in listing
        assert run_cli("webhooks", "deliveries", "--state", "delivered") == "no deliveries\n"
        assert run_cli("webhooks", "deliveries", "--shop", "2") == "no deliveries\n"
        dead = run_cli("webhooks", "dead")
        assert len(dead.splitlines()) == 2 and "not retried" in dead

        receiver.script = lambda request: Reply(200)  # the app is fixed
        assert run_cli("webhooks", "redeliver", str(first)) == f"queued again: {first}\n"
        wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": 1, "dead": 1}, what="the redelivery")
        assert run_cli("webhooks", "redeliver", "--all") == f"queued again: {second}\n"
        wait_for(settled(kit, "delivered", 2), what="every redelivery")
        assert run_cli("webhooks", "dead") == "no deliveries\n"
        assert run_cli("webhooks", "redeliver", "--all") == "no dead deliveries: nothing to redeliver\n"
    for delivery in kit.webhooks.deliveries():
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    # The redelivered payload is the original one, with the same id.
    ids = [p.json()["id"] for p in receiver.posts("/hook")]
    assert len(ids) == 4 and len(set(ids)) == 2


def test_cli_redeliver_needs_one_target(cli_env: None, kit: Kit) -> None:
    runner = CliRunner()
    for args, complaint in (
        (["webhooks", "redeliver"], "missing DELIVERY_ID or --all"),
        (["webhooks", "redeliver", "5", "--all"], "give a DELIVERY_ID or --all, not both"),
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2
        assert complaint in result.output
    result = runner.invoke(cli, ["webhooks", "redeliver", "999"])
    assert result.exit_code == 1
    assert "999" in result.output


# -- the circuit breaker ----------------------------------------------------------------------


@BOTH_MODES
def test_a_failing_target_is_paused_then_probed_and_recovers(make_kit: KitFactory, receiver: Receiver) -> None:
    cooldown = 2.0
    kit = make_kit(
        webhooks_breaker_threshold=2, webhooks_breaker_cooldown=cooldown, webhooks_retry_schedule=(0.2,) * 8
    )
    install(kit, receiver.url)
    failing = threading.Event()
    failing.set()
    receiver.script = lambda request: Reply(503) if failing.is_set() else Reply(200)

    def circuit() -> dict[str, Any] | None:
        rows = raw_rows(kit, "czo_webhook_circuit")
        return rows[0] if rows and rows[0]["opened_until"] is not None else None

    outcomes = watch_outcomes(kit)
    with consuming(kit):
        for i in range(3):
            kit.events.emit_async("order.created", dict(ORDER, id=i))
        wait_for(lambda: circuit() is not None, what="the circuit to open")
        from czo_kit.apps.webhooks import WebhookCircuit

        row = WebhookCircuit.select().first(kit.db)
        assert row is not None and row.failures >= 2 and row.opened_until is not None
        # While paused, every delivery is taken up and given back: no request, no attempt
        # spent, nothing dropped. Each one's "paused" outcome shows it happened.
        ids = {d.id for d in kit.webhooks.deliveries()}
        wait_for(lambda: {d for d, state in outcomes if state == "paused"} == ids, what="every delivery to pause")
        resumes = WebhookCircuit.select().first(kit.db).opened_until.timestamp()
        seen = len(receiver.posts("/hook"))
        deliveries = kit.webhooks.deliveries()
        assert sum(d.attempts for d in deliveries) == seen  # paused ones used no attempt
        assert all(d.state in ("retry", "queued") for d in deliveries)
        assert all(d.attempts < d.max_attempts for d in deliveries)

        failing.clear()  # the receiver recovers before the probe
        wait_for(settled(kit, "delivered", 3), timeout=15, what="every delivery after the probe")
    posts = receiver.posts("/hook")
    resumed = [p for p in posts[seen:]]
    assert resumed and resumed[0].at >= resumes - 0.05  # the first request after the pause is the probe
    assert sorted({p.json()["data"]["id"] for p in posts}) == [0, 1, 2]
    assert raw_rows(kit, "czo_webhook_circuit") == []  # closed again


# -- uninstall --------------------------------------------------------------------------------


def watch_outcomes(kit: Kit) -> list[tuple[int, str]]:
    """Every delivery the workers attempt, with the state it ended in, in order (a queue task
    carries one or several: ``deliver`` goes through ``deliver_many``)."""
    outcomes: list[tuple[int, str]] = []
    real = kit.webhooks.deliver_many

    def deliver_many(delivery_ids: Any) -> list[str]:
        ids = [int(i) for i in delivery_ids]
        states = real(ids)
        outcomes.extend(zip(ids, states, strict=True))
        return states

    kit.webhooks.deliver_many = deliver_many  # type: ignore[method-assign]
    return outcomes


def test_uninstall_cancels_pending_deliveries(make_kit: KitFactory, receiver: Receiver) -> None:
    kit = make_kit(webhooks_retry_schedule=(0.3, 0.3, 0.3))
    install(kit, receiver.url)
    receiver.script = lambda request: Reply(500)
    outcomes = watch_outcomes(kit)
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", ORDER)
        wait_for(lambda: ("retry" in [state for _, state in outcomes]), what="the first attempt to fail")
        [delivery_id] = {d for d, _ in outcomes}
        kit.apps.uninstall(shop_id=1, app_id="acme")
        at_uninstall = len(receiver.posts("/hook"))
        ran_before = len(outcomes)
        assert kit.webhooks.deliveries() == []
        # The retry already queued still runs: it finds nothing to deliver and sends nothing.
        wait_for(lambda: (delivery_id, "skipped") in outcomes[ran_before:], what="the queued retry to run")
        kit.events.emit_async("order.created", dict(ORDER, id=8))  # the uninstalled app hears nothing new
    assert kit.webhooks.deliveries() == []
    posts = receiver.posts("/hook")
    assert len(posts) <= at_uninstall + 1  # at most the one attempt in flight at the uninstall
    assert {p.json()["data"]["id"] for p in posts} == {ORDER["id"]}


def test_uninstall_during_an_attempt_in_flight(
    kit: Kit, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    install(kit, receiver.url)
    receiver.script = lambda request: Reply(200, delay=0.5)
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", ORDER)
        wait_for(lambda: len(receiver.posts("/hook")) == 1, what="the attempt to start")
        kit.apps.uninstall(shop_id=1, app_id="acme")
    # The consumer stopped gracefully: the attempt in flight has finished by now, quietly.
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert kit.webhooks.deliveries() == []
    assert raw_rows(kit, "czo_webhook_attempt") == []
    assert len(receiver.posts("/hook")) == 1


# -- kill -9 in the middle of 1,000 deliveries ------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from czo_kit import Kit
    from czo_kit.events.queue import Sweeper

    kit = Kit.from_env()
    sweeper = Sweeper(kit.outbox, 1.0, kit.webhooks)
    consumer = kit.queue.create_consumer(workers=4)
    sweeper.start()
    print("worker ready", flush=True)
    consumer.run()
    """
)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_kill_9_during_1000_deliveries_loses_nothing(
    pg_url: str, redis_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    total = 1000
    queue_name = f"czo_webhook_kill_{uuid.uuid4().hex[:8]}"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = webhook_worker_env(pg_url, redis_url, queue_name, lease=3)
    seen: Counter[str] = Counter()
    seen_lock = threading.Lock()

    def slow(request: Request) -> Reply:
        with seen_lock:
            seen[request.headers["webhook-id"]] += 1
        return Reply(200, delay=0.02)

    settings = app_settings(
        settings_for, pg_url, str(tmp_path), queue_url=redis_url, queue_name=queue_name, webhooks_lease=3.0
    )
    with (
        Receiver(slow) as receiver,
        app_kit(settings) as kit,
        worker_processes(kit, script, env, tmp_path) as start_worker,
    ):
        install(kit, receiver.url)
        assert kit.queue is not None
        kit.queue.flush()

        def delivered() -> int:
            return int(kit.webhooks.stats(delivered=True).get("delivered", 0))

        emitting = time.monotonic()
        for start in range(0, total, 100):
            with kit.db.atomic():
                for i in range(start, start + 100):
                    kit.events.emit_async("order.created", {"shop_id": 1, "id": i, "total": i})
        emitting = time.monotonic() - emitting
        assert kit.webhooks.stats() == {"queued": total}
        first = start_worker("first")
        wait_for(lambda: delivered() >= total // 10, timeout=60, what="10% delivered")
        at_kill = delivered()
        kill_9(first)
        assert at_kill < total, "everything was delivered before the kill: nothing left to recover"
        stats_at_kill = kit.webhooks.stats(delivered=True)

        start_worker("second")
        wait_for(lambda: delivered() == total, timeout=180, what="every delivery after the restart")
        message_ids = {row["message_id"] for row in raw_rows(kit, "czo_webhook_delivery")}
        assert kit.webhooks.stats(delivered=True) == {"delivered": total}
    missing = message_ids - set(seen)
    assert not missing, f"{len(missing)} deliveries never reached the receiver"
    duplicates = {key: count for key, count in seen.items() if count > 1}
    print(
        f"\n{total} events emitted in {emitting:.1f}s; kill -9 at {at_kill}/{total} delivered ({stats_at_kill}); "
        f"{len(duplicates)} delivered more than once (at least once: receivers dedupe on webhook-id)"
    )
    assert len(duplicates) <= 20, duplicates  # only what was in flight at the kill
