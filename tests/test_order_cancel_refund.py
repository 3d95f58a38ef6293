"""The order module's side of payments going back: ``order.cancelled``, refunds recorded once
per reference and never beyond what was paid, and the order read route apps (and their
widgets' extension tokens) use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import falcon.testing
import pytest

from apps_support import OWNER, Receiver, app_kit, app_settings, manifest, wait_for
from czo_kit import Kit
from czo_kit.errors import ConflictError, NotFoundError
from czo_kit.http import create_api
from czo_order import OrderService


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def kit(request: pytest.FixtureRequest, settings_for: Any, tmp_path: Path) -> Iterator[Kit]:
    url = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    with app_kit(app_settings(settings_for, url, str(tmp_path))) as kit:
        yield kit


def place(kit: Kit, shop_id: int = 1, total: int = 2500) -> Any:
    return kit.services.get(OrderService).place(
        shop_id=shop_id, customer_email="grace@example.com", items=[(SimpleNamespace(id=7, name="Mug", price=total), 1)]
    )


def test_cancelling_announces_order_cancelled_to_apps_with_the_declared_fields(kit: Kit) -> None:
    with Receiver() as app:
        kit.apps.install(
            shop_id=1, installer_id=OWNER,
            manifest=manifest(app.url, events=["order.cancelled"], permissions=[{"resource": "order", "actions": ["read"]}]),
        )
        orders = kit.services.get(OrderService)
        order = place(kit)
        with kit.consumer(workers=1, sweep_interval=0.5):
            cancelled = orders.cancel(shop_id=1, order_id=order.id)
            again = orders.cancel(shop_id=1, order_id=order.id)  # nothing more to announce
            wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": 1}, timeout=20,
                     what="order.cancelled delivered to the app")
    assert cancelled.status == again.status == "cancelled"
    [post] = app.posts("/hook")
    message = json.loads(post.body)
    assert message["event"] == "order.cancelled"
    assert message["data"]["id"] == order.id and message["data"]["status"] == "cancelled"
    assert message["data"]["total"] == 2500 and message["data"]["currency"] == "EUR"
    assert "customer_email" not in message["data"]  # declared as needing customer:read


def test_cancel_refuses_an_order_of_another_shop(kit: Kit) -> None:
    order = place(kit, shop_id=2)
    with pytest.raises(NotFoundError):
        kit.services.get(OrderService).cancel(shop_id=1, order_id=order.id)
    assert kit.services.get(OrderService).orders.get_by_id(order.id).status == "open"


def test_refunds_are_recorded_once_and_never_beyond_what_was_paid(kit: Kit) -> None:
    orders = kit.services.get(OrderService)
    order = place(kit, total=3000)
    orders.record_payment(shop_id=1, order_id=order.id, amount=3000, reference="pi_1")
    partly = orders.record_refund(shop_id=1, order_id=order.id, amount=1000, reference="re_1")
    assert (partly.status, orders.refunded(order.id)) == ("paid", 1000)
    retried = orders.record_refund(shop_id=1, order_id=order.id, amount=1000, reference="re_1")
    assert orders.refunded(order.id) == 1000 and retried.version == partly.version
    with pytest.raises(ConflictError, match="re_1.*already recorded"):
        orders.record_refund(shop_id=1, order_id=order.id, amount=999, reference="re_1")
    with pytest.raises(ConflictError, match="more than the 3000 paid"):
        orders.record_refund(shop_id=1, order_id=order.id, amount=2001, reference="re_2")
    assert orders.refunded(order.id) == 1000  # the refused refund left nothing behind
    full = orders.record_refund(shop_id=1, order_id=order.id, amount=2000, reference="re_3")
    assert (full.status, orders.refunded(order.id)) == ("refunded", 3000)
    assert orders.cancel(shop_id=1, order_id=order.id).status == "refunded"  # closed already


def test_the_order_and_refund_routes_take_app_tokens_of_the_shop_with_the_right_permission(kit: Kit) -> None:
    client = falcon.testing.TestClient(create_api(kit))
    with Receiver() as app:
        writer = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app.url)).token
        other = kit.apps.install(
            shop_id=1, installer_id=OWNER,
            manifest=manifest(app.url, app_id="blind", permissions=[{"resource": "customer", "actions": ["read"]}], webhooks=[]),
        ).token
    order, theirs = place(kit, total=1200), place(kit, shop_id=2)
    auth = {"Authorization": f"Bearer {writer}"}
    read = client.simulate_get(f"/api/shops/1/orders/{order.id}", headers=auth)
    assert read.status_code == 200, read.text
    assert read.json["order"] == {"id": order.id, "status": "open", "total": 1200, "currency": "EUR", "paid": 0, "refunded": 0}
    assert client.simulate_get(f"/api/shops/1/orders/{theirs.id}", headers=auth).status_code == 404
    assert client.simulate_get(f"/api/shops/2/orders/{theirs.id}", headers=auth).status_code == 403
    blind = client.simulate_get(f"/api/shops/1/orders/{order.id}", headers={"Authorization": f"Bearer {other}"})
    assert (blind.status_code, blind.json["missing"]) == (403, ["order:read"])
    assert client.simulate_get(f"/api/shops/1/orders/{order.id}").status_code == 401

    refunds = f"/api/shops/1/orders/{order.id}/refunds"
    client.simulate_post(f"/api/shops/1/orders/{order.id}/payments", json={"amount": 1200, "reference": "pi_9"}, headers=auth)
    made = client.simulate_post(refunds, json={"amount": 1200, "reference": "re_9"}, headers=auth)
    assert (made.status_code, made.json["order"]) == (201, {"id": order.id, "status": "refunded", "refunded": 1200})
    for body, field in (({"amount": 0, "reference": "re_x"}, "amount"), ({"amount": 5}, "reference"),
                        ({"amount": 5, "reference": ""}, "reference"), ({"amount": 5, "reference": "r", "currency": "eur"}, "currency")):
        bad = client.simulate_post(refunds, json=body, headers=auth)
        assert bad.status_code == 400 and field in bad.text, (body, bad.text)
    too_much = client.simulate_post(refunds, json={"amount": 1, "reference": "re_10"}, headers=auth)
    assert too_much.status_code == 409 and "more than the 1200 paid" in too_much.text
