"""The order module's HTTP routes for apps: recording a payment on an order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import falcon
import msgspec

from czo_kit.http import read_json, require_app
from czo_order.repository import OrderService

if TYPE_CHECKING:
    from czo_kit import Kit


class PaymentBody(msgspec.Struct, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
    reference: str
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")] = "EUR"


class PaymentsResource:
    """``POST /api/shops/{shop_id}/orders/{order_id}/payments`` with an app token holding
    ``order:write`` in that shop. ``Idempotency-Key`` is honoured by the kit's API itself."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_post(self, req: falcon.Request, resp: falcon.Response, shop_id: int, order_id: int) -> None:
        require_app(req, "order", "write", shop_id=shop_id)
        body = read_json(req, PaymentBody)
        if not 1 <= len(body.reference) <= 200:
            raise falcon.HTTPBadRequest(title="Invalid request", description="reference is 1-200 characters", code="$.reference")
        service = self.kit.services.get(OrderService)
        # Once per reference: a retry of a payment that went through answers as it did.
        order = service.record_payment(
            shop_id=shop_id, order_id=order_id, amount=body.amount, reference=body.reference, currency=body.currency
        )
        resp.status = falcon.HTTP_201
        resp.media = {
            "order": {"id": order.id, "status": order.status, "paid": order.paid_amount, "total": order.total}
        }
