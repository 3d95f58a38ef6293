"""The product module's part of the dashboard: the "Products" page, and the ``PRODUCT_LIST``
and ``PRODUCT_DETAILS`` mounts where apps' extensions show next to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from czo_kit.apps.extensions import ExtensionContext, Page
from czo_product.repository import ProductRepository

if TYPE_CHECKING:
    from czo_kit import Kit


def _price(product: Any) -> str:
    return f"{product.price / 100:.2f} {product.currency}"


def _product(kit: Kit, shop_id: int, product_id: int | None) -> Any:
    if product_id is None:
        return None
    return kit.services.get_abstract(ProductRepository).find_one({"id": product_id, "shop_id": shop_id})


def _catalogue(kit: Kit, shop_id: int) -> list[Any]:
    products = kit.services.get_abstract(ProductRepository)
    return list(products.find_many({"shop_id": shop_id}, order_by="name", limit=50).items)


def render_products(kit: Kit, shop_id: int, product_id: int | None) -> Page | None:
    """``/dashboard/shops/<shop>/products``: the catalogue; ``.../products/<id>``: one product."""
    if product_id is None:
        products = _catalogue(kit, shop_id)
        return Page(
            title="Products",
            summary={str(p.name): _price(p) for p in products},
            links=[(str(p.name), f"/dashboard/shops/{shop_id}/products/{p.id}") for p in products],
            mount="PRODUCT_LIST",
        )
    product = _product(kit, shop_id, product_id)
    if product is None:
        return None
    return Page(title=str(product.name), summary={"Slug": str(product.slug), "Price": _price(product)}, mount="PRODUCT_DETAILS")


def product_details(kit: Kit, shop_id: int, product_id: int | None) -> ExtensionContext | None:
    """What an extension at ``PRODUCT_DETAILS`` is told about the product on screen."""
    product = _product(kit, shop_id, product_id)
    if product is None:
        return None
    return ExtensionContext(
        data={"product": {"id": product.id, "name": product.name, "slug": product.slug, "price": product.price,
                          "currency": product.currency}},
    )


def product_list(kit: Kit, shop_id: int, object_id: int | None) -> ExtensionContext | None:
    """What an extension at ``PRODUCT_LIST`` is told: the products on screen."""
    return ExtensionContext(
        data={"products": [{"id": p.id, "name": p.name, "price": p.price} for p in _catalogue(kit, shop_id)]}
    )
