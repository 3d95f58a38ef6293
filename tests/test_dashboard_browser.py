"""App UI extensions in a real headless Chromium (Debian's, driven by Playwright).

The dashboard's order page renders the payment app's widget in a sandboxed iframe; the widget
gets its context over postMessage; forged messages (another origin, another frame) are
ignored; resize works within bounds; navigation stays inside the dashboard; the extension
token it asks for is narrowed to what the user holds. People sign in with a form, never a
token in an address, and sign out with a button. A module outside the kit, found by its entry
point only (tests/plugins/czo-test-reviews), gets its page in the navigation and its mount,
where an app's extension receives the context the module gives it. A screenshot of the order
page is saved to test-artifacts/dashboard-order.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3

from conftest import SECRET, service_unavailable
from czo_kit import Kit, Settings
from czo_kit.http import BackgroundServer, create_api, issue_user_token
from czo_kit.http.sessions import issue_session
from czo_kit.testing.cache import wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("CZO_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = pytest.mark.browser


def _chromium() -> str:
    path = os.environ.get("CZO_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        service_unavailable("Chromium", f"{path} not found; install Debian's chromium package")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        service_unavailable("Playwright", "pip install playwright")
    executable = _chromium()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@dataclass
class Dashboard:
    kit: Kit
    api: BackgroundServer
    app: BackgroundServer
    spy: BackgroundServer
    stripe: Any
    replies: BackgroundServer
    order_id: int
    review_id: int
    owner_token: str
    viewer_token: str

    def order_url(self) -> str:
        return f"{self.api.url}/dashboard/shops/1/orders/{self.order_id}"

    def login(self, page: Any, token: str, target: str) -> None:
        """Sign in as a person does: the form, the token typed in, the button."""
        page.goto(f"{self.api.url}/dashboard/login?next={target}")
        page.locator("#czo-token").fill(token)
        page.locator(".czo-sign-in button[type=submit]").click()
        page.wait_for_url(self.api.url + target, timeout=15000)


SPY_PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head>
<body><p id="got">nothing</p><script src="/spy.js"></script></body></html>"""

SPY_JS = """(function () {
  var host = new URLSearchParams(location.search).get("czo_host_origin");
  window.addEventListener("message", function (event) {
    if (event.origin !== host) { return; }
    document.getElementById("got").textContent = JSON.stringify(event.data);
  });
  // Pretend to be another app's frame: the host can only answer this frame, with its context.
  parent.postMessage({v: 1, type: "czo:ready", payload: {frame: "czo-ext-1-0"}}, "*");
})();"""


def _spy_app(public: list[str]) -> Any:
    import falcon

    class Manifest:
        def on_get(self, req: Any, resp: Any) -> None:
            base = public[0]
            resp.media = {
                "id": "spy", "name": "Spy", "version": "1", "app_url": base + "/",
                "permissions": [{"resource": "product", "actions": ["read"]}],
                "extensions": [{"label": "Spy", "mount": "ORDER_DETAILS", "url": base + "/widget",
                                "permissions": [{"resource": "product", "actions": ["read"]}]}],
            }

    class Widget:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.content_type = falcon.MEDIA_HTML
            resp.text = SPY_PAGE

    class Script:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.content_type = "text/javascript"
            resp.text = SPY_JS

    app = falcon.App()
    app.add_route("/manifest", Manifest())
    app.add_route("/widget", Widget())
    app.add_route("/spy.js", Script())
    return app


REPLIES_PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head>
<body><p id="review">waiting</p><script src="{dashboard}/static/czo-extension.js"></script>
<script src="/replies.js"></script></body></html>"""

REPLIES_JS = """(function () {
  var czo = CzoExtension.connect();
  czo.onContext(function (context) {
    document.body.setAttribute("data-context", JSON.stringify(context));
    document.getElementById("review").textContent = context.review
      ? "Reply to review #" + context.review.id + " (" + context.review.rating + "/5)" : "no review";
  });
})();"""


def _replies_app(public: list[str], dashboard_url: list[str]) -> Any:
    """An app for the reviews module: a widget at its REVIEW_DETAILS mount, using the kit's
    client script as an app author would (czo-extension.js from the dashboard)."""
    import falcon

    class Manifest:
        def on_get(self, req: Any, resp: Any) -> None:
            base = public[0]
            resp.media = {
                "id": "replies", "name": "Replies", "version": "1", "app_url": base + "/",
                "permissions": [{"resource": "review", "actions": ["read"]}],
                "extensions": [{"label": "Replies", "mount": "REVIEW_DETAILS", "url": base + "/widget",
                                "permissions": [{"resource": "review", "actions": ["read"]}]}],
            }

    class Widget:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.content_type = falcon.MEDIA_HTML
            resp.text = REPLIES_PAGE.replace("{dashboard}", dashboard_url[0])

    class Script:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.content_type = "text/javascript"
            resp.text = REPLIES_JS

    app = falcon.App()
    app.add_route("/manifest", Manifest())
    app.add_route("/widget", Widget())
    app.add_route("/replies.js", Script())
    return app


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    from czo_app_stripe import create_app
    from czo_order import OrderService
    from czo_product import ProductRepository
    from czo_test_reviews import ReviewRepository

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'dash.sqlite3'}", queue_url="", secret_key=SECRET,
        apps_allow_private_urls=True,
        # The third-party module comes in by its entry point's name, like the example modules.
        plugins=("czo_product", "czo_order", "czo_test_reviews"),
    )
    kit = Kit(settings)
    servers: list[BackgroundServer] = []
    try:
        kit.create_tables()
        kit.permission_service.grant("owner", 1, "owner")
        kit.permission_service.grant("viewer", 1, "viewer")
        api = BackgroundServer(create_api(kit)).start()
        servers.append(api)
        wsgi, stripe = create_app(
            public_url="", czo_api_url=api.url, database_url=f"sqlite:///{tmp_path / 'stripe-app.sqlite3'}"
        )
        app = BackgroundServer(wsgi)
        stripe.public_url = app.url
        servers.append(app.start())
        public: list[str] = []
        spy = BackgroundServer(_spy_app(public))
        public.append(spy.url)
        servers.append(spy.start())
        replies_public: list[str] = []
        replies = BackgroundServer(_replies_app(replies_public, [api.url]))
        replies_public.append(replies.url)
        servers.append(replies.start())
        # The order comes first: without a queue, webhooks are delivered too (in-process), and
        # the payment app pays the orders it hears of; the widget is to show one unpaid.
        product = kit.services.get_abstract(ProductRepository).create({"shop_id": 1, "name": "Teapot", "price": 3200})
        order = kit.services.get(OrderService).place(
            shop_id=1, customer_email="ada@example.com", items=[(product, 1)]
        )
        review = kit.services.get_abstract(ReviewRepository).create(
            {"shop_id": 1, "rating": 4, "body": "Pours well", "author_email": "grace@example.com"}
        )
        kit.apps.install(shop_id=1, installer_id="owner", manifest_url=app.url + "/manifest")
        kit.apps.install(shop_id=1, installer_id="owner", manifest_url=spy.url + "/manifest")
        kit.apps.install(shop_id=1, installer_id="owner", manifest_url=replies.url + "/manifest")
        yield Dashboard(
            kit=kit, api=api, app=app, spy=spy, stripe=stripe, replies=replies, order_id=int(order.id),
            review_id=int(review.id),
            owner_token=issue_user_token(kit.secret_key, "owner"),
            viewer_token=issue_user_token(kit.secret_key, "viewer"),
        )
    finally:
        for server in reversed(servers):
            server.stop()
        kit.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield tab
        assert errors == [], errors  # no script of the dashboard or the widget failed
    finally:
        context.close()


def _widget(page: Any) -> Any:
    return page.frame_locator("section.czo-widget[data-app=stripe] iframe")


def _bridge(page: Any) -> dict[str, list[dict[str, Any]]]:
    result: dict[str, list[dict[str, Any]]] = page.evaluate("window.__czoBridge")
    return result


def _open_order(page: Any, dashboard: Dashboard, token: str | None = None) -> Any:
    dashboard.login(page, token or dashboard.owner_token, f"/dashboard/shops/1/orders/{dashboard.order_id}")
    widget = _widget(page)
    widget.locator("#status").wait_for()
    page.wait_for_function(
        "() => window.__czoBridge.accepted.some(m => m.type === 'czo:ready' && m.app === 'stripe')", timeout=15000
    )
    widget.locator("body[data-order-id]").wait_for(timeout=15000)
    return widget


def test_the_widget_shows_a_declined_payment_with_stripes_reason(page: Any, dashboard: Dashboard) -> None:
    from czo_app_stripe import LocalStripe
    from czo_app_stripe.payments import OrderPayload

    with LocalStripe() as server:
        state = dashboard.stripe
        state.stripe_api_key, state.stripe_api_base = LocalStripe.api_key, server.url
        state.flow.payment_method = "pm_card_chargeCustomerFail"  # localstripe's declined card
        state.flow.create_params = {}  # as create_app leaves it for a STRIPE_API_BASE
        state.flow.order_created(1, OrderPayload(order_id=dashboard.order_id, amount=3200, currency="EUR"))
        assert state.payments[0].state == "failed"
        widget = _open_order(page, dashboard)
        line = widget.locator("#stripe", has_text="declined")
        line.wait_for(timeout=15000)
        stripe_says = json.loads(widget.locator("body").get_attribute("data-stripe"))
        assert stripe_says["status"] == "requires_payment_method" and stripe_says["failure"]
        assert line.text_content() == (
            f"Stripe: requires_payment_method ({stripe_says['intent']}, 32.00 EUR) - declined: {stripe_says['failure']}"
        )
        assert widget.locator("#status").text_content() == "Awaiting payment"  # the order stays unpaid


def test_the_widget_renders_in_the_order_page_with_its_context(page: Any, dashboard: Dashboard) -> None:
    session = issue_session(dashboard.kit.secret_key, "owner", lifetime=600)
    response = page.request.get(dashboard.order_url(), headers={"Cookie": f"czo_session={session}"})
    csp = response.headers["content-security-policy"]
    assert f"frame-src {dashboard.app.url} {dashboard.spy.url}" in csp or (
        dashboard.app.url in csp and dashboard.spy.url in csp
    )
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp

    widget = _open_order(page, dashboard)
    assert page.title() == f"Order #{dashboard.order_id} - c-zo"
    iframe = page.locator("section.czo-widget[data-app=stripe] iframe")
    assert iframe.get_attribute("sandbox") == "allow-scripts allow-same-origin allow-forms"
    assert widget.locator("#status").text_content() == "Awaiting payment"
    assert widget.locator("#detail").text_content() == f"Order #{dashboard.order_id}: 0.00 EUR of 32.00 EUR"
    # Asked of the app's backend with an extension token c-zo accepted for this order.
    widget.locator("#stripe", has_text="Stripe: no payment yet").wait_for(timeout=15000)
    context = json.loads(widget.locator("body").get_attribute("data-context"))
    assert context["order"]["id"] == dashboard.order_id
    assert context["shop"] == {"id": 1} and context["mount"] == "ORDER_DETAILS"
    # The app holds order:read but not customer:read: who ordered is left out.
    assert "customer_email" not in context["order"]
    # The spy app holds no order permission: it learns the shop and nothing of the order.
    spy = page.frame_locator("section.czo-widget[data-app=spy] iframe")
    page.wait_for_function("() => window.__czoBridge.accepted.some(m => m.app === 'spy')", timeout=15000)
    spy.locator("#got", has_text="czo:context").wait_for(timeout=15000)
    spied = json.loads(spy.locator("#got").text_content())
    assert spied["payload"]["shop"] == {"id": 1} and "order" not in spied["payload"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-order.png"), full_page=True)
    assert (ARTIFACTS / "dashboard-order.png").stat().st_size > 10_000


def test_frames_start_loading_only_once_the_host_listens(page: Any, dashboard: Dashboard) -> None:
    # Served with a src, a fast frame could say czo:ready before czo-host.js is loaded, and
    # that message would be lost: the frame would never get its context.
    _open_order(page, dashboard)
    served = page.request.get(dashboard.order_url()).text()
    tags = re.findall(r"<iframe [^>]*>", served)
    assert len(tags) == 2
    assert all(" src=" not in tag and " data-src=" in tag for tag in tags), tags
    loaded = page.evaluate("() => [...document.querySelectorAll('iframe.czo-extension')].map(e => e.src)")
    assert all(src.startswith(dashboard.app.url + "/extensions/") or src.startswith(dashboard.spy.url) for src in loaded)


def test_messages_forged_from_another_origin_or_frame_are_ignored(page: Any, dashboard: Dashboard) -> None:
    _open_order(page, dashboard)
    # The spy frame says ready on its own schedule: let it, so that it is not counted below.
    page.wait_for_function(
        "() => window.__czoBridge.accepted.some(m => m.type === 'czo:ready' && m.app === 'spy')", timeout=15000
    )
    before = _bridge(page)
    # The stripe frame's own window, but a forged origin.
    page.evaluate(
        """() => {
        const frame = document.querySelector("section.czo-widget[data-app=stripe] iframe");
        window.dispatchEvent(new MessageEvent("message", {
            data: {v: 1, type: "czo:navigate", payload: {path: "/dashboard/shops/1/orders"}},
            origin: "https://evil.example", source: frame.contentWindow}));
        }"""
    )
    # The right origin string, but from a window that is not the app's frame.
    page.evaluate(
        f"""() => {{
        const other = document.createElement("iframe");
        document.body.appendChild(other);
        window.dispatchEvent(new MessageEvent("message", {{
            data: {{v: 1, type: "czo:navigate", payload: {{path: "/dashboard/shops/1/orders"}}}},
            origin: {json.dumps(dashboard.app.url)}, source: other.contentWindow}}));
        window.postMessage({{v: 1, type: "czo:resize", payload: {{height: 999}}}}, "*");
        }}"""
    )
    # From inside the real frame: malformed and unknown messages.
    frame = page.frame(url=lambda url: url.startswith(dashboard.app.url + "/extensions/"))
    assert frame is not None
    frame.evaluate(
        """(host) => {
        parent.postMessage("czo:ready", host);
        parent.postMessage({v: 2, type: "czo:ready"}, host);
        parent.postMessage({v: 1, type: "czo:delete-everything"}, host);
        }""",
        page.evaluate("location.origin"),
    )
    page.wait_for_function(f"() => window.__czoBridge.ignored.length >= {len(before['ignored']) + 6}", timeout=10000)
    after = _bridge(page)
    reasons = [item["reason"] for item in after["ignored"][len(before["ignored"]):]]
    assert reasons.count("wrong origin") == 1
    assert reasons.count("unknown source") == 2
    assert "malformed" in reasons and any(r.startswith("unknown type") for r in reasons)
    assert after["accepted"] == before["accepted"]
    assert page.url == dashboard.order_url()  # no forged navigation happened
    # The spy frame posted with targetOrigin "*" claiming another frame: it was answered as
    # itself (its own context), never given the payment app's context.
    assert [m for m in after["accepted"] if m["app"] == "spy"] == [{"type": "czo:ready", "app": "spy"}]


def test_resize_within_bounds(page: Any, dashboard: Dashboard) -> None:
    _open_order(page, dashboard)
    frame = page.frame(url=lambda url: url.startswith(dashboard.app.url + "/extensions/"))
    host = page.evaluate("location.origin")
    iframe = page.locator("section.czo-widget[data-app=stripe] iframe")
    # The widget sizes itself to its content as it renders (ResizeObserver); let that settle
    # first, or its own resize could land after one of ours.
    content = "() => Math.ceil(document.documentElement.getBoundingClientRect().height) + 'px'"
    assert wait_until(lambda: iframe.evaluate("e => e.style.height") == frame.evaluate(content), timeout=15)
    for asked, expected in ((333, "333px"), (10**9, "4000px"), (1, "40px")):
        frame.evaluate("([h, host]) => parent.postMessage({v: 1, type: 'czo:resize', payload: {height: h}}, host)", [asked, host])
        page.wait_for_function(
            f"() => document.querySelector('section.czo-widget[data-app=stripe] iframe').style.height === '{expected}'",
            timeout=10000,
        )
    frame.evaluate("(host) => parent.postMessage({v: 1, type: 'czo:resize', payload: {height: 'tall'}}, host)", host)
    page.wait_for_function("() => window.__czoBridge.ignored.some(i => i.reason === 'invalid czo:resize')", timeout=10000)
    assert iframe.evaluate("e => e.style.height") == "40px"


def test_navigation_is_limited_to_dashboard_paths(page: Any, dashboard: Dashboard) -> None:
    _open_order(page, dashboard)
    frame = page.frame(url=lambda url: url.startswith(dashboard.app.url + "/extensions/"))
    host = page.evaluate("location.origin")
    for path in ("https://evil.example/", "/api/apps?shopId=1", "/dashboard/shops/1/../../api",
                 "//evil.example/dashboard/shops/1", "javascript:alert(1)", "/dashboard/shops/x"):
        frame.evaluate("([p, host]) => parent.postMessage({v: 1, type: 'czo:navigate', payload: {path: p}}, host)", [path, host])
    page.wait_for_function(
        "() => window.__czoBridge.ignored.filter(i => i.reason === 'invalid czo:navigate').length === 6", timeout=10000
    )
    assert page.url == dashboard.order_url()
    # The widget's own button navigates to an allowed path.
    _widget(page).locator("#orders").click()
    page.wait_for_url(f"{dashboard.api.url}/dashboard/shops/1/orders", timeout=10000)
    assert page.title() == "Orders - c-zo"


def test_notifications_are_text_only(page: Any, dashboard: Dashboard) -> None:
    _open_order(page, dashboard)
    frame = page.frame(url=lambda url: url.startswith(dashboard.app.url + "/extensions/"))
    frame.evaluate(
        "(host) => parent.postMessage({v: 1, type: 'czo:notify', payload: {message: '<img src=x onerror=alert(1)>'}}, host)",
        page.evaluate("location.origin"),
    )
    toast = page.locator("#czo-toasts .czo-toast").first
    toast.wait_for(timeout=10000)
    assert toast.text_content() == "stripe: <img src=x onerror=alert(1)>"
    assert page.locator("#czo-toasts img").count() == 0


def test_the_extension_token_is_narrowed_to_the_user(page: Any, dashboard: Dashboard) -> None:
    http = urllib3.PoolManager()
    try:
        for user_token, expected_status in ((dashboard.owner_token, 201), (dashboard.viewer_token, 403)):
            widget = _open_order(page, dashboard, user_token)
            widget.locator("#token").click()
            widget.locator("body[data-token]").wait_for(timeout=10000)
            token = widget.locator("body").get_attribute("data-token")
            assert token.startswith("czo_ext_")
            response = http.request(
                "POST", f"{dashboard.api.url}/api/shops/1/orders/{dashboard.order_id}/payments",
                body=json.dumps({"amount": 100, "reference": "ext-test"}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            # The owner shares order:write with the app; a viewer only reads, so the token can't pay.
            assert response.status == expected_status, response.data
            elsewhere = http.request(
                "POST", f"{dashboard.api.url}/api/shops/2/orders/{dashboard.order_id}/payments",
                body=b'{"amount": 1, "reference": "x"}',
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            assert elsewhere.status == 403  # audience: this app in shop 1 only
    finally:
        http.clear()


def test_pages_need_a_session_and_sign_in_is_a_form(page: Any, dashboard: Dashboard) -> None:
    addresses: list[str] = []
    page.on("request", lambda request: addresses.append(request.url))
    response = page.goto(dashboard.order_url())
    assert response is not None and response.status == 401
    assert page.title() == "Sign in - c-zo"
    assert "Sign in to see this page." in page.locator(".czo-notice").text_content()
    # The form of the page asked for brings the person back to it.
    page.locator("#czo-token").fill(dashboard.owner_token)
    page.locator(".czo-sign-in button[type=submit]").click()
    page.wait_for_url(dashboard.order_url(), timeout=15000)
    assert page.title() == f"Order #{dashboard.order_id} - c-zo"
    assert all(dashboard.owner_token not in address for address in addresses), addresses
    # Script never sees the session: the cookie is HttpOnly.
    assert "czo_session" not in page.evaluate("document.cookie")
    cookie = next(c for c in page.context.cookies() if c["name"] == "czo_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/dashboard"
    history: list[str] = []
    while page.go_back() is not None:
        history.append(page.url)
    assert history and all(dashboard.owner_token not in address for address in history), history

    page.goto(f"{dashboard.api.url}/dashboard/shops/1/orders/999999")
    assert page.title() == "404 Not Found - c-zo"


def test_a_token_in_the_address_is_refused(page: Any, dashboard: Dashboard) -> None:
    response = page.goto(f"{dashboard.api.url}/dashboard/login?token={dashboard.owner_token}")
    assert response is not None and response.status == 400
    assert "A token in an address is refused" in page.content()
    assert not any(c["name"] == "czo_session" for c in page.context.cookies())


def test_sign_out_from_any_page(page: Any, dashboard: Dashboard) -> None:
    dashboard.login(page, dashboard.owner_token, "/dashboard/")
    assert [a.text_content() for a in page.locator(".czo-shops a").all()] == ["Shop 1"]
    page.locator(".czo-logout button").click()
    page.wait_for_url(f"{dashboard.api.url}/dashboard/login?signed_out=1", timeout=15000)
    assert page.locator(".czo-notice").text_content() == "You are signed out."
    assert not any(c["name"] == "czo_session" for c in page.context.cookies())
    assert page.goto(dashboard.order_url()).status == 401


def test_a_third_party_module_gets_a_page_and_a_mount(page: Any, dashboard: Dashboard) -> None:
    """From the shop list to the reviews module's page, then to one review, whose
    REVIEW_DETAILS mount frames the replies app with the context the module gave it."""
    dashboard.login(page, dashboard.owner_token, "/dashboard/")
    page.locator(".czo-shops a", has_text="Shop 1").click()
    page.wait_for_url(f"{dashboard.api.url}/dashboard/shops/1", timeout=15000)
    assert page.locator("header nav a").all_text_contents() == ["Shops", "Shop", "Orders", "Products", "Reviews"]
    page.locator("header nav a", has_text="Reviews").click()
    page.wait_for_url(f"{dashboard.api.url}/dashboard/shops/1/reviews", timeout=15000)
    assert page.title() == "Reviews - c-zo"
    assert page.locator(".czo-summary td").first.text_content() == "4/5: Pours well"
    page.locator(".czo-links a", has_text=f"Review #{dashboard.review_id}").click()
    page.wait_for_url(f"{dashboard.api.url}/dashboard/shops/1/reviews/{dashboard.review_id}", timeout=15000)
    assert page.title() == f"Review #{dashboard.review_id} - c-zo"

    iframe = page.locator("section.czo-widget[data-app=replies] iframe")
    assert iframe.get_attribute("sandbox") == "allow-scripts allow-same-origin allow-forms"
    widget = page.frame_locator("section.czo-widget[data-app=replies] iframe")
    widget.locator("body[data-context]").wait_for(timeout=15000)
    assert widget.locator("#review").text_content() == f"Reply to review #{dashboard.review_id} (4/5)"
    context = json.loads(widget.locator("body").get_attribute("data-context"))
    # What the reviews module gives, narrowed to the app: it holds review:read but not
    # customer:read, so the author's address stays on the server.
    assert context == {
        "review": {"id": dashboard.review_id, "rating": 4, "body": "Pours well"},
        "shop": {"id": 1}, "mount": "REVIEW_DETAILS", "user": {"id": "owner"},
    }
    page.wait_for_function(
        "() => window.__czoBridge.accepted.some(m => m.type === 'czo:ready' && m.app === 'replies')", timeout=15000
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-review.png"), full_page=True)
    # The order page does not frame it: its mount is the reviews module's alone.
    page.goto(dashboard.order_url())
    assert page.locator("section[data-app=replies]").count() == 0
