"""The payment app (plugins/czo-app-stripe) against localstripe: PaymentIntents, refunds,
declines, Stripe's own events, its own database, and a kill -9 in the middle of a payment."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import urllib3

from apps_support import OWNER, app_kit, app_settings, wait_for
from czo_app_stripe import LocalStripe, Store
from czo_app_stripe.store import Installation
from czo_kit import Kit
from czo_kit.apps import sign
from czo_kit.apps.extensions import issue_extension_token
from czo_order import OrderService
from stripe_support import (
    STRIPE_SECRET,
    AppProcess,
    Shop,
    charges_for,
    free_port,
    intents_for,
    refunds_for,
    start_shop,
    stripe_signed,
)


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripe]:
    # One emulator for the module, emptied before each test (localstripe_fresh): each test's
    # kit starts its order ids afresh.
    with LocalStripe() as server:
        yield server


@pytest.fixture
def kit(sqlite_url: str, settings_for: Any, tmp_path: Path) -> Iterator[Kit]:
    with app_kit(app_settings(settings_for, sqlite_url, str(tmp_path))) as kit:
        yield kit


@pytest.fixture
def localstripe_fresh(localstripe: LocalStripe) -> LocalStripe:
    """The module's localstripe, emptied: earlier tests' intents and webhooks gone."""
    localstripe.http.request("DELETE", localstripe.url + "/_config/data")
    return localstripe


@pytest.fixture
def shop(kit: Kit, localstripe_fresh: LocalStripe, tmp_path: Path) -> Iterator[Shop]:
    shop = start_shop(kit, localstripe_fresh, tmp_path)
    yield shop
    shop.stop()


def place(kit: Kit, total: int, currency: str = "EUR") -> Any:
    from types import SimpleNamespace

    orders = kit.services.get(OrderService)
    order = orders.place(shop_id=1, customer_email="ada@example.com", items=[(SimpleNamespace(id=7, name="Mug", price=total), 1)])
    if currency != "EUR":
        order = orders.orders.update(order.id, {"currency": currency})
    return order


def order_of(kit: Kit, order_id: int) -> Any:
    return kit.services.get(OrderService).orders.get_by_id(order_id)


def extension_headers(kit: Kit, shop_id: int = 1) -> dict[str, str]:
    installation = kit.apps.get(shop_id, "stripe")
    token, _ = issue_extension_token(
        kit.secret_key, app_id="stripe", installation_id=int(installation.id), shop_id=shop_id, user_id=OWNER,
        permissions=frozenset({("order", "read")}),
    )
    return {"Authorization": f"Bearer {token}"}


def widget_status(shop: Shop, order_id: int, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
    assert shop.app is not None
    return urllib3.request(
        "GET", f"{shop.app.url}/extensions/order-payment/status?shop_id=1&order_id={order_id}", headers=headers,
        retries=False,
    )


# -- paying ------------------------------------------------------------------------------------


def test_an_order_is_paid_through_a_payment_intent_at_stripe(kit: Kit, shop: Shop) -> None:
    assert shop.state is not None
    with kit.consumer(workers=2, sweep_interval=0.5):
        order = place(kit, total=4250)
        wait_for(lambda: order_of(kit, order.id).status == "paid", timeout=30, what="the order to be paid")
        # localstripe sends payment_intent.succeeded a second later; the app takes it too.
        wait_for(lambda: len(shop.state.store.processed("stripe")) == 1, timeout=30, what="Stripe's event")
    [intent] = intents_for(shop.localstripe, order.id)
    assert (intent["amount"], intent["currency"], intent["status"]) == (4250, "eur", "succeeded")
    assert intent["metadata"] == {"czo_shop_id": "1", "czo_order_id": str(order.id)}
    paid = order_of(kit, order.id)
    assert (paid.paid_amount, paid.payment_reference) == (4250, intent["id"])
    [payment] = shop.state.payments
    assert (payment.intent_id, payment.state, payment.amount, payment.currency) == (intent["id"], "paid", 4250, "EUR")
    assert len(charges_for(shop.localstripe, intent["id"])) == 1
    assert shop.state.errors == []

    # The widget reads Stripe, not the app's note: change the intent at Stripe behind the
    # app's back (a refund from Stripe's dashboard) and the widget says so.
    status = widget_status(shop, order.id, extension_headers(kit))
    assert status.status == 200, status.data
    assert status.json() == {
        "intent": intent["id"], "status": "succeeded", "amount": 4250, "currency": "EUR",
        "charge": charges_for(shop.localstripe, intent["id"])[0]["id"], "failure": None, "refunded": 0,
    }
    shop.localstripe.http.request(
        "POST", f"{shop.localstripe.url}/v1/refunds", fields={"payment_intent": intent["id"], "amount": "250"},
        encode_multipart=False, headers=urllib3.make_headers(basic_auth=f"{LocalStripe.api_key}:"),
    )
    assert widget_status(shop, order.id, extension_headers(kit)).json()["refunded"] == 250
    assert shop.state.payments[0].state == "paid"  # the app's own note did not change


def test_the_same_order_webhook_twice_makes_one_intent(kit: Kit, shop: Shop) -> None:
    assert shop.state is not None and shop.app is not None
    shop.state.background = False  # each delivery's work done before it is answered
    order = place(kit, total=1999)  # no consumer: the kit's own delivery never goes out
    secret = shop.state.store.installation(1).webhook_secret  # type: ignore[union-attr]
    data = {"id": order.id, "shop_id": 1, "total": 1999, "currency": "EUR", "status": "open"}
    client = urllib3.PoolManager(retries=False)

    def deliver(message_id: str) -> Any:
        body = json.dumps({"id": message_id, "event": "order.created", "shop_id": 1, "data": data}).encode()
        headers = {"Content-Type": "application/json", "X-CZO-Shop-Id": "1", **sign(body, [secret], message_id=message_id)}
        return client.request("POST", shop.app.url + "/webhooks", body=body, headers=headers).json()  # type: ignore[union-attr]

    assert deliver("msg_a") == {"received": True, "duplicate": False}
    assert deliver("msg_a") == {"received": True, "duplicate": True}  # the same delivery again
    assert deliver("msg_b") == {"received": True, "duplicate": False}  # another message, same order
    [intent] = intents_for(shop.localstripe, order.id)
    assert len(charges_for(shop.localstripe, intent["id"])) == 1
    paid = order_of(kit, order.id)
    assert (paid.status, paid.paid_amount) == ("paid", 1999)
    assert shop.state.seen_webhooks == {"msg_a", "msg_b"}


def test_cancelling_a_paid_order_refunds_it(kit: Kit, shop: Shop) -> None:
    assert shop.state is not None
    orders = kit.services.get(OrderService)
    with kit.consumer(workers=2, sweep_interval=0.5):
        order = place(kit, total=3100)
        wait_for(lambda: order_of(kit, order.id).status == "paid", timeout=30, what="the order to be paid")
        orders.cancel(shop_id=1, order_id=order.id)
        wait_for(lambda: order_of(kit, order.id).status == "refunded", timeout=30, what="the refund")
    [intent] = intents_for(shop.localstripe, order.id)
    [refund] = refunds_for(shop.localstripe, intent["id"])
    assert (refund["amount"], refund["status"]) == (3100, "succeeded")
    assert orders.refunded(order.id) == 3100
    # The app notes it right after c-zo took the refund.
    wait_for(lambda: shop.state.payments[0].state == "refunded", what="the app to note the refund")  # type: ignore[union-attr]
    status = widget_status(shop, order.id, extension_headers(kit)).json()
    assert (status["status"], status["refunded"]) == ("succeeded", 3100)


def test_a_declined_card_leaves_the_order_unpaid_with_the_reason_in_the_widget(
    kit: Kit, localstripe_fresh: LocalStripe, tmp_path: Path
) -> None:
    # localstripe's card 4000000000000341: attaches, then every charge is declined.
    shop = start_shop(kit, localstripe_fresh, tmp_path, payment_method="pm_card_chargeCustomerFail")
    assert shop.state is not None
    try:
        with kit.consumer(workers=2, sweep_interval=0.5):
            order = place(kit, total=1500)
            wait_for(lambda: shop.state.payments and shop.state.payments[0].state == "failed",  # type: ignore[union-attr]
                     timeout=30, what="the decline")
            wait_for(lambda: len(shop.state.store.processed("stripe")) == 1,  # type: ignore[union-attr]
                     timeout=30, what="payment_intent.payment_failed")
        unpaid = order_of(kit, order.id)
        assert (unpaid.status, unpaid.paid_amount, unpaid.payment_reference) == ("open", 0, None)
        [intent] = intents_for(shop.localstripe, order.id)
        assert intent["status"] == "requires_payment_method"
        status = widget_status(shop, order.id, extension_headers(kit)).json()
        assert status["status"] == "requires_payment_method"
        assert status["failure"] == intent["last_payment_error"]["message"] and status["failure"]
        # The widget's script renders that answer.
        from czo_app_stripe.app import WIDGET_JS

        assert '" - declined: " + payment.failure' in WIDGET_JS
    finally:
        shop.stop()


def test_the_widget_status_is_only_for_tokens_c_zo_accepts_for_that_order(kit: Kit, shop: Shop) -> None:
    order = place(kit, total=500)
    assert widget_status(shop, order.id, {}).status == 401
    assert widget_status(shop, order.id, {"Authorization": "Bearer czo_ext_forged.x"}).status == 403
    kit.permission_service.grant(OWNER, 2, "owner")
    assert shop.app is not None
    other_shop = urllib3.request(
        "GET", f"{shop.app.url}/extensions/order-payment/status?shop_id=2&order_id={order.id}",
        headers=extension_headers(kit), retries=False,
    )
    assert other_shop.status == 403
    for query, name in (("shop_id=x&order_id=1", "shop_id"), ("shop_id=1", "order_id"), ("shop_id=1&order_id=-3", "order_id")):
        bad = urllib3.request("GET", f"{shop.app.url}/extensions/order-payment/status?{query}", retries=False)
        assert bad.status == 400 and name in bad.json()["description"], bad.data
    assert widget_status(shop, order.id, extension_headers(kit)).json() == {"intent": None, "status": "no payment yet"}


# -- Stripe's own events -------------------------------------------------------------------------


def test_stripe_events_are_verified_deduplicated_and_reflected_on_the_order(kit: Kit, shop: Shop) -> None:
    assert shop.state is not None and shop.app is not None
    with kit.consumer(workers=2, sweep_interval=0.5):
        order = place(kit, total=2000)
        wait_for(lambda: order_of(kit, order.id).status == "paid", timeout=30, what="the order to be paid")
        wait_for(lambda: len(shop.state.store.processed("stripe")) == 1, timeout=30, what="Stripe's event")  # type: ignore[union-attr]
    [intent] = intents_for(shop.localstripe, order.id)
    # A refund made in Stripe's dashboard, not by the app. localstripe sends no
    # charge.refunded, so the test sends the event Stripe would, signed as Stripe signs.
    shop.localstripe.http.request(
        "POST", f"{shop.localstripe.url}/v1/refunds", fields={"payment_intent": intent["id"]},
        encode_multipart=False, headers=urllib3.make_headers(basic_auth=f"{LocalStripe.api_key}:"),
    )
    [charge] = charges_for(shop.localstripe, intent["id"])
    event = json.dumps({
        "id": "evt_refund_1", "object": "event", "type": "charge.refunded", "created": int(time.time()),
        "data": {"object": charge}, "api_version": "2020-08-27", "livemode": False,
    }).encode()
    url = shop.app.url + "/stripe/webhooks"

    def post(body: bytes, headers: dict[str, str]) -> Any:
        return urllib3.request("POST", url, body=body, headers=headers, retries=False)

    unsigned = post(event, {"Content-Type": "application/json"})
    assert unsigned.status == 400 and "Stripe-Signature" in unsigned.json()["title"]
    forged = post(event, stripe_signed(event, secret="whsec_someone_else"))
    assert forged.status == 400
    stale = post(event, stripe_signed(event, timestamp=int(time.time()) - 3600))
    assert stale.status == 400 and "tolerance" in stale.json()["description"]
    not_json = post(b"{", stripe_signed(b"{"))
    assert not_json.status == 400 and "not a Stripe event" in not_json.json()["description"]
    assert order_of(kit, order.id).status == "paid"  # nothing refused touched the order

    first = post(event, stripe_signed(event))
    assert (first.status, first.json()) == (200, {"received": True, "duplicate": False})
    refunded = order_of(kit, order.id)
    assert refunded.status == "refunded" and kit.services.get(OrderService).refunded(order.id) == 2000
    again = post(event, stripe_signed(event))
    assert again.json() == {"received": True, "duplicate": True}
    assert kit.services.get(OrderService).refunded(order.id) == 2000
    other = json.dumps({"id": "evt_x", "object": "event", "type": "customer.created", "created": int(time.time()),
                        "data": {"object": {}}}).encode()
    assert post(other, stripe_signed(other)).json() == {"received": True, "ignored": "customer.created"}
    assert "evt_x" not in shop.state.store.processed("stripe")


def test_an_order_webhook_the_app_cannot_pay_is_refused_naming_the_field(kit: Kit, shop: Shop) -> None:
    assert shop.state is not None and shop.app is not None
    secret = shop.state.store.installation(1).webhook_secret  # type: ignore[union-attr]
    cases = [
        ({"id": 1, "total": "12.00"}, "data.total"),
        ({"id": 1, "total": 0}, "data.total"),
        ({"id": 1, "total": 100, "currency": "euro"}, "data.currency"),
        ({"total": 100}, "data.id"),
        ([1, 2], "data: expected the order as an object"),
    ]
    for data, named in cases:
        body = json.dumps({"id": "m1", "event": "order.created", "data": data}).encode()
        headers = {"Content-Type": "application/json", "X-CZO-Shop-Id": "1", **sign(body, [secret], message_id="m1")}
        answer = urllib3.request("POST", shop.app.url + "/webhooks", body=body, headers=headers, retries=False)
        assert answer.status == 400 and named in answer.json()["description"], (data, answer.data)
    for body, named in ((b"[]", "object"), (b'{"id": 5, "event": "order.created"}', "id:")):
        headers = {"Content-Type": "application/json", "X-CZO-Shop-Id": "1", **sign(body, [secret], message_id="m2")}
        answer = urllib3.request("POST", shop.app.url + "/webhooks", body=body, headers=headers, retries=False)
        assert answer.status == 400 and named in answer.json()["description"], answer.data
    assert shop.state.payments == [] and shop.state.seen_webhooks == set()


# -- state that survives ------------------------------------------------------------------------


def test_the_app_killed_mid_payment_resumes_without_charging_twice(
    kit: Kit, localstripe_fresh: LocalStripe, tmp_path: Path
) -> None:
    shop = start_shop(kit, localstripe_fresh, tmp_path, in_process=False)
    database = f"sqlite:///{tmp_path / 'killed-app.sqlite3'}"
    port = free_port()
    app = AppProcess(shop, database, port, tmp_path / "app.log")
    try:
        # No Stripe events to this app: only its own resuming can finish the payment.
        localstripe_fresh.add_webhook("czo", shop.api.url + "/nowhere", STRIPE_SECRET)
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest_url=app.url + "/manifest")
        shop.gate.closed = True  # c-zo will not take the payment record
        with kit.consumer(workers=2, sweep_interval=0.5):
            order = place(kit, total=7700)
            # Stripe has the money; the app could not tell c-zo yet.
            wait_for(lambda: any(i["status"] == "succeeded" for i in intents_for(localstripe_fresh, order.id)),
                     timeout=30, what="the intent to succeed at Stripe")
            wait_for(lambda: len(shop.gate.refused) >= 1, timeout=30, what="the app to try recording the payment")
            app.kill()
            assert order_of(kit, order.id).status == "open"
            shop.gate.closed = False
            app = AppProcess(shop, database, port, tmp_path / "app.log")  # the same database
            wait_for(lambda: order_of(kit, order.id).status == "paid", timeout=30, what="the resumed payment")
        [intent] = intents_for(localstripe_fresh, order.id)
        assert len(charges_for(localstripe_fresh, intent["id"])) == 1
        assert order_of(kit, order.id).paid_amount == 7700
        assert order_of(kit, order.id).payment_reference == intent["id"]
    finally:
        app.stop()
        shop.stop()


def test_a_payment_c_zo_could_not_take_is_recorded_once_it_is_back(kit: Kit, shop: Shop) -> None:
    assert shop.state is not None
    # No Stripe events to this app: only its resume loop can finish the payment.
    shop.localstripe.add_webhook("czo", shop.api.url + "/nowhere", STRIPE_SECRET)
    shop.gate.closed = True
    with kit.consumer(workers=2, sweep_interval=0.5):
        order = place(kit, total=900)
        wait_for(lambda: len(shop.gate.refused) >= 1 and shop.state.errors != [],  # type: ignore[union-attr]
                 timeout=30, what="the app to find c-zo away")
        assert shop.state.payments[0].state == "pending" and order_of(kit, order.id).status == "open"
        shop.gate.closed = False
        shop.state.resume_forever(interval=0.2)
        wait_for(lambda: order_of(kit, order.id).status == "paid", timeout=30, what="the resumed payment")
    [intent] = intents_for(shop.localstripe, order.id)
    assert len(charges_for(shop.localstripe, intent["id"])) == 1
    assert order_of(kit, order.id).paid_amount == 900


def test_the_store_keeps_its_state_across_restarts_and_forgets_old_event_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    store = Store(url)
    store.save_installation(Installation(shop_id=3, installation_id=9, token="czo_app_t", webhook_secret="whsec_s"))
    assert store.first_time("czo", "msg_1") is True
    assert store.first_time("czo", "msg_1") is False
    opened = store.open_payment(shop_id=3, order_id=5, amount=100, currency="EUR", idempotency_key="czo-3-5")
    again = store.open_payment(shop_id=3, order_id=5, amount=999, currency="USD", idempotency_key="other")
    assert again == opened  # a second webhook for the order changes nothing
    store.update_payment(3, 5, intent_id="pi_1")
    store.close()

    reopened = Store(url)
    assert reopened.installation(3) == Installation(3, 9, "czo_app_t", "whsec_s")
    assert reopened.first_time("czo", "msg_1") is False
    assert reopened.payment_by_intent("pi_1") == opened.__class__(**{**opened.__dict__, "intent_id": "pi_1"})
    assert [p.order_id for p in reopened.unfinished()] == [5]
    reopened.close()

    forgetful = Store(url, event_retention=0)  # ids older than the retention are pruned
    assert forgetful.first_time("czo", "msg_2") is True
    assert forgetful.processed("czo") == {"msg_2"}
    forgetful.close()


def test_the_store_runs_on_postgresql(pg_url: str) -> None:
    store = Store(pg_url)
    try:
        store.db.execute_sql("DELETE FROM stripe_app_processed_event")
        store.db.execute_sql("DELETE FROM stripe_app_payment")
        assert store.first_time("stripe", "evt_pg") is True
        assert store.first_time("stripe", "evt_pg") is False
        store.open_payment(shop_id=1, order_id=1, amount=10, currency="EUR", idempotency_key="czo-1-1")
        again = Store(pg_url)
        assert again.payment(1, 1) is not None
        again.close()
    finally:
        store.close()


@pytest.mark.parametrize("url", ["czo-app.sqlite3", "mysql+nothing://x", ""])
def test_a_bad_database_url_is_refused_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match="database URL"):
        Store(url)


def test_without_an_api_key_the_app_says_which_setting_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from czo_app_stripe import create_app
    from czo_app_stripe.payments import PaymentConfigError

    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    wsgi, state = create_app(public_url="http://pay.test", czo_api_url="http://127.0.0.1:9",
                             database_url=f"sqlite:///{tmp_path / 'a.sqlite3'}")
    with pytest.raises(PaymentConfigError, match="STRIPE_API_KEY"):
        state.stripe()
    answer = falcon.testing.TestClient(wsgi).simulate_post("/stripe/webhooks", body=b"{}")
    assert answer.status_code == 503 and "STRIPE_WEBHOOK_SECRET" in answer.json["description"]
    state.store.close()


def test_only_stripe_itself_is_told_that_no_payment_method_redirects(tmp_path: Path) -> None:
    """Stripe asks for a return_url on confirm unless told no method redirects; localstripe
    refuses the parameter it does not know."""
    from czo_app_stripe import create_app
    from czo_app_stripe.app import STRIPE_CREATE_PARAMS

    _, real = create_app(public_url="http://pay.test", czo_api_url="http://127.0.0.1:9", stripe_api_key="sk_test_x",
                         database_url=f"sqlite:///{tmp_path / 'a.sqlite3'}")
    _, local = create_app(public_url="http://pay.test", czo_api_url="http://127.0.0.1:9", stripe_api_key="sk_test_x",
                          stripe_api_base="http://127.0.0.1:8420", database_url=f"sqlite:///{tmp_path / 'b.sqlite3'}")
    assert real.flow.create_params == STRIPE_CREATE_PARAMS == {
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"}
    }
    assert local.flow.create_params == {}
    real.store.close()
    local.store.close()
