"""The payment app's WSGI service."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import falcon
import urllib3

from czo_kit.apps.handoff import HandoffVerifier, RepeatedHandoffError
from czo_kit.apps.signing import verify_signature
from czo_kit.errors import WebhookSignatureError

log = logging.getLogger("czo_app_stripe")


@dataclass
class Installation:
    shop_id: int
    installation_id: int
    token: str
    webhook_secret: str


@dataclass
class StripeApp:
    """State of the app: installations (by shop), webhooks seen, payments made.

    ``czo_public_key`` (``whpk_...``) verifies what c-zo hands over at ``/token``; without it
    the app fetches it once from the c-zo API it is configured with (``czo_api_url``).
    """

    public_url: str
    czo_api_url: str
    czo_public_key: str | None = None
    clock: Callable[[], float] = time.time
    installations: dict[int, Installation] = field(default_factory=dict)
    seen_webhooks: set[str] = field(default_factory=set)
    payments: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10)))
    _verifier: HandoffVerifier | None = None

    def handoff_verifier(self) -> HandoffVerifier:
        """Built on first use: ``public_url`` may be known only once the server listens."""
        if self._verifier is None:
            key = self.czo_public_key or self._fetch_public_key()  # not under the lock: a network call
            with self.lock:
                if self._verifier is None:
                    target = self.public_url.rstrip("/") + "/token"
                    self._verifier = HandoffVerifier(key, target_url=target, clock=self.clock)
        return self._verifier

    def _fetch_public_key(self) -> str:
        url = f"{self.czo_api_url.rstrip('/')}/api/signing-key"
        try:
            response = self.http.request("GET", url, retries=False)
        except urllib3.exceptions.HTTPError as exc:
            raise WebhookSignatureError(f"could not fetch c-zo's public key from {url}: {exc}") from None
        if response.status != 200:
            raise WebhookSignatureError(f"could not fetch c-zo's public key from {url}: HTTP {response.status}")
        key = json.loads(response.data).get("publicKey")
        if not isinstance(key, str):
            raise WebhookSignatureError(f"{url} answered no publicKey")
        return key

    def manifest(self) -> dict[str, Any]:
        base = self.public_url.rstrip("/")
        return {
            "id": "stripe",
            "name": "Stripe (simulated)",
            "version": "1.0.0",
            "about": "Takes card payments for orders. A demonstration app: no money moves.",
            "app_url": base + "/",
            "token_target_url": base + "/token",
            "permissions": [{"resource": "order", "actions": ["read", "write"], "scope": "shop"}],
            "webhooks": [
                {"name": "order-created", "events": ["order.created"], "target_url": base + "/webhooks", "is_active": True}
            ],
            "extensions": [
                {
                    "label": "Payment",
                    "mount": "ORDER_DETAILS",
                    "target": "widget",
                    "url": base + "/extensions/order-payment",
                    "permissions": [{"resource": "order", "actions": ["read"], "scope": "shop"}],
                }
            ],
        }

    # -- c-zo calls ---------------------------------------------------------------------

    def charge(self, shop_id: int, order: dict[str, Any]) -> None:
        """Simulate a card payment, then tell c-zo (with the app's token)."""
        installation = self.installations.get(shop_id)
        if installation is None:
            self.errors.append(f"no installation for shop {shop_id}")
            return
        reference = "pi_" + secrets.token_hex(8)
        url = f"{self.czo_api_url.rstrip('/')}/api/shops/{shop_id}/orders/{order['id']}/payments"
        response = self.http.request(
            "POST", url,
            body=json.dumps({"amount": order["total"], "reference": reference}).encode(),
            # Retried on 5xx: the key (and the reference) make a retry of a payment that did
            # go through answer what it answered, instead of paying twice.
            headers={
                "Authorization": f"Bearer {installation.token}", "Content-Type": "application/json",
                "Idempotency-Key": f"pay-{reference}",
            },
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(502, 503, 504), allowed_methods=None),
        )
        if response.status not in (200, 201):
            self.errors.append(f"recording payment for order {order['id']}: HTTP {response.status} {response.data[:200]!r}")
            return
        with self.lock:
            self.payments.append({"shop_id": shop_id, "order_id": order["id"], "amount": order["total"], "reference": reference})


class _Manifest:
    def __init__(self, app: StripeApp) -> None:
        self.app = app

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.app.manifest()


class _Token:
    """``POST /token``: what c-zo hands over (the token at install, a new webhook secret at
    rotation), accepted only when signed by c-zo's key, fresh, sent to this very URL, and
    not seen before."""

    def __init__(self, app: StripeApp) -> None:
        self.app = app

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = req.bounded_stream.read(64 * 1024)
        try:
            body = self.app.handoff_verifier().verify(raw, req.headers)
        except RepeatedHandoffError:
            resp.media = {"ok": True}  # applied when it first came; c-zo did not get that answer
            return
        except WebhookSignatureError as exc:
            self.app.errors.append(f"refused hand-off: {exc}")
            raise falcon.HTTPUnauthorized(title="refused hand-off", description=str(exc)) from None
        if body.get("kind") == "webhook_secret":
            # A rotated secret: keep the token, sign-check with the new secret from now on.
            shop_id = body.get("shop_id")
            with self.app.lock:
                known = self.app.installations.get(shop_id) if isinstance(shop_id, int) else None
                if known is None or known.installation_id != body.get("installation_id"):
                    raise falcon.HTTPNotFound(title="unknown installation")
                known.webhook_secret = str(body["webhook_secret"])
            resp.media = {"ok": True}
            return
        if body.get("kind") != "install" or body.get("app_id") != "stripe":
            raise falcon.HTTPBadRequest(title="not an install of this app")
        try:
            installation = Installation(
                shop_id=int(body["shop_id"]), installation_id=int(body["installation_id"]),
                token=str(body["auth_token"]), webhook_secret=str(body["webhook_secret"]),
            )
        except (KeyError, TypeError, ValueError):
            raise falcon.HTTPBadRequest(title="bad token payload") from None
        with self.app.lock:
            self.app.installations[installation.shop_id] = installation
        resp.media = {"ok": True}


class _Webhooks:
    def __init__(self, app: StripeApp) -> None:
        self.app = app

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = req.bounded_stream.read(1024 * 1024)
        shop = req.get_header("X-CZO-Shop-Id") or ""
        installation = self.app.installations.get(int(shop)) if shop.isascii() and shop.isdigit() else None
        if installation is None:
            raise falcon.HTTPNotFound(title="unknown shop")
        try:
            verify_signature(raw, req.get_header("X-CZO-Signature"), installation.webhook_secret)
        except WebhookSignatureError as exc:
            self.app.errors.append(f"bad signature: {exc}")
            raise falcon.HTTPUnauthorized(title="bad signature", description=str(exc)) from None
        message = json.loads(raw)
        with self.app.lock:
            duplicate = message["id"] in self.app.seen_webhooks
            self.app.seen_webhooks.add(message["id"])
        if not duplicate and message["event"] == "order.created":
            # Answer at once; the card is charged in the background, as a real app would.
            threading.Thread(target=self.app.charge, args=(installation.shop_id, message["data"]), daemon=True).start()
        resp.media = {"received": True, "duplicate": duplicate}


WIDGET_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Payment</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/widget.css"></head>
<body>
<p id="status" class="status">Waiting for the dashboard...</p>
<p id="detail"></p>
<button type="button" id="notify">Notify</button>
<button type="button" id="orders">All orders</button>
<button type="button" id="token">Check with API</button>
<p id="api"></p>
<script src="/static/czo-extension.js"></script>
<script src="/static/widget.js"></script>
</body></html>
"""

WIDGET_JS = """(function () {
  "use strict";
  var czo = CzoExtension.connect();
  var current = null;
  function money(cents, currency) { return (cents / 100).toFixed(2) + " " + currency; }
  czo.onContext(function (context) {
    current = context;
    var order = context.order || {};
    var paid = order.status === "paid";
    var status = document.getElementById("status");
    status.textContent = paid ? "Paid by card" : "Awaiting payment";
    status.className = "status " + (paid ? "paid" : "pending");
    document.getElementById("detail").textContent = order.id === undefined ? "" :
      "Order #" + order.id + ": " + money(order.paid_amount || 0, order.currency || "") + " of " +
      money(order.total || 0, order.currency || "") + (order.payment_reference ? " (" + order.payment_reference + ")" : "");
    document.body.setAttribute("data-order-id", String(order.id));
    document.body.setAttribute("data-context", JSON.stringify(context));
  });
  document.getElementById("notify").addEventListener("click", function () {
    czo.notify("Payment status checked", "success");
  });
  document.getElementById("orders").addEventListener("click", function () {
    if (current) { czo.navigate("/dashboard/shops/" + current.shop.id + "/orders"); }
  });
  document.getElementById("token").addEventListener("click", function () {
    czo.requestToken().then(function (token) {
      document.getElementById("api").textContent = "token received (" + token.slice(0, 8) + "...)";
      document.body.setAttribute("data-token", token);
    }, function (error) { document.getElementById("api").textContent = "no token: " + error.message; });
  });
})();
"""

WIDGET_CSS = """body { font-family: system-ui, sans-serif; margin: 0; padding: 0.3rem; }
.status { font-weight: 600; margin: 0.2rem 0; }
.paid { color: #1f7a3d; } .pending { color: #a36a00; }
button { margin-right: 0.4rem; }
"""


class _Widget:
    def __init__(self, app: StripeApp) -> None:
        self.app = app

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = WIDGET_HTML
        dashboard = urllib3.util.parse_url(self.app.czo_api_url)
        origin = f"{dashboard.scheme}://{dashboard.netloc}"
        # Only the c-zo dashboard may frame this page; only our own scripts run in it.
        resp.set_header(
            "Content-Security-Policy",
            f"default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; frame-ancestors {origin}",
        )


class _Static:
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name == "czo-extension.js":
            from importlib import resources

            resp.data = resources.files("czo_kit").joinpath("static", "czo-extension.js").read_bytes()
            resp.content_type = "text/javascript; charset=utf-8"
        elif name == "widget.js":
            resp.text = WIDGET_JS
            resp.content_type = "text/javascript; charset=utf-8"
        elif name == "widget.css":
            resp.text = WIDGET_CSS
            resp.content_type = "text/css; charset=utf-8"
        else:
            raise falcon.HTTPNotFound()


class _Home:
    def __init__(self, app: StripeApp) -> None:
        self.app = app

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"app": "stripe", "shops": sorted(self.app.installations), "payments": len(self.app.payments)}


def create_app(
    public_url: str,
    czo_api_url: str,
    *,
    czo_public_key: str | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[falcon.App[Any, Any], StripeApp]:
    """The WSGI application and its state."""
    state = StripeApp(public_url=public_url, czo_api_url=czo_api_url, czo_public_key=czo_public_key, clock=clock)
    app: falcon.App[Any, Any] = falcon.App()
    app.add_route("/", _Home(state))
    app.add_route("/manifest", _Manifest(state))
    app.add_route("/token", _Token(state))
    app.add_route("/webhooks", _Webhooks(state))
    app.add_route("/extensions/order-payment", _Widget(state))
    app.add_route("/static/{name}", _Static())
    return app, state


def main(argv: list[str] | None = None) -> None:
    """``czo-app-stripe --port 9000 --czo-api http://127.0.0.1:8000``."""
    from waitress import serve

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--public-url", default=None, help="URL c-zo reaches this app at")
    parser.add_argument("--czo-api", required=True, help="base URL of the c-zo API")
    parser.add_argument(
        "--czo-public-key", default=None,
        help="c-zo's hand-off key (whpk_..., from GET /api/signing-key); fetched from --czo-api if not given",
    )
    args = parser.parse_args(argv)
    public = args.public_url or f"http://{args.host}:{args.port}"
    app, _ = create_app(public, args.czo_api, czo_public_key=args.czo_public_key)
    serve(app, host=args.host, port=args.port)
