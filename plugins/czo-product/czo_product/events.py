"""The events the product module announces. Other modules subscribe to these by class."""

from __future__ import annotations

import datetime as dt

from czo_kit.events import Event


class ProductEvent(Event, frozen=True):
    """The product row as it is after the change."""

    id: int
    shop_id: int
    name: str
    slug: str
    price: int
    currency: str
    version: int
    updated_at: dt.datetime
    deleted_at: dt.datetime | None = None


class ProductCreated(ProductEvent, name="product.created", frozen=True):
    pass


class ProductUpdated(ProductEvent, name="product.updated", frozen=True):
    pass


class ProductDeleted(ProductEvent, name="product.deleted", frozen=True):
    pass


class ProductRestored(ProductEvent, name="product.restored", frozen=True):
    pass
