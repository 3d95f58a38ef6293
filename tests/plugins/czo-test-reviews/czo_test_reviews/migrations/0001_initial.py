"""Create the reviews module's tables (for databases that predate the module)."""

from typing import Any


def up(migrator: Any, db: Any) -> None:
    from czo_test_reviews.plugin import Review, ReviewAlert, ReviewStats

    db.create_tables([Review, ReviewAlert, ReviewStats], safe=True)


def down(migrator: Any, db: Any) -> None:
    from czo_test_reviews.plugin import Review, ReviewAlert, ReviewStats

    db.drop_tables([ReviewStats, ReviewAlert, Review], safe=True)
