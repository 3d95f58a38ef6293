"""Signing in to the dashboard: a form POST with a CSRF token, never a token in an address;
signed sessions that expire; signing out. Hostile input throughout: forged, tampered and
expired session cookies, missing and wrong CSRF tokens, posts from other origins, tokens in
query strings, and logs that must never hold a token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import falcon.testing
import pytest

from czo_kit import Kit
from czo_kit.http import create_api, issue_user_token
from czo_kit.http.sessions import SessionError, issue_session, verify_session
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    text: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_cookies(self) -> list[SimpleCookie]:
        """Every Set-Cookie header on its own (two of the same name stay two)."""
        found = []
        for key, value in self.headers:
            if key.lower() == "set-cookie":
                cookie: SimpleCookie = SimpleCookie()
                cookie.load(value)
                found.append(cookie)
        return found

    def cookie(self, name: str, path: str = "/dashboard") -> Any:
        for cookie in self.set_cookies():
            if name in cookie and cookie[name]["path"] == path:
                return cookie[name]
        return None


class Browser:
    """Calls the WSGI app like a browser would: keeps its cookies, sends Origin on POSTs."""

    def __init__(self, app: Any, *, scheme: str = "http") -> None:
        self.app = app
        self.scheme = scheme
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, *, body: str = "", headers: dict[str, str] | None = None) -> Reply:
        path, _, query = path.partition("?")
        sent = dict(headers or {})
        if self.cookies and "Cookie" not in sent:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        environ = falcon.testing.create_environ(
            path=path, query_string=query, method=method, body=body, headers=sent, scheme=self.scheme,
            host="dash.example",
        )
        captured: dict[str, Any] = {}

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, response_headers
            return lambda data: None

        text = b"".join(self.app(environ, start_response)).decode()
        reply = Reply(int(captured["status"][:3]), captured["headers"], text)
        for cookie in reply.set_cookies():
            for name, morsel in cookie.items():
                if morsel["path"] != "/dashboard":
                    continue
                if morsel.value and morsel["max-age"] != "0" and not morsel["expires"]:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return reply

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, fields: dict[str, str], *, origin: str | None = "own", **kw: Any) -> Reply:
        headers = dict(FORM, **kw.pop("headers", {}))
        if origin == "own":
            headers["Origin"] = f"{self.scheme}://dash.example"
        elif origin is not None:
            headers["Origin"] = origin
        return self.request("POST", path, body=urlencode(fields), headers=headers, **kw)

    def form_csrf(self, reply: Reply) -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', reply.text)
        assert match, reply.text
        return match.group(1)

    def sign_in(self, token: str, next_path: str = "/dashboard/") -> Reply:
        form = self.get("/dashboard/login")
        return self.post("/dashboard/login", {"csrf": self.form_csrf(form), "token": token, "next": next_path})


@pytest.fixture
def kit(sqlite_url: str, settings_for: SettingsFor) -> Iterator[Kit]:
    settings = settings_for(sqlite_url, queue_url="", plugins=("czo_product", "czo_order"), dashboard_session_lifetime=600)
    with Kit(settings) as kit:
        kit.create_tables()
        kit.permission_service.grant("ann", 1, "owner")
        yield kit


@pytest.fixture
def app(kit: Kit) -> Any:
    return create_api(kit)


@pytest.fixture
def browser(app: Any) -> Browser:
    return Browser(app)


def token(kit: Kit, user: str = "ann") -> str:
    return issue_user_token(kit.secret_key, user)


# -- signing in ----------------------------------------------------------------------------------


def test_sign_in_is_a_form_post_that_opens_a_signed_session(kit: Kit, browser: Browser) -> None:
    form = browser.get("/dashboard/login?next=/dashboard/shops/1/orders")
    assert form.status == 200
    assert '<form class="czo-sign-in" method="post" action="/dashboard/login">' in form.text
    assert 'type="password"' in form.text and 'value="/dashboard/shops/1/orders"' in form.text
    assert "script" not in form.header("Content-Security-Policy").split("default-src")[0]
    assert form.header("Cache-Control") == "no-store"
    csrf_cookie = form.cookie("czo_csrf")
    assert csrf_cookie["httponly"] and csrf_cookie["samesite"] == "Strict"

    user_token = token(kit)
    reply = browser.post(
        "/dashboard/login",
        {"csrf": browser.form_csrf(form), "token": user_token, "next": "/dashboard/shops/1/orders"},
    )
    assert reply.status == 303 and reply.header("Location") == "/dashboard/shops/1/orders"
    session = reply.cookie("czo_session")
    assert session is not None
    assert session["httponly"] and session["samesite"] == "Lax" and not session["secure"]
    assert session["path"] == "/dashboard"  # the API never sees it
    assert session["max-age"] == "600"  # CZO_DASHBOARD_SESSION_LIFETIME
    # The browser keeps a session, not the token: a copied cookie cannot call the API.
    assert user_token not in session.value
    assert verify_session(kit.secret_key, session.value).user_id == "ann"
    # The cookie of the old sign-in, which held the token itself on path "/", is deleted.
    legacy = reply.cookie("czo_session", path="/")
    assert legacy is not None and legacy.value == "" and legacy["max-age"] == "0"
    assert browser.get("/dashboard/shops/1/orders").status == 200


def test_the_session_expires_after_the_configured_lifetime(kit: Kit, browser: Browser) -> None:
    browser.sign_in(token(kit))
    session = verify_session(kit.secret_key, browser.cookies["czo_session"])
    assert session.expires_at - session.issued_at == 600
    with pytest.raises(SessionError, match="expired"):
        verify_session(kit.secret_key, browser.cookies["czo_session"], now=session.expires_at)


def test_over_https_the_cookies_are_secure(app: Any, kit: Kit) -> None:
    browser = Browser(app, scheme="https")
    form = browser.get("/dashboard/login")
    assert form.cookie("czo_csrf")["secure"]
    reply = browser.sign_in(token(kit))
    assert reply.status == 303
    assert reply.cookie("czo_session")["secure"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_token_in_the_address_is_refused_not_accepted(kit: Kit, browser: Browser, method: str) -> None:
    form = browser.get("/dashboard/login")
    fields = urlencode({"csrf": browser.form_csrf(form), "token": token(kit)})
    reply = browser.request(method, f"/dashboard/login?token={token(kit)}", body=fields if method == "POST" else "",
                            headers={**FORM, "Origin": "http://dash.example"})
    assert reply.status == 400
    assert "A token in an address is refused" in reply.text
    assert token(kit) not in reply.text
    assert reply.cookie("czo_session") is None
    assert "czo_session" not in browser.cookies


@pytest.mark.parametrize(
    "case", ["no csrf", "wrong csrf", "csrf of another browser", "no csrf cookie", "another origin", "opaque origin",
             "another referer"],
)
def test_sign_in_without_a_valid_csrf_token_is_refused(app: Any, kit: Kit, case: str) -> None:
    browser = Browser(app)
    form = browser.get("/dashboard/login")
    fields = {"csrf": browser.form_csrf(form), "token": token(kit)}
    headers: dict[str, str] = {}
    origin: str | None = "own"
    if case == "no csrf":
        del fields["csrf"]
    elif case == "wrong csrf":
        fields["csrf"] = fields["csrf"][::-1]
    elif case == "csrf of another browser":
        other = Browser(app)
        fields["csrf"] = other.form_csrf(other.get("/dashboard/login"))
    elif case == "no csrf cookie":
        browser.cookies.clear()
    elif case == "another origin":
        origin = "https://evil.example"
    elif case == "opaque origin":
        origin = "null"
    elif case == "another referer":
        origin = None
        headers["Referer"] = "https://evil.example/page"
    reply = browser.post("/dashboard/login", fields, origin=origin, headers=headers)
    assert reply.status == 403, reply.text
    assert "This sign-in form has expired or was not sent from this dashboard" in reply.text
    assert reply.cookie("czo_session") is None and "czo_session" not in browser.cookies


def test_a_repeated_field_is_not_guessed_at(kit: Kit, browser: Browser) -> None:
    form = browser.get("/dashboard/login")
    csrf = browser.form_csrf(form)
    body = urlencode([("csrf", csrf), ("token", token(kit)), ("token", token(kit, "mallory"))])
    reply = browser.request("POST", "/dashboard/login", body=body, headers={**FORM, "Origin": "http://dash.example"})
    assert reply.status == 401 and "czo_session" not in browser.cookies


@pytest.mark.parametrize(
    ("bad", "reason"),
    [("", "the form had no token"), ("czo_user_abc.def", "signature does not match"), ("hunter2", "not a user token")],
)
def test_a_bad_token_in_the_form_says_why(kit: Kit, browser: Browser, bad: str, reason: str) -> None:
    reply = browser.sign_in(bad)
    assert reply.status == 401
    assert "That token was not accepted" in reply.text and reason in reply.text
    assert "czo_session" not in browser.cookies


def test_an_expired_user_token_cannot_sign_in(kit: Kit, browser: Browser) -> None:
    expired = issue_user_token(kit.secret_key, "ann", ttl=-1)
    reply = browser.sign_in(expired)
    assert reply.status == 401 and "expired" in reply.text


def test_after_sign_in_only_dashboard_pages_are_destinations(kit: Kit, app: Any) -> None:
    for wanted in ("https://evil.example/", "//evil.example/dashboard/shops/1", "/api/apps", "/dashboard/shops/1/../../api"):
        browser = Browser(app)
        assert browser.sign_in(token(kit), next_path=wanted).header("Location") == "/dashboard/"


def test_sign_in_accepts_the_tokens_an_auth_module_registers(sqlite_url: str, settings_for: SettingsFor) -> None:
    from czo_kit import hookimpl
    from czo_kit.http import UserIdentity

    class Sso:
        @hookimpl
        def czo_register_authenticators(self, register: Any) -> None:
            register(lambda value, kit: UserIdentity("sso-bea") if value == "sso:bea" else None, priority=10)

    with Kit(settings_for(sqlite_url, queue_url="", plugins=()), plugins=[Sso()]) as kit:
        browser = Browser(create_api(kit))
        assert browser.sign_in("sso:bea").status == 303
        assert verify_session(kit.secret_key, browser.cookies["czo_session"]).user_id == "sso-bea"


# -- pages without a valid session ------------------------------------------------------------


@pytest.mark.parametrize("case", ["none", "forged", "tampered", "expired", "the old token cookie"])
def test_pages_without_a_valid_session_answer_the_sign_in_form(kit: Kit, browser: Browser, case: str) -> None:
    good = issue_session(kit.secret_key, "ann", lifetime=600)
    body, _, mac = good.partition(".")
    cookies = {
        "none": None,
        "forged": issue_session(b"not-the-key" * 4, "ann", lifetime=600),
        "tampered": f"{body[:-2]}AA.{mac}",
        "expired": issue_session(kit.secret_key, "ann", lifetime=600, now=1_000_000),
        "the old token cookie": token(kit),
    }
    value = cookies[case]
    headers = {"Cookie": f"czo_session={value}"} if value else {}
    reply = browser.get("/dashboard/shops/1/orders", headers=headers)
    assert reply.status == 401
    assert '<form class="czo-sign-in"' in reply.text
    assert 'name="next" value="/dashboard/shops/1/orders"' in reply.text  # back here once signed in
    if value:
        assert reply.cookie("czo_session").value == ""  # a bad cookie is deleted
        assert "sign in again" in reply.text
    else:
        assert "Sign in to see this page." in reply.text


def test_the_extension_token_endpoint_wants_a_session_too(kit: Kit, app: Any) -> None:
    client = falcon.testing.TestClient(app)
    headers = {"X-CZO-Dashboard": "1", "Cookie": f"czo_session={token(kit)}"}
    reply = client.simulate_post("/dashboard/api/extension-token", json={"appId": "acme", "shopId": 1}, headers=headers)
    assert reply.status_code == 401 and reply.json["error"] == "unauthorized"


# -- signing out --------------------------------------------------------------------------------


def _logout_csrf(page: Reply) -> str:
    match = re.search(r'action="/dashboard/logout"><input type="hidden" name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def test_sign_out_ends_the_session_of_this_browser(kit: Kit, browser: Browser) -> None:
    browser.sign_in(token(kit))
    page = browser.get("/dashboard/")
    assert page.status == 200
    reply = browser.post("/dashboard/logout", {"csrf": _logout_csrf(page)})
    assert reply.status == 303 and reply.header("Location") == "/dashboard/login?signed_out=1"
    assert "czo_session" not in browser.cookies
    assert browser.get("/dashboard/").status == 401
    assert "You are signed out." in browser.get("/dashboard/login?signed_out=1").text


@pytest.mark.parametrize("case", ["no csrf", "csrf of another session", "another origin"])
def test_sign_out_needs_the_pages_csrf_token(kit: Kit, app: Any, case: str) -> None:
    browser = Browser(app)
    browser.sign_in(token(kit))
    other = Browser(app)
    other.sign_in(token(kit))
    fields = {"csrf": _logout_csrf(browser.get("/dashboard/"))}
    origin = "own"
    if case == "no csrf":
        fields = {}
    elif case == "csrf of another session":
        fields = {"csrf": _logout_csrf(other.get("/dashboard/"))}
    else:
        origin = "https://evil.example"
    reply = browser.post("/dashboard/logout", fields, origin=origin)
    assert reply.status == 403
    assert "czo_session" in browser.cookies
    assert browser.get("/dashboard/").status == 200  # still signed in


def test_sign_out_is_a_post(kit: Kit, browser: Browser) -> None:
    browser.sign_in(token(kit))
    assert browser.get("/dashboard/logout").status == 405
    assert browser.get("/dashboard/").status == 200


# -- no token in any log -------------------------------------------------------------------------


def test_no_token_or_session_reaches_the_logs(kit: Kit, app: Any, caplog: pytest.LogCaptureFixture) -> None:
    good = token(kit)
    expired = issue_user_token(kit.secret_key, "ann", ttl=-1)
    with caplog.at_level(logging.DEBUG):
        browser = Browser(app)
        browser.get(f"/dashboard/login?token={good}")
        browser.sign_in(expired)
        browser.sign_in("czo_user_forged.value")
        browser.post("/dashboard/login", {"token": good, "csrf": "wrong"})
        browser.sign_in(good)
        session = browser.cookies["czo_session"]
        browser.get("/dashboard/shops/1", headers={"Cookie": f"czo_session={session[:-3]}abc"})
    text = "\n".join(record.getMessage() + str(record.args) for record in caplog.records)
    assert "signed in" in text and "refused" in text  # the log does say what happened
    for secret in (good, expired, "czo_user_forged.value", session, session[:-3]):
        assert secret not in text
