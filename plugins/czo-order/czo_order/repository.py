"""Order repositories, built with the kit's builders, and the order service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import peewee

from czo_kit.db import Repository, create_repository
from czo_kit.db.mutations import EventSink, HookRunner
from czo_kit.db.transactions import on_commit
from czo_kit.errors import ConflictError, InvalidDataError, NotFoundError
from czo_order.models import OPEN_STATES, Order, OrderLine, OrderPayment, OrderRefund

CLOSED_STATES = ("cancelled", "refunded")


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
    events: EventSink | None = None
    async_events: bool = False

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
            order, new = self._record_once(OrderPayment, shop_id, order_id, amount, reference, currency)
            if not new:
                return order
            paid = int(order.paid_amount) + int(amount)
            status = "paid" if paid >= int(order.total) else order.status
            return self.orders.update(
                order.id,
                {"paid_amount": paid, "payment_reference": reference, "status": status},
                expected_version=order.version,
            )

    def _record_once(
        self, model: type[OrderPayment] | type[OrderRefund], shop_id: int, order_id: int, amount: int,
        reference: str, currency: str,
    ) -> tuple[Order, bool]:
        """In the caller's transaction: the shop's order with a new ``model`` row (payment or
        refund) for ``reference``, and ``True``; or, when the reference was recorded before,
        the order as it is and ``False`` (a ``ConflictError`` if it was another order's,
        amount or currency)."""
        order = self.orders.find_one({"id": order_id, "shop_id": shop_id})
        if order is None:
            raise NotFoundError("Order", order_id)
        try:
            with self.db.atomic():
                model.insert(
                    order=order.id, shop_id=shop_id, reference=reference, amount=amount, currency=currency
                ).execute(self.db)
        except peewee.IntegrityError:
            # Recorded before, maybe by a request running alongside this one (the unique
            # index made this insert wait for it): the same payment or refund, or a misuse.
            return self._recorded(shop_id, order_id, amount, reference, currency, model), False
        return order, True

    def _recorded(
        self, shop_id: int, order_id: int, amount: int, reference: str, currency: str,
        model: type[OrderPayment] | type[OrderRefund],
    ) -> Order:
        what = "payment" if model is OrderPayment else "refund"
        earlier = model.select().where((model.shop_id == shop_id) & (model.reference == reference)).get(self.db)
        if (int(earlier.order_id), int(earlier.amount), str(earlier.currency)) != (order_id, amount, currency):
            raise ConflictError(
                f"{what} reference {reference!r} was already recorded for order {earlier.order_id} "
                f"({earlier.amount} {earlier.currency}); a reference names one {what}",
                fields=("reference",),
            )
        return self.orders.get_by_id(order_id)

    def cancel(self, *, shop_id: int, order_id: int) -> Order:
        """Cancel the order and announce ``order.cancelled`` (a payment app refunds on it).

        Cancelling a cancelled or refunded order changes nothing and announces nothing.
        """
        with self.db.atomic():
            order = self.orders.find_one({"id": order_id, "shop_id": shop_id})
            if order is None:
                raise NotFoundError("Order", order_id)
            if order.status in CLOSED_STATES:
                return order
            order = self.orders.update(order.id, {"status": "cancelled"}, expected_version=order.version)
            self._announce("order.cancelled", order)
        return order

    def _announce(self, name: str, order: Order) -> None:
        if self.events is None:
            return
        # The same payload as the repository's own order events: the row.
        payload = dict(order.__data__)
        events = self.events
        if self.async_events:
            # In the cancel's transaction: durable with it, gone with it on rollback.
            getattr(events, "emit_async")(name, payload)
        else:
            on_commit(self.db, lambda: events.emit(name, payload))

    def record_refund(
        self, *, shop_id: int, order_id: int, amount: int, reference: str, currency: str = "EUR"
    ) -> Order:
        """Record money given back; the order is ``refunded`` once refunds cover what was paid.

        Once per ``reference`` in a shop, as payments are. Refunds beyond what was paid are a
        ``ConflictError``.
        """
        with self.db.atomic():
            order, new = self._record_once(OrderRefund, shop_id, order_id, amount, reference, currency)
            if not new:
                return order
            refunded = self.refunded(order.id)
            if refunded > int(order.paid_amount):
                raise ConflictError(
                    f"refund {reference!r} of {amount} would bring refunds of order {order_id} to {refunded}, "
                    f"more than the {order.paid_amount} paid",
                    fields=("amount",),
                )
            status = "refunded" if refunded >= int(order.paid_amount) else order.status
            return self.orders.update(order.id, {"status": status}, expected_version=order.version)

    def refunded(self, order_id: int) -> int:
        """What was given back on the order so far."""
        total = OrderRefund.select(peewee.fn.COALESCE(peewee.fn.SUM(OrderRefund.amount), 0)).where(
            OrderRefund.order == order_id
        ).scalar(self.db)
        return int(total)


def build_order_service(
    db: peewee.Database, *, hooks: HookRunner | None = None, events: EventSink | None = None,
    async_events: bool = False,
) -> OrderService:
    orders = create_repository(
        Order, db=db, hooks=hooks, events=events, async_events=async_events, input_type=OrderInput
    )
    lines = create_repository(OrderLine, db=db, hooks=hooks, input_type=OrderLineInput)
    return OrderService(db=db, orders=orders, lines=lines, events=events, async_events=async_events)
