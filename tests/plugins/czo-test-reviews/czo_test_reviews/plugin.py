"""Reviews of a shop, written as a module author outside the kit would write one, from the
docs alone: a model, a permission, a service, and through ``czo_register_dashboard`` a
"Reviews" page with a ``REVIEW_DETAILS`` mount that app extensions can target.

It imports only the kit's public API and knows nothing of the example modules.
"""

from __future__ import annotations

from typing import Annotated, Any

import peewee
import svcs

from czo_kit import Kit, hookimpl
from czo_kit.apps.extensions import ExtensionContext, Page
from czo_kit.db import Model, Repository, create_mutations, create_queries

__all__ = ["Review", "ReviewRepository"]


class Review(Model):
    """What a customer said about the shop; ``author_email`` is personal data."""

    shop_id = peewee.IntegerField(index=True)
    rating = peewee.IntegerField()
    body = peewee.TextField()
    author_email = peewee.CharField(max_length=200)

    class Meta:
        table_name = "czo_test_reviews_review"


ReviewRepository = Annotated[Repository[Review], "czo_test_reviews.repository"]


def _reviews(kit: Kit) -> Any:
    return kit.services.get_abstract(ReviewRepository)


def _review(kit: Kit, shop_id: int, review_id: int | None) -> Any:
    if review_id is None:
        return None
    return _reviews(kit).find_one({"id": review_id, "shop_id": shop_id})


def render_reviews(kit: Kit, shop_id: int, review_id: int | None) -> Page | None:
    """The shop's reviews, newest first; or one review, with the apps' extensions beside it."""
    if review_id is None:
        reviews = _reviews(kit).find_many({"shop_id": shop_id}, order_by="-id", limit=50).items
        return Page(
            summary={f"Review #{r.id}": f"{r.rating}/5: {r.body}" for r in reviews},
            links=[(f"Review #{r.id}", f"/dashboard/shops/{shop_id}/reviews/{r.id}") for r in reviews],
        )
    review = _review(kit, shop_id, review_id)
    if review is None:
        return None
    return Page(
        title=f"Review #{review.id}",
        summary={"Rating": f"{review.rating}/5", "Review": str(review.body)},
        mount="REVIEW_DETAILS",
    )


def review_context(kit: Kit, shop_id: int, review_id: int | None) -> ExtensionContext | None:
    """What an extension at ``REVIEW_DETAILS`` is told about the review on screen."""
    review = _review(kit, shop_id, review_id)
    if review is None:
        return None
    return ExtensionContext(
        data={"review": {"id": review.id, "rating": review.rating, "body": review.body,
                         "author_email": review.author_email}},
        requires={"review.author_email": ("customer", "read")},
    )


@hookimpl
def czo_register_models(register: Any) -> None:
    register(Review)


@hookimpl
def czo_register_permissions(register: Any) -> None:
    register.resource("review", ["read", "write"], description="customers' reviews of the shop")
    register.role("moderator", {"review": ["read", "write"]})


@hookimpl
def czo_register_services(registry: Any) -> None:
    def factory(container: svcs.Container) -> Repository[Review]:
        kit = container.get(Kit)
        repo: Repository[Review] = create_queries(Review, db=kit.db) | create_mutations(Review, db=kit.db)
        return repo

    registry.register_factory(ReviewRepository, factory)


@hookimpl
def czo_register_dashboard(register: Any, kit: Kit) -> None:
    register.mount("REVIEW_DETAILS", resource="review", context=review_context)
    register.page("reviews", title="Reviews", resource="review", render=render_reviews)


# -- the shop's rating: a cached figure that may lag, and never makes a page wait ---------------


def shop_rating(kit: Kit, shop_id: int, *, ttl: float = 60.0) -> dict[str, Any]:
    """How many reviews the shop has and their average rating, as a storefront shows them on
    every page. A figure that lags new reviews by a minute is fine; a page view that waits for
    the aggregate is not: the value is refreshed in the background from 80% of its TTL on
    (``refresh_ahead``), and served stale for up to five more minutes while a refresh runs
    (``stale_while_revalidate``), once across the shop's processes."""

    def compute() -> dict[str, Any]:
        count, average = (
            Review.select(peewee.fn.COUNT(Review.id), peewee.fn.AVG(Review.rating))
            .where(Review.shop_id == shop_id)
            .scalar(as_tuple=True)
        )
        return {"reviews": int(count), "average": round(float(average), 2) if count else None}

    rating: dict[str, Any] = kit.cache.namespace("reviews").get_or_set(
        f"rating:{shop_id}", compute, ttl=ttl, stale_while_revalidate=300, refresh_ahead=0.8
    )
    return rating
