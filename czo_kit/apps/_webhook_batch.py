"""The worker's batched statements: claim many deliveries in one UPDATE, and record many
successful attempts in one short transaction (one UPDATE of the deliveries, one multi-row
INSERT of their attempts) instead of a transaction each.

Every statement is built once with Peewee, with named slots (``czo_kit.db._sql``), per
number of rows; an ``IN`` list is padded to a power of two by repeating its last id (the
same id twice changes nothing), so a handful of shapes serve every batch size.

A buffered success is in memory only until the next flush: a worker killed before it leaves
the delivery ``running`` under its lease, and the sweep sends it again (at least once; the
receiver dedupes on ``webhook-id``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import peewee

from czo_kit.apps._webhook_models import WebhookAttempt, WebhookDelivery
from czo_kit.db._sql import Slot, model_info

__all__ = ["Delivered", "DeliveredBuffer", "claim", "give_back", "waiting"]

FLUSH_EVERY = 64
"""Successful attempts recorded per transaction at most."""

FLUSH_AFTER = 0.03
"""Seconds a success waits in the buffer at most before it is recorded (checked at the next
attempt, and always at the end of a task): a slow target flushes at every delivery, so what a
killed worker leaves to be sent twice stays a few deliveries per thread."""


def _padded(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


def _ids_in(ids: Sequence[int]) -> tuple[int, dict[str, Any]]:
    """The padded size of ``ids`` and the slot values ``id0``..``idN`` it fills."""
    size = _padded(len(ids))
    return size, {f"id{k}": int(ids[min(k, len(ids) - 1)]) for k in range(size)}


def _id_slots(size: int) -> list[Slot]:
    return [Slot(f"id{k}") for k in range(size)]


def _claimable(size: int, alone: bool) -> peewee.Expression:
    term = WebhookDelivery.id.in_(_id_slots(size)) & WebhookDelivery.state.in_(("queued", "retry"))
    if alone:
        return term
    return term & (WebhookDelivery.attempts + 1 < WebhookDelivery.max_attempts)


def claim(db: peewee.Database, ids: Sequence[int], now: dt.datetime, lease: float) -> list[WebhookDelivery]:
    """Take ``ids`` that are ``queued`` or ``retry`` (``running``, one more attempt used, under a
    lease): one statement for all; those another worker took, or that are done, are left out.
    In id order.

    A claim of several leaves out the deliveries on their last attempt too: the attempt is
    counted at the claim, so a worker killed while it held the batch would spend the last
    attempt of deliveries it never sent, and the sweep would dead-letter them. The caller
    claims those alone, each right before its POST (``WebhookDispatcher.deliver_many``)."""
    if not ids:
        return []
    info = model_info(WebhookDelivery, db)
    size, values = _ids_in(ids)
    alone = len(ids) == 1
    template = info.template(
        ("claim", size, alone),
        lambda: WebhookDelivery.update(
            {
                WebhookDelivery.state: "running",
                WebhookDelivery.attempts: WebhookDelivery.attempts + 1,
                WebhookDelivery.lease_until: Slot("lease", WebhookDelivery.lease_until.db_value),
                WebhookDelivery.updated_at: Slot("now", WebhookDelivery.updated_at.db_value),
            }
        )
        .where(_claimable(size, alone))
        .returning(*info.fields),
    )
    values.update(lease=now + dt.timedelta(seconds=lease), now=now)
    rows = info.execute(template, values).fetchall()
    return sorted((info.load(row) for row in rows), key=lambda d: int(d.id))


def waiting(db: peewee.Database, ids: Sequence[int]) -> list[int]:
    """Which of ``ids`` are still ``queued`` or ``retry`` (not taken, not done), in id order: after
    a claim of several, the ones it left out on their last attempt."""
    if not ids:
        return []
    query = (
        WebhookDelivery.select(WebhookDelivery.id)
        .where(WebhookDelivery.id.in_(list(ids)) & WebhookDelivery.state.in_(("queued", "retry")))
        .order_by(WebhookDelivery.id)
    )
    return [int(row[0]) for row in db.execute(query).fetchall()]


def give_back(db: peewee.Database, ids: Sequence[int], now: dt.datetime, lease_until: dt.datetime | None) -> None:
    """Return claimed deliveries not attempted yet to ``queued``, their attempt unused: those
    still under this claim's lease (``lease_until``, as the claim returned it). One whose
    lease ran out may have been taken back by the sweep and claimed by another worker since:
    it is that worker's, left alone."""
    if not ids:
        return
    info = model_info(WebhookDelivery, db)
    size, values = _ids_in(ids)
    template = info.template(
        ("give_back", size),
        lambda: WebhookDelivery.update(
            {
                WebhookDelivery.state: "queued",
                WebhookDelivery.attempts: WebhookDelivery.attempts - 1,
                WebhookDelivery.lease_until: None,
                WebhookDelivery.updated_at: Slot("now", WebhookDelivery.updated_at.db_value),
            }
        ).where(
            WebhookDelivery.id.in_(_id_slots(size))
            & (WebhookDelivery.state == "running")
            & (WebhookDelivery.lease_until == Slot("lease", WebhookDelivery.lease_until.db_value))
        ),
    )
    values.update(now=now, lease=lease_until)
    info.execute(template, values)


class Delivered:
    """A successful attempt waiting to be recorded."""

    __slots__ = ("delivery", "duration", "excerpt", "started", "status")

    def __init__(
        self, delivery: WebhookDelivery, started: dt.datetime, duration: float, status: int, excerpt: str | None
    ) -> None:
        self.delivery = delivery
        self.started = started
        self.duration = duration
        self.status = status
        self.excerpt = excerpt


_ATTEMPT_COLUMNS = ("delivery", "attempt", "at", "status", "duration_ms", "response")


class DeliveredBuffer:
    """Successful attempts of one worker thread, recorded ``FLUSH_EVERY`` at a time or once the
    oldest has waited ``FLUSH_AFTER`` seconds; ``flush()`` returns what was recorded (an
    uninstall since the claim took the others, with their rows)."""

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self.items: list[Delivered] = []
        self.since = 0.0

    def add(self, item: Delivered) -> bool:
        """Buffer ``item``; whether the buffer is due for a flush now."""
        if not self.items:
            self.since = time.monotonic()
        self.items.append(item)
        return self.due()

    def due(self) -> bool:
        return bool(self.items) and (
            len(self.items) >= FLUSH_EVERY or time.monotonic() - self.since >= FLUSH_AFTER
        )

    def flush(self, now: dt.datetime) -> list[Delivered]:
        items, self.items = self.items, []
        if not items:
            return []
        by_status: dict[int, list[int]] = {}
        for item in items:
            by_status.setdefault(item.status, []).append(int(item.delivery.id))
        with self.db.atomic():
            updated: set[int] = set()
            for status, ids in by_status.items():
                updated.update(self._mark(ids, status, now))
            recorded = [item for item in items if int(item.delivery.id) in updated]
            for start in range(0, len(recorded), FLUSH_EVERY):
                self._attempts(recorded[start:start + FLUSH_EVERY])
        return recorded

    def _mark(self, ids: list[int], status: int, now: dt.datetime) -> list[int]:
        info = model_info(WebhookDelivery, self.db)
        size, values = _ids_in(ids)
        template = info.template(
            ("delivered", size),
            lambda: WebhookDelivery.update(
                {
                    WebhookDelivery.state: "delivered",
                    WebhookDelivery.last_status: Slot("status"),
                    WebhookDelivery.last_error: None,
                    WebhookDelivery.last_error_detail: None,
                    WebhookDelivery.lease_until: None,
                    WebhookDelivery.next_attempt_at: None,
                    WebhookDelivery.delivered_at: Slot("now", WebhookDelivery.delivered_at.db_value),
                    WebhookDelivery.updated_at: Slot("now", WebhookDelivery.updated_at.db_value),
                }
            )
            .where(WebhookDelivery.id.in_(_id_slots(size)))
            .returning(WebhookDelivery.id),
        )
        values.update(status=status, now=now)
        return [int(row[0]) for row in info.execute(template, values).fetchall()]

    def _attempts(self, items: list[Delivered]) -> None:
        if not items:
            return
        info = model_info(WebhookAttempt, self.db)
        fields = [info.field_map[c] for c in _ATTEMPT_COLUMNS]
        template = info.template(
            ("attempts", len(items)),
            lambda: WebhookAttempt.insert_many(
                [{f: Slot(f"{f.name}.{n}", f.db_value) for f in fields} for n in range(len(items))]
            ),
        )
        values: dict[str, Any] = {}
        for n, item in enumerate(items):
            values.update(
                {
                    f"delivery.{n}": int(item.delivery.id), f"attempt.{n}": int(item.delivery.attempts),
                    f"at.{n}": item.started, f"status.{n}": item.status,
                    f"duration_ms.{n}": round(item.duration, 2), f"response.{n}": item.excerpt,
                }
            )
        info.execute(template, values)
