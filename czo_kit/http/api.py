"""The kit's small HTTP API (Falcon, WSGI): app management for users, and routes that
modules add for apps (``czo_register_http_routes``).

Errors map to statuses the same way everywhere: 400 with the field path for bad bodies or
parameters, 401 for missing or bad credentials, 403 for missing permissions (listing them),
404, 409 for conflicts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import falcon
import msgspec
from falcon.routing.compiled import UnacceptableRouteError

from czo_kit.apps.manifest import validation_error_path
from czo_kit.context import clean_correlation_id, correlation_var, reset_actor, set_actor
from czo_kit.events.types import uuid7
from czo_kit.apps.extensions import EXTENSION_TOKEN_PREFIX, verify_extension_token
from czo_kit.apps.permissions import APP_MANAGEMENT, allows, format_pairs
from czo_kit.apps.registry import TOKEN_PREFIX, AppPrincipal
from czo_kit.errors import (
    AuthenticationError,
    ConflictError,
    CzoError,
    InvalidDataError,
    InvalidFilterError,
    ManifestError,
    NotFoundError,
    OptimisticLockError,
    PermissionDeniedError,
    PluginError,
    UnsafeURLError,
)
from czo_kit.http._ids import (
    SHOP_ID_MAX,
    IdConverter,
    InvalidId,
    ShopConverter,
    ShopId,
    parse_app_id,
    parse_id,
)
from czo_kit.http.auth import USER_TOKEN_PREFIX, UserIdentity, verify_user_token
from czo_kit.http.idempotency import IdempotencyMiddleware
from czo_kit.plugins import Contributions, call_each_plugin, label_of

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = ["ApiRoutes", "Authenticators", "create_api", "read_json", "require_app", "require_user"]

log = logging.getLogger("czo_kit.http")

T = TypeVar("T")
MAX_BODY = 1024 * 1024
Authenticator = Callable[[str, "Kit"], UserIdentity | None]


class Authenticators:
    """What ``czo_register_authenticators`` registered (``kit.authenticators``): functions
    ``fn(token, kit)`` that say who a bearer token belongs to, asked highest priority first."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, Authenticator]] = []
        self._contributions = Contributions()

    def __call__(self, fn: Authenticator, *, priority: int = 0) -> None:
        if not callable(fn):
            raise PluginError(f"authenticator {fn!r} is not callable; register fn(token, kit) -> UserIdentity | None")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise PluginError(f"authenticator {label_of(fn)}: priority must be an int, got {priority!r}")
        self._entries.append((priority, fn))
        self._contributions.record(label_of(fn))

    def ordered(self) -> list[Authenticator]:
        """Highest priority first; registration order breaks ties."""
        return [fn for _, fn in sorted(self._entries, key=lambda item: -item[0])]

    def contributions(self) -> dict[str, list[str]]:
        return self._contributions.contributions()


@dataclass
class ApiRoutes:
    """What ``czo_register_http_routes`` receives: add Falcon resources under ``/api``."""

    app: falcon.App[Any, Any]
    kit: Kit
    paths: list[str] = field(default_factory=list)
    _contributions: Contributions = field(default_factory=Contributions, repr=False)

    def add_route(self, path: str, resource: object, **kwargs: Any) -> None:
        if not path.startswith("/api/"):
            raise ValueError(f"module routes live under /api/, got {path!r}")
        try:
            self.app.add_route(path, resource, **kwargs)
        except UnacceptableRouteError as exc:
            # Falcon wants one field name and converter per segment across all routes: say
            # which convention the other modules follow.
            raise PluginError(
                f"route {path!r} does not fit the routes other modules added: {exc}. Name ids as they "
                "do, with the kit's converters: {shop_id:shop} for shops, {item_id:id} for rows"
            ) from None
        self.paths.append(path)
        self._contributions.record(path)

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> the paths it added."""
        return self._contributions.contributions()


def read_json(req: falcon.Request, kind: type[T]) -> T:
    """The request body decoded as ``kind``; 400 naming the field when it does not fit."""
    if req.content_length is not None and req.content_length > MAX_BODY:
        raise falcon.HTTPContentTooLarge(title="Body too large", description=f"at most {MAX_BODY} bytes")
    raw = req.bounded_stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise falcon.HTTPContentTooLarge(title="Body too large", description=f"at most {MAX_BODY} bytes")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise _bad_request(*validation_error_path(exc)) from None
    except msgspec.DecodeError as exc:
        raise _bad_request(f"the body is not valid JSON: {exc}", "$") from None


def _bad_request(message: str, path: str) -> falcon.HTTPError:
    return falcon.HTTPBadRequest(title="Invalid request", description=message, code=path)


def _token(req: falcon.Request) -> str | None:
    header = req.get_header("Authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def require_user(req: falcon.Request) -> UserIdentity:
    user: UserIdentity | None = req.context.user
    if user is None:
        raise AuthenticationError("a user token is required (Authorization: Bearer czo_user_...)")
    return user


def require_app(req: falcon.Request, resource: str, action: str, *, shop_id: int) -> Any:
    """The calling app, if it holds ``action`` on ``resource`` in ``shop_id``; else 401/403."""
    principal: Any = req.context.app
    if principal is None:
        raise AuthenticationError("an app token is required (Authorization: Bearer czo_app_...)")
    if principal.shop_id != shop_id:
        raise PermissionDeniedError(f"app {principal.app_id} is not installed in shop {shop_id}")
    if not principal.has(resource, action):
        raise PermissionDeniedError(
            f"app {principal.app_id} lacks {resource}:{action}", missing=(f"{resource}:{action}",)
        )
    return principal


class _ContextMiddleware:
    """Each request's correlation id (the caller's ``X-Request-ID`` if it is a safe one, else
    a new one), echoed in the response; it and the actor authentication names go with every
    event, webhook and log record the request causes."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        request_id = clean_correlation_id(req.get_header("X-Request-ID")) or uuid7()
        req.context.request_id = request_id
        # Set here, reset in process_response: waitress reuses its threads between requests.
        req.context.context_tokens = (correlation_var.set(request_id), set_actor(None))

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        request_id = getattr(req.context, "request_id", None)
        if request_id is not None:
            resp.set_header("X-Request-ID", request_id)
        tokens = getattr(req.context, "context_tokens", None)
        if tokens is not None:
            correlation_var.reset(tokens[0])
            reset_actor(tokens[1])


class _AuthMiddleware:
    def __init__(self, kit: Kit, authenticators: list[Authenticator]) -> None:
        self.kit = kit
        self.authenticators = authenticators

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]) -> None:
        # Path ids are checked here, once routed, so a bad one is a 400 naming the parameter
        # rather than a 404 for a route that did not match.
        for name, value in params.items():
            if isinstance(value, InvalidId):
                raise value.error(name)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.user = None
        req.context.app = None
        token = _token(req)
        if token is None:
            return
        if token.startswith(TOKEN_PREFIX):
            req.context.app = self.kit.apps.authenticate(token)
            set_actor(f"app:{req.context.app.app_id}")
            return
        if token.startswith(EXTENSION_TOKEN_PREFIX):
            principal = verify_extension_token(self.kit.secret_key, token)
            # Uninstalling the app ends its extensions' tokens at once.
            self.kit.apps.get(principal.shop_id, principal.app_id)
            req.context.app = principal
            set_actor(f"app:{principal.app_id}")  # the app acts, on behalf of principal.user_id
            return
        for authenticate in self.authenticators:
            identity = authenticate(token, self.kit)
            if identity is not None:
                req.context.user = identity
                set_actor(f"user:{identity.user_id}")
                return
        raise AuthenticationError("the bearer token is not valid")


def default_authenticator(token: str, kit: Kit) -> UserIdentity | None:
    """Signed user tokens issued by ``czo-kit users token`` (the documented default)."""
    if not token.startswith(USER_TOKEN_PREFIX):
        return None
    return verify_user_token(kit.secret_key, token)


def _is_page(req: falcon.Request) -> bool:
    return req.path.startswith("/dashboard/") and not req.path.startswith("/dashboard/api/")


def _handle(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]) -> None:
    status, body = _error_body(ex)
    if _is_page(req):
        from czo_kit.http.dashboard import page_error

        page_error(req, resp, status, str(body.get("message", "")))
        return
    if status == falcon.HTTP_401:
        resp.set_header("WWW-Authenticate", 'Bearer realm="czo"')
    resp.status = status
    resp.media = body


def _error_body(ex: Exception) -> tuple[str, dict[str, Any]]:
    if isinstance(ex, AuthenticationError):
        return falcon.HTTP_401, {"error": "unauthorized", "message": str(ex)}
    if isinstance(ex, PermissionDeniedError):
        return falcon.HTTP_403, {"error": "forbidden", "message": str(ex), "missing": list(ex.missing)}
    if isinstance(ex, NotFoundError):
        return falcon.HTTP_404, {"error": "not_found", "message": str(ex)}
    if isinstance(ex, (ConflictError, OptimisticLockError)):
        return falcon.HTTP_409, {"error": "conflict", "message": str(ex)}
    if isinstance(ex, ManifestError):
        return falcon.HTTP_400, {"error": "invalid_manifest", "message": str(ex), "field": ex.path}
    if isinstance(ex, InvalidDataError):
        return falcon.HTTP_400, {"error": "invalid", "message": str(ex), "field": ex.field}
    if isinstance(ex, (InvalidFilterError, UnsafeURLError)):
        return falcon.HTTP_400, {"error": "invalid", "message": str(ex)}
    return falcon.HTTP_400, {"error": "invalid", "message": str(ex)}


def _http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict[str, Any]) -> None:
    if _is_page(req):
        from czo_kit.http.dashboard import page_error

        page_error(req, resp, str(ex.status), ex.description or ex.title or "")
        return
    resp.status = ex.status
    body: dict[str, Any] = {"error": (ex.title or "error").lower().replace(" ", "_"), "message": ex.description or ex.title}
    if ex.code is not None:
        body["field"] = ex.code
    resp.media = body


class _InstallBody(msgspec.Struct, forbid_unknown_fields=True):
    manifestUrl: str  # noqa: N815 - the API's JSON field names are camelCase
    shopId: ShopId  # noqa: N815


def _shop_param(req: falcon.Request) -> int:
    return parse_id(req.get_param("shopId"), field="shopId", maximum=SHOP_ID_MAX)


def _check_user(kit: Kit, user: UserIdentity, shop_id: int, resource: str, action: str) -> None:
    held = kit.permission_service.permissions(user.user_id, shop_id)
    if not allows(held, resource, action):
        raise PermissionDeniedError(
            f"user {user.user_id} lacks {resource}:{action} in shop {shop_id}",
            missing=format_pairs([(resource, action)]),
        )


def _app_json(row: Any) -> dict[str, Any]:
    return {
        "appId": row.app_id,
        "shopId": row.shop_id,
        "name": row.name,
        "version": row.version,
        "installedBy": row.installed_by,
        "installedAt": row.installed_at.isoformat(),
        "permissions": msgspec.json.decode(str(row.permissions)),
    }


class _AppsResource:
    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = require_user(req)
        shop_id = _shop_param(req)
        _check_user(self.kit, user, shop_id, "apps", "read")
        resp.media = {"apps": [_app_json(row) for row in self.kit.apps.list(shop_id)]}


class _InstallResource:
    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = require_user(req)
        body = read_json(req, _InstallBody)
        _check_user(self.kit, user, body.shopId, *APP_MANAGEMENT)
        result = self.kit.apps.install(shop_id=body.shopId, installer_id=user.user_id, manifest_url=body.manifestUrl)
        resp.status = falcon.HTTP_201
        resp.media = {"app": _app_json(result.installation)}


class _AppResource:
    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_delete(self, req: falcon.Request, resp: falcon.Response, app_id: str) -> None:
        user = require_user(req)
        shop_id = _shop_param(req)
        parse_app_id(app_id)
        _check_user(self.kit, user, shop_id, *APP_MANAGEMENT)
        self.kit.apps.uninstall(shop_id=shop_id, app_id=app_id)
        resp.status = falcon.HTTP_204


class _Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class _SigningKey:
    """The public key that verifies the kit's hand-offs to apps (public, like any public key)."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"publicKey": self.kit.apps.public_key, "algorithm": "ed25519", "scheme": "v1a"}


def create_api(kit: Kit) -> falcon.App[Any, Any]:
    """The WSGI application: built-in routes plus every module's ``czo_register_http_routes``."""
    return _build_api(kit)[0]


def routes_of(kit: Kit) -> ApiRoutes:
    """The routes plugins add to an API built for ``kit``, with who added which."""
    return _build_api(kit)[1]


def _build_api(kit: Kit) -> tuple[falcon.App[Any, Any], ApiRoutes]:
    ordered = kit.authenticators.ordered()
    middleware: list[Any] = [
        _ContextMiddleware(), _AuthMiddleware(kit, ordered), IdempotencyMiddleware(kit, max_body=MAX_BODY)
    ]
    app = falcon.App(middleware=middleware)
    app.router_options.converters["id"] = IdConverter
    app.router_options.converters["shop"] = ShopConverter
    app.add_error_handler(CzoError, _handle)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_route("/api/health", _Health())
    app.add_route("/api/signing-key", _SigningKey(kit))
    app.add_route("/api/apps", _AppsResource(kit))
    app.add_route("/api/apps/install", _InstallResource(kit))
    app.add_route("/api/apps/{app_id}", _AppResource(kit))
    routes = ApiRoutes(app, kit)
    call_each_plugin(kit.plugins.hook.czo_register_http_routes, api=routes, kit=kit)
    from czo_kit.http.dashboard import add_dashboard

    add_dashboard(app, kit, authenticators=ordered)
    return app, routes
