"""``czo_kit.http``: the WSGI API (``create_api``), its authentication, and a server helper."""

from __future__ import annotations

from czo_kit.http.api import ApiRoutes, create_api, read_json, require_app, require_user
from czo_kit.http.auth import UserIdentity, issue_user_token, verify_user_token
from czo_kit.http.server import BackgroundServer

__all__ = [
    "ApiRoutes",
    "BackgroundServer",
    "UserIdentity",
    "create_api",
    "issue_user_token",
    "read_json",
    "require_app",
    "require_user",
    "verify_user_token",
]
