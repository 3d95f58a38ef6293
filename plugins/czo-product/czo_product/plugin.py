"""The product module's plugin: models, migrations, hooks and its repository service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import svcs

from czo_kit import Kit, hookimpl
from czo_kit.db.mutations import MutationContext
from czo_kit.hooks import HookRegistry
from czo_kit.services import ServiceRegistry
from czo_product import events as _events  # noqa: F401  (declares the product.* event types)
from czo_product.models import Product
from czo_product.repository import ProductRepository, build_product_repository, slugify

MIGRATIONS = Path(__file__).parent / "migrations"


@hookimpl
def czo_register_models(register: Any) -> None:
    register(Product)


@hookimpl
def czo_register_migrations(register: Any) -> None:
    register(str(MIGRATIONS))


def _fill_slug(data: dict[str, Any]) -> None:
    if not data.get("slug") and isinstance(data.get("name"), str):
        data["slug"] = slugify(data["name"])


def _default_slug(ctx: MutationContext) -> None:
    # Products created without a slug get one from their name.
    _fill_slug(ctx.data)
    for row in ctx.rows or ():
        _fill_slug(row)


@hookimpl
def czo_register_hooks(hooks: HookRegistry) -> None:
    hooks.before("product.create", _default_slug)
    hooks.before("product.create_many", _default_slug)


@hookimpl
def czo_register_permissions(register: Any) -> None:
    register.resource("product", ["read", "write"], description="the shop's catalogue")
    register.role("staff", {"product": ["read", "write"]})
    # The catalogue is no one's personal data: an app that may read products sees every
    # field of ProductEvent. Listed all the same, so a field added to it later is a choice.
    fields = {name: None for name in ("id", "shop_id", "name", "slug", "price", "currency", "version",
                                      "created_at", "updated_at", "deleted_at")}
    for operation in ("created", "updated", "deleted", "restored"):
        register.event(f"product.{operation}", resource="product", action="read", fields=fields)


@hookimpl
def czo_register_dashboard(register: Any, kit: Kit) -> None:
    from czo_product.dashboard import product_details, product_list, render_products

    # The same hook a third-party module uses: the kit knows nothing of products.
    register.mount("PRODUCT_DETAILS", resource="product", context=product_details)
    register.mount("PRODUCT_LIST", resource="product", context=product_list)
    register.page("products", title="Products", resource="product", render=render_products)


@hookimpl
def czo_register_services(registry: ServiceRegistry) -> None:
    def factory(container: svcs.Container) -> Any:
        kit = container.get(Kit)
        # With a queue, product events go through the durable outbox, in the write's
        # transaction; without one they still reach listeners after commit.
        return build_product_repository(
            kit.db, hooks=kit.hooks, events=kit.events, async_events=kit.queue is not None
        )

    registry.register_factory(ProductRepository, factory)
