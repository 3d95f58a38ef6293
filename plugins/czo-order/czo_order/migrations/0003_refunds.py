"""Refunds recorded on orders, one per reference (a retried refund is not counted twice)."""


def up(migrator, db):
    from czo_order.models import OrderRefund

    db.create_tables([OrderRefund], safe=True)


def down(migrator, db):
    from czo_order.models import OrderRefund

    db.drop_tables([OrderRefund], safe=True)
