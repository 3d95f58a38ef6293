"""``GET /api/shops/{shop_id}/reviews`` (``czo_register_http_routes``) and the storefront
widget's bearer token (``czo_register_authenticators``).

Through the kit's auth: a person holding ``review:read`` in the shop, an app installed there
granted ``review:read``, or the storefront widget (``CZO_REVIEW_WIDGET_TOKEN``). Authors'
addresses are customers' personal data: shown only to callers holding ``customer:read``.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

import falcon

from czo_kit.apps.permissions import allows, format_pairs
from czo_kit.errors import AuthenticationError, PermissionDeniedError
from czo_kit.http import UserIdentity
from czo_test_reviews.settings import ReviewSettings

if TYPE_CHECKING:
    from czo_kit import Kit

__all__ = ["ORDERS", "WIDGET_USER", "ReviewsResource", "authenticate_widget", "list_reviews"]

WIDGET_USER = "czo_test_reviews:widget"
"""Who the storefront widget is, to the kit: no member of any shop, so it reaches nothing but
this module's public list of reviews."""

ORDERS = {"newest": "-id", "best": ["-rating", "-id"], "worst": ["rating", "-id"]}
"""``CZO_REVIEW_PAGE_ORDER`` -> the repository's ``order_by``."""


def authenticate_widget(token: str, kit: Kit) -> UserIdentity | None:
    """The widget's token, if one is configured; any other token is not this module's."""
    expected = kit.settings_for(ReviewSettings).widget_token
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        return UserIdentity(WIDGET_USER)
    return None


def list_reviews(kit: Kit, shop_id: int) -> list[Any]:
    """The shop's live reviews, one page of them, sorted as the settings say."""
    from czo_test_reviews.plugin import reviews_of

    settings = kit.settings_for(ReviewSettings)
    page = reviews_of(kit).find_many({"shop_id": shop_id}, order_by=ORDERS[settings.page_order],
                                     limit=settings.page_size, with_total=False)
    return list(page.items)


class ReviewsResource:
    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def _held(self, req: falcon.Request, shop_id: int) -> frozenset[tuple[str, str]]:
        """What the caller holds in ``shop_id``: an app's grants, or a person's roles."""
        app: Any = req.context.app
        if app is not None:
            if app.shop_id != shop_id:
                raise PermissionDeniedError(f"app {app.app_id} is not installed in shop {shop_id}")
            return frozenset(pair for pair in (("review", "read"), ("customer", "read")) if app.has(*pair))
        user: UserIdentity | None = req.context.user
        if user is None:
            raise AuthenticationError("a token is required (Authorization: Bearer czo_user_..., czo_app_... "
                                      "or the storefront widget's)")
        if user.user_id == WIDGET_USER:
            return frozenset({("review", "read")})
        return frozenset(self.kit.permission_service.permissions(user.user_id, shop_id))

    def on_get(self, req: falcon.Request, resp: falcon.Response, shop_id: int) -> None:
        held = self._held(req, shop_id)
        if not allows(held, "review", "read"):
            raise PermissionDeniedError(f"reading the reviews of shop {shop_id} needs review:read",
                                        missing=format_pairs([("review", "read")]))
        emails = allows(held, "customer", "read")
        resp.media = {
            "shopId": shop_id,
            "reviews": [
                {"id": r.id, "rating": r.rating, "body": r.body, **({"authorEmail": r.author_email} if emails else {})}
                for r in list_reviews(self.kit, shop_id)
            ],
        }
