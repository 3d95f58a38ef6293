"""A test-only c-zo module: reviews, with a dashboard page and a mount of their own."""

from czo_test_reviews.plugin import Review, ReviewRepository

__all__ = ["Review", "ReviewRepository"]
