"""A test-only c-zo module: reviews, with a dashboard page and a mount of their own."""

from czo_test_reviews.plugin import RatingSummary, Review, ReviewInput, ReviewPosted, ReviewRepository

__all__ = ["RatingSummary", "Review", "ReviewInput", "ReviewPosted", "ReviewRepository"]
