"""Create the reviews module's tables (for databases that predate the module)."""


def up(migrator, db):
    from czo_test_reviews.plugin import Review, ReviewAlert, ReviewStats

    db.create_tables([Review, ReviewAlert, ReviewStats], safe=True)


def down(migrator, db):
    from czo_test_reviews.plugin import Review, ReviewAlert, ReviewStats

    db.drop_tables([ReviewStats, ReviewAlert, Review], safe=True)
