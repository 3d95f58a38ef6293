"""The merchant dashboard: the shops of the signed-in person, each shop's home and the pages
modules register, each installed app's extensions in sandboxed iframes at the mounts modules
register, and the endpoint that hands extensions their tokens.

The kit names no page or mount of a module: every route under ``/dashboard/shops/<id>/``
other than the shop's home and app pages comes from ``kit.dashboard`` (what plugins gave
``czo_register_dashboard``). Pages carry a Content Security Policy that runs only the kit's
own script, allows frames from the installed apps' origins and nothing else, and forbids
framing the dashboard itself. The host script (``/static/czo-host.js``) talks to each iframe
over ``postMessage`` with its exact origin, and accepts a message only from that iframe's
window and origin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import falcon
import msgspec

from czo_kit.apps.extensions import DashboardRegistry, ExtensionContext, MountSpec, PageSpec, issue_extension_token, narrowed
from czo_kit.apps.manifest import ExtensionSpec
from czo_kit.apps.net import parse_target
from czo_kit.apps.permissions import Pair, ShopMemberships, allows
from czo_kit.errors import NotFoundError, UnsafeURLError
from czo_kit.http import _dashboard_html as views
from czo_kit.http._ids import AppId, ShopId, parse_app_id
from czo_kit.http._signin import (
    Authenticator,
    SignIn,
    SignInRequired,
    SignOut,
    current_session,
    html_headers,
    logout_token,
    origin_of,
    sign_in_handler,
)
from czo_kit.http.sessions import SESSION_COOKIE, DashboardSession

if TYPE_CHECKING:
    from czo_kit.apps._models import AppInstallation
    from czo_kit.kit import Kit

__all__ = ["SESSION_COOKIE", "add_dashboard", "build_dashboard_registry", "page_error"]

log = logging.getLogger("czo_kit.dashboard")

NAVIGATION = "NAVIGATION"
SANDBOX = "allow-scripts allow-same-origin allow-forms"
"""The iframe sandbox: scripts and the app's own origin (so its messages carry its origin and
it can call its own backend); no top navigation, no popups, no modals, no downloads."""
SAME_ORIGIN_SANDBOX = "allow-scripts allow-forms"
"""The sandbox of a frame on the dashboard's own origin: with both ``allow-scripts`` and
``allow-same-origin`` such a frame could reach into its parent and remove its own sandbox, so
it runs with an opaque origin instead (and the host, which checks origins, ignores it)."""
TOKEN_URL = "/dashboard/api/extension-token"


def _static(name: str) -> bytes:
    return resources.files("czo_kit").joinpath("static", name).read_bytes()


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


class _Shop:
    """One request's view of a shop: who asks, what they hold there, what they may open."""

    def __init__(self, req: falcon.Request, kit: Kit, shop_id: int) -> None:
        self.req = req
        self.kit = kit
        self.shop_id = shop_id
        self.session: DashboardSession = current_session(req, kit)
        self.user = self.session.user_id
        self.held: frozenset[Pair] = kit.permission_service.permissions(self.user, shop_id)
        if not self.held:
            raise falcon.HTTPForbidden(title="No access", description=f"You hold no role in shop {shop_id}.")

    def require_read(self, resource: str) -> None:
        if not allows(self.held, resource, "read"):
            raise falcon.HTTPForbidden(
                title="No access", description=f"You cannot read {resource} in shop {self.shop_id} (you need {resource}:read)."
            )

    def pages(self, registry: DashboardRegistry) -> list[tuple[str, str]]:
        """Links to the shop's pages this person may read (``resource:read``), by title."""
        base = f"/dashboard/shops/{self.shop_id}"
        pages = sorted(registry.pages.values(), key=lambda spec: (spec.title.lower(), spec.slug))
        return [(spec.title, f"{base}/{spec.slug}") for spec in pages if allows(self.held, spec.resource, "read")]

    def nav(self, registry: DashboardRegistry) -> list[tuple[str, str]]:
        return [("Shops", "/dashboard/"), ("Shop", f"/dashboard/shops/{self.shop_id}"), *self.pages(registry)]

    def frame(self, installation: AppInstallation, index: int, extension: ExtensionSpec, context: dict[str, Any]) -> dict[str, Any]:
        frame_id = f"czo-ext-{installation.id}-{index}"
        origin = parse_target(extension.url).origin
        return {
            "id": frame_id,
            "appId": installation.app_id,
            "shopId": self.shop_id,
            "extension": index,
            "label": extension.label,
            "target": "popup" if extension.target == "popup" else "widget",
            "origin": origin,
            "sandbox": sandbox_for(origin, self.req),
            "src": _frame_src(extension.url, origin_of(self.req), frame_id),
            "context": {**context, "user": {"id": self.user}},
        }

    def extensions_at(
        self, mount: str, context_for: Mapping[str, Any] | ExtensionContext, resource: str
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """The frames of every installed app's extensions at ``mount`` (each told what its
        app may see), and the links to ``app_page`` extensions (navigation only)."""
        frames: list[dict[str, Any]] = []
        links: list[tuple[str, str]] = []
        for installation in self.kit.apps.list(self.shop_id):
            manifest = self.kit.apps.manifest_of(installation)
            granted = self.kit.apps.granted(installation)
            for index, extension in enumerate(manifest.extensions):
                if extension.mount != mount:
                    continue
                if extension.target == "app_page":
                    links.append((extension.label, f"/dashboard/shops/{self.shop_id}/apps/{installation.app_id}/{index}"))
                    continue
                if isinstance(context_for, ExtensionContext):
                    visible = context_for.for_app(granted, resource=resource, shop_id=self.shop_id)
                else:
                    visible = dict(context_for)
                frames.append(self.frame(installation, index, extension, {**visible, "mount": mount}))
        return frames, links

    def respond(
        self,
        resp: falcon.Response,
        registry: DashboardRegistry,
        *,
        title: str,
        body: str,
        frames: list[dict[str, Any]],
    ) -> None:
        config = {
            "version": 1,
            "shopId": self.shop_id,
            "tokenUrl": TOKEN_URL,
            "frames": [{k: v for k, v in f.items() if k not in ("src", "label", "sandbox")} for f in frames],
        }
        html_headers(resp, views.page_csp([f["origin"] for f in frames]))
        resp.text = views.layout(
            title=title,
            body=body + views.frames_html(frames),
            where=f"shop {self.shop_id}",
            nav=self.nav(registry),
            user_id=self.user,
            logout_token=logout_token(self.kit, self.session),
            config=config,
        )


class _ToShops:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise falcon.HTTPPermanentRedirect("/dashboard/")


class _Shops:
    """``/dashboard/``: the shops the signed-in person belongs to, with their roles."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session = current_session(req, self.kit)
        service = self.kit.permission_service
        shops = service.memberships(session.user_id) if isinstance(service, ShopMemberships) else None
        html_headers(resp)
        resp.text = views.layout(
            title="Your shops",
            body=views.shops_body(shops),
            nav=[("Shops", "/dashboard/")],
            user_id=session.user_id,
            logout_token=logout_token(self.kit, session),
        )


class _ShopHome:
    """``/dashboard/shops/<id>``: the shop's pages, and the ``NAVIGATION`` extensions."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response, shop_id: int) -> None:
        shop = _Shop(req, self.kit, shop_id)
        registry = self.kit.dashboard
        frames, app_pages = shop.extensions_at(NAVIGATION, {"shop": {"id": shop_id}}, "shop")
        body = views.links_html(shop.pages(registry) + app_pages) or "<p>No page of this shop is open to you yet.</p>"
        shop.respond(resp, registry, title=f"Shop {shop_id}", body=body, frames=frames)


class _ModulePage:
    """A page a module registered: ``/dashboard/shops/<id>/<slug>[/<object id>]``."""

    def __init__(self, kit: Kit, spec: PageSpec) -> None:
        self.kit = kit
        self.spec = spec

    def on_get(self, req: falcon.Request, resp: falcon.Response, shop_id: int, object_id: int | None = None) -> None:
        shop = _Shop(req, self.kit, shop_id)
        shop.require_read(self.spec.resource)
        registry = self.kit.dashboard
        page = self.spec.render(self.kit, shop_id, object_id)
        if page is None:
            raise NotFoundError(self.spec.title, object_id if object_id is not None else shop_id)
        frames: list[dict[str, Any]] = []
        if page.mount is not None:
            mount = self._mount(registry, page.mount)
            context = mount.context_for(self.kit, shop_id, object_id)
            if context is None:
                raise NotFoundError(self.spec.title, object_id if object_id is not None else shop_id)
            frames, _ = shop.extensions_at(mount.name, context, mount.resource)
        body = views.summary_html(page.summary) + views.links_html(page.links)
        shop.respond(resp, registry, title=page.title or self.spec.title, body=body, frames=frames)

    def _mount(self, registry: DashboardRegistry, name: str) -> MountSpec:
        mount = registry.mounts.get(name)
        if mount is None:
            # The module's own mistake, not the merchant's: a 500 whose log says what to fix.
            raise RuntimeError(
                f"page {self.spec.slug!r} shows mount {name!r}, which nobody registered; "
                f"registered: {', '.join(sorted(registry.mounts)) or 'none'}"
            )
        return mount


class _AppPage:
    """A full-page extension (target ``app_page``), reached from the shop's home."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response, shop_id: int, app_id: str, index: int) -> None:
        parse_app_id(app_id, field="app_id")
        shop = _Shop(req, self.kit, shop_id)
        installation = self.kit.apps.get(shop_id, app_id)
        manifest = self.kit.apps.manifest_of(installation)
        if not 0 <= index < len(manifest.extensions) or manifest.extensions[index].target != "app_page":
            raise NotFoundError("Extension", f"{app_id}/{index}")
        extension = manifest.extensions[index]
        frame = shop.frame(installation, index, extension, {"shop": {"id": shop_id}, "mount": NAVIGATION})
        shop.respond(resp, self.kit.dashboard, title=extension.label, body="", frames=[frame])


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
        if origin is not None and origin.lower() != origin_of(req):
            raise falcon.HTTPForbidden(title="Forbidden", description="cross-origin request refused")
        user = current_session(req, self.kit, page=False).user_id
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
    """What the modules registered for the dashboard (``kit.dashboard``)."""
    return kit.dashboard


def add_dashboard(app: falcon.App[Any, Any], kit: Kit, *, authenticators: Iterable[Authenticator] | None = None) -> None:
    """Mount the dashboard on ``app``: sign-in, the shops, every registered page, the token
    endpoint and the static files. ``authenticators`` decide which tokens sign people in
    (those of ``czo_register_authenticators``; by default the kit's own user tokens)."""
    if authenticators is None:
        from czo_kit.http.api import default_authenticator

        authenticators = [default_authenticator]
    app.add_error_handler(SignInRequired, sign_in_handler(kit))
    app.add_route("/dashboard", _ToShops())
    app.add_route("/dashboard/", _Shops(kit))
    app.add_route("/dashboard/login", SignIn(kit, list(authenticators)))
    app.add_route("/dashboard/logout", SignOut(kit))
    app.add_route("/dashboard/shops/{shop_id:shop}", _ShopHome(kit))
    for spec in kit.dashboard.pages.values():
        page = _ModulePage(kit, spec)
        app.add_route(f"/dashboard/shops/{{shop_id:shop}}/{spec.slug}", page)
        app.add_route(f"/dashboard/shops/{{shop_id:shop}}/{spec.slug}/{{object_id:id}}", page)
    app.add_route("/dashboard/shops/{shop_id:shop}/apps/{app_id}/{index:int}", _AppPage(kit))
    app.add_route(TOKEN_URL, _ExtensionToken(kit))
    app.add_route("/static/{name}", _Static())


def page_error(req: falcon.Request, resp: falcon.Response, status: str, message: str) -> None:
    """Errors on dashboard pages are small HTML pages, not JSON."""
    resp.status = status
    html_headers(resp, "default-src 'none'; style-src 'self'")
    resp.text = views.error_page(status, message)
