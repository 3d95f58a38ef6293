"""The worker's batched statements: claim many deliveries in one UPDATE, and record many
successful attempts in one short transaction (one UPDATE of the deliveries, one multi-row
INSERT of their attempts) instead of a transaction each.

Every statement is built once with Peewee, with named slots (``czo_kit.db._sql``), per
number of rows; an ``IN`` list is padded to a power of two by repeating its last id (the
same id twice changes nothing), so a handful of shapes serve every batch size.

A buffered success is in memory only until the next flush: a worker killed before it leaves
the delivery ``running`` under its lease, and the sweep sends it again (at least once; the
receiver dedupes on ``webhook-id``).

Every write after a claim is fenced by the ``lease_until`` the claim returned: a worker whose
lease ran out (paused, slow) may find its delivery re-queued by the sweep and claimed by
another worker, and must not overwrite that worker's record.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import peewee

from czo_kit.apps._webhook_models import WebhookAttempt, WebhookDelivery
from czo_kit.db._sql import Slot, model_info

__all__ = [
    "DUE_SLACK", "HELD", "Delivered", "DeliveredBuffer", "Left", "claim", "existing", "give_back", "held", "left_out",
]

DUE_SLACK = 2.0
"""Seconds before its ``next_attempt_at`` a ``retry`` delivery may be claimed: its own delayed
task, run by a host whose clock is a little behind the one that scheduled it, is not turned
away for a clock difference."""

HELD = ("running", "dead")
"""States of a delivery still under its claim's lease: ``running``, or ``dead`` by the sweep,
which dead-letters a last attempt whose lease ran out and leaves it that lease."""

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


def _due() -> peewee.Expression:
    """Queued, or waiting for a retry whose time has come (``next_attempt_at`` by slot ``due``):
    a duplicate task (a sweep's, a hand-back) never sends a retry before its time."""
    return (WebhookDelivery.state == "queued") | (
        (WebhookDelivery.state == "retry")
        & (
            WebhookDelivery.next_attempt_at.is_null(True)
            | (WebhookDelivery.next_attempt_at <= Slot("due", WebhookDelivery.next_attempt_at.db_value))
        )
    )


def _claimable(size: int, alone: bool) -> peewee.Expression:
    term = WebhookDelivery.id.in_(_id_slots(size)) & _due()
    if alone:
        return term
    return term & (WebhookDelivery.attempts + 1 < WebhookDelivery.max_attempts)


def claim(db: peewee.Database, ids: Sequence[int], now: dt.datetime, lease: float) -> list[WebhookDelivery]:
    """Take ``ids`` that are ``queued``, or ``retry`` and due (``next_attempt_at`` at most
    ``DUE_SLACK`` seconds ahead of ``now``), making them ``running``, one more attempt used, under
    a lease: one statement for all; those another worker took, that are done, or whose retry
    is not due yet are left out. In id order.

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
    values.update(lease=now + dt.timedelta(seconds=lease), now=now, due=now + dt.timedelta(seconds=DUE_SLACK))
    rows = info.execute(template, values).fetchall()
    return sorted((info.load(row) for row in rows), key=lambda d: int(d.id))


class Left:
    """What became of the ids a claim left out (``left_out``)."""

    __slots__ = ("early", "waiting")

    def __init__(self) -> None:
        self.waiting: list[int] = []
        """Still claimable (queued, or a retry that is due), in id order: after a claim of
        several, the ones it left out on their last attempt."""
        self.early: list[tuple[int, float]] = []
        """``(id, seconds until due)`` of retries not due yet."""


def left_out(db: peewee.Database, ids: Sequence[int], now: dt.datetime) -> Left:
    """Sort the ``ids`` a claim left out: those still waiting to be claimed, and the retries
    not due yet (``now`` as the claim's); the rest (done, dead, running elsewhere) are in
    neither list."""
    left = Left()
    if not ids:
        return left
    query = (
        WebhookDelivery.select(WebhookDelivery.id, WebhookDelivery.state, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.id.in_(list(ids)) & WebhookDelivery.state.in_(("queued", "retry")))
        .order_by(WebhookDelivery.id)
    )
    due = now + dt.timedelta(seconds=DUE_SLACK)
    for row in query.execute(db):
        at = row.next_attempt_at
        if row.state == "retry" and at is not None and at > due:
            left.early.append((int(row.id), (at - now).total_seconds()))
        else:
            left.waiting.append(int(row.id))
    return left


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


def held(delivery: WebhookDelivery) -> peewee.Expression:
    """``delivery`` still under the lease its claim returned (nobody took it over since)."""
    term: peewee.Expression = (
        (WebhookDelivery.id == int(delivery.id))
        & WebhookDelivery.state.in_(HELD)
        & (WebhookDelivery.lease_until == delivery.lease_until)
    )
    return term


def existing(db: peewee.Database, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` still have a row (an uninstall takes an app's deliveries with it)."""
    query = WebhookDelivery.select(WebhookDelivery.id).where(WebhookDelivery.id.in_(list(ids)))
    return {int(row[0]) for row in db.execute(query).fetchall()}


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
        self.superseded: list[Delivered] = []
        """Of the last flush, the successes whose claim had been superseded (see ``flush``)."""

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
        """Record the buffered successes of deliveries still under their claim's lease; return
        those. One whose lease ran out and that another claim took since is left to that claim
        (``superseded``): its attempt is kept as history, its state is not touched. One whose
        app was uninstalled since is gone, with its rows: nothing is recorded."""
        items, self.items = self.items, []
        self.superseded = []
        if not items:
            return []
        by_status: dict[int, list[Delivered]] = {}
        for item in items:
            by_status.setdefault(item.status, []).append(item)
        with self.db.atomic():
            updated: set[int] = set()
            for status, group in by_status.items():
                updated.update(self._mark(group, status, now))
            recorded = [item for item in items if int(item.delivery.id) in updated]
            lost = [item for item in items if int(item.delivery.id) not in updated]
            if lost:
                kept = existing(self.db, [int(item.delivery.id) for item in lost])
                self.superseded = [item for item in lost if int(item.delivery.id) in kept]
            history = recorded + self.superseded
            for start in range(0, len(history), FLUSH_EVERY):
                self._attempts(history[start:start + FLUSH_EVERY])
        return recorded

    def _mark(self, group: list[Delivered], status: int, now: dt.datetime) -> list[int]:
        info = model_info(WebhookDelivery, self.db)
        ids = [int(item.delivery.id) for item in group]
        size, values = _ids_in(ids)
        # Each id under the lease its own claim returned (a buffer may span claims): the
        # ``CASE`` pairs them, padded as the ids are.
        leases = {f"lease{k}": group[min(k, len(group) - 1)].delivery.lease_until for k in range(size)}
        convert = WebhookDelivery.lease_until.db_value
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
            .where(
                WebhookDelivery.id.in_(_id_slots(size))
                & (WebhookDelivery.state == "running")
                & (
                    WebhookDelivery.lease_until
                    == peewee.Case(
                        WebhookDelivery.id, [(Slot(f"id{k}"), Slot(f"lease{k}", convert)) for k in range(size)]
                    )
                )
            )
            .returning(WebhookDelivery.id),
        )
        values.update(leases, status=status, now=now)
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
