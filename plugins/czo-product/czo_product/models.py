"""The product table."""

from __future__ import annotations

import peewee

from czo_kit.db import Model


class Product(Model):
    """A product of one shop. Prices are integer minor units (cents)."""

    shop_id = peewee.IntegerField(index=True)
    name = peewee.CharField(max_length=200)
    slug = peewee.CharField(max_length=200)
    price = peewee.IntegerField()
    currency = peewee.CharField(max_length=3, default="EUR")

    class Meta:
        table_name = "product"


# A slug is unique per shop among live products only, so a deleted product's slug can be
# reused, and restoring the old one then conflicts (which the repository reports).
Product.add_index(
    Product.shop_id, Product.slug, unique=True, where=Product.deleted_at.is_null(True)
)
