"""Create the order tables (for databases that predate the module)."""

# Order lines refer to products (order_line.product_id, and the product.* events that mark
# them unavailable): on an empty database, the product table comes first.
depends_on = [("czo_product", "0001_initial")]


def up(migrator, db):
    from czo_order.models import Order, OrderLine

    db.create_tables([Order, OrderLine], safe=True)


def down(migrator, db):
    from czo_order.models import Order, OrderLine

    db.drop_tables([OrderLine, Order], safe=True)
