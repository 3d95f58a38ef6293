"""Hand-offs: what the kit POSTs to an app's ``token_target_url`` about its installation (the
token and webhook secret at install, a new secret at rotation), signed with the kit's own
Ed25519 key, and what an app uses to verify them.

The install hand-off is the first contact: the app shares no secret with the kit yet, so an
HMAC keyed with a secret carried in the same body would prove nothing. An asymmetric
signature does: only the kit holds the private key, and the app knows the public one from
its configuration or from the c-zo API it is configured with (``GET /api/signing-key``).

The scheme is Standard Webhooks' asymmetric one: ``webhook-signature: v1a,<base64 of the
Ed25519 signature of "<webhook-id>.<webhook-timestamp>." + body>``, public keys ``whpk_`` +
base64 of their 32 bytes. The body names the URL it was sent to (``target_url``), so a
hand-off captured at one app cannot be replayed to another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from czo_kit.errors import WebhookSignatureError

__all__ = [
    "PUBLIC_KEY_PREFIX",
    "HandoffSigner",
    "HandoffVerifier",
    "RepeatedHandoffError",
    "verify_handoff",
]

PUBLIC_KEY_PREFIX = "whpk_"
MAX_ID_LENGTH = 256
MAX_SIGNATURE_HEADER = 4096
_DERIVATION = b"czo-kit:app-handoff-signing-key:v1"


class HandoffSigner:
    """The kit's signing key for hand-offs; its public half is ``public_key``."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")

    @classmethod
    def from_secret_key(cls, secret_key: bytes) -> HandoffSigner:
        """The key derived from ``CZO_SECRET_KEY``: every process of one deployment signs
        with the same key, and the secret key never signs anything directly."""
        return cls(hmac.new(secret_key, _DERIVATION, hashlib.sha256).digest())

    def sign(self, body: bytes, *, message_id: str, timestamp: int | None = None) -> dict[str, str]:
        """The Standard Webhooks headers for ``body``, signed now (or at ``timestamp``)."""
        _check_id(message_id)
        ts = int(time.time()) if timestamp is None else int(timestamp)
        signature = self._key.sign(f"{message_id}.{ts}.".encode() + body)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": "v1a," + base64.b64encode(signature).decode("ascii"),
        }

    def __repr__(self) -> str:
        return f"<HandoffSigner {self.public_key}>"


def _check_id(message_id: str) -> None:
    # The id is part of the signed text, delimited by dots: it may hold none.
    if not message_id or len(message_id) > MAX_ID_LENGTH or "." in message_id or not message_id.isprintable():
        raise WebhookSignatureError(
            f"webhook-id must be 1 to {MAX_ID_LENGTH} printable characters without '.', got {message_id[:40]!r}"
        )


def _public_key(public_key: str) -> Ed25519PublicKey:
    if not isinstance(public_key, str) or not public_key.startswith(PUBLIC_KEY_PREFIX):
        raise WebhookSignatureError(f"the kit's public key must start with {PUBLIC_KEY_PREFIX!r}")
    try:
        raw = base64.b64decode(public_key[len(PUBLIC_KEY_PREFIX):], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise WebhookSignatureError("the kit's public key is not base64 of 32 bytes after 'whpk_'") from None


def verify_handoff(
    body: bytes,
    headers: Mapping[str, str],
    public_key: str,
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> bool:
    """Check a hand-off's ``webhook-*`` headers against ``body`` and the kit's public key;
    ``True``, or ``WebhookSignatureError`` saying why.

    Refuses a missing or malformed header, a signature by any other key, a changed body, id
    or timestamp, and a timestamp more than ``tolerance`` seconds from now, either way.
    """
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    message_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    header = lowered.get("webhook-signature")
    if not message_id or not stamp or not header:
        raise WebhookSignatureError("a hand-off needs webhook-id, webhook-timestamp and webhook-signature headers")
    _check_id(message_id)
    if len(header) > MAX_SIGNATURE_HEADER:
        raise WebhookSignatureError("the webhook-signature header is too long")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise WebhookSignatureError("webhook-timestamp is not a number of seconds")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"the hand-off timestamp is {int(current - timestamp)}s away from now; at most {tolerance}s is accepted"
        )
    key = _public_key(public_key)
    signed = f"{message_id}.{timestamp}.".encode() + body
    for candidate in header.split(" "):
        version, _, encoded = candidate.partition(",")
        if version != "v1a":
            continue  # another scheme (v1 is symmetric): not ours to check
        try:
            key.verify(base64.b64decode(encoded, validate=True), signed)
        except (binascii.Error, ValueError, InvalidSignature):
            continue
        return True
    raise WebhookSignatureError("no v1a signature in webhook-signature matches the body and the kit's public key")


class RepeatedHandoffError(WebhookSignatureError):
    """A genuine hand-off received before, again with the same body: the kit retrying after
    its first answer was lost. It was applied the first time; answer 2xx without applying it
    again (an app that catches only ``WebhookSignatureError`` refuses it, which is safe but
    makes the kit give up an install the app already took)."""

    def __init__(self, message: str, payload: dict[str, Any]) -> None:
        super().__init__(message)
        self.payload = payload


class HandoffVerifier:
    """For apps: ``verify(body, headers)`` checks a hand-off end to end and returns its
    decoded body, or raises ``WebhookSignatureError``.

    Beyond ``verify_handoff``: the body must name ``target_url`` (this app's own
    ``token_target_url``, so a hand-off sent to another app is refused), and each
    ``webhook-id`` is applied once: the same id again with the same body (the kit retrying
    after a lost answer) raises ``RepeatedHandoffError``, to be answered 2xx and not applied;
    with another body it is refused; after the tolerance, the timestamp refuses it. Ids are remembered in memory for twice the tolerance; an app running
    several processes keeps them in a shared store instead (Redis ``SET NX EX``).
    """

    def __init__(
        self,
        public_key: str,
        *,
        target_url: str,
        tolerance: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _public_key(public_key)
        self.public_key = public_key
        self.target_url = target_url
        self.tolerance = tolerance
        self.clock = clock
        self._seen: dict[str, tuple[float, bytes]] = {}  # id -> (forget after, body digest)
        self._lock = threading.Lock()

    def verify(self, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        now = self.clock()
        verify_handoff(body, headers, self.public_key, tolerance=self.tolerance, now=now)
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise WebhookSignatureError("the hand-off body is not JSON") from None
        if not isinstance(payload, dict):
            raise WebhookSignatureError("the hand-off body is not a JSON object")
        if payload.get("target_url") != self.target_url:
            raise WebhookSignatureError(
                f"the hand-off was sent to {str(payload.get('target_url'))[:200]!r}, not to {self.target_url!r}"
            )
        message_id = {str(k).lower(): v for k, v in headers.items()}["webhook-id"]
        digest = hashlib.sha256(body).digest()
        with self._lock:
            # Only signed hand-offs get this far, so only the kit can make this table grow.
            self._seen = {key: seen for key, seen in self._seen.items() if seen[0] > now}
            if message_id in self._seen:
                if hmac.compare_digest(self._seen[message_id][1], digest):
                    raise RepeatedHandoffError(f"hand-off {message_id!r} was already received and applied", payload)
                raise WebhookSignatureError(f"hand-off {message_id!r} was already received; a replay is refused")
            self._seen[message_id] = (now + 2 * self.tolerance, digest)
        return payload
