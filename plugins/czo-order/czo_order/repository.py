"""Order repositories, built with the kit's builders, and the order service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import peewee

from czo_kit.db import Repository, create_repository
from czo_kit.db.mutations import EventSink, HookRunner
from czo_kit.errors import ConflictError, InvalidDataError, NotFoundError
from czo_order.models import OPEN_STATES, Order, OrderLine, OrderPayment


class OrderInput(TypedDict, total=False):
    """What the order repository's ``create`` and ``update`` take (checked by mypy)."""

    shop_id: int
    customer_email: str
    status: str
    total: int
    currency: str
    paid_amount: int
    payment_reference: str | None


class OrderLineInput(TypedDict, total=False):
    """What the order line repository's ``create``, ``create_many`` and ``update`` take."""

    order: int
    shop_id: int
    product_id: int
    product_name: str
    quantity: int
    unit_price: int
    product_available: bool


OrderRepository = Annotated[Repository[Order, OrderInput], "czo_order.repository"]
"""Service key of the order repository."""


@dataclass
class OrderService:
    """Creating orders from products, and reacting to product changes."""

    db: peewee.Database
    orders: Repository[Order, OrderInput]
    lines: Repository[OrderLine, OrderLineInput]

    def place(self, *, shop_id: int, customer_email: str, items: Sequence[tuple[Any, int]]) -> Order:
        """An open order for ``items`` (pairs of a product row and a quantity), in one transaction."""
        if not items:
            raise InvalidDataError("an order needs at least one line", field="items")
        with self.db.atomic():
            total = sum(int(product.price) * quantity for product, quantity in items)
            order = self.orders.create(
                {"shop_id": shop_id, "customer_email": customer_email, "total": total}
            )
            self.lines.create_many(
                [
                    {
                        "order": order.id,
                        "shop_id": shop_id,
                        "product_id": product.id,
                        "product_name": product.name,
                        "quantity": quantity,
                        "unit_price": product.price,
                    }
                    for product, quantity in items
                ]
            )
        return order

    def lines_of(self, order_id: int) -> list[OrderLine]:
        return self.lines.find_many({"order": order_id}, order_by="id", limit=500).items

    def set_product_availability(self, shop_id: int, product_id: int, available: bool) -> int:
        """Mark the lines of open orders holding ``product_id``; returns how many changed."""
        open_orders = [
            o.id for o in self.orders.find_many({"shop_id": shop_id, "status__in": list(OPEN_STATES)}, limit=500).items
        ]
        if not open_orders:
            return 0
        changed = 0
        for line in self.lines.find_many(
            {"product_id": product_id, "order__in": open_orders, "product_available": not available}, limit=500
        ).items:
            self.lines.update(line.id, {"product_available": available})
            changed += 1
        return changed

    def record_payment(
        self, *, shop_id: int, order_id: int, amount: int, reference: str, currency: str = "EUR"
    ) -> Order:
        """Record a payment; the order is paid once the payments cover its total.

        Once per ``reference`` in a shop: the same payment again (a retry) changes nothing and
        returns the order as it is; the reference with another order, amount or currency is
        a ``ConflictError``.
        """
        with self.db.atomic():
            order = self.orders.find_one({"id": order_id, "shop_id": shop_id})
            if order is None:
                raise NotFoundError("Order", order_id)
            try:
                with self.db.atomic():
                    OrderPayment.insert(
                        order=order.id, shop_id=shop_id, reference=reference, amount=amount, currency=currency
                    ).execute(self.db)
            except peewee.IntegrityError:
                # Recorded before, maybe by a request running alongside this one (the unique
                # index made this insert wait for it): the same payment, or a misuse.
                return self._recorded(shop_id, order_id, amount, reference, currency)
            paid = int(order.paid_amount) + int(amount)
            status = "paid" if paid >= int(order.total) else order.status
            return self.orders.update(
                order.id,
                {"paid_amount": paid, "payment_reference": reference, "status": status},
                expected_version=order.version,
            )

    def _recorded(self, shop_id: int, order_id: int, amount: int, reference: str, currency: str) -> Order:
        earlier = (
            OrderPayment.select()
            .where((OrderPayment.shop_id == shop_id) & (OrderPayment.reference == reference))
            .get(self.db)
        )
        if (int(earlier.order_id), int(earlier.amount), str(earlier.currency)) != (order_id, amount, currency):
            raise ConflictError(
                f"payment reference {reference!r} was already recorded for order {earlier.order_id} "
                f"({earlier.amount} {earlier.currency}); a reference names one payment",
                fields=("reference",),
            )
        return self.orders.get_by_id(order_id)


def build_order_service(
    db: peewee.Database, *, hooks: HookRunner | None = None, events: EventSink | None = None,
    async_events: bool = False,
) -> OrderService:
    orders = create_repository(
        Order, db=db, hooks=hooks, events=events, async_events=async_events, input_type=OrderInput
    )
    lines = create_repository(OrderLine, db=db, hooks=hooks, input_type=OrderLineInput)
    return OrderService(db=db, orders=orders, lines=lines)
