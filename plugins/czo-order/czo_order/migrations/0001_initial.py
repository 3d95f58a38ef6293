"""Create the order tables (for databases that predate the module)."""


def up(migrator, db):
    from czo_order.models import Order, OrderLine

    db.create_tables([Order, OrderLine], safe=True)


def down(migrator, db):
    from czo_order.models import Order, OrderLine

    db.drop_tables([OrderLine, Order], safe=True)
