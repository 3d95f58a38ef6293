"""The order module's HTTP routes for apps: reading an order, recording a payment or a refund."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import falcon
import msgspec

from czo_kit.errors import NotFoundError
from czo_kit.http import read_json, require_app
from czo_order.repository import OrderService

if TYPE_CHECKING:
    from czo_kit import Kit


class PaymentBody(msgspec.Struct, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
    reference: str
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")] = "EUR"


def _read_money(req: falcon.Request, shop_id: int) -> PaymentBody:
    """The body of a payment or a refund, from an app holding ``order:write`` in the shop."""
    require_app(req, "order", "write", shop_id=shop_id)
    body = read_json(req, PaymentBody)
    if not 1 <= len(body.reference) <= 200:
        raise falcon.HTTPBadRequest(title="Invalid request", description="reference is 1-200 characters", code="$.reference")
    return body


class PaymentsResource:
    """``POST /api/shops/{shop_id}/orders/{order_id}/payments`` with an app token holding
    ``order:write`` in that shop. ``Idempotency-Key`` is honoured by the kit's API itself."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_post(self, req: falcon.Request, resp: falcon.Response, shop_id: int, order_id: int) -> None:
        body = _read_money(req, shop_id)
        service = self.kit.services.get(OrderService)
        # Once per reference: a retry of a payment that went through answers as it did.
        order = service.record_payment(
            shop_id=shop_id, order_id=order_id, amount=body.amount, reference=body.reference, currency=body.currency
        )
        resp.status = falcon.HTTP_201
        resp.media = {
            "order": {"id": order.id, "status": order.status, "paid": order.paid_amount, "total": order.total}
        }


class RefundsResource:
    """``POST /api/shops/{shop_id}/orders/{order_id}/refunds`` with an app token holding
    ``order:write``: money given back (``reference`` is the provider's refund id)."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_post(self, req: falcon.Request, resp: falcon.Response, shop_id: int, order_id: int) -> None:
        body = _read_money(req, shop_id)
        service = self.kit.services.get(OrderService)
        order = service.record_refund(
            shop_id=shop_id, order_id=order_id, amount=body.amount, reference=body.reference, currency=body.currency
        )
        resp.status = falcon.HTTP_201
        resp.media = {"order": {"id": order.id, "status": order.status, "refunded": service.refunded(order.id)}}


class OrderResource:
    """``GET /api/shops/{shop_id}/orders/{order_id}`` with an app or extension token holding
    ``order:read`` in that shop: the order's state (what an app's widget may check)."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response, shop_id: int, order_id: int) -> None:
        require_app(req, "order", "read", shop_id=shop_id)
        service = self.kit.services.get(OrderService)
        order = service.orders.find_one({"id": order_id, "shop_id": shop_id})
        if order is None:
            raise NotFoundError("Order", order_id)
        resp.media = {
            "order": {
                "id": order.id, "status": order.status, "total": order.total, "currency": order.currency,
                "paid": order.paid_amount, "refunded": service.refunded(order.id),
            }
        }
