"""The reviews module's own settings, read from ``CZO_REVIEW_*`` when the kit starts
(``czo_register_settings``) and validated the way the kit validates its own."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["PREFIX", "ReviewSettings"]

PREFIX = "CZO_REVIEW_"


class ReviewSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Read with ``kit.settings_for(ReviewSettings)``."""

    alert_threshold: Annotated[int, msgspec.Meta(ge=1, le=5)] = 2
    """The review-alerts app flags reviews of this many stars or fewer."""
    page_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    """Reviews shown on the dashboard's Reviews page and returned by the API at once."""
    page_order: Literal["newest", "best", "worst"] = "newest"
    """How the Reviews page and the API sort a shop's reviews."""
    widget_token: str | None = None
    """A storefront widget presents it as a bearer token to read a shop's reviews (without
    their authors' addresses); unset, no widget can. A secret: ``czo-kit settings`` masks it."""
