"""The loyalty app's plugin: its manifest, its tables, its event handler and its route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import falcon
import peewee

from czo_kit import hookimpl
from czo_kit.apps import AppManifest, InstalledApp, PermissionSpec, WebhookSpec
from czo_kit.db.model import TimestampedModel
from czo_kit.events import EventContext

__all__ = ["MANIFEST", "POINTS_UNIT", "LoyaltyAccount", "LoyaltyCredit", "credit_order", "points_of"]

POINTS_UNIT = 100
"""Minor units (cents) of an order's total per point."""

MANIFEST = AppManifest(
    id="loyalty",
    name="Loyalty points",
    version="0.1.0",
    about="Credits customers one point per whole currency unit they order.",
    # The customer's email is personal data: the payload carries it only to apps granted
    # customer:read, and points are kept per customer email.
    permissions=[
        PermissionSpec(resource="order", actions=["read"]),
        PermissionSpec(resource="customer", actions=["read"]),
    ],
    webhooks=[WebhookSpec(name="orders", events=["order.created"])],
)


class LoyaltyAccount(TimestampedModel):
    """A customer's points in one shop."""

    shop_id = peewee.IntegerField()
    customer_email = peewee.CharField(max_length=254)
    points = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "loyalty_account"
        indexes = ((("shop_id", "customer_email"), True),)


class LoyaltyCredit(TimestampedModel):
    """Points credited for one order: at most one row per order, so a delivery that comes
    again (delivery is at least once) credits nothing twice."""

    shop_id = peewee.IntegerField()
    order_id = peewee.BigIntegerField()
    customer_email = peewee.CharField(max_length=254)
    points = peewee.BigIntegerField()

    class Meta:
        table_name = "loyalty_credit"
        indexes = ((("shop_id", "order_id"), True),)


def credit_order(payload: Mapping[str, Any], ctx: EventContext, app: InstalledApp) -> None:
    """``order.created``: credit the order's customer, once per order. The worker runs it
    in a transaction with the record of the delivery: both happen, or neither."""
    email = payload.get("customer_email")
    order_id = payload.get("id")
    if not isinstance(email, str) or not isinstance(order_id, int):
        return  # no customer to credit (an order without an email)
    points = max(0, int(payload.get("total") or 0)) // POINTS_UNIT
    shop = app.shop_id
    if LoyaltyCredit.select().where((LoyaltyCredit.shop_id == shop) & (LoyaltyCredit.order_id == order_id)).exists():
        return
    LoyaltyCredit.insert(shop_id=shop, order_id=order_id, customer_email=email, points=points).execute()
    LoyaltyAccount.insert(shop_id=shop, customer_email=email, points=points).on_conflict(
        conflict_target=[LoyaltyAccount.shop_id, LoyaltyAccount.customer_email],
        update={LoyaltyAccount.points: LoyaltyAccount.points + peewee.EXCLUDED.points},
    ).execute()


def points_of(shop_id: int, customer_email: str) -> int:
    """A customer's points in a shop (0 for a customer never credited)."""
    row = LoyaltyAccount.get_or_none(
        (LoyaltyAccount.shop_id == shop_id) & (LoyaltyAccount.customer_email == customer_email)
    )
    return int(row.points) if row is not None else 0


class PointsResource:
    """``GET /apps/loyalty/points?email=...``: one customer's points in the caller's shop;
    without ``email``, the shop's 100 best customers. Only the app's own token reaches it
    (the kit checks), and ``req.context.app`` is the installation calling."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        shop_id = int(req.context.app.shop_id)
        email = req.get_param("email")
        if email is not None:
            if not 1 <= len(email) <= 254:
                raise falcon.HTTPBadRequest(title="Invalid request", description="email: 1 to 254 characters")
            resp.media = {"shopId": shop_id, "email": email, "points": points_of(shop_id, email)}
            return
        rows = (
            LoyaltyAccount.select()
            .where(LoyaltyAccount.shop_id == shop_id)
            .order_by(LoyaltyAccount.points.desc(), LoyaltyAccount.id)
            .limit(100)
        )
        resp.media = {
            "shopId": shop_id,
            "accounts": [{"email": row.customer_email, "points": int(row.points)} for row in rows],
        }


@hookimpl
def czo_register_models(register: Any) -> None:
    register(LoyaltyAccount, LoyaltyCredit)


@hookimpl
def czo_register_apps(register: Any) -> None:
    register(MANIFEST, handlers={"order.created": credit_order}, routes={"/points": PointsResource()})
