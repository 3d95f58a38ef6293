"""The order module's part of the dashboard: the "Orders" page, and the ``ORDER_LIST`` and
``ORDER_DETAILS`` mounts where apps' extensions show next to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from czo_kit.apps.extensions import ExtensionContext, Page
from czo_order.repository import OrderService

if TYPE_CHECKING:
    from czo_kit import Kit


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:.2f} {currency}"


def _order(kit: Kit, shop_id: int, order_id: int | None) -> Any:
    if order_id is None:
        return None
    return kit.services.get(OrderService).orders.find_one({"id": order_id, "shop_id": shop_id})


def _recent(kit: Kit, shop_id: int) -> list[Any]:
    return list(kit.services.get(OrderService).orders.find_many({"shop_id": shop_id}, order_by="-id", limit=20).items)


def render_orders(kit: Kit, shop_id: int, order_id: int | None) -> Page | None:
    """``/dashboard/shops/<shop>/orders``: the latest orders; ``.../orders/<id>``: one order."""
    if order_id is None:
        orders = _recent(kit, shop_id)
        return Page(
            title="Orders",
            summary={f"#{o.id}": f"{o.status}, {_money(int(o.total), str(o.currency))}" for o in orders},
            links=[(f"Order #{o.id}", f"/dashboard/shops/{shop_id}/orders/{o.id}") for o in orders],
            mount="ORDER_LIST",
        )
    order = _order(kit, shop_id, order_id)
    if order is None:
        return None
    lines = kit.services.get(OrderService).lines_of(order.id)
    return Page(
        title=f"Order #{order.id}",
        summary={
            "Status": str(order.status),
            "Total": _money(int(order.total), str(order.currency)),
            "Paid": _money(int(order.paid_amount), str(order.currency)),
            "Customer": str(order.customer_email),
            "Lines": ", ".join(f"{line.quantity} x {line.product_name}" for line in lines),
        },
        mount="ORDER_DETAILS",
    )


def order_details(kit: Kit, shop_id: int, order_id: int | None) -> ExtensionContext | None:
    """What an extension at ``ORDER_DETAILS`` is told about the order on screen."""
    order = _order(kit, shop_id, order_id)
    if order is None:
        return None
    lines = kit.services.get(OrderService).lines_of(order.id)
    return ExtensionContext(
        data={
            "order": {
                "id": order.id,
                "status": order.status,
                "total": order.total,
                "paid_amount": order.paid_amount,
                "currency": order.currency,
                "payment_reference": order.payment_reference,
                "customer_email": order.customer_email,
                "lines": [
                    {"product_id": line.product_id, "name": line.product_name, "quantity": line.quantity,
                     "unit_price": line.unit_price, "available": line.product_available}
                    for line in lines
                ],
            }
        },
        # Who bought is personal data: only apps holding customer:read see it.
        requires={"order.customer_email": ("customer", "read")},
    )


def order_list(kit: Kit, shop_id: int, object_id: int | None) -> ExtensionContext | None:
    """What an extension at ``ORDER_LIST`` is told: the orders on screen."""
    return ExtensionContext(data={"orders": [{"id": o.id, "status": o.status, "total": o.total} for o in _recent(kit, shop_id)]})
