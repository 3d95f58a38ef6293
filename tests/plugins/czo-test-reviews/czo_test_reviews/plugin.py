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
from czo_kit.events import Event

__all__ = ["Review", "ReviewCreated", "ReviewRepository", "post_review"]


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
    # Authors' emails are customers' personal data. Declared here too (resources merge), so
    # the module stands alone when no other module declares "customer".
    register.resource("customer", ["read"], description="customers' personal data")
    register.event("review.created", resource="review", fields=REVIEW_EVENT_FIELDS)


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


# -- the event apps hear: review.created, each field with what an app needs to see it ----


class ReviewCreated(Event, name="review.created"):
    """A review was posted."""

    id: int
    shop_id: int
    rating: int
    body: str
    author_email: str


REVIEW_EVENT_FIELDS = {
    "id": None,
    "shop_id": None,
    "rating": None,
    "body": None,
    "author_email": ("customer", "read"),
}
"""Every field of ``ReviewCreated``: an app hearing reviews sees the email only with customer:read."""


def post_review(kit: Kit, *, shop_id: int, rating: int, body: str, author_email: str) -> Review:
    """Save a review and announce it in the same transaction: apps hear only of kept reviews."""
    with kit.db.atomic():
        review: Review = _reviews(kit).create(
            {"shop_id": shop_id, "rating": rating, "body": body, "author_email": author_email}
        )
        kit.events.emit_async(
            ReviewCreated(id=int(review.id), shop_id=shop_id, rating=rating, body=body, author_email=author_email)
        )
    return review
