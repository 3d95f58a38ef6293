"""The payment app's WSGI service: c-zo's hand-offs and webhooks, Stripe's events, the
dashboard widget."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import falcon
import stripe
import urllib3

from czo_kit.apps.handoff import HandoffVerifier, RepeatedHandoffError
from czo_kit.apps.signing import verify_signature
from czo_kit.errors import WebhookSignatureError
from czo_app_stripe.payments import (
    CzoApi,
    CzoApiError,
    PaymentConfigError,
    PaymentError,
    Payments,
    parse_order,
    stripe_client,
)
from czo_app_stripe.store import DEFAULT_DATABASE_URL, Installation, Payment, Store

log = logging.getLogger("czo_app_stripe")


STRIPE_CREATE_PARAMS: dict[str, Any] = {"automatic_payment_methods": {"enabled": True, "allow_redirects": "never"}}

HANDLED_STRIPE_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded")


@dataclass
class StripeApp:
    """The app: its store (installations, events seen, payments), and the payment flow.

    ``czo_public_key`` (``whpk_...``) verifies what c-zo hands over at ``/token``; without it
    the app fetches it once from the c-zo API it is configured with (``czo_api_url``). The
    Stripe settings default to ``STRIPE_API_KEY``, ``STRIPE_API_BASE`` and
    ``STRIPE_WEBHOOK_SECRET`` from the environment.
    """

    public_url: str
    czo_api_url: str
    store: Store
    czo_public_key: str | None = None
    clock: Callable[[], float] = time.time
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: str | None = None
    payment_method: str = "pm_card_visa"
    background: bool = True
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10)))
    _verifier: HandoffVerifier | None = None
    _client: stripe.StripeClient | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.flow = Payments(
            self.store, CzoApi(self.czo_api_url, http=self.http), self.stripe, payment_method=self.payment_method,
            # Stripe itself asks for a return_url on confirm unless told no payment method will
            # redirect (there is no customer page here); localstripe knows no such parameter.
            create_params=None if self.stripe_api_base else STRIPE_CREATE_PARAMS,
        )
        self.flow.errors = self.errors

    def stripe(self) -> stripe.StripeClient:
        if self._client is None:
            if not self.stripe_api_key:
                raise PaymentConfigError(
                    "STRIPE_API_KEY is not set: give the app a Stripe secret key (sk_test_... for test mode)"
                )
            self._client = stripe_client(self.stripe_api_key, self.stripe_api_base)
        return self._client

    @property
    def installations(self) -> dict[int, Installation]:
        return self.store.installations()

    @property
    def seen_webhooks(self) -> set[str]:
        return self.store.processed("czo")

    @property
    def payments(self) -> list[Payment]:
        return self.store.payments()

    def run(self, work: Callable[[], None]) -> None:
        """Payment work, after the webhook is answered (as a real app does), or now in tests."""
        if self.background:
            threading.Thread(target=work, daemon=True).start()
        else:
            work()

    def resume_forever(self, interval: float = 30.0) -> threading.Thread:
        """Resume half-done payments now (after a restart), then every ``interval`` seconds
        (after c-zo or Stripe was away)."""

        def loop() -> None:
            while not self._stopping.is_set():
                try:
                    self.flow.resume()
                except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                    log.exception("resuming payments failed; trying again in %ss", interval)
                self._stopping.wait(interval)

        thread = threading.Thread(target=loop, name="czo-app-stripe-resume", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop the resume loop and close the app's database and connections."""
        self._stopping.set()
        self.http.clear()
        self.store.close()

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
            "name": "Stripe",
            "version": "1.0.0",
            "about": "Takes card payments for orders through Stripe, and refunds cancelled orders.",
            "app_url": base + "/",
            "token_target_url": base + "/token",
            "permissions": [{"resource": "order", "actions": ["read", "write"], "scope": "shop"}],
            "webhooks": [
                {
                    "name": "orders", "events": ["order.created", "order.cancelled"],
                    "target_url": base + "/webhooks", "is_active": True,
                }
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
                known = self.app.store.installation(shop_id) if isinstance(shop_id, int) else None
                if known is None or known.installation_id != body.get("installation_id"):
                    raise falcon.HTTPNotFound(title="unknown installation")
                self.app.store.save_installation(replace(known, webhook_secret=str(body["webhook_secret"])))
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
        self.app.store.save_installation(installation)
        resp.media = {"ok": True}


class _Webhooks:
    """``POST /webhooks``: c-zo's events, signed with the installation's secret."""

    def __init__(self, app: StripeApp) -> None:
        self.app = app

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = req.bounded_stream.read(1024 * 1024)
        shop = req.get_header("X-CZO-Shop-Id") or ""
        installation = self.app.store.installation(int(shop)) if shop.isascii() and shop.isdigit() else None
        if installation is None:
            raise falcon.HTTPNotFound(title="unknown shop", description=f"X-CZO-Shop-Id {shop[:20]!r} names no installation")
        try:
            verify_signature(raw, req.get_header("X-CZO-Signature"), installation.webhook_secret)
        except WebhookSignatureError as exc:
            self.app.errors.append(f"bad signature: {exc}")
            raise falcon.HTTPUnauthorized(title="bad signature", description=str(exc)) from None
        message = _message(raw)
        event, shop_id = message["event"], installation.shop_id
        work: Callable[[], None] | None = None
        try:
            if event == "order.created":
                order = parse_order(message["data"])
                work = lambda: self.app.flow.order_created(shop_id, order)  # noqa: E731
            elif event == "order.cancelled":
                cancelled = parse_order(message["data"]).order_id
                work = lambda: self.app.flow.order_cancelled(shop_id, cancelled)  # noqa: E731
        except PaymentError as exc:
            raise falcon.HTTPBadRequest(title=f"unusable {event} payload", description=str(exc)) from None
        duplicate = not self.app.store.first_time("czo", message["id"])
        if work is not None and not duplicate:
            self.app.run(work)
        resp.media = {"received": True, "duplicate": duplicate}


def _message(raw: bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError as exc:
        raise falcon.HTTPBadRequest(title="bad webhook", description=f"the body is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise falcon.HTTPBadRequest(title="bad webhook", description="the body must be an object with id, event and data")
    for name in ("id", "event"):
        if not isinstance(message.get(name), str) or not 1 <= len(message[name]) <= 255:
            raise falcon.HTTPBadRequest(
                title="bad webhook", description=f"{name}: expected a string of 1-255 characters, got {message.get(name)!r}"
            )
    return message


class _StripeWebhooks:
    """``POST /stripe/webhooks``: Stripe's own events, verified with the endpoint's signing
    secret, each handled once (by event id), then reflected on the order."""

    def __init__(self, app: StripeApp) -> None:
        self.app = app

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        secret = self.app.stripe_webhook_secret
        if not secret:
            raise falcon.HTTPServiceUnavailable(
                title="not configured", description="STRIPE_WEBHOOK_SECRET is not set: Stripe events cannot be verified"
            )
        raw = req.bounded_stream.read(1024 * 1024)
        try:
            event = stripe.Webhook.construct_event(raw, req.get_header("Stripe-Signature") or "", secret)
        except stripe.SignatureVerificationError as exc:
            raise falcon.HTTPBadRequest(title="bad Stripe-Signature", description=str(exc)) from None
        except ValueError as exc:
            raise falcon.HTTPBadRequest(title="bad Stripe event", description=f"the body is not a Stripe event: {exc}") from None
        if event.type not in HANDLED_STRIPE_EVENTS:
            resp.media = {"received": True, "ignored": event.type}
            return
        if event.id in self.app.store.processed("stripe"):
            resp.media = {"received": True, "duplicate": True}
            return
        try:
            self.app.flow.stripe_event(event)
        except (stripe.StripeError, CzoApiError) as exc:
            # Not noted as processed: Stripe delivers it again.
            raise falcon.HTTPServiceUnavailable(title="try again", description=str(exc)) from None
        self.app.store.first_time("stripe", event.id)
        resp.media = {"received": True, "duplicate": False}


class _PaymentStatus:
    """``GET /extensions/order-payment/status?shop_id=&order_id=``, with the widget's
    extension token: what Stripe says of the order's payment now. c-zo checks the token: the
    app asks it for the order with that token, and answers only if c-zo shows it."""

    def __init__(self, app: StripeApp) -> None:
        self.app = app

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ids: dict[str, int] = {}
        for name in ("shop_id", "order_id"):
            value = req.get_param(name) or ""
            if not (value.isascii() and value.isdigit() and 1 <= int(value) < 2**63):
                raise falcon.HTTPBadRequest(title="bad query", description=f"{name}: expected a positive integer, got {value[:20]!r}")
            ids[name] = int(value)
        auth = req.get_header("Authorization") or ""
        if not auth.startswith("Bearer "):
            raise falcon.HTTPUnauthorized(title="no token", description="send the extension token: Authorization: Bearer czo_ext_...")
        try:
            order = self.app.flow.czo.order(auth[7:], ids["shop_id"], ids["order_id"])
        except CzoApiError as exc:
            raise falcon.HTTPBadGateway(title="c-zo unreachable", description=str(exc)) from None
        if order is None:
            raise falcon.HTTPForbidden(title="not yours", description="c-zo does not show this order to this token")
        try:
            resp.media = self.app.flow.status(ids["shop_id"], ids["order_id"])
        except (stripe.StripeError, PaymentConfigError) as exc:
            raise falcon.HTTPBadGateway(title="Stripe unreachable", description=str(exc)) from None


WIDGET_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Payment</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/widget.css"></head>
<body>
<p id="status" class="status">Waiting for the dashboard...</p>
<p id="detail"></p>
<p id="stripe" class="stripe">Asking Stripe...</p>
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
    if (order.id !== undefined) { askStripe(context.shop.id, order.id); }
  });
  // What Stripe says now, through this app's backend (with an extension token c-zo checks),
  // not the order's stored status.
  function askStripe(shopId, orderId) {
    var line = document.getElementById("stripe");
    czo.requestToken().then(function (token) {
      return fetch("/extensions/order-payment/status?shop_id=" + shopId + "&order_id=" + orderId,
                   { headers: { "Authorization": "Bearer " + token } });
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) { throw new Error(body.description || body.title || String(response.status)); }
        return body;
      });
    }).then(function (payment) {
      var text = "Stripe: " + payment.status;
      if (payment.intent) { text += " (" + payment.intent + ", " + money(payment.amount, payment.currency) + ")"; }
      if (payment.failure) { text += " - declined: " + payment.failure; }
      if (payment.refunded) { text += " - refunded " + money(payment.refunded, payment.currency); }
      line.textContent = text;
      line.className = "stripe " + payment.status;
      document.body.setAttribute("data-stripe", JSON.stringify(payment));
    }, function (error) {
      line.textContent = "Stripe status unavailable: " + error.message;
      line.className = "stripe unavailable";
    });
  }
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
.paid, .succeeded { color: #1f7a3d; } .pending { color: #a36a00; }
.requires_payment_method, .canceled, .unavailable { color: #a3231f; }
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
            f"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:; "
            f"frame-ancestors {origin}",
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
        payments = self.app.payments
        resp.media = {
            "app": "stripe", "shops": sorted(self.app.installations), "payments": len(payments),
            "paid": sum(1 for p in payments if p.state == "paid"),
        }


def create_app(
    public_url: str,
    czo_api_url: str,
    *,
    czo_public_key: str | None = None,
    clock: Callable[[], float] = time.time,
    database_url: str | None = None,
    stripe_api_key: str | None = None,
    stripe_api_base: str | None = None,
    stripe_webhook_secret: str | None = None,
    payment_method: str | None = None,
    background: bool = True,
) -> tuple[falcon.App[Any, Any], StripeApp]:
    """The WSGI application and its state.

    Unset options come from the environment: ``CZO_APP_STRIPE_DATABASE_URL`` (default
    ``sqlite:///czo-app-stripe.sqlite3``), ``STRIPE_API_KEY``, ``STRIPE_API_BASE``,
    ``STRIPE_WEBHOOK_SECRET``, ``STRIPE_PAYMENT_METHOD`` (default ``pm_card_visa``).
    """
    env = os.environ.get
    store = Store(database_url or env("CZO_APP_STRIPE_DATABASE_URL") or DEFAULT_DATABASE_URL)
    state = StripeApp(
        public_url=public_url, czo_api_url=czo_api_url, store=store, czo_public_key=czo_public_key, clock=clock,
        stripe_api_key=stripe_api_key or env("STRIPE_API_KEY"),
        stripe_api_base=stripe_api_base or env("STRIPE_API_BASE") or None,
        stripe_webhook_secret=stripe_webhook_secret or env("STRIPE_WEBHOOK_SECRET"),
        payment_method=payment_method or env("STRIPE_PAYMENT_METHOD") or "pm_card_visa",
        background=background,
    )
    app: falcon.App[Any, Any] = falcon.App()
    app.add_route("/", _Home(state))
    app.add_route("/manifest", _Manifest(state))
    app.add_route("/token", _Token(state))
    app.add_route("/webhooks", _Webhooks(state))
    app.add_route("/stripe/webhooks", _StripeWebhooks(state))
    app.add_route("/extensions/order-payment", _Widget(state))
    app.add_route("/extensions/order-payment/status", _PaymentStatus(state))
    app.add_route("/static/{name}", _Static())
    return app, state


def main(argv: list[str] | None = None) -> None:
    """``czo-app-stripe --port 9000 --czo-api http://127.0.0.1:8000`` (Stripe settings from
    the environment)."""
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
    parser.add_argument(
        "--database-url", default=None,
        help="the app's own database (default: $CZO_APP_STRIPE_DATABASE_URL, else sqlite:///czo-app-stripe.sqlite3)",
    )
    parser.add_argument("--resume-interval", type=float, default=30.0, help="seconds between resuming unfinished payments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    public = args.public_url or f"http://{args.host}:{args.port}"
    app, state = create_app(public, args.czo_api, czo_public_key=args.czo_public_key, database_url=args.database_url)
    if not state.stripe_api_key:
        parser.error("STRIPE_API_KEY is not set: export a Stripe secret key (sk_test_... for test mode)")
    state.resume_forever(args.resume_interval)  # a restart picks up where the last run stopped
    serve(app, host=args.host, port=args.port, threads=8)
