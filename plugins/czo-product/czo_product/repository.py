"""The product repository: the kit's builders, extended by composition."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, TypedDict

import peewee

from czo_kit.cache import CacheManager
from czo_kit.db import Repository, create_mutations, create_queries
from czo_kit.db.mutations import EventSink, HookRunner
from czo_product.models import Product


class ProductInput(TypedDict, total=False):
    """What ``create`` and ``update`` take: mypy flags a misspelt or ill-typed field.

    Every key is optional because ``update`` changes some fields only; ``create`` still
    refuses, at run time, a product without ``shop_id``, ``name`` or ``price``.
    """

    shop_id: int
    name: str
    slug: str  # filled in from the name when left out
    price: int
    currency: str


ProductRepository = Annotated[Repository[Product, ProductInput], "czo_product.repository"]
"""Service key: ``kit.services.get_abstract(ProductRepository)``."""


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "product"


def find_by_slug(repo: Any, shop_id: int, slug: str) -> Product | None:
    """The live product of ``shop_id`` with this slug, or ``None``."""
    result: Product | None = repo.find_one({"shop_id": shop_id, "slug": slug})
    return result


def list_for_shop(repo: Any, shop_id: int, **page: Any) -> Any:
    """A page of a shop's products, cheapest first."""
    return repo.find_many({"shop_id": shop_id}, order_by=["price"], **page)


def build_product_repository(
    db: peewee.Database,
    *,
    hooks: HookRunner | None = None,
    events: EventSink | None = None,
    async_events: bool = False,
    cache: CacheManager | None = None,
    secret_key: str | bytes | None = None,
) -> Repository[Product, ProductInput]:
    """Queries, mutations (through hooks, announcing ``product.*`` events) and extras.

    Writes invalidate ``cache`` (else the kit's, on ``kit.db``); cursors are signed with
    ``secret_key`` (else ``CZO_SECRET_KEY``).
    """
    repo: Repository[Product, ProductInput] = (
        create_queries(Product, db=db, secret_key=secret_key)
        | create_mutations(
            Product, db=db, hooks=hooks, events=events, cache=cache, async_events=async_events,
            input_type=ProductInput,
        )
        | {"find_by_slug": find_by_slug, "list_for_shop": list_for_shop}
    )
    return repo
