"""Reviews of a shop, written as a module author outside the kit would write one, from the
docs alone: a model, a permission, a service, and through ``czo_register_dashboard`` a
"Reviews" page with a ``REVIEW_DETAILS`` mount that app extensions can target; and through
``czo_register_apps`` an in-process app, ``review-alerts``, that flags poor reviews.

Its repository shows what a module author gets from the kit's builders: a typed
``ReviewInput`` that mypy checks, a cached extra (``rating_summary``) that reaches the kit's
cache through ``repo.cache`` and is invalidated by the repository's writes through
``repo.list_tag``, events named ``review.*`` rather than after the table, and a typed
``ReviewPosted`` tied to the model, so the kit refuses to start if a column is added to
``Review`` and not to the event.

It uses every hook a module can (tests/test_hookspecs.py checks it): its own settings
(``CZO_REVIEW_*``), migrations that declare what they depend on, a before-hook refusing a
rating outside 1..5, a handler of its own ``review.created`` that enqueues a task, an HTTP
route, a storefront widget's token, ``czo-kit reviews`` commands, and startup and shutdown.

It imports only the kit's public API and knows nothing of the example modules.
"""

from __future__ import annotations

import datetime as dt
import logging
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import click
import msgspec
import peewee
import svcs

from czo_kit import Kit, hookimpl
from czo_kit.apps import AppManifest, InstalledApp, PermissionSpec, WebhookSpec
from czo_kit.apps.extensions import ExtensionContext, Page
from czo_kit.db import Model, Repository, create_mutations, create_queries
from czo_kit.db.mutations import MutationContext
from czo_kit.errors import ConfigurationError, InvalidDataError
from czo_kit.events import Event, EventContext, EventEmitter
from czo_kit.hooks import HookRegistry
from czo_test_reviews.settings import PREFIX, ReviewSettings

__all__ = [
    "ALERTS_MANIFEST",
    "REVIEW_EVENT_FIELDS",
    "RatingSummary",
    "Review",
    "ReviewAlert",
    "ReviewInput",
    "ReviewPosted",
    "ReviewRepository",
    "ReviewStats",
    "flag_poor_review",
    "post_review",
    "reviews_of",
]

log = logging.getLogger("czo_test_reviews")
MIGRATIONS = Path(__file__).parent / "migrations"


class Review(Model):
    """What a customer said about the shop; ``author_email`` is personal data."""

    shop_id = peewee.IntegerField(index=True)
    rating = peewee.IntegerField()
    body = peewee.TextField()
    author_email = peewee.CharField(max_length=200)

    class Meta:
        table_name = "czo_test_reviews_review"
        # Made by migration 0002 on databases that predate it; by db init from here.
        indexes = ((("shop_id", "rating"), False),)


class ReviewInput(msgspec.Struct, kw_only=True):
    """What the review repository's ``create`` and ``update`` take. Fields left UNSET are not
    written, so the same type serves a partial ``update``."""

    shop_id: int | msgspec.UnsetType = msgspec.UNSET
    rating: int | msgspec.UnsetType = msgspec.UNSET
    body: str | msgspec.UnsetType = msgspec.UNSET
    author_email: str | msgspec.UnsetType = msgspec.UNSET


EVENT_PREFIX = "review"
"""The repository's events are ``review.created``, ``review.updated``, ... (not named after
the table, ``czo_test_reviews_review``)."""


class ReviewPosted(Event, name=f"{EVENT_PREFIX}.created", model=Review):
    """A new review. Any column of ``Review`` missing here stops the kit at startup. The
    author's address is personal data: ``REVIEW_EVENT_FIELDS`` shows it only to apps granted
    ``customer:read``."""

    id: int
    shop_id: int
    rating: int
    body: str
    author_email: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None = None


REVIEW_EVENT_FIELDS = {
    "id": None,
    "shop_id": None,
    "rating": None,
    "body": None,
    "author_email": ("customer", "read"),
    "version": None,
    "created_at": None,
    "updated_at": None,
    "deleted_at": None,
}
"""Every field of ``ReviewPosted``: an app hearing reviews sees the email only with customer:read."""


class RatingSummary(msgspec.Struct, array_like=True):
    """How a shop is rated: what the ``rating_summary`` extra caches."""

    reviews: int
    average: float | None


def rating_summary(repo: Any, shop_id: int) -> RatingSummary:
    """The shop's number of live reviews and average rating, cached until a review is written.

    Cached in the kit's cache (``repo.cache``: the repository is built on ``kit.db``) under
    the table's tag (``repo.list_tag``), which every committed write of a review invalidates.
    """

    def load() -> RatingSummary:
        rating = peewee.fn.AVG(Review.rating)
        query = Review.select(peewee.fn.COUNT(Review.id), rating).where(
            (Review.shop_id == shop_id) & Review.deleted_at.is_null(True)
        )
        count, average = query.scalar(repo.db, as_tuple=True)
        return RatingSummary(int(count), None if average is None else round(float(average), 2))

    if repo.db.in_transaction():
        return load()  # it may hold uncommitted reviews: neither cache them nor hide them
    summary: RatingSummary = repo.cache.get_or_set(
        f"czo_test_reviews:rating:{int(shop_id)}", load, tags=[repo.list_tag], type=RatingSummary
    )
    return summary


ReviewRepository = Annotated[Repository[Review, ReviewInput], "czo_test_reviews.repository"]


def reviews_of(kit: Kit) -> Any:
    """The kit's review repository (``ReviewRepository``)."""
    return kit.services.get_abstract(ReviewRepository)


_reviews = reviews_of


def _review(kit: Kit, shop_id: int, review_id: int | None) -> Any:
    if review_id is None:
        return None
    return _reviews(kit).find_one({"id": review_id, "shop_id": shop_id})


def render_reviews(kit: Kit, shop_id: int, review_id: int | None) -> Page | None:
    """The shop's reviews, newest first; or one review, with the apps' extensions beside it."""
    if review_id is None:
        from czo_test_reviews.http import list_reviews

        reviews = list_reviews(kit, shop_id)  # as many, in the order, CZO_REVIEW_PAGE_* say
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
    register(Review, ReviewAlert, ReviewStats)


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
    def factory(container: svcs.Container) -> Repository[Review, ReviewInput]:
        kit = container.get(Kit)
        # With a queue, review.created goes through the durable outbox, in the write's
        # transaction, so the worker runs its handlers; without one, listeners hear it after commit.
        mutations = create_mutations(
            Review, db=kit.db, hooks=kit.hooks, events=kit.events, async_events=kit.queue is not None,
            event_prefix=EVENT_PREFIX, input_type=ReviewInput,
        )
        repo: Repository[Review, ReviewInput] = (
            create_queries(Review, db=kit.db) | mutations | {"rating_summary": rating_summary}
        )
        return repo

    registry.register_factory(ReviewRepository, factory)


@hookimpl
def czo_register_dashboard(register: Any, kit: Kit) -> None:
    register.mount("REVIEW_DETAILS", resource="review", context=review_context)
    register.page("reviews", title="Reviews", resource="review", render=render_reviews)


# -- an in-process app: review alerts (czo_register_apps) ---------------------------------------


class ReviewAlert(Model):
    """A poor review the ``review-alerts`` app flagged for the shop to answer."""

    shop_id = peewee.IntegerField(index=True)
    review_id = peewee.BigIntegerField()
    rating = peewee.IntegerField()

    class Meta:
        table_name = "czo_test_reviews_alert"
        indexes = ((("shop_id", "review_id"), True),)


ALERTS_MANIFEST = AppManifest(
    id="review-alerts",
    name="Review alerts",
    version="1.0.0",
    about="Flags poor reviews (two stars or fewer; CZO_REVIEW_ALERT_THRESHOLD).",
    permissions=[PermissionSpec(resource="review", actions=["read"])],
    webhooks=[WebhookSpec(name="reviews", events=["review.created"])],
)


def flag_poor_review(payload: Mapping[str, Any], ctx: EventContext, app: InstalledApp) -> None:
    """``review.created``: flag a review of ``alert_threshold`` stars or fewer, once (delivery
    is at least once, so a review already flagged is left alone)."""
    rating, review_id = payload.get("rating"), payload.get("id")
    threshold = app.kit.settings_for(ReviewSettings).alert_threshold
    if not isinstance(rating, int) or not isinstance(review_id, int) or rating > threshold:
        return
    ReviewAlert.insert(shop_id=app.shop_id, review_id=review_id, rating=rating).on_conflict_ignore().execute()


@hookimpl
def czo_register_apps(register: Any) -> None:
    register(ALERTS_MANIFEST, handlers={"review.created": flag_poor_review})


# -- posting a review: apps hear of it through the repository's review.created ---------------


def post_review(kit: Kit, *, shop_id: int, rating: int, body: str, author_email: str) -> Review:
    """Save a review; the repository announces it (``review.created``) in the same
    transaction, so apps hear only of kept reviews."""
    with kit.db.atomic():
        review: Review = _reviews(kit).create(
            ReviewInput(shop_id=shop_id, rating=rating, body=body, author_email=author_email)
        )
    return review

# -- background tasks (czo_register_tasks) ----------------------------------------------------


class ReviewStats(Model):
    """A shop's average rating, kept by a task rather than computed on every page view."""

    shop_id = peewee.IntegerField(unique=True)
    reviews = peewee.IntegerField(default=0)
    average = peewee.FloatField(null=True)
    refreshes = peewee.IntegerField(default=0)  # runs of the periodic refresh that saw it

    class Meta:
        table_name = "czo_test_reviews_stats"


def _store_stats(kit: Kit, shop_id: int, *, refreshed: bool) -> None:
    query = Review.select(peewee.fn.COUNT(Review.id), peewee.fn.AVG(Review.rating)).where(
        (Review.shop_id == shop_id) & Review.deleted_at.is_null()
    )
    count, average = query.scalar(as_tuple=True)
    mean = float(average) if average is not None else None
    bump = 1 if refreshed else 0
    # One statement: the task after a review and the periodic refresh may store the same
    # shop at once (a read-then-insert lost that race to the unique shop_id).
    ReviewStats.insert(shop_id=shop_id, reviews=int(count), average=mean, refreshes=bump).on_conflict(
        conflict_target=[ReviewStats.shop_id],
        update={
            ReviewStats.reviews: int(count),
            ReviewStats.average: mean,
            ReviewStats.refreshes: ReviewStats.refreshes + bump,
        },
    ).execute()


def recompute_rating(shop_id: int, *, kit: Kit) -> None:
    """Recompute one shop's average rating: enqueued after reviews change."""
    _store_stats(kit, shop_id, refreshed=False)


def refresh_ratings(kit: Kit) -> None:
    """Every minute, recompute every shop's average (what a missed enqueue would leave stale)."""
    shops: list[int] = [row[0] for row in Review.select(Review.shop_id).distinct().tuples().iterator()]
    for shop_id in shops:
        _store_stats(kit, shop_id, refreshed=True)


@hookimpl
def czo_register_tasks(register: Any) -> None:
    register.task(recompute_rating, retries=2, retry_delay=1)
    register.periodic(refresh_ratings, cron="* * * * *")


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


# -- the module's own settings and migrations -------------------------------------------------


@hookimpl
def czo_register_settings(register: Any) -> None:
    register(ReviewSettings, prefix=PREFIX)


@hookimpl
def czo_register_migrations(register: Any) -> None:
    register(str(MIGRATIONS))


# -- a rating is 1 to 5 stars, whoever writes it (czo_register_hooks) --------------------------

REVIEW_TABLE = Review._meta.table_name


def _check_rating(value: Any, field: str) -> None:
    # bool is an int to Python, and True stars is not a rating.
    if "rating" in field and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5):
        raise InvalidDataError(f"{field} must be a whole number of stars from 1 to 5, got {value!r}"[:200],
                               field="rating")


def refuse_bad_rating(ctx: MutationContext) -> None:
    """Before a review is written: its rating, if it sets one, is 1 to 5 stars."""
    if "rating" in ctx.data:
        _check_rating(ctx.data["rating"], "rating")
    for index, row in enumerate(ctx.rows or ()):
        if "rating" in row:
            _check_rating(row["rating"], f"rows[{index}].rating")


_posted: weakref.WeakKeyDictionary[Kit, int] = weakref.WeakKeyDictionary()
"""Reviews each kit of this process wrote, for the summary logged at shutdown."""


@hookimpl
def czo_register_hooks(hooks: HookRegistry) -> None:
    for operation in ("create", "create_many", "update"):
        hooks.before(f"{REVIEW_TABLE}.{operation}", refuse_bad_rating)


# -- hearing of a new review: the shop's rating is recomputed in the background ----------------


@hookimpl
def czo_register_events(events: EventEmitter, kit: Kit) -> None:
    def recompute_on_post(event: ReviewPosted, ctx: EventContext) -> None:
        """review.created: recompute the shop's stored rating, in a task of its own (run on
        the kit's consumer), so a burst of reviews never holds up their announcement."""
        _posted[kit] = _posted.get(kit, 0) + 1
        kit.tasks.get("czo_test_reviews.recompute_rating").enqueue(event.shop_id)

    # An explicit id: it names the handler in delivery records, across deployments.
    events.on(ReviewPosted, recompute_on_post, id="czo_test_reviews.recompute_on_post")


# -- the API, the storefront widget's token, the command line -------------------------------------


@hookimpl
def czo_register_http_routes(api: Any, kit: Kit) -> None:
    from czo_test_reviews.http import ReviewsResource

    api.add_route("/api/shops/{shop_id:shop}/reviews", ReviewsResource(kit))


@hookimpl
def czo_register_authenticators(register: Any) -> None:
    from czo_test_reviews.http import authenticate_widget

    register(authenticate_widget, priority=0)


@hookimpl
def czo_register_commands(cli: click.Group) -> None:
    from czo_test_reviews.cli import reviews_group

    cli.add_command(reviews_group)


# -- startup and shutdown ---------------------------------------------------------------------

WIDGET_TOKEN_MIN = 32


@hookimpl
def czo_startup(kit: Kit) -> None:
    """A widget token anyone could guess would open every shop's reviews to anyone: refuse to
    start with one (what a Struct field's constraints cannot say about a secret), and say
    which settings are in effect."""
    settings = kit.settings_for(ReviewSettings)
    token = settings.widget_token
    if token is not None and len(token) < WIDGET_TOKEN_MIN:
        raise ConfigurationError(
            f"invalid setting {PREFIX}WIDGET_TOKEN: it must be at least {WIDGET_TOKEN_MIN} characters long "
            f"(got {len(token)}), or unset for no storefront widget; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
            variable=f"{PREFIX}WIDGET_TOKEN",
        )
    _posted[kit] = 0
    log.info("reviews: alerts at %d stars or fewer; pages of %d, %s first; storefront widget %s",
             settings.alert_threshold, settings.page_size, settings.page_order, "on" if token else "off")


@hookimpl
def czo_shutdown(kit: Kit) -> None:
    """Say how many reviews this kit heard of, for the operator's log."""
    log.info("reviews: %d new review(s) heard of by this process", _posted.pop(kit, 0))
