"""``Idempotency-Key`` on every app-authenticated POST of the API, module routes included,
as well-known public HTTP APIs honour it: a retry with the same key and the same request
gets the saved answer (``Idempotent-Replayed: true``) instead of running again.

- same key, another method, path or body: 400 ``idempotency_error``;
- same key while its first request is still running: 409 ``idempotency_error``;
- keys are per app installation, and remembered 24 hours;
- answers below 500 are saved, except 409 and 429 (a retry may well succeed). A 5xx saves
  nothing, so a retry runs again (some APIs save those too; here a 5xx means the request's
  transaction did not commit, and the example app retries exactly then).
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import falcon
import falcon.stream

from czo_kit.apps import _idempotency

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = ["HEADER", "IdempotencyMiddleware", "MAX_KEY_LENGTH"]

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def _mismatch(message: str) -> falcon.HTTPError:
    return falcon.HTTPBadRequest(title="Idempotency error", description=message, code=HEADER)


def _in_flight(message: str) -> falcon.HTTPError:
    return falcon.HTTPConflict(title="Idempotency error", description=message, code=HEADER)


class IdempotencyMiddleware:
    """Claims the key before the responder runs, and saves (or releases) it after."""

    def __init__(self, kit: Kit, *, max_body: int) -> None:
        self.kit = kit
        self.max_body = max_body

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]) -> None:
        req.context.idempotency = None
        key = req.get_header(HEADER)
        principal = getattr(req.context, "app", None)
        if key is None or req.method != "POST" or resource is None or principal is None:
            return  # only apps' POSTs: a user's route is not an app's to retry
        if not 1 <= len(key) <= MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
            raise _mismatch(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
        body = self._body(req)
        digest = hashlib.sha256()
        for part in (req.method.encode(), req.relative_uri.encode("utf-8", "surrogateescape"), body):
            digest.update(len(part).to_bytes(8, "big") + part)
        claim = _idempotency.begin(
            self.kit.db, installation_id=int(principal.installation_id), key=key, fingerprint=digest.hexdigest()
        )
        if claim.outcome == "run":
            req.context.idempotency = claim.row_id
        elif claim.outcome == "replay":
            resp.status = claim.status or 200
            if claim.content_type:
                resp.content_type = claim.content_type
            resp.data = claim.body or b""
            resp.set_header("Idempotent-Replayed", "true")
            resp.complete = True
        elif claim.outcome == "mismatch":
            raise _mismatch(
                f"this {HEADER} was used with another request (method, path or body); a key can only be "
                "retried with the very request it was first used with: use a new key for a new request",
            )
        else:
            raise _in_flight(
                f"a request with this {HEADER} is still being processed; retry once it has ended",
            )

    def _body(self, req: falcon.Request) -> bytes:
        """The raw body, read once and put back, so the responder reads the same bytes."""
        length = req.content_length or 0
        if length > self.max_body:
            raise falcon.HTTPContentTooLarge(title="Body too large", description=f"at most {self.max_body} bytes")
        raw = falcon.stream.BoundedStream(cast(BinaryIO, req.env["wsgi.input"]), length).read(self.max_body + 1)
        # Put back before anything wrapped the input: req.stream, req.bounded_stream (which
        # wraps the environ's input), read_json and get_media all read these bytes now.
        req.env["wsgi.input"] = req.stream = io.BytesIO(raw)
        return bytes(raw)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool) -> None:
        row_id = getattr(req.context, "idempotency", None)
        if row_id is None:
            return
        req.context.idempotency = None
        status = resp.status_code
        if status >= 500 or status in (409, 429):
            _idempotency.release(self.kit.db, row_id)
            return
        body = resp.render_body() or b""
        _idempotency.finish(self.kit.db, row_id, status=status, content_type=resp.content_type, body=bytes(body))
