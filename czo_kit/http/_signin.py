"""Signing in to the dashboard and out of it, and the session every page asks for.

Sign-in is a form POST of a user token (any token the API's authenticators accept as a
user), never a token in an address: addresses end up in browser history, in proxy and server
logs, and in ``Referer`` headers. The form carries a CSRF token bound to a cookie of its own
(a signed double submit), and a POST from another origin is refused outright. What the browser
keeps is a signed session cookie (``czo_kit.http.sessions``), not the token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import falcon

from czo_kit.apps.extensions import NAVIGABLE
from czo_kit.context import set_actor
from czo_kit.errors import AuthenticationError
from czo_kit.http._dashboard_html import FORM_CSP, sign_in_page
from czo_kit.http.auth import UserIdentity
from czo_kit.http.sessions import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    DashboardSession,
    SessionError,
    form_token,
    form_token_matches,
    issue_session,
    new_nonce,
    verify_session,
)

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = ["SignIn", "SignInRequired", "SignOut", "current_session", "html_headers", "same_origin", "sign_in_handler"]

log = logging.getLogger("czo_kit.dashboard")

Authenticator = Callable[[str, "Kit"], UserIdentity | None]

COOKIE_PATH = "/dashboard"
"""Cookies go to the dashboard only: the API authenticates with bearer tokens, never cookies."""
HOME = "/dashboard/"
SIGN_IN_FORM_LIFETIME = 3600
"""Seconds a sign-in form stays usable before it has to be loaded again."""
MAX_FORM = 8 * 1024
SIGN_IN = "sign-in"
SIGN_OUT = "sign-out"


class SignInRequired(SessionError):
    """A page was asked for without a valid session: answered with the sign-in form (401)."""

    def __init__(self, message: str, *, clear: bool) -> None:
        super().__init__(message)
        self.clear = clear


def origin_of(req: falcon.Request) -> str:
    parts = urlsplit(req.prefix)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(req: falcon.Request) -> bool:
    """Whether a state-changing request comes from the dashboard's own pages, as far as the
    browser says: ``Origin`` when sent, else ``Referer``; a request with neither relies on its
    CSRF token alone."""
    origin = req.get_header("Origin")
    if origin is not None:
        return origin.lower() == origin_of(req)  # "null" (an opaque origin) is another origin
    referer = req.get_header("Referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == origin_of(req)
    return True


def html_headers(resp: falcon.Response, csp: str = FORM_CSP) -> None:
    resp.content_type = falcon.MEDIA_HTML
    resp.set_header("Content-Security-Policy", csp)
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Referrer-Policy", "same-origin")
    resp.set_header("Cache-Control", "no-store")


def _set_cookie(req: falcon.Request, resp: falcon.Response, name: str, value: str, *, max_age: int, same_site: str) -> None:
    resp.set_cookie(
        name, value, max_age=max_age, path=COOKIE_PATH, secure=req.scheme == "https", http_only=True,
        same_site=same_site,
    )


def _drop_legacy_cookie(resp: falcon.Response) -> None:
    # Before sign-in was a form, the cookie held the user token itself, on path "/". Falcon
    # keeps one cookie per name, so this second one of the same name is a raw header.
    resp.append_header(
        "Set-Cookie", f"{SESSION_COOKIE}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"
    )


def _clear_session(resp: falcon.Response) -> None:
    resp.unset_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    _drop_legacy_cookie(resp)


def current_session(req: falcon.Request, kit: Kit, *, page: bool = True) -> DashboardSession:
    """The session of the request; pages answer the sign-in form without one (``page``),
    the dashboard's JSON endpoints a 401."""
    values = req.get_cookie_values(SESSION_COOKIE)
    if not values:
        raise SignInRequired("Sign in to see this page.", clear=False) if page else SessionError("sign in first")
    try:
        # The most specific cookie comes first: that is the dashboard's own.
        session = verify_session(kit.secret_key, values[0])
    except SessionError as exc:
        log.info("refused a dashboard session cookie: %s", exc)  # why, never the cookie
        raise SignInRequired(str(exc).capitalize() + ".", clear=True) if page else exc from None
    set_actor(f"user:{session.user_id}")  # reset with the request's context (czo_kit.http.api)
    return session


def logout_token(kit: Kit, session: DashboardSession) -> str:
    return form_token(kit.secret_key, SIGN_OUT, session.nonce)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard page, or the list of shops."""
    if value and (value == HOME or NAVIGABLE.fullmatch(value)) and ".." not in value:
        return value
    return HOME


def _render_form(
    req: falcon.Request, resp: falcon.Response, kit: Kit, *, status: str, next_path: str, message: str = ""
) -> None:
    # Keep this browser's form nonce if it has a well-formed one, so that two open sign-in
    # tabs do not invalidate each other; it is worthless without the matching form token.
    nonce = next((v for v in req.get_cookie_values(CSRF_COOKIE) or [] if 20 <= len(v) <= 64 and v.isascii()), None)
    if nonce is None:
        nonce = new_nonce()
    _set_cookie(req, resp, CSRF_COOKIE, nonce, max_age=SIGN_IN_FORM_LIFETIME, same_site="Strict")
    html_headers(resp)
    resp.status = status
    resp.text = sign_in_page(csrf=form_token(kit.secret_key, SIGN_IN, nonce), next_path=next_path, message=message)


def sign_in_handler(kit: Kit) -> Callable[[falcon.Request, falcon.Response, SignInRequired, dict[str, Any]], None]:
    def handle(req: falcon.Request, resp: falcon.Response, ex: SignInRequired, params: dict[str, Any]) -> None:
        if ex.clear:
            _clear_session(resp)
        _render_form(req, resp, kit, status=falcon.HTTP_401, next_path=safe_next(req.path), message=str(ex))

    return handle


def _refuse_token_in_address(req: falcon.Request) -> None:
    if req.get_param("token") is not None:
        # Refused even when valid: accepting it would teach people to put tokens in links.
        log.warning("refused a dashboard sign-in with a token in the address (the token is not logged)")
        raise falcon.HTTPBadRequest(
            title="Token in the address",
            description=(
                "A token in an address is refused: addresses are kept in browser history and server logs. "
                "Open /dashboard/login and paste the token in the form. If this token was shared, issue a new one."
            ),
        )


def _read_form(req: falcon.Request) -> dict[str, str]:
    if (req.content_type or "").split(";")[0].strip().lower() != falcon.MEDIA_URLENCODED:
        raise falcon.HTTPUnsupportedMediaType(description="post the sign-in form (application/x-www-form-urlencoded)")
    raw = req.bounded_stream.read(MAX_FORM + 1)
    if len(raw) > MAX_FORM:
        raise falcon.HTTPContentTooLarge(title="Form too large", description=f"at most {MAX_FORM} bytes")
    try:
        fields = parse_qs(raw.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise falcon.HTTPBadRequest(title="Invalid form", description="the form is not valid UTF-8 form data") from None
    # A repeated field is ambiguous: never pick one of two tokens.
    return {name: values[0] for name, values in fields.items() if len(values) == 1}


class SignIn:
    """``GET /dashboard/login``: the form. ``POST /dashboard/login``: sign in with a token."""

    def __init__(self, kit: Kit, authenticators: list[Authenticator]) -> None:
        self.kit = kit
        self.authenticators = authenticators

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _refuse_token_in_address(req)
        message = "You are signed out." if req.get_param("signed_out") == "1" else ""
        _render_form(req, resp, self.kit, status=falcon.HTTP_200, next_path=safe_next(req.get_param("next")), message=message)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _refuse_token_in_address(req)
        form = _read_form(req)
        next_path = safe_next(form.get("next"))
        nonces = req.get_cookie_values(CSRF_COOKIE) or []
        if not same_origin(req) or not form_token_matches(
            self.kit.secret_key, SIGN_IN, nonces[0] if nonces else None, form.get("csrf")
        ):
            log.warning("refused a dashboard sign-in: no valid CSRF token, or posted from another origin")
            _render_form(
                req, resp, self.kit, status=falcon.HTTP_403, next_path=next_path,
                message="This sign-in form has expired or was not sent from this dashboard. Sign in again here.",
            )
            return
        try:
            identity = self._authenticate(form.get("token", "").strip())
        except AuthenticationError as exc:
            log.info("dashboard sign-in refused: %s", exc)  # the reason; never the token
            _render_form(
                req, resp, self.kit, status=falcon.HTTP_401, next_path=next_path,
                message=f"That token was not accepted ({exc}). Check it, or issue a new one.",
            )
            return
        value = issue_session(
            self.kit.secret_key, identity.user_id, lifetime=self.kit.settings.dashboard_session_lifetime
        )
        _drop_legacy_cookie(resp)
        _set_cookie(
            req, resp, SESSION_COOKIE, value, max_age=int(self.kit.settings.dashboard_session_lifetime), same_site="Lax"
        )
        resp.unset_cookie(CSRF_COOKIE, path=COOKIE_PATH)  # spent: a new form gets a new one
        set_actor(f"user:{identity.user_id}")
        log.info("user %s signed in to the dashboard", identity.user_id)
        resp.set_header("Cache-Control", "no-store")
        raise falcon.HTTPSeeOther(next_path)

    def _authenticate(self, token: str) -> UserIdentity:
        if not token:
            raise AuthenticationError("the form had no token")
        for authenticate in self.authenticators:
            identity = authenticate(token, self.kit)
            if identity is not None:
                return identity
        raise AuthenticationError("it is not a user token")


class SignOut:
    """``POST /dashboard/logout``: the session cookie of this browser is deleted."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = _read_form(req)
        values = req.get_cookie_values(SESSION_COOKIE)
        try:
            session = verify_session(self.kit.secret_key, values[0]) if values else None
        except SessionError:
            session = None  # nothing to protect: the cookie is worthless anyway
        if session is not None and (
            not same_origin(req) or not form_token_matches(self.kit.secret_key, SIGN_OUT, session.nonce, form.get("csrf"))
        ):
            # Another site cannot sign people out behind their backs.
            raise falcon.HTTPForbidden(
                title="Not signed out", description="sign out with the button of a dashboard page"
            )
        _clear_session(resp)
        if session is not None:
            log.info("user %s signed out of the dashboard", session.user_id)
        resp.set_header("Cache-Control", "no-store")
        raise falcon.HTTPSeeOther("/dashboard/login?signed_out=1")
