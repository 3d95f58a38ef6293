"""The order module's plugin: models, migrations, services, and product event handlers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import svcs

from czo_kit import Kit, hookimpl
from czo_kit.apps.permissions import FieldSpec
from czo_kit.events import EventContext, EventEmitter
from czo_order.models import Order, OrderLine, OrderPayment, OrderRefund
from czo_order.repository import OrderRepository, OrderService, build_order_service
from czo_product.events import ProductDeleted, ProductRestored

MIGRATIONS = Path(__file__).parent / "migrations"


@hookimpl
def czo_register_models(register: Any) -> None:
    register(Order, OrderLine, OrderPayment, OrderRefund)


@hookimpl
def czo_register_migrations(register: Any) -> None:
    register(str(MIGRATIONS))


@hookimpl
def czo_register_events(events: EventEmitter, kit: Kit) -> None:
    def follow_product(shop_id: int, product_id: int) -> None:
        """Open order lines of a product are available while it is, whichever of its events
        this is. Events may arrive twice, late or out of order (at least once, several
        workers): a ``product.deleted`` run after the ``product.restored`` that followed it
        must not leave the lines unavailable, so the product's state is read, not the event's
        kind. Read in a transaction: from the database, never from a cache."""
        from czo_product import ProductRepository

        products = kit.services.get_abstract(ProductRepository)
        with kit.db.atomic():
            product = products.find_by_id(product_id, with_deleted=True)
            available = product is not None and product.deleted_at is None
            kit.services.get(OrderService).set_product_availability(shop_id, product_id, available=available)

    def on_product_deleted(event: ProductDeleted, ctx: EventContext) -> None:
        """Open order lines of a deleted product are marked unavailable..."""
        follow_product(event.shop_id, event.id)

    def on_product_restored(event: ProductRestored, ctx: EventContext) -> None:
        """...and available again when the product comes back."""
        follow_product(event.shop_id, event.id)

    # The ids are explicit: they name these handlers in delivery records, across deployments.
    events.on(ProductDeleted, on_product_deleted, id="czo_order.mark_lines_unavailable")
    events.on(ProductRestored, on_product_restored, id="czo_order.mark_lines_available")


ORDER_FIELDS: dict[str, FieldSpec] = {
    "id": None,
    "shop_id": None,
    "status": None,
    "total": None,
    "currency": None,
    "paid_amount": None,
    "payment_reference": None,
    "version": None,
    "created_at": None,
    "updated_at": None,
    "deleted_at": None,
    "customer_email": ("customer", "read"),
}
"""What apps may see of an order event's payload (the order's row), and what each field needs."""


@hookimpl
def czo_register_permissions(register: Any) -> None:
    register.resource("order", ["read", "write"], description="orders of a shop")
    register.resource("customer", ["read"], description="customers' personal data")
    register.role("staff", {"order": ["read", "write"], "customer": ["read"]})
    # An app needs order:read to hear about orders, and customer:read to see who ordered.
    # Every column is listed: one added to Order later reaches no app until it is declared.
    # order.cancelled is the order service's own (OrderService.cancel), with the same row.
    for operation in ("created", "updated", "deleted", "restored", "hard_deleted", "cancelled"):
        register.event(f"order.{operation}", resource="order", action="read", fields=ORDER_FIELDS)


@hookimpl
def czo_register_http_routes(api: Any, kit: Kit) -> None:
    from czo_order.http import OrderResource, PaymentsResource, RefundsResource

    api.add_route("/api/shops/{shop_id:shop}/orders/{order_id:id}", OrderResource(kit))
    api.add_route("/api/shops/{shop_id:shop}/orders/{order_id:id}/payments", PaymentsResource(kit))
    api.add_route("/api/shops/{shop_id:shop}/orders/{order_id:id}/refunds", RefundsResource(kit))


@hookimpl
def czo_register_dashboard(register: Any, kit: Kit) -> None:
    from czo_order.dashboard import order_details, order_list, render_orders

    # The same hook a third-party module uses: the kit knows nothing of orders.
    register.mount("ORDER_DETAILS", resource="order", context=order_details)
    register.mount("ORDER_LIST", resource="order", context=order_list)
    register.page("orders", title="Orders", resource="order", render=render_orders)


@hookimpl
def czo_register_services(registry: Any) -> None:
    def factory(container: svcs.Container) -> OrderService:
        kit = container.get(Kit)
        return build_order_service(kit.db, hooks=kit.hooks, events=kit.events, async_events=kit.queue is not None)

    registry.register_factory(OrderService, factory)
    registry.register_factory(OrderRepository, lambda container: container.get(OrderService).orders)

