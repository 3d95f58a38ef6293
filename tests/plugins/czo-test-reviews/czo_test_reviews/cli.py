"""``czo-kit reviews add`` and ``czo-kit reviews list`` (``czo_register_commands``): the
reviews of a shop from the command line, through the same repository (and hooks) as the API.
A refused review (a rating outside 1..5) is reported by the kit's CLI in one line."""

from __future__ import annotations

import json

import click

__all__ = ["reviews_group"]


@click.group("reviews")
def reviews_group() -> None:
    """Post and list the reviews of a shop (the czo-test-reviews module)."""


@reviews_group.command("add")
@click.argument("shop_id", type=click.IntRange(1, 2**31 - 1))
@click.argument("rating", type=int)
@click.argument("body")
@click.option("--email", "author_email", required=True, help="The author's address.")
def add_review(shop_id: int, rating: int, body: str, author_email: str) -> None:
    """Post a review of SHOP_ID: RATING (1 to 5 stars) and BODY."""
    from czo_kit import Kit
    from czo_test_reviews.plugin import post_review

    # The rating is not checked here: the module's before-hook refuses it, for every caller.
    with Kit.from_env() as kit:
        review = post_review(kit, shop_id=shop_id, rating=rating, body=body, author_email=author_email)
        click.echo(f"review #{review.id} of shop {shop_id}: {review.rating}/5")


@reviews_group.command("list")
@click.argument("shop_id", type=click.IntRange(1, 2**31 - 1))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def list_command(shop_id: int, as_json: bool) -> None:
    """List the reviews of SHOP_ID, sorted and paged as CZO_REVIEW_PAGE_ORDER and _PAGE_SIZE say."""
    from czo_kit import Kit
    from czo_test_reviews.http import list_reviews

    with Kit.from_env() as kit:
        reviews = list_reviews(kit, shop_id)
    if as_json:
        click.echo(json.dumps([{"id": r.id, "rating": r.rating, "body": r.body} for r in reviews]))
        return
    for review in reviews:
        click.echo(f"#{review.id} {review.rating}/5 {review.body}")
