"""What the product pages of the dashboard show, and what extensions may learn of them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from czo_kit.apps.extensions import DashboardContext
from czo_product.repository import ProductRepository

if TYPE_CHECKING:
    from czo_kit import Kit


def product_details(kit: Kit, shop_id: int, product_id: int | None) -> DashboardContext | None:
    products = kit.services.get_abstract(ProductRepository)
    product = products.find_one({"id": product_id, "shop_id": shop_id}) if product_id is not None else None
    if product is None:
        return None
    return DashboardContext(
        title=str(product.name),
        resource="product",
        data={"product": {"id": product.id, "name": product.name, "slug": product.slug, "price": product.price,
                          "currency": product.currency}},
        summary={"Slug": str(product.slug), "Price": f"{product.price / 100:.2f} {product.currency}"},
    )


def product_list(kit: Kit, shop_id: int, object_id: int | None) -> DashboardContext | None:
    products = kit.services.get_abstract(ProductRepository)
    page = products.find_many({"shop_id": shop_id}, order_by="name", limit=50)
    return DashboardContext(
        title="Products",
        resource="product",
        data={"products": [{"id": p.id, "name": p.name, "price": p.price} for p in page.items]},
        summary={str(p.name): f"{p.price / 100:.2f} {p.currency}" for p in page.items},
    )
