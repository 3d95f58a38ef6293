"""Dashboard sessions (``czo_kit.http.sessions``): signed cookies that expire, are not the
user token that opened them, and refuse any tampering; CSRF tokens bound to a form's purpose
and to a nonce only one browser holds; the lifetime setting."""

from __future__ import annotations

import base64
import hashlib
import hmac

import msgspec
import pytest

from czo_kit.errors import ConfigurationError
from czo_kit.http import issue_user_token
from czo_kit.http.sessions import (
    SessionError,
    _Claims,
    _key,
    form_token,
    form_token_matches,
    issue_session,
    verify_session,
)
from czo_kit.settings import Settings

SECRET = b"s" * 40


def _signed(claims: _Claims) -> str:
    raw = msgspec.msgpack.encode(claims)
    mac = hmac.new(_key(SECRET, b"session"), raw, hashlib.sha256).digest()
    return f"{_b64(raw)}.{_b64(mac)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_session_is_signed_and_expires() -> None:
    value = issue_session(SECRET, "ann", lifetime=600, now=1_000_000)
    session = verify_session(SECRET, value, now=1_000_599)
    assert (session.user_id, session.issued_at, session.expires_at) == ("ann", 1_000_000, 1_000_600)
    with pytest.raises(SessionError, match="expired"):
        verify_session(SECRET, value, now=1_000_600)
    with pytest.raises(SessionError, match="not signed by this server"):
        verify_session(b"t" * 40, value, now=1_000_001)
    # Two sessions of the same person are two nonces: one's form tokens do not fit the other.
    other = verify_session(SECRET, issue_session(SECRET, "ann", lifetime=600, now=1_000_000), now=1_000_001)
    assert other.nonce != session.nonce


def test_tampered_and_malformed_session_cookies_are_refused() -> None:
    value = issue_session(SECRET, "ann", lifetime=600, now=1_000_000)
    body, _, mac = value.partition(".")
    # A body naming someone else, or living longer, keeps the old MAC: it no longer fits.
    for claims in (_Claims(1, "root", 1_000_000, 1_000_600, "n"), _Claims(1, "ann", 1_000_000, 9_999_999_999, "n")):
        forged_body = _b64(msgspec.msgpack.encode(claims))
        with pytest.raises(SessionError, match="not signed"):
            verify_session(SECRET, f"{forged_body}.{mac}", now=1_000_001)
    # The first character: all six of its bits are data (the last one's low bits may be padding
    # that decodes to the same bytes, which made this test fail for some random nonces).
    flipped = ("A" if body[0] != "A" else "B") + body[1:]
    for bad in ("", ".", body, f"{body}.", f"{flipped}.{mac}", f"{body}.{mac}x", "%%%.%%%", "x" * 5000,
                issue_user_token(SECRET, "ann")):
        with pytest.raises(SessionError):
            verify_session(SECRET, bad, now=1_000_001)


def test_a_session_of_another_format_version_is_refused() -> None:
    with pytest.raises(SessionError, match="another version"):
        verify_session(SECRET, _signed(_Claims(2, "ann", 1_000_000, 1_000_600, "n")), now=1_000_001)
    # Signed with the key, well formed, current version: accepted (the helper signs right).
    assert verify_session(SECRET, _signed(_Claims(1, "ann", 1_000_000, 1_000_600, "n")), now=1_000_001).nonce == "n"


def test_form_tokens_are_bound_to_their_purpose_and_nonce() -> None:
    good = form_token(SECRET, "sign-in", "nonce-1")
    assert form_token_matches(SECRET, "sign-in", "nonce-1", good)
    assert not form_token_matches(SECRET, "sign-out", "nonce-1", good)
    assert not form_token_matches(SECRET, "sign-in", "nonce-2", good)
    assert not form_token_matches(b"t" * 40, "sign-in", "nonce-1", good)
    for given in (None, "", good[:-1], good + "A", "é" * 10, "x" * 500):
        assert not form_token_matches(SECRET, "sign-in", "nonce-1", given)
    assert not form_token_matches(SECRET, "sign-in", None, good)


def test_the_session_lifetime_is_a_validated_setting() -> None:
    assert Settings().dashboard_session_lifetime == 28800
    assert Settings.from_env({"CZO_DASHBOARD_SESSION_LIFETIME": "900"}).dashboard_session_lifetime == 900
    for bad in ("30", "31536000", "soon"):
        with pytest.raises(ConfigurationError) as info:
            Settings.from_env({"CZO_DASHBOARD_SESSION_LIFETIME": bad})
        assert "CZO_DASHBOARD_SESSION_LIFETIME" in str(info.value)
