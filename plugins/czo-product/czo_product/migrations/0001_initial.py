"""Create the product table (for databases that predate the module)."""

def up(migrator, db):
    from czo_product.models import Product

    db.create_tables([Product], safe=True)


def down(migrator, db):
    from czo_product.models import Product

    db.drop_tables([Product], safe=True)
