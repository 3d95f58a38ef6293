"""``czo_kit.http``: the WSGI API (``create_api``), its authentication, and a server helper."""

from __future__ import annotations

from czo_kit.http._ids import ROW_ID_MAX, SHOP_ID_MAX, AppId, RowId, ShopId, parse_id
from czo_kit.http.api import ApiRoutes, create_api, read_json, require_app, require_user
from czo_kit.http.auth import UserIdentity, issue_user_token, verify_user_token
from czo_kit.http.server import BackgroundServer

__all__ = [
    "ApiRoutes",
    "AppId",
    "BackgroundServer",
    "ROW_ID_MAX",
    "RowId",
    "SHOP_ID_MAX",
    "ShopId",
    "UserIdentity",
    "create_api",
    "issue_user_token",
    "parse_id",
    "read_json",
    "require_app",
    "require_user",
    "verify_user_token",
]
