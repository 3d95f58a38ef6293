"""Who is calling: the default user authenticator (signed, expiring user tokens) and app tokens.

A user token is ``czo_user_<base64url payload>.<base64url HMAC-SHA256>`` signed with a key
derived from ``CZO_SECRET_KEY``; ``czo-kit users token USER_ID`` issues one. It stands in for
the auth module, which replaces it through ``czo_register_authenticators``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

import msgspec

from czo_kit.errors import AuthenticationError

__all__ = ["USER_TOKEN_PREFIX", "UserIdentity", "issue_user_token", "verify_user_token"]

USER_TOKEN_PREFIX = "czo_user_"


@dataclass(frozen=True)
class UserIdentity:
    """An authenticated person (their shops and roles come from the PermissionService)."""

    user_id: str


class _Claims(msgspec.Struct, array_like=True):
    user_id: str
    expires: int


def _key(secret: bytes) -> bytes:
    return hmac.new(secret, b"czo-kit:user-token:v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_user_token(secret: bytes, user_id: str, *, ttl: float = 3600.0, now: float | None = None) -> str:
    """A token for ``user_id`` valid ``ttl`` seconds."""
    if not user_id or len(user_id) > 100:
        raise ValueError("user ids are 1-100 characters")
    claims = msgspec.msgpack.encode(_Claims(user_id, int((now or time.time()) + ttl)))
    mac = hmac.new(_key(secret), claims, hashlib.sha256).digest()
    return f"{USER_TOKEN_PREFIX}{_b64(claims)}.{_b64(mac)}"


def verify_user_token(secret: bytes, token: str, *, now: float | None = None) -> UserIdentity:
    """The user a token names; ``AuthenticationError`` if it is malformed, forged or expired."""
    if not token.startswith(USER_TOKEN_PREFIX) or len(token) > 400:
        raise AuthenticationError("not a user token")
    body, sep, signature = token[len(USER_TOKEN_PREFIX):].partition(".")
    if not sep:
        raise AuthenticationError("malformed user token")
    try:
        claims_raw = _unb64(body)
        mac = _unb64(signature)
    except (binascii.Error, ValueError):
        raise AuthenticationError("malformed user token") from None
    expected = hmac.new(_key(secret), claims_raw, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise AuthenticationError("user token signature does not match")
    try:
        claims = msgspec.msgpack.decode(claims_raw, type=_Claims)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise AuthenticationError("malformed user token") from None
    if claims.expires < (now or time.time()):
        raise AuthenticationError("user token has expired")
    return UserIdentity(claims.user_id)
