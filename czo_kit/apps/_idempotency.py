"""The store behind ``Idempotency-Key`` on app-authenticated POSTs (``czo_kit.http.idempotency``).

A key is claimed with one committed INSERT (the unique index on installation and key decides
who runs the request), then either finished with the answer to replay or released so that a
retry runs again. Each step is its own short transaction: nothing is held while the request
itself runs.
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass

import peewee

from czo_kit.apps._models import IdempotencyKey
from czo_kit.db.model import utcnow

__all__ = ["KEY_LIFETIME", "RUNNING_LEASE", "Claim", "begin", "finish", "prune", "release"]

KEY_LIFETIME = 24 * 3600.0
"""Seconds a key is remembered, from its first use (a day, as common idempotent APIs do)."""
RUNNING_LEASE = 120.0
"""Seconds a request in flight holds its key; past that its process is presumed dead."""


@dataclass(frozen=True)
class Claim:
    """What ``begin`` decided: ``run`` (the caller runs the request, then ``finish`` or
    ``release`` key ``row_id``), ``replay`` (the saved answer), ``in_flight`` or ``mismatch``."""

    outcome: str
    row_id: int | None = None
    status: int | None = None
    content_type: str | None = None
    body: bytes | None = None


def _take_over(db: peewee.Database, row: IdempotencyKey, fingerprint: str, now: dt.datetime, where: peewee.Expression) -> bool:
    # Conditional on what was read: of two requests taking over the same key, one wins.
    return bool(
        IdempotencyKey.update(
            fingerprint=fingerprint, state="running", lease_until=now + dt.timedelta(seconds=RUNNING_LEASE),
            status=None, content_type=None, body=None, created_at=now,
            expires_at=now + dt.timedelta(seconds=KEY_LIFETIME),
        )
        .where((IdempotencyKey.id == row.id) & where)
        .execute(db)
    )


def begin(db: peewee.Database, *, installation_id: int, key: str, fingerprint: str) -> Claim:
    """Claim ``key`` for a request whose fingerprint is ``fingerprint``."""
    for _ in range(3):  # a key released or expired between our INSERT and SELECT: look again
        now = utcnow()
        try:
            with db.atomic():
                row_id = IdempotencyKey.insert(
                    installation=installation_id, key=key, fingerprint=fingerprint, state="running",
                    lease_until=now + dt.timedelta(seconds=RUNNING_LEASE), created_at=now,
                    expires_at=now + dt.timedelta(seconds=KEY_LIFETIME),
                ).execute(db)
            return Claim("run", row_id=int(row_id))
        except peewee.IntegrityError:
            pass
        row: IdempotencyKey | None = (
            IdempotencyKey.select()
            .where((IdempotencyKey.installation == installation_id) & (IdempotencyKey.key == key))
            .first(db)
        )
        if row is None:
            continue
        if row.expires_at <= now:  # forgotten: the key starts afresh, whatever it was used for
            if _take_over(db, row, fingerprint, now, IdempotencyKey.expires_at <= now):
                return Claim("run", row_id=int(row.id))
            continue
        if not hmac.compare_digest(str(row.fingerprint), fingerprint):
            return Claim("mismatch")
        if row.state == "done":
            return Claim(
                "replay", status=row.status, content_type=row.content_type,
                body=bytes(row.body) if row.body is not None else b"",
            )
        if row.lease_until > now:
            return Claim("in_flight")
        if _take_over(db, row, fingerprint, now, (IdempotencyKey.state == "running") & (IdempotencyKey.lease_until <= now)):
            return Claim("run", row_id=int(row.id))
        return Claim("in_flight")
    return Claim("in_flight")


def finish(db: peewee.Database, row_id: int, *, status: int, content_type: str | None, body: bytes) -> None:
    """Save the answer of the request that held ``row_id``, to replay from now on."""
    IdempotencyKey.update(state="done", status=status, content_type=content_type, body=body).where(
        (IdempotencyKey.id == row_id) & (IdempotencyKey.state == "running")
    ).execute(db)


def release(db: peewee.Database, row_id: int) -> None:
    """Forget a key whose request saved nothing (a 5xx, a conflict): a retry runs again."""
    IdempotencyKey.delete_rows().where((IdempotencyKey.id == row_id) & (IdempotencyKey.state == "running")).execute(db)


def prune(db: peewee.Database, now: dt.datetime | None = None) -> int:
    """Delete keys past their lifetime."""
    return int(IdempotencyKey.delete_rows().where(IdempotencyKey.expires_at < (now or utcnow())).execute(db))
