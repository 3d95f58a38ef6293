"""Dashboard sessions and the CSRF tokens of its forms.

A session is a cookie the kit signs (HMAC-SHA256 with a key derived from ``CZO_SECRET_KEY``):
who signed in, when, until when, and a random nonce that the CSRF tokens of the session's
forms are bound to. It is not the user token that opened it: that token is posted once, in a
form, and never stored in the browser, so a copied cookie cannot call the API and ends with its
session. Sessions are stateless: signing out deletes the cookie of that browser, and a copy of
it made before keeps working until it expires (``CZO_DASHBOARD_SESSION_LIFETIME``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import msgspec

from czo_kit.errors import AuthenticationError

__all__ = [
    "CSRF_COOKIE",
    "SESSION_COOKIE",
    "DashboardSession",
    "SessionError",
    "form_token",
    "form_token_matches",
    "issue_session",
    "new_nonce",
    "verify_session",
]

SESSION_COOKIE = "czo_session"
CSRF_COOKIE = "czo_csrf"
_VERSION = 1
_MAX_COOKIE = 1000


class SessionError(AuthenticationError):
    """A dashboard session cookie that is missing, malformed, forged or expired.

    The message is for the person at the browser; it never repeats the cookie.
    """


@dataclass(frozen=True)
class DashboardSession:
    """A signed-in person: who, since and until when (unix seconds), and the nonce that binds
    the CSRF tokens of this session's forms."""

    user_id: str
    issued_at: int
    expires_at: int
    nonce: str


class _Claims(msgspec.Struct, array_like=True):
    version: int
    user_id: str
    issued_at: int
    expires_at: int
    nonce: str


def _key(secret: bytes, purpose: bytes) -> bytes:
    # One key per purpose: a session MAC can never pass for a CSRF token, or for a user or
    # extension token signed with the same CZO_SECRET_KEY.
    return hmac.new(secret, b"czo-kit:dashboard-" + purpose + b":v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_nonce() -> str:
    """A random value for a session or a sign-in form (unguessable, cookie-safe)."""
    return secrets.token_urlsafe(24)


def issue_session(secret: bytes, user_id: str, *, lifetime: float, now: float | None = None) -> str:
    """The cookie value of a new session for ``user_id`` that lasts ``lifetime`` seconds."""
    if not user_id or len(user_id) > 100:
        raise ValueError("user ids are 1-100 characters")
    issued = int(time.time() if now is None else now)
    claims = msgspec.msgpack.encode(_Claims(_VERSION, user_id, issued, issued + int(lifetime), new_nonce()))
    mac = hmac.new(_key(secret, b"session"), claims, hashlib.sha256).digest()
    return f"{_b64(claims)}.{_b64(mac)}"


def verify_session(secret: bytes, value: str, *, now: float | None = None) -> DashboardSession:
    """The session a cookie value stands for; ``SessionError`` if it is not one the kit signed
    with this secret, or if it has expired."""
    if not value or len(value) > _MAX_COOKIE:
        raise SessionError("no valid session: sign in")
    body, sep, signature = value.partition(".")
    if not sep:
        raise SessionError("the session cookie is malformed: sign in again")
    try:
        raw = _unb64(body)
        mac = _unb64(signature)
    except (binascii.Error, ValueError):
        raise SessionError("the session cookie is malformed: sign in again") from None
    if not hmac.compare_digest(mac, hmac.new(_key(secret, b"session"), raw, hashlib.sha256).digest()):
        raise SessionError("the session cookie was not signed by this server: sign in again")
    try:
        claims = msgspec.msgpack.decode(raw, type=_Claims)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise SessionError("the session cookie is malformed: sign in again") from None
    if claims.version != _VERSION:
        raise SessionError("the session is from another version of the dashboard: sign in again")
    if claims.expires_at <= (time.time() if now is None else now):
        raise SessionError("your session has expired: sign in again")
    return DashboardSession(claims.user_id, claims.issued_at, claims.expires_at, claims.nonce)


def form_token(secret: bytes, purpose: str, nonce: str) -> str:
    """The CSRF token of a form: bound to what it does (``purpose``) and to a nonce that only
    this browser holds (the session's, or the sign-in cookie's before there is a session)."""
    message = f"{purpose}\x00{nonce}".encode()
    return _b64(hmac.new(_key(secret, b"csrf"), message, hashlib.sha256).digest())


def form_token_matches(secret: bytes, purpose: str, nonce: str | None, given: str | None) -> bool:
    """Whether ``given`` is the token of ``purpose`` for ``nonce`` (in constant time)."""
    if not nonce or not given or len(given) > 100:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), form_token(secret, purpose, nonce).encode())
