"""Example c-zo module: orders of products, scoped per shop.

It never imports the product module's repository: it learns about products from their
events (``product.deleted`` marks open order lines whose product is gone).
"""

from czo_order.models import Order, OrderLine, OrderPayment, OrderRefund
from czo_order.repository import OrderRepository, OrderService

__all__ = ["Order", "OrderLine", "OrderPayment", "OrderRefund", "OrderRepository", "OrderService"]
