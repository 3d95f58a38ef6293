"""Edge cases of the app system found in review: the half-open probe, poison deliveries,
refused URLs vs target failures, embedded IPv4 in IPv6, redirect downgrades, install races,
and secret rotation reaching the app."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest

from apps_support import OWNER, Receiver, Reply, Request, app_kit, app_settings, manifest, raw_rows
from czo_kit import Kit
from czo_kit.apps.net import HTTPResponse, is_public_address
from czo_kit.apps.webhooks import WebhookCircuit, WebhookDelivery
from czo_kit.db.model import utcnow
from czo_kit.errors import ConflictError, ManifestError, WebhookSignatureError
from czo_kit.settings import Settings

ORDER = {"shop_id": 1, "id": 7, "total": 1999, "currency": "EUR"}


@pytest.fixture
def kit(sqlite_url: str, settings_for: Callable[..., Settings], tmp_path: Path) -> Iterator[Kit]:
    settings = app_settings(
        settings_for, sqlite_url, str(tmp_path), webhooks_breaker_threshold=1, webhooks_breaker_cooldown=60.0
    )
    with app_kit(settings) as kit:
        yield kit


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def _deliveries(kit: Kit, count: int) -> list[int]:
    for n in range(count):
        kit.events.emit_async("order.created", dict(ORDER, id=n))
    ids = sorted(d.id for d in kit.webhooks.deliveries())
    assert len(ids) == count
    return ids


def _cool_down_over(kit: Kit) -> None:
    """As if the cool-down had passed: the circuit's, and the wait of the deliveries it paused
    (a delivery waiting for its retry is not sent before its time)."""
    past = utcnow() - dt.timedelta(seconds=1)
    WebhookCircuit.update(opened_until=past).execute(kit.db)
    WebhookDelivery.update(next_attempt_at=past).where(WebhookDelivery.state == "retry").execute(kit.db)


def test_after_the_cool_down_exactly_one_probe_goes_out(kit: Kit, receiver: Receiver) -> None:
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
    receiver.script = lambda request: Reply(503)
    first, second, third = _deliveries(kit, 3)  # no consumer: the test runs each attempt
    assert kit.webhooks.deliver(first) == "retry"
    assert len(receiver.posts("/hook")) == 1
    assert kit.webhooks.deliver(second) == "paused"  # threshold 1: the circuit is open
    assert len(receiver.posts("/hook")) == 1

    _cool_down_over(kit)
    assert kit.webhooks.deliver(second) == "retry"  # the probe: sent, failed, circuit open again
    assert kit.webhooks.deliver(third) == "paused"  # everyone else waits for the next probe
    assert len(receiver.posts("/hook")) == 2

    receiver.script = lambda request: Reply(200)
    _cool_down_over(kit)
    assert kit.webhooks.deliver(third) == "delivered"  # a successful probe closes the circuit
    assert raw_rows(kit, "czo_webhook_circuit") == []
    assert kit.webhooks.deliver(first) == "delivered" and kit.webhooks.deliver(second) == "delivered"
    attempts = {d.id: d.attempts for d in kit.webhooks.deliveries()}
    assert attempts == {first: 2, second: 2, third: 1}  # pauses used up no attempt


def test_a_worker_dying_on_the_last_attempt_makes_the_delivery_dead(
    kit: Kit, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
    (delivery_id,) = _deliveries(kit, 1)
    WebhookDelivery.update(
        state="running", attempts=WebhookDelivery.max_attempts, lease_until=utcnow() - dt.timedelta(seconds=1)
    ).where(WebhookDelivery.id == delivery_id).execute(kit.db)
    with caplog.at_level(logging.WARNING):
        counts = kit.webhooks.sweep()
    # Said as loudly as a last attempt that fails: the sweep's dead letters used to go unlogged.
    assert [r.levelno for r in caplog.records if "dead" in r.getMessage()] == [logging.ERROR], caplog.text
    assert counts["dead"] == 1 and counts["recovered"] == 0
    (row,) = kit.webhooks.deliveries()
    assert row.state == "dead" and "lease expired" in (row.last_error or "")
    assert receiver.posts("/hook") == []


def test_a_refused_url_is_dead_without_blaming_the_target(kit: Kit, receiver: Receiver) -> None:
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
    (delivery_id,) = _deliveries(kit, 1)
    kit.http.allow_private = False  # e.g. the target's DNS now points at a private address
    kit.http._dns.clear()
    assert kit.webhooks.deliver(delivery_id) == "dead"
    assert receiver.posts("/hook") == []
    assert raw_rows(kit, "czo_webhook_circuit") == []  # the breaker counts target failures only


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
        ("2002:c0a8:0101::1", False),  # 6to4 of 192.168.1.1
        ("2002:0808:0808::1", True),  # 6to4 of 8.8.8.8
        ("2001:0000:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo, client 192.0.2.45
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
    ],
)
def test_ipv6_forms_that_embed_ipv4_are_judged_by_the_ipv4(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_a_manifest_redirect_from_https_to_http_is_refused(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    from czo_kit.apps import net

    monkeypatch.setattr(kit.apps.http, "check", lambda url, what="URL": net.parse_target(url, what=what))

    def request(method: str, url: Any, **kwargs: Any) -> HTTPResponse:
        return HTTPResponse(301, {"location": "http://apps.example/manifest"}, b"", False, 0.01, str(url))

    monkeypatch.setattr(kit.apps.http, "request", request)
    with pytest.raises(ManifestError, match="https to http"):
        kit.apps.fetch_manifest("https://apps.example/manifest")


def test_two_installs_racing_end_in_a_conflict_not_a_crash(
    kit: Kit, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
    # The second install's existence check ran before the first committed: the unique index
    # is what catches it.
    monkeypatch.setattr(peewee.SelectBase, "exists", lambda self, database=None: False)
    with pytest.raises(ConflictError, match="already installed"):
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
    assert len(kit.apps.list(1)) == 1


def test_every_hand_off_is_signed_by_the_kit_and_names_where_it_was_sent(kit: Kit, receiver: Receiver) -> None:
    import falcon.testing

    from czo_kit.apps import HandoffSigner, verify_handoff
    from czo_kit.errors import WebhookSignatureError
    from czo_kit.http import create_api

    result = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url, token_target=True))
    new = kit.apps.rotate_webhook_secret(shop_id=1, app_id="acme", grace=60)
    install_post, rotation = receiver.posts("/token")
    for post, kind in ((install_post, "install"), (rotation, "webhook_secret")):
        assert verify_handoff(post.body, post.headers, kit.apps.public_key)
        assert post.json()["kind"] == kind and post.json()["target_url"] == receiver.url + "/token"
        assert post.headers["idempotency-key"] == post.headers["webhook-id"]
        assert post.headers["webhook-signature"].startswith("v1a,")
        with pytest.raises(WebhookSignatureError, match="no v1a signature"):  # a changed body
            verify_handoff(post.body.replace(b'"shop_id":1', b'"shop_id":2'), post.headers, kit.apps.public_key)
        with pytest.raises(WebhookSignatureError, match="no v1a signature"):  # another key
            verify_handoff(post.body, post.headers, HandoffSigner(b"o" * 32).public_key)
    assert install_post.json()["auth_token"] == result.token
    body = rotation.json()
    assert body["webhook_secret"] == new != result.webhook_secret
    assert body["grace_seconds"] == 60 and "auth_token" not in body
    # The key is derived from CZO_SECRET_KEY (every process of a deployment signs alike) and
    # published by the API.
    assert kit.apps.public_key == HandoffSigner.from_secret_key(kit.secret_key).public_key
    published = falcon.testing.TestClient(create_api(kit)).simulate_get("/api/signing-key")
    assert published.json == {"publicKey": kit.apps.public_key, "algorithm": "ed25519", "scheme": "v1a"}


class PaymentApp:
    """The example payment app, reached through a loopback receiver that hands each request to
    it: the kit talks to it over real HTTP, and the test keeps every request to replay."""

    def __init__(self, kit: Kit, *, clock: Callable[[], float] | None = None, public_url: str | None = None) -> None:
        import falcon.testing

        from czo_app_stripe import create_app

        self.receiver = Receiver(self._relay).start()
        import uuid

        # A database of its own per app (in the test's private working directory): each
        # PaymentApp starts knowing nothing, as a fresh deployment does.
        options: dict[str, Any] = {
            "czo_public_key": kit.apps.public_key, "database_url": f"sqlite:///stripe-app-{uuid.uuid4().hex}.sqlite3",
        }
        if clock is not None:
            options["clock"] = clock
        wsgi, self.state = create_app(
            public_url=public_url or self.receiver.url, czo_api_url="http://127.0.0.1:9", **options
        )
        self.client = falcon.testing.TestClient(wsgi)

    def _relay(self, request: Request) -> Reply:
        result = self.post(request.path, request.body, request.headers)
        return Reply(result.status_code, result.content, {"Content-Type": "application/json"})

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> Any:
        kept = {k: v for k, v in headers.items() if k.startswith(("webhook-", "x-czo-", "content-type", "idempotency"))}
        return self.client.simulate_post(path, body=body, headers=kept)

    def stop(self) -> None:
        self.receiver.stop()
        self.state.http.clear()
        self.state.store.close()


@pytest.fixture
def payment_app(kit: Kit) -> Iterator[PaymentApp]:
    app = PaymentApp(kit)
    yield app
    app.stop()


def _forge(body: dict[str, Any], signer: Any = None, message_id: str = "install-1-forged") -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if signer is not None:
        headers.update(signer.sign(raw, message_id=message_id))
    return raw, headers


def test_the_payment_app_refuses_forged_install_and_rotation_hand_offs(kit: Kit, payment_app: PaymentApp) -> None:
    from czo_kit.apps import HandoffSigner, sign

    state = payment_app.state
    result = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=state.manifest())
    genuine = state.installations[1]
    assert (genuine.token, genuine.webhook_secret) == (result.token, result.webhook_secret)
    target = payment_app.receiver.url + "/token"
    outsider = HandoffSigner(b"m" * 32)  # any key but the kit's
    mallory_secret = "whsec_" + "bWFsbG9yeS1rbm93cy10aGlzLXNlY3JldC0xMjM0NTY="
    install_body = {
        "kind": "install", "target_url": target, "auth_token": "czo_app_" + "m" * 43,
        "webhook_secret": mallory_secret, "shop_id": 1, "app_id": "stripe",
        "installation_id": int(result.installation.id),
    }
    rotation_body = {
        "kind": "webhook_secret", "target_url": target, "webhook_secret": mallory_secret, "grace_seconds": 0,
        "shop_id": 1, "app_id": "stripe", "installation_id": int(result.installation.id),
    }
    for body in (install_body, rotation_body):
        for signer in (None, outsider):
            assert payment_app.post("/token", *_forge(body, signer)).status_code == 401
    # A hand-off the kit really signed, for another app (at another URL), is not this app's.
    with Receiver() as other:
        kit.apps.install(shop_id=2, installer_id=OWNER, manifest=manifest(other.url, token_target=True))
        [captured] = other.posts("/token")
    assert payment_app.post("/token", captured.body, captured.headers).status_code == 401
    assert 2 not in state.installations
    assert state.installations[1] == genuine  # token and secret untouched
    assert all(error.startswith("refused hand-off") for error in state.errors) and len(state.errors) == 5

    # The attack of the report: with the secret swap refused, a forged order.created signed with
    # mallory's secret is refused too, and nothing is paid with the app's real token.
    event = json.dumps({"id": "msg_forged", "event": "order.created", "shop_id": 1,
                        "data": {"id": 1, "shop_id": 1, "total": 100}}).encode()
    forged_webhook = sign(event, [mallory_secret], message_id="msg_forged")
    answer = payment_app.post("/webhooks", event, {"x-czo-shop-id": "1", **{k.lower(): v for k, v in forged_webhook.items()}})
    assert answer.status_code == 401 and state.payments == [] and state.seen_webhooks == set()


def test_the_payment_app_refuses_replayed_hand_offs(kit: Kit) -> None:
    offset = [0.0]
    app = PaymentApp(kit, clock=lambda: time.time() + offset[0])
    try:
        result = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=app.state.manifest())
        kit.apps.rotate_webhook_secret(shop_id=1, app_id="stripe", grace=60)
        install_post, rotation = app.receiver.posts("/token")
        rotated = app.state.installations[1].webhook_secret
        assert rotated != result.webhook_secret
        # A second time, within the tolerance: answered as the kit's retry after a lost answer
        # would be, and not applied again, so the old secret does not come back.
        for captured in (install_post, rotation):
            again = app.post("/token", captured.body, captured.headers)
            assert again.status_code == 200, again.json
        assert app.state.installations[1].webhook_secret == rotated
    finally:
        app.stop()
    # After the tolerance, even to an app that forgot the ids it saw (a restart): the timestamp
    # refuses it. The same capture within the tolerance is taken by such an app: the tolerance
    # is what refused it.
    late = PaymentApp(kit, clock=lambda: time.time() + 301, public_url=app.receiver.url)
    forgetful = PaymentApp(kit, public_url=app.receiver.url)
    try:
        stale = late.post("/token", install_post.body, install_post.headers)
        assert stale.status_code == 401 and "away from now" in stale.json["description"]
        assert late.state.installations == {}
        assert forgetful.post("/token", install_post.body, install_post.headers).status_code == 200
        assert forgetful.state.installations[1].token == result.token
    finally:
        late.stop()
        forgetful.stop()


def test_a_hand_off_seen_before_is_a_repeat_only_with_the_same_body() -> None:
    from czo_kit.apps import HandoffSigner, HandoffVerifier, RepeatedHandoffError

    signer = HandoffSigner.from_secret_key(b"k" * 40)
    verifier = HandoffVerifier(signer.public_key, target_url="https://app.example/token")
    body = json.dumps({"kind": "webhook_secret", "target_url": "https://app.example/token", "n": 1}).encode()
    assert verifier.verify(body, signer.sign(body, message_id="msg_1"))["n"] == 1
    # The kit's retry signs the same body again, at another second: a repeat, not applied.
    with pytest.raises(RepeatedHandoffError) as repeat:
        verifier.verify(body, signer.sign(body, message_id="msg_1", timestamp=int(time.time()) + 1))
    assert repeat.value.payload["n"] == 1
    # Validly signed, same id, another body: no retry of the kit's, refused outright.
    other = body.replace(b'"n": 1', b'"n": 2')
    with pytest.raises(WebhookSignatureError, match="replay is refused") as refused:
        verifier.verify(other, signer.sign(other, message_id="msg_1"))
    assert not isinstance(refused.value, RepeatedHandoffError)


# -- UI extensions: manifest rules, checker, tokens, contexts ---------------------------------


def _extension(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "label": "Payment", "mount": "ORDER_DETAILS", "target": "widget", "url": "https://app.example/ext",
        "permissions": [{"resource": "order", "actions": ["read"]}],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("extension", "path", "fragment"),
    [
        # Which mounts exist is the install's question (tests/test_dashboard_pages.py): a
        # manifest only has to spell one as a mount name.
        (_extension(mount="checkout page"), "$.extensions[0].mount", "matching regex"),
        (_extension(target="app_page"), "$.extensions[0].target", "NAVIGATION"),
    ],
)
def test_malformed_mounts_and_misplaced_app_pages_are_refused(extension: dict[str, Any], path: str, fragment: str) -> None:
    from czo_kit.apps.manifest import parse_manifest

    data = manifest("https://app.example", extensions=[extension])
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    assert info.value.path == path and fragment in str(info.value)


def test_an_app_page_in_the_navigation_is_accepted() -> None:
    from czo_kit.apps.manifest import parse_manifest

    parsed = parse_manifest(manifest("https://app.example", extensions=[_extension(mount="NAVIGATION", target="app_page")]))
    assert parsed.extensions[0].target == "app_page"


def test_the_app_permission_checker() -> None:
    from czo_kit.apps import AppPermissionChecker
    from czo_kit.apps.registry import AppPrincipal

    principal = AppPrincipal(
        installation_id=1, app_id="acme", shop_id=3,
        permissions=frozenset({("order", "read"), ("product", "*")}), token_id=1,
    )
    checker = AppPermissionChecker()
    assert checker.has(principal, "order", "read")
    assert not checker.has(principal, "order", "write")
    assert checker.has(principal, "product", "write")  # the app holds every product action
    assert not checker.has(principal, "order", "read", shop_id=4)  # only in its own shop
    assert checker.has(principal, "order", "read", shop_id=3)


def test_extension_tokens_are_signed_short_lived_and_audience_bound() -> None:
    from czo_kit.apps.extensions import audience, issue_extension_token, verify_extension_token
    from czo_kit.errors import AuthenticationError

    secret = b"s" * 32
    token, expires = issue_extension_token(
        secret, app_id="acme", installation_id=7, shop_id=2, user_id="ann",
        permissions=frozenset({("order", "read")}), now=1_000_000.0,
    )
    assert expires == 1_000_000 + 300  # minutes, not hours
    principal = verify_extension_token(secret, token, now=1_000_100.0)
    assert (principal.app_id, principal.shop_id, principal.user_id) == ("acme", 2, "ann")
    assert principal.has("order", "read") and not principal.has("order", "write")
    with pytest.raises(AuthenticationError, match="expired"):
        verify_extension_token(secret, token, now=1_000_400.0)
    with pytest.raises(AuthenticationError, match="signature"):
        verify_extension_token(b"t" * 32, token, now=1_000_100.0)
    with pytest.raises(AuthenticationError, match="audience"):
        verify_extension_token(secret, token, now=1_000_100.0, expected_audience=audience("acme", 3))
    body, _, signature = token.partition(".")
    for forged in ("czo_ext_", "czo_ext_abc", body + ".", token + "x", "czo_app_" + token[8:], "x" * 3000):
        with pytest.raises(AuthenticationError):
            verify_extension_token(secret, forged, now=1_000_100.0)


def test_dashboard_contexts_drop_what_the_app_may_not_see() -> None:
    from czo_kit.apps.extensions import ExtensionContext

    page = ExtensionContext(
        data={"order": {"id": 1, "customer_email": "a@b.c", "lines": [{"sku": "A", "cost": 3}, {"sku": "B", "cost": 4}]}},
        requires={"order.customer_email": ("customer", "read"), "order.lines.cost": ("finance", "read")},
    )
    reader = page.for_app(frozenset({("order", "read")}), resource="order", shop_id=9)
    assert reader == {"order": {"id": 1, "lines": [{"sku": "A"}, {"sku": "B"}]}, "shop": {"id": 9}}
    everything = page.for_app(frozenset({("*", "*")}), resource="order", shop_id=9)
    assert everything["order"]["customer_email"] == "a@b.c" and everything["order"]["lines"][0]["cost"] == 3
    assert page.for_app(frozenset({("product", "read")}), resource="order", shop_id=9) == {"shop": {"id": 9}}
    assert page.data["order"]["customer_email"] == "a@b.c"  # the page's own data is untouched


def test_a_failed_outbox_write_leaves_no_webhook_behind(
    kit: Kit, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
    assert kit.outbox is not None

    def outbox_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("outbox insert failed")

    monkeypatch.setattr(kit.outbox, "publish", outbox_down)
    with pytest.raises(ConnectionError):
        kit.events.emit_async("order.created", ORDER)  # no transaction of the caller's own
    assert kit.webhooks.deliveries() == []  # the delivery rolled back with the event
    monkeypatch.undo()
    kit.events.emit_async("order.created", ORDER)
    assert len(kit.webhooks.deliveries()) == 1
