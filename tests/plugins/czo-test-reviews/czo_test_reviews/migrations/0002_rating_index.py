"""Index reviews by shop and rating: the Reviews page and the API sort a shop's reviews by
rating (CZO_REVIEW_PAGE_ORDER=best or worst), and the review-alerts app looks for poor ones."""

from typing import Any

# Said outright rather than left to file order: the index is on 0001's table.
depends_on = [("czo_test_reviews", "0001_initial")]

INDEX = "czo_test_reviews_review_shop_id_rating"


def up(migrator: Any, db: Any) -> None:
    # IF NOT EXISTS: a 0001 run from today's models has made it already (Review.Meta.indexes).
    db.execute_sql(f'CREATE INDEX IF NOT EXISTS "{INDEX}" ON "czo_test_reviews_review" ("shop_id", "rating")')


def down(migrator: Any, db: Any) -> None:
    db.execute_sql(f'DROP INDEX IF EXISTS "{INDEX}"')
