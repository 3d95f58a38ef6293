"""App UI extensions: mount points, what each one tells an extension, and extension tokens.

An extension is a page of the app shown in a sandboxed iframe of the dashboard. The host tells
it its context (the shop, the order on screen, ...) over ``postMessage``, limited to what the
app's permissions allow, and hands it a short-lived, audience-bound token on request.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from czo_kit.apps.permissions import Pair, allows
from czo_kit.errors import AuthenticationError

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = [
    "EXTENSION_TOKEN_PREFIX",
    "DashboardContext",
    "DashboardRegistry",
    "ExtensionPrincipal",
    "Mount",
    "NAVIGABLE",
    "issue_extension_token",
    "verify_extension_token",
]

EXTENSION_TOKEN_PREFIX = "czo_ext_"
EXTENSION_TOKEN_TTL = 300.0

NAVIGABLE = re.compile(r"^/dashboard/shops/[0-9]{1,12}(/[A-Za-z0-9_-]{1,64}){0,4}/?$")
"""Paths an extension may send the dashboard to (``czo:navigate``): dashboard pages only."""


class Mount(str, enum.Enum):
    """Where an extension appears."""

    ORDER_DETAILS = "ORDER_DETAILS"
    ORDER_LIST = "ORDER_LIST"
    PRODUCT_DETAILS = "PRODUCT_DETAILS"
    PRODUCT_LIST = "PRODUCT_LIST"
    NAVIGATION = "NAVIGATION"


@dataclass
class DashboardContext:
    """What a module shows about the object of a page, and what extensions may learn of it.

    ``data`` is sent to extensions as the context, minus every key listed in ``requires``
    (a dotted path such as ``order.customer_email``) whose permission the app lacks; an app
    without ``read`` on the page's resource gets only the shop id.
    """

    title: str
    resource: str
    data: dict[str, Any]
    requires: dict[str, Pair] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)

    def for_app(self, granted: frozenset[Pair], *, shop_id: int) -> dict[str, Any]:
        """The context an app holding ``granted`` may see."""
        if not allows(granted, self.resource, "read"):
            return {"shop": {"id": shop_id}}
        visible: dict[str, Any] = _deep_copy(self.data)
        for path, pair in self.requires.items():
            if not allows(granted, *pair):
                _drop(visible, path.split("."))
        visible["shop"] = {"id": shop_id}
        return visible


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _drop(data: Any, path: list[str]) -> None:
    if not isinstance(data, dict) or not path:
        return
    if len(path) == 1:
        data.pop(path[0], None)
    elif isinstance(data.get(path[0]), list):
        for item in data[path[0]]:
            _drop(item, path[1:])
    else:
        _drop(data.get(path[0]), path[1:])


ContextProvider = Callable[["Kit", int, "int | None"], "DashboardContext | None"]


@dataclass
class DashboardRegistry:
    """Modules say what each mount's page is about: ``register.context(Mount.ORDER_DETAILS, fn)``.

    ``fn(kit, shop_id, object_id)`` returns a ``DashboardContext`` or ``None`` (404).
    """

    providers: dict[Mount, ContextProvider] = field(default_factory=dict)

    def context(self, mount: Mount | str, provider: ContextProvider) -> None:
        self.providers[Mount(mount)] = provider


@dataclass(frozen=True)
class ExtensionPrincipal:
    """An extension acting for a user: the app's permissions narrowed to the user's."""

    app_id: str
    installation_id: int
    shop_id: int
    user_id: str
    permissions: frozenset[Pair]
    expires: int

    def has(self, resource: str, action: str) -> bool:
        return allows(self.permissions, resource, action)


class _Claims(msgspec.Struct, array_like=True):
    aud: str
    app_id: str
    installation_id: int
    shop_id: int
    user_id: str
    permissions: list[str]
    expires: int


def audience(app_id: str, shop_id: int) -> str:
    return f"czo-extension:{app_id}@{shop_id}"


def _key(secret: bytes) -> bytes:
    return hmac.new(secret, b"czo-kit:extension-token:v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def issue_extension_token(
    secret: bytes,
    *,
    app_id: str,
    installation_id: int,
    shop_id: int,
    user_id: str,
    permissions: frozenset[Pair],
    ttl: float = EXTENSION_TOKEN_TTL,
    now: float | None = None,
) -> tuple[str, int]:
    """A signed token for one app, shop and user; ``(token, expires at unix seconds)``."""
    expires = int((now if now is not None else time.time()) + ttl)
    claims = msgspec.msgpack.encode(
        _Claims(
            audience(app_id, shop_id), app_id, installation_id, shop_id, user_id,
            sorted(f"{r}:{a}" for r, a in permissions), expires,
        )
    )
    mac = hmac.new(_key(secret), claims, hashlib.sha256).digest()
    return f"{EXTENSION_TOKEN_PREFIX}{_b64(claims)}.{_b64(mac)}", expires


def verify_extension_token(
    secret: bytes, token: str, *, now: float | None = None, expected_audience: str | None = None
) -> ExtensionPrincipal:
    """The principal a token stands for; ``AuthenticationError`` if forged, expired or aimed
    at another audience."""
    if not token.startswith(EXTENSION_TOKEN_PREFIX) or len(token) > 2000:
        raise AuthenticationError("not an extension token")
    body, sep, signature = token[len(EXTENSION_TOKEN_PREFIX):].partition(".")
    if not sep:
        raise AuthenticationError("malformed extension token")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        mac = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        raise AuthenticationError("malformed extension token") from None
    if not hmac.compare_digest(mac, hmac.new(_key(secret), raw, hashlib.sha256).digest()):
        raise AuthenticationError("extension token signature does not match")
    try:
        claims = msgspec.msgpack.decode(raw, type=_Claims)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise AuthenticationError("malformed extension token") from None
    if claims.expires < (now if now is not None else time.time()):
        raise AuthenticationError("extension token has expired")
    if claims.aud != audience(claims.app_id, claims.shop_id) or (
        expected_audience is not None and claims.aud != expected_audience
    ):
        raise AuthenticationError("extension token is for another audience")
    pairs = frozenset((r, a) for r, _, a in (item.partition(":") for item in claims.permissions))
    return ExtensionPrincipal(
        app_id=claims.app_id,
        installation_id=claims.installation_id,
        shop_id=claims.shop_id,
        user_id=claims.user_id,
        permissions=pairs,
        expires=claims.expires,
    )


def narrowed(app: frozenset[Pair], user: frozenset[Pair]) -> frozenset[Pair]:
    """The app's permissions that the user also holds (an extension never exceeds either)."""
    return frozenset(pair for pair in app if allows(user, *pair))


def mapping(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)
