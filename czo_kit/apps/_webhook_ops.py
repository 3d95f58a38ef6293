"""What operators do with webhook deliveries: list them and their attempts, count them by
state, see their targets' circuits, send them again, prune delivered ones past the retention
period and discard dead ones. A part of ``WebhookDispatcher`` kept in a module of its own."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence

import peewee

from czo_kit.apps._circuits import CircuitBreaker, CircuitState
from czo_kit.apps._webhook_models import NOT_DELIVERED_TERM, WebhookAttempt, WebhookDelivery, WebhookSettings
from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.errors import ConflictError, NotFoundError

__all__ = ["PRUNE_BATCH", "WebhookOperations", "next_attempt_at"]

REDELIVERABLE = ("dead", "queued", "retry")
"""States a delivery can be sent again from, with a fresh set of attempts."""

PRUNE_BATCH = 500
"""Deliveries deleted per transaction by ``prune`` and ``discard``: short transactions that
never hold a lock for long, whatever the backlog."""


def next_attempt_at(delivery: WebhookDelivery, circuit: CircuitState | None) -> dt.datetime | None:
    """When ``delivery`` is attempted next, as far as the kit knows: ``None`` once it is
    delivered, dead or running; for a queued one, from when it was queued (a time in the past
    means as soon as a worker takes it); never before its target's circuit lets it through."""
    if delivery.state not in ("queued", "retry"):
        return None
    at: dt.datetime = delivery.next_attempt_at or delivery.updated_at
    if circuit is not None and circuit.next_probe_at is not None and circuit.next_probe_at > at:
        at = circuit.next_probe_at
    return at


class WebhookOperations:
    """Operator-facing methods of ``WebhookDispatcher`` (which provides what is declared here)."""

    db: peewee.Database
    settings: WebhookSettings
    breaker: CircuitBreaker

    def ensure_tables(self, *, required: bool = True) -> bool:
        raise NotImplementedError

    def _enqueue_all(self, ids: Sequence[int]) -> None:
        raise NotImplementedError

    def deliveries(self, *, state: str | None = None, shop_id: int | None = None, limit: int = 50) -> list[WebhookDelivery]:
        self.ensure_tables()
        query = WebhookDelivery.select().order_by(WebhookDelivery.id.desc()).limit(limit)
        if state is not None:
            # Any state but delivered is in the live index (SQLite wants its condition said).
            wanted = WebhookDelivery.state == state
            query = query.where(wanted if state == "delivered" else NOT_DELIVERED_TERM & wanted)
        if shop_id is not None:
            query = query.where(WebhookDelivery.shop_id == shop_id)
        return list(query.execute(self.db))

    def delivery(self, delivery_id: int) -> WebhookDelivery:
        """One delivery; ``NotFoundError`` when there is none with that id (or it was pruned)."""
        self.ensure_tables()
        row: WebhookDelivery | None = WebhookDelivery.select().where(WebhookDelivery.id == delivery_id).first(self.db)
        if row is None:
            raise NotFoundError("WebhookDelivery", delivery_id)
        return row

    def attempts(self, delivery_id: int) -> list[WebhookAttempt]:
        self.ensure_tables()
        return list(
            WebhookAttempt.select().where(WebhookAttempt.delivery == delivery_id).order_by(WebhookAttempt.id).execute(self.db)
        )

    def redeliver(self, delivery_id: int | None = None, *, all_dead: bool = False) -> list[int]:
        """Queue a delivery again with a fresh set of attempts, or with ``all_dead`` every dead
        one; returns the ids queued again.

        A dead, queued or retry delivery can be sent again. A running one is refused
        (``ConflictError``: its attempt is under way and retries by itself), and so is a
        delivered one (its receiver dedupes on ``webhook-id``, so the same message again would
        change nothing); ``NotFoundError`` when there is no such delivery."""
        if (delivery_id is None) == (not all_dead):
            raise ValueError("redeliver() takes a delivery id or all_dead=True, not both")
        self.ensure_tables()
        now = utcnow()
        if all_dead:
            which = NOT_DELIVERED_TERM & (WebhookDelivery.state == "dead")
        else:
            which = (WebhookDelivery.id == delivery_id) & WebhookDelivery.state.in_(REDELIVERABLE)
        # One statement decides and changes: a delivery whose state moved meanwhile is left be.
        ids = [
            row[0]
            for row in WebhookDelivery.update(
                state="queued", attempts=0, next_attempt_at=None, lease_until=None, updated_at=now
            )
            .where(which)
            .returning(WebhookDelivery.id)
            .tuples()
            .execute(self.db)
        ]
        if delivery_id is not None and not ids:
            row = self.delivery(delivery_id)  # NotFoundError when there is none
            if row.state == "running":
                why = "an attempt is under way (if it fails, it is retried on its own)"
            else:
                why = (
                    f"it was delivered{f' at {row.delivered_at:%Y-%m-%d %H:%M:%S} UTC' if row.delivered_at else ''}, "
                    "and its receiver dedupes on webhook-id, so sending the same message again would change nothing"
                )
            raise ConflictError(f"webhook delivery {delivery_id} is {row.state}: not queued again; {why}")
        if ids:
            on_commit(self.db, lambda: self._enqueue_all(ids))
        return ids

    def circuits(self) -> list[CircuitState]:
        """Targets whose circuit is open or probing, with when each is probed next and how many
        deliveries wait for it; an empty list when every target is healthy."""
        self.ensure_tables()
        states = self.breaker.states(None, utcnow())
        if not states:
            return []
        # Through the live partial index (NOT_DELIVERED_TERM: SQLite wants its condition).
        waiting = dict(
            WebhookDelivery.select(WebhookDelivery.origin, peewee.fn.COUNT(WebhookDelivery.id))
            .where(
                NOT_DELIVERED_TERM
                & WebhookDelivery.state.in_(("queued", "retry"))
                & WebhookDelivery.origin.in_(list(states))
            )
            .group_by(WebhookDelivery.origin)
            .tuples()
            .execute(self.db)
        )
        return [dataclasses.replace(state, waiting=int(waiting.get(origin, 0))) for origin, state in states.items()]

    def circuit_states(self, origins: Iterable[str]) -> dict[str, CircuitState]:
        """The circuit of each target origin (``closed`` where nothing failed lately)."""
        self.ensure_tables()
        return self.breaker.states(origins, utcnow())

    def stats(self, *, delivered: bool = False) -> dict[str, int]:
        """Deliveries by state: queued, running, retry and dead, read through the live partial
        index, so it costs the same whatever the history kept. ``delivered=True`` counts the
        delivered ones kept too (the retention period's worth: a cost that grows with it)."""
        self.ensure_tables()
        where = NOT_DELIVERED_TERM if not delivered else None
        query = WebhookDelivery.select(WebhookDelivery.state, peewee.fn.COUNT(WebhookDelivery.id))
        if where is not None:
            query = query.where(where)
        rows = query.group_by(WebhookDelivery.state).tuples().execute(self.db)
        return {state: count for state, count in rows}

    def prune(self, *, older_than: float | None = None, batch: int = PRUNE_BATCH, max_batches: int | None = None) -> int:
        """Delete delivered deliveries, with their attempts, delivered more than ``older_than``
        seconds ago (default: the retention setting), oldest first, ``batch`` per short
        transaction, at most ``max_batches`` batches; returns how many deliveries went.
        Nothing else is ever deleted here: queued, running, retry and dead stay."""
        self.ensure_tables()
        age = self.settings.retention if older_than is None else older_than
        cutoff = utcnow() - dt.timedelta(seconds=age)
        oldest = (
            WebhookDelivery.select(WebhookDelivery.id)
            .where((WebhookDelivery.state == "delivered") & (WebhookDelivery.updated_at < cutoff))
            .order_by(WebhookDelivery.updated_at)
            .limit(batch)
        )
        return self._delete_in_batches(oldest, WebhookDelivery.state == "delivered", batch, max_batches)

    def discard(self, delivery_id: int | None = None, *, older_than: float | None = None) -> int:
        """Delete dead deliveries with their attempts: ``delivery_id`` (``ConflictError`` if it
        is not dead, ``NotFoundError`` if there is none), or every one dead for more than
        ``older_than`` seconds. Returns how many went."""
        if (delivery_id is None) == (older_than is None):
            raise ValueError("discard() takes a delivery id or older_than=, not both")
        self.ensure_tables()
        is_dead = NOT_DELIVERED_TERM & (WebhookDelivery.state == "dead")
        if delivery_id is not None:
            gone = self._delete_in_batches(
                WebhookDelivery.select(WebhookDelivery.id).where(WebhookDelivery.id == delivery_id), is_dead, 1, 1
            )
            if not gone:
                row = self.delivery(delivery_id)  # NotFoundError when there is none
                raise ConflictError(
                    f"webhook delivery {delivery_id} is {row.state}, not dead: only dead deliveries are "
                    "discarded (a live one is still being worked on; a delivered one goes with retention)"
                )
            return gone
        assert older_than is not None
        cutoff = utcnow() - dt.timedelta(seconds=older_than)
        oldest = (
            WebhookDelivery.select(WebhookDelivery.id)
            .where(is_dead & (WebhookDelivery.updated_at < cutoff))
            .order_by(WebhookDelivery.updated_at)
            .limit(PRUNE_BATCH)
        )
        return self._delete_in_batches(oldest, is_dead, PRUNE_BATCH, None)

    def _delete_in_batches(
        self, chosen: peewee.SelectQuery, still: peewee.Expression, batch: int, max_batches: int | None
    ) -> int:
        """Delete the deliveries ``chosen`` selects (at most ``batch``) that ``still`` holds
        for, with their attempts, a transaction per batch, until fewer than ``batch`` go."""
        total = batches = 0
        while max_batches is None or batches < max_batches:
            with self.db.atomic():
                # ``still`` is checked again by the DELETE itself: a delivery redelivered since
                # it was chosen is live work again and stays.
                ids = [
                    row[0]
                    for row in WebhookDelivery.delete_rows()
                    .where(WebhookDelivery.id.in_(chosen) & still)
                    .returning(WebhookDelivery.id)
                    .tuples()
                    .execute(self.db)
                ]
                if ids:
                    # ON DELETE CASCADE took them where foreign keys are enforced; this covers
                    # a database where they are not.
                    WebhookAttempt.delete_rows().where(WebhookAttempt.delivery.in_(ids)).execute(self.db)
            total += len(ids)
            batches += 1
            if len(ids) < batch:
                break
        return total
