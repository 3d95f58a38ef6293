"""Webhook signatures: ``X-CZO-Signature`` (a timestamped HMAC common verifiers accept) and the
Standard Webhooks headers, plus ``verify_signature`` for app authors.

``X-CZO-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`` keyed with the
``whsec_...`` secret as UTF-8 text, one ``v1=`` per valid secret (two during a rotation).
``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<t>." + body>`` keyed with the base64
part of the secret decoded, space-separated when there are several.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

from czo_kit.errors import WebhookSignatureError

__all__ = ["SECRET_PREFIX", "new_webhook_secret", "sign", "verify_signature"]

SECRET_PREFIX = "whsec_"
MAX_HEADER_LENGTH = 4096


def new_webhook_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _standard_key(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(encoded + "==", validate=False)
    except (binascii.Error, ValueError):
        raise WebhookSignatureError("the webhook secret is not base64 after its 'whsec_' prefix") from None


def sign(body: bytes, secrets_: Sequence[str], *, message_id: str, timestamp: int | None = None) -> dict[str, str]:
    """The signature headers for ``body``, one signature per secret (the first is current)."""
    if not secrets_:
        raise ValueError("at least one webhook secret is needed to sign")
    ts = int(time.time()) if timestamp is None else int(timestamp)
    prefix = f"{ts}.".encode()
    czo = ",".join(
        f"v1={hmac.new(secret.encode('utf-8'), prefix + body, hashlib.sha256).hexdigest()}" for secret in secrets_
    )
    standard_input = f"{message_id}.{ts}.".encode() + body
    standard = " ".join(
        "v1," + base64.b64encode(hmac.new(_standard_key(secret), standard_input, hashlib.sha256).digest()).decode()
        for secret in secrets_
    )
    return {
        "X-CZO-Signature": f"t={ts},{czo}",
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": standard,
    }


def verify_signature(
    body: bytes | str,
    header: str | None,
    secret: str,
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> bool:
    """Check an ``X-CZO-Signature`` header; ``True``, or ``WebhookSignatureError`` saying why.

    Compares in constant time, and rejects timestamps more than ``tolerance`` seconds in the
    past or in the future (replays, and clocks that are badly off).
    """
    if not header or not isinstance(header, str):
        raise WebhookSignatureError("no X-CZO-Signature header")
    if len(header) > MAX_HEADER_LENGTH:
        raise WebhookSignatureError("the X-CZO-Signature header is too long")
    if not isinstance(secret, str) or not secret:
        raise WebhookSignatureError("no webhook secret to verify with")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise WebhookSignatureError("the X-CZO-Signature header is malformed (expected t=...,v1=...)")
        if key == "t":
            if not (value.isascii() and value.isdigit()) or len(value) > 12:
                raise WebhookSignatureError("the X-CZO-Signature timestamp is not a number of seconds")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None:
        raise WebhookSignatureError("the X-CZO-Signature header has no timestamp (t=)")
    if not candidates:
        raise WebhookSignatureError("the X-CZO-Signature header has no v1 signature")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"the signature timestamp is {int(current - timestamp)}s away from now; at most {tolerance}s is accepted"
        )
    payload = body.encode("utf-8") if isinstance(body, str) else body
    expected = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    matched = False
    for candidate in candidates:
        # Every candidate is compared, in constant time, so timing says nothing about which.
        matched |= hmac.compare_digest(candidate.encode("ascii", "replace"), expected.encode("ascii"))
    if not matched:
        raise WebhookSignatureError("no signature in X-CZO-Signature matches the body and secret")
    return True
