"""The events the product module announces. Other modules subscribe to these by class."""

from __future__ import annotations

import datetime as dt

from czo_kit.events import Event
from czo_product.models import Product


class ProductEvent(Event, model=Product):
    """The product row as it is after the change.

    ``model=Product``: the kit refuses to start if a column of ``Product`` is missing here.
    """

    id: int
    shop_id: int
    name: str
    slug: str
    price: int
    currency: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None = None


class ProductCreated(ProductEvent, name="product.created"):
    pass


class ProductUpdated(ProductEvent, name="product.updated"):
    pass


class ProductDeleted(ProductEvent, name="product.deleted"):
    pass


class ProductRestored(ProductEvent, name="product.restored"):
    pass
