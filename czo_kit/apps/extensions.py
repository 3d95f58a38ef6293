"""App UI extensions: the dashboard's mounts and pages that modules register, what an
extension at a mount is told, and extension tokens.

An extension is a page of the app shown in a sandboxed iframe of the dashboard. The host tells
it its context (the shop, the object on screen, ...) over ``postMessage``, limited to what the
app's permissions allow, and hands it a short-lived, audience-bound token on request. The kit
knows one mount of its own, ``NAVIGATION`` (the shop's home page); every other mount and
page comes from a module, through ``czo_register_dashboard``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from czo_kit.apps.permissions import Pair, allows
from czo_kit.errors import AuthenticationError, PluginError
from czo_kit.plugins import Contributions

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = [
    "EXTENSION_TOKEN_PREFIX",
    "KIT_MOUNTS",
    "MOUNT_NAME",
    "NAVIGABLE",
    "DashboardRegistry",
    "ExtensionContext",
    "ExtensionPrincipal",
    "MountSpec",
    "Page",
    "PageSpec",
    "issue_extension_token",
    "verify_extension_token",
]

EXTENSION_TOKEN_PREFIX = "czo_ext_"
EXTENSION_TOKEN_TTL = 300.0

NAVIGABLE = re.compile(r"^/dashboard/shops/[0-9]{1,12}(/[A-Za-z0-9_-]{1,64}){0,4}/?$")
"""Paths an extension may send the dashboard to (``czo:navigate``): dashboard pages only."""

KIT_MOUNTS: tuple[str, ...] = ("NAVIGATION",)
"""The kit's own mounts. ``NAVIGATION`` is the shop's home page: its widgets show there, and
its ``app_page`` extensions become links to a full-page frame. Its context is the shop."""

MOUNT_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,63}\Z")
SLUG = re.compile(r"^[a-z][a-z0-9-]{0,47}\Z")
RESOURCE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
RESERVED_SLUGS = frozenset({"apps"})
"""Page slugs the kit's own routes use under ``/dashboard/shops/<id>/``."""
_LINK = re.compile(r"^/dashboard/[A-Za-z0-9_/-]{0,300}\Z")


@dataclass
class ExtensionContext:
    """What an extension at a mount learns about the object on screen.

    ``data`` is sent to the extension, minus every key listed in ``requires`` (a dotted path
    such as ``gift.sender_email``) whose permission the app lacks. A mount's context
    function may also return a plain mapping: that is ``data`` with no ``requires``.
    """

    data: dict[str, Any]
    requires: dict[str, Pair] = field(default_factory=dict)

    def for_app(self, granted: frozenset[Pair], *, resource: str, shop_id: int) -> dict[str, Any]:
        """The context an app holding ``granted`` may see at a mount showing ``resource``:
        an app without ``read`` on it learns the shop and nothing else."""
        if not allows(granted, resource, "read"):
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


@dataclass
class Page:
    """What a page's ``render`` returns: the page as the merchant sees it.

    ``title`` defaults to the title the page was registered with; ``summary`` rows and
    ``links`` (label, dashboard path) are shown as text, escaped; ``mount`` names the mount
    whose extensions appear on this page (its context function gets the same shop and object).
    """

    title: str | None = None
    summary: Mapping[str, str] = field(default_factory=dict)
    links: Sequence[tuple[str, str]] = ()
    mount: str | None = None

    def __post_init__(self) -> None:
        for label, href in self.links:
            # Module code builds these from data: a link out of the dashboard (javascript:,
            # another host) must be a bug that shows, never an href that runs.
            if not _LINK.fullmatch(href) or ".." in href or "//" in href:
                raise ValueError(f"page link {label!r} goes to {href[:80]!r}; links stay in the dashboard (/dashboard/...)")


ContextFunction = Callable[["Kit", int, "int | None"], "ExtensionContext | Mapping[str, Any] | None"]
RenderFunction = Callable[["Kit", int, "int | None"], "Page | None"]


@dataclass(frozen=True)
class MountSpec:
    """A registered mount: what its page shows (``resource``) and its context function."""

    name: str
    resource: str
    context: ContextFunction

    def context_for(self, kit: Kit, shop_id: int, object_id: int | None) -> ExtensionContext | None:
        """The context of the object on screen, or ``None`` when there is no such object."""
        value = self.context(kit, shop_id, object_id)
        if value is None or isinstance(value, ExtensionContext):
            return value
        if isinstance(value, Mapping):
            return ExtensionContext(data=dict(value))
        raise PluginError(
            f"the context function of mount {self.name} returned {type(value).__name__}; "
            "return an ExtensionContext, a mapping, or None"
        )


@dataclass(frozen=True)
class PageSpec:
    """A registered page: ``/dashboard/shops/<shop>/<slug>`` (and ``/<slug>/<object id>``)."""

    slug: str
    title: str
    resource: str
    render: RenderFunction


def _check_resource(resource: str, what: str) -> None:
    if not isinstance(resource, str) or not RESOURCE.fullmatch(resource):
        raise PluginError(f"{what}: resource {str(resource)[:40]!r} is not a resource name (lower case, like 'item')")


@dataclass
class DashboardRegistry:
    """What modules add to the dashboard (``czo_register_dashboard``): mounts and pages.

    ``register.mount(name, *, resource, context)``: a place extensions can target; ``context``
    is ``fn(kit, shop_id, object_id)`` returning what an extension there is given.
    ``register.page(slug, *, title, resource, render)``: a page, listed in the shop's
    navigation for people holding ``resource:read``; ``render`` is ``fn(kit, shop_id,
    object_id)`` returning a ``Page`` (``None`` answers 404).
    """

    mounts: dict[str, MountSpec] = field(default_factory=dict)
    pages: dict[str, PageSpec] = field(default_factory=dict)
    _contributions: Contributions = field(default_factory=Contributions, repr=False, compare=False)

    def mount(self, name: str, *, resource: str, context: ContextFunction) -> None:
        name = str(name)
        if not MOUNT_NAME.fullmatch(name):
            raise PluginError(f"mount name {name[:70]!r} must be upper case letters, digits and '_' (like 'ITEM_DETAILS')")
        if name in KIT_MOUNTS:
            raise PluginError(f"mount {name} is the kit's own; pick another name")
        if name in self.mounts:
            raise PluginError(f"mount {name} is registered twice; mount names are shared by every module")
        _check_resource(resource, f"mount {name}")
        if not callable(context):
            raise PluginError(f"mount {name}: context must be a function fn(kit, shop_id, object_id)")
        self.mounts[name] = MountSpec(name, resource, context)
        self._contributions.record(f"mount {name}")

    def page(self, slug: str, *, title: str, resource: str, render: RenderFunction) -> None:
        if not isinstance(slug, str) or not SLUG.fullmatch(slug):
            raise PluginError(f"page slug {str(slug)[:60]!r} must be lower case letters, digits and '-' (like 'items')")
        if slug in RESERVED_SLUGS:
            raise PluginError(f"page slug {slug!r} is taken by the dashboard itself ({', '.join(sorted(RESERVED_SLUGS))})")
        if slug in self.pages:
            raise PluginError(f"page {slug!r} is registered twice; page slugs are shared by every module")
        if not isinstance(title, str) or not 1 <= len(title) <= 60:
            raise PluginError(f"page {slug!r}: title must be 1-60 characters")
        _check_resource(resource, f"page {slug!r}")
        if not callable(render):
            raise PluginError(f"page {slug!r}: render must be a function fn(kit, shop_id, object_id)")
        self.pages[slug] = PageSpec(slug, title, resource, render)
        self._contributions.record(f"page {slug}")

    def context(self, mount: Any, provider: Any) -> None:
        """Gone: one call could not say which page shows a mount without the kit naming it."""
        raise PluginError(
            f"register.context({str(mount)[:70]!r}, ...) was replaced: declare the mount with "
            "register.mount(name, resource=..., context=fn) and the page that shows it with "
            "register.page(slug, title=..., resource=..., render=fn) (see docs/extensions.md)"
        )

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> the mounts and pages it registered."""
        return self._contributions.contributions()

    def mount_names(self) -> tuple[str, ...]:
        """Every mount a manifest may target: the kit's own, then the registered ones."""
        return KIT_MOUNTS + tuple(sorted(self.mounts))


class _MountNames(type):
    def __getattr__(cls, name: str) -> Any:
        if MOUNT_NAME.fullmatch(name):
            return cls(name)
        raise AttributeError(name)


class _LegacyMount(str, metaclass=_MountNames):
    """What ``Mount`` became: ``Mount.SOME_NAME`` is the string ``"SOME_NAME"``, with the
    ``value`` and ``name`` a member of the old enum had."""

    @property
    def value(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return str(self)


if not TYPE_CHECKING:
    # Hidden from mypy: a module-level __getattr__ would make any misspelt import from this
    # module type-check, and mypy flagging ``Mount`` is the nudge module code needs.

    def __getattr__(name: str) -> Any:
        # The old Mount enum named the example modules' mounts in the kit. Module code that
        # imports it keeps working, warned, for as long as the deprecation lasts.
        if name == "Mount":
            warnings.warn(
                "czo_kit.apps.extensions.Mount is deprecated: a mount is a string that its module "
                "registers with register.mount(...); write the name itself ('..._DETAILS')",
                DeprecationWarning,
                stacklevel=2,
            )
            return _LegacyMount
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
