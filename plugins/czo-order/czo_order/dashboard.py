"""What the order pages of the dashboard show, and what extensions may learn of them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from czo_kit.apps.extensions import DashboardContext
from czo_order.repository import OrderService

if TYPE_CHECKING:
    from czo_kit import Kit


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:.2f} {currency}"


def order_details(kit: Kit, shop_id: int, order_id: int | None) -> DashboardContext | None:
    service = kit.services.get(OrderService)
    order = service.orders.find_one({"id": order_id, "shop_id": shop_id}) if order_id is not None else None
    if order is None:
        return None
    lines = service.lines_of(order.id)
    return DashboardContext(
        title=f"Order #{order.id}",
        resource="order",
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
        summary={
            "Status": str(order.status),
            "Total": _money(int(order.total), str(order.currency)),
            "Paid": _money(int(order.paid_amount), str(order.currency)),
            "Customer": str(order.customer_email),
            "Lines": ", ".join(f"{line.quantity} x {line.product_name}" for line in lines),
        },
    )


def order_list(kit: Kit, shop_id: int, object_id: int | None) -> DashboardContext | None:
    service = kit.services.get(OrderService)
    page = service.orders.find_many({"shop_id": shop_id}, order_by="-id", limit=20)
    return DashboardContext(
        title="Orders",
        resource="order",
        data={"orders": [{"id": o.id, "status": o.status, "total": o.total} for o in page.items]},
        summary={f"#{o.id}": f"{o.status}, {_money(int(o.total), str(o.currency))}" for o in page.items},
    )
