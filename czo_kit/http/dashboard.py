"""The merchant dashboard: server-rendered pages per mount point, with each installed app's
extensions in sandboxed iframes, and the endpoint that hands extensions their tokens.

Pages carry a Content Security Policy that runs only the kit's own script, allows frames from
the installed apps' origins and nothing else, and forbids framing the dashboard itself. The
host script (``/static/czo-host.js``) talks to each iframe over ``postMessage`` with its exact
origin, and accepts a message only from that iframe's window and origin.
"""

from __future__ import annotations

import html
import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import falcon
import msgspec

from czo_kit.apps.extensions import (
    NAVIGABLE,
    DashboardContext,
    DashboardRegistry,
    Mount,
    issue_extension_token,
    narrowed,
)
from czo_kit.apps.net import parse_target
from czo_kit.apps.permissions import allows
from czo_kit.context import set_actor
from czo_kit.errors import AuthenticationError, NotFoundError, UnsafeURLError
from czo_kit.http._ids import AppId, ShopId, parse_app_id
from czo_kit.http.auth import USER_TOKEN_PREFIX, verify_user_token

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = ["SESSION_COOKIE", "add_dashboard", "build_dashboard_registry"]

log = logging.getLogger("czo_kit.dashboard")

SESSION_COOKIE = "czo_session"
SANDBOX = "allow-scripts allow-same-origin allow-forms"
"""The iframe sandbox: scripts and the app's own origin (so its messages carry its origin and
it can call its own backend); no top navigation, no popups, no modals, no downloads."""
SAME_ORIGIN_SANDBOX = "allow-scripts allow-forms"
"""The sandbox of a frame on the dashboard's own origin: with both ``allow-scripts`` and
``allow-same-origin`` such a frame could reach into its parent and remove its own sandbox, so
it runs with an opaque origin instead (and the host, which checks origins, ignores it)."""

_PAGES: dict[Mount, tuple[str, str, str]] = {
    # mount: (route, title of the list/section, resource it shows)
    Mount.NAVIGATION: ("/dashboard/shops/{shop_id:shop}", "Shop", "shop"),
    Mount.ORDER_LIST: ("/dashboard/shops/{shop_id:shop}/orders", "Orders", "order"),
    Mount.ORDER_DETAILS: ("/dashboard/shops/{shop_id:shop}/orders/{object_id:id}", "Order", "order"),
    Mount.PRODUCT_LIST: ("/dashboard/shops/{shop_id:shop}/products", "Products", "product"),
    Mount.PRODUCT_DETAILS: ("/dashboard/shops/{shop_id:shop}/products/{object_id:id}", "Product", "product"),
}


def _static(name: str) -> bytes:
    return resources.files("czo_kit").joinpath("static", name).read_bytes()


def _user(req: falcon.Request, kit: Kit) -> str:
    token = req.get_cookie_values(SESSION_COOKIE)
    if not token or not token[0].startswith(USER_TOKEN_PREFIX):
        raise AuthenticationError("sign in first: open /dashboard/login?token=<user token>")
    user_id = verify_user_token(kit.secret_key, token[0]).user_id
    set_actor(f"user:{user_id}")  # reset with the request's context (czo_kit.http.api)
    return user_id


def _origin(req: falcon.Request) -> str:
    parts = urlsplit(req.prefix)
    return f"{parts.scheme}://{parts.netloc}"


def sandbox_for(frame_origin: str, req: falcon.Request) -> str:
    """The sandbox of a frame at ``frame_origin`` on the page answering ``req``."""
    try:
        # The same normal form as the frame's origin: lower-case host, no default port.
        host = parse_target(req.prefix, what="the dashboard URL").origin
    except UnsafeURLError:
        return SAME_ORIGIN_SANDBOX  # an origin we cannot tell apart: never lift the sandbox
    if frame_origin == host:
        log.warning("extension frame %s is on the dashboard's own origin: framed without allow-same-origin", frame_origin)
        return SAME_ORIGIN_SANDBOX
    return SANDBOX


def _frame_src(url: str, host_origin: str, frame_id: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [("czo_host_origin", host_origin), ("czo_frame", frame_id)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _json_for_html(value: Any) -> str:
    # Inside <script type="application/json">: "</" must not end the element early.
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def _csp(frame_origins: list[str]) -> str:
    frames = " ".join(sorted(set(frame_origins))) or "'none'"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; frame-src {frames}; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def _render(
    *,
    title: str,
    shop_id: int,
    summary: dict[str, str],
    frames: list[dict[str, Any]],
    links: list[tuple[str, str]],
    config: dict[str, Any],
) -> str:
    esc = html.escape
    nav = "".join(
        f'<a href="/dashboard/shops/{shop_id}{path}">{esc(label)}</a>'
        for path, label in (("", "Shop"), ("/orders", "Orders"), ("/products", "Products"))
    )
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary.items())
    link_items = "".join(f'<li><a href="{esc(href)}">{esc(label)}</a></li>' for href, label in links)
    blocks = []
    for frame in frames:
        label = esc(frame["label"])
        # No src yet: czo-host.js sets it once its message listener is in place, or a fast
        # frame's czo:ready could arrive before anyone listens and the frame never gets context.
        iframe = (
            f'<iframe id="{esc(frame["id"])}" class="czo-extension" title="{label}" data-src="{esc(frame["src"])}" '
            f'sandbox="{frame["sandbox"]}" referrerpolicy="no-referrer" allow="" loading="eager"></iframe>'
        )
        if frame["target"] == "popup":
            blocks.append(
                f'<section class="czo-popup" data-app="{esc(frame["appId"])}"><button type="button" '
                f'class="czo-open" data-frame="{esc(frame["id"])}">{label}</button>'
                f'<dialog id="{esc(frame["id"])}-dialog">{iframe}<button type="button" class="czo-close" '
                f'data-frame="{esc(frame["id"])}">Close</button></dialog></section>'
            )
        else:
            blocks.append(
                f'<section class="czo-widget" data-app="{esc(frame["appId"])}"><h2>{label}</h2>{iframe}</section>'
            )
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)} - c-zo</title><link rel=\"icon\" href=\"data:,\">"
        "<link rel=\"stylesheet\" href=\"/static/dashboard.css\">"
        "</head><body>"
        f"<header><strong>c-zo</strong> shop {shop_id} <nav>{nav}</nav></header>"
        f"<main><h1>{esc(title)}</h1><table class=\"czo-summary\">{rows}</table>"
        + (f"<ul class=\"czo-links\">{link_items}</ul>" if link_items else "")
        + f"<div class=\"czo-extensions\">{''.join(blocks)}</div></main>"
        "<div id=\"czo-toasts\" aria-live=\"polite\"></div>"
        f"<script type=\"application/json\" id=\"czo-config\">{_json_for_html(config)}</script>"
        "<script src=\"/static/czo-host.js\"></script></body></html>"
    )


class _Page:
    def __init__(self, kit: Kit, registry: DashboardRegistry, mount: Mount) -> None:
        self.kit = kit
        self.registry = registry
        self.mount = mount

    def on_get(self, req: falcon.Request, resp: falcon.Response, shop_id: int, object_id: int | None = None) -> None:
        user = _user(req, self.kit)
        held = self.kit.permission_service.permissions(user, shop_id)
        _, label, resource = _PAGES[self.mount]
        if not held:
            raise falcon.HTTPForbidden(title="No access", description=f"you hold nothing in shop {shop_id}")
        provider = self.registry.providers.get(self.mount)
        page = provider(self.kit, shop_id, object_id) if provider is not None else None
        if page is None:
            if object_id is not None or self.mount != Mount.NAVIGATION:
                raise NotFoundError(label, object_id if object_id is not None else shop_id)
            page = DashboardContext(title=f"Shop {shop_id}", resource="shop", data={})
        if not allows(held, page.resource, "read") and page.resource != "shop":
            raise falcon.HTTPForbidden(title="No access", description=f"you cannot read {page.resource} in this shop")
        host_origin = _origin(req)
        frames: list[dict[str, Any]] = []
        links: list[tuple[str, str]] = []
        for installation in self.kit.apps.list(shop_id):
            manifest = self.kit.apps.manifest_of(installation)
            granted = self.kit.apps.granted(installation)
            for index, extension in enumerate(manifest.extensions):
                if extension.target == "app_page":
                    if self.mount == Mount.NAVIGATION:
                        links.append((f"/dashboard/shops/{shop_id}/apps/{installation.app_id}/{index}", extension.label))
                    continue
                if extension.mount != self.mount.value:
                    continue
                frame_id = f"czo-ext-{installation.id}-{index}"
                frames.append(
                    {
                        "id": frame_id,
                        "appId": installation.app_id,
                        "shopId": shop_id,
                        "extension": index,
                        "label": extension.label,
                        "target": extension.target,
                        "origin": parse_target(extension.url).origin,
                        "sandbox": sandbox_for(parse_target(extension.url).origin, req),
                        "src": _frame_src(extension.url, host_origin, frame_id),
                        "context": {
                            **page.for_app(granted, shop_id=shop_id),
                            "mount": self.mount.value,
                            "user": {"id": user},
                        },
                    }
                )
        config = {
            "version": 1,
            "shopId": shop_id,
            "tokenUrl": "/dashboard/api/extension-token",
            "frames": [{k: v for k, v in f.items() if k not in ("src", "label", "sandbox")} for f in frames],
        }
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Content-Security-Policy", _csp([f["origin"] for f in frames]))
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "same-origin")
        resp.set_header("Cache-Control", "no-store")
        resp.text = _render(
            title=page.title, shop_id=shop_id, summary=page.summary, frames=frames, links=links, config=config
        )


class _AppPage:
    """A full-page extension (target ``app_page``), reached from the navigation."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response, shop_id: int, app_id: str, index: int) -> None:
        user = _user(req, self.kit)
        parse_app_id(app_id, field="app_id")
        if not self.kit.permission_service.permissions(user, shop_id):
            raise falcon.HTTPForbidden(title="No access", description=f"you hold nothing in shop {shop_id}")
        installation = self.kit.apps.get(shop_id, app_id)
        manifest = self.kit.apps.manifest_of(installation)
        if not 0 <= index < len(manifest.extensions) or manifest.extensions[index].target != "app_page":
            raise NotFoundError("Extension", f"{app_id}/{index}")
        extension = manifest.extensions[index]
        frame_id = f"czo-ext-{installation.id}-{index}"
        origin = parse_target(extension.url).origin
        frame = {
            "id": frame_id, "appId": app_id, "shopId": shop_id, "extension": index, "label": extension.label,
            "target": "widget", "origin": origin, "sandbox": sandbox_for(origin, req),
            "src": _frame_src(extension.url, _origin(req), frame_id),
            "context": {"shop": {"id": shop_id}, "mount": "NAVIGATION", "user": {"id": user}},
        }
        config = {"version": 1, "shopId": shop_id, "tokenUrl": "/dashboard/api/extension-token",
                  "frames": [{k: v for k, v in frame.items() if k not in ("src", "label", "sandbox")}]}
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Content-Security-Policy", _csp([origin]))
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Cache-Control", "no-store")
        resp.text = _render(title=extension.label, shop_id=shop_id, summary={}, frames=[frame], links=[], config=config)


class _Login:
    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        token = req.get_param("token") or ""
        target = req.get_param("next") or ""
        verify_user_token(self.kit.secret_key, token)
        if not NAVIGABLE.fullmatch(target):
            target = "/dashboard/shops/1"
        resp.set_cookie(
            SESSION_COOKIE, token, http_only=True, same_site="Strict", path="/", secure=req.scheme == "https",
            max_age=3600,
        )
        raise falcon.HTTPSeeOther(target)


class _TokenBody(msgspec.Struct, forbid_unknown_fields=True):
    appId: AppId  # noqa: N815
    shopId: ShopId  # noqa: N815


class _ExtensionToken:
    """``POST /dashboard/api/extension-token``: a token for the extension of the calling page."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # A custom header cannot be sent cross-site without a CORS preflight we never grant.
        if req.get_header("X-CZO-Dashboard") != "1":
            raise falcon.HTTPForbidden(title="Forbidden", description="dashboard requests only")
        origin = req.get_header("Origin")
        if origin is not None and origin != _origin(req):
            raise falcon.HTTPForbidden(title="Forbidden", description="cross-origin request refused")
        user = _user(req, self.kit)
        from czo_kit.http.api import read_json

        body = read_json(req, _TokenBody)
        installation = self.kit.apps.get(body.shopId, body.appId)
        held = self.kit.permission_service.permissions(user, body.shopId)
        permissions = narrowed(self.kit.apps.granted(installation), held)
        if not permissions:
            raise falcon.HTTPForbidden(title="Forbidden", description="you share no permission with this app")
        token, expires = issue_extension_token(
            self.kit.secret_key,
            app_id=body.appId,
            installation_id=int(installation.id),
            shop_id=body.shopId,
            user_id=user,
            permissions=permissions,
        )
        resp.set_header("Cache-Control", "no-store")
        resp.media = {"token": token, "expiresAt": expires, "permissions": sorted(f"{r}:{a}" for r, a in permissions)}


class _Static:
    TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    FILES = ("czo-host.js", "czo-extension.js", "dashboard.css")

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in self.FILES:
            raise falcon.HTTPNotFound()
        resp.data = _static(name)
        resp.content_type = self.TYPES[name[name.rfind("."):]]
        resp.set_header("Cache-Control", "public, max-age=300")
        resp.set_header("X-Content-Type-Options", "nosniff")
        if name == "czo-extension.js":
            resp.set_header("Access-Control-Allow-Origin", "*")  # apps may load the client from here


def build_dashboard_registry(kit: Kit) -> DashboardRegistry:
    registry = DashboardRegistry()
    kit.plugins.hook.czo_register_dashboard(register=registry, kit=kit)
    return registry


def add_dashboard(app: falcon.App[Any, Any], kit: Kit) -> None:
    """Mount the dashboard pages, the token endpoint and the static files on ``app``."""
    registry = build_dashboard_registry(kit)
    for mount, (route, _, _) in _PAGES.items():
        app.add_route(route, _Page(kit, registry, mount))
    app.add_route("/dashboard/shops/{shop_id:shop}/apps/{app_id}/{index:int}", _AppPage(kit))
    app.add_route("/dashboard/login", _Login(kit))
    app.add_route("/dashboard/api/extension-token", _ExtensionToken(kit))
    app.add_route("/static/{name}", _Static())


def page_error(req: falcon.Request, resp: falcon.Response, status: str, message: str) -> None:
    """Errors on dashboard pages are small HTML pages, not JSON."""
    resp.status = status
    resp.content_type = falcon.MEDIA_HTML
    resp.set_header("Content-Security-Policy", "default-src 'none'; style-src 'self'")
    resp.text = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>c-zo</title>"
        f"<link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head><body><main><h1>{html.escape(status)}</h1>"
        f"<p>{html.escape(message)}</p></main></body></html>"
    )

