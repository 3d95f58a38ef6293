"""Payments recorded on orders, one per reference (a retried payment is not paid twice)."""


def up(migrator, db):
    from czo_order.models import OrderPayment

    db.create_tables([OrderPayment], safe=True)


def down(migrator, db):
    from czo_order.models import OrderPayment

    db.drop_tables([OrderPayment], safe=True)
