"""Example c-zo module: products, scoped per shop, soft-deleted, versioned."""

from czo_product.events import ProductCreated, ProductDeleted, ProductRestored, ProductUpdated
from czo_product.models import Product
from czo_product.repository import ProductInput, ProductRepository, build_product_repository

__all__ = [
    "Product",
    "ProductCreated",
    "ProductDeleted",
    "ProductInput",
    "ProductRepository",
    "ProductRestored",
    "ProductUpdated",
    "build_product_repository",
]
