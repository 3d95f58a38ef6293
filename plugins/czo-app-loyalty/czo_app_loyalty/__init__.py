"""An example in-process app for c-zo: loyalty points.

A shop installs it like any app (``kit.apps.install(shop_id=..., installer_id=...,
app_id="loyalty")``). On each ``order.created`` of that shop the worker calls its handler,
which credits the customer one point per whole currency unit of the order's total, once per
order. The points are read at ``GET /apps/loyalty/points`` with the installation's token.
It uses only the kit's public API, and knows orders only by their event.
"""

from czo_app_loyalty.plugin import MANIFEST, LoyaltyAccount, LoyaltyCredit, credit_order, points_of

__all__ = ["MANIFEST", "LoyaltyAccount", "LoyaltyCredit", "credit_order", "points_of"]
