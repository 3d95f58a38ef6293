"""Orders and their lines."""

from __future__ import annotations

import peewee

from czo_kit.db import Model
from czo_kit.db.model import TimestampedModel

OPEN_STATES = ("open", "awaiting_payment")


class Order(Model):
    """An order of one shop. Amounts are integer minor units (cents)."""

    shop_id = peewee.IntegerField(index=True)
    customer_email = peewee.CharField(max_length=254)
    status = peewee.CharField(max_length=20, default="open")
    total = peewee.IntegerField(default=0)
    currency = peewee.CharField(max_length=3, default="EUR")
    paid_amount = peewee.IntegerField(default=0)
    payment_reference = peewee.CharField(max_length=200, null=True)

    class Meta:
        table_name = "order"


class OrderLine(Model):
    """A product in an order, with the price it had when ordered."""

    order = peewee.ForeignKeyField(Order, backref="lines", on_delete="CASCADE")
    shop_id = peewee.IntegerField(index=True)
    product_id = peewee.BigIntegerField(index=True)
    product_name = peewee.CharField(max_length=200)
    quantity = peewee.IntegerField()
    unit_price = peewee.IntegerField()
    product_available = peewee.BooleanField(default=True)

    class Meta:
        table_name = "order_line"


class OrderPayment(TimestampedModel):
    """A payment recorded on an order, once per ``reference`` in a shop: the reference names
    the payment at the provider, so a second request with it is a retry, not a new payment."""

    order = peewee.ForeignKeyField(Order, backref="payments", on_delete="CASCADE")
    shop_id = peewee.IntegerField()
    reference = peewee.CharField(max_length=200)
    amount = peewee.IntegerField()
    currency = peewee.CharField(max_length=3)

    class Meta:
        table_name = "order_payment"
        indexes = ((("shop_id", "reference"), True),)


class OrderRefund(TimestampedModel):
    """Money given back on an order, once per ``reference`` (the provider's refund id) in a
    shop, like payments."""

    order = peewee.ForeignKeyField(Order, backref="refunds", on_delete="CASCADE")
    shop_id = peewee.IntegerField()
    reference = peewee.CharField(max_length=200)
    amount = peewee.IntegerField()
    currency = peewee.CharField(max_length=3)

    class Meta:
        table_name = "order_refund"
        indexes = ((("shop_id", "reference"), True),)
