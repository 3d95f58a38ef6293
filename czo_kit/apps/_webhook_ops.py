"""What operators do with webhook deliveries: list them and their attempts, count them by
state, send them again. A part of ``WebhookDispatcher`` kept in a module of its own."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence

import peewee

from czo_kit.apps._circuits import CircuitBreaker, CircuitState
from czo_kit.apps._webhook_models import NOT_DELIVERED, WebhookAttempt, WebhookDelivery, WebhookSettings
from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.errors import NotFoundError

__all__ = ["WebhookOperations", "next_attempt_at"]


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
            query = query.where(WebhookDelivery.state == state)
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
        """Queue a delivery again (any state but running), or every dead one, with fresh attempts."""
        self.ensure_tables()
        now = utcnow()
        if all_dead:
            ids = [r[0] for r in WebhookDelivery.select(WebhookDelivery.id).where(WebhookDelivery.state == "dead").tuples().execute(self.db)]
        else:
            row = WebhookDelivery.select().where(WebhookDelivery.id == delivery_id).first(self.db)
            if row is None:
                raise NotFoundError("WebhookDelivery", delivery_id)
            ids = [int(row.id)]
        if ids:
            WebhookDelivery.update(
                state="queued", attempts=0, next_attempt_at=None, lease_until=None, updated_at=now
            ).where(WebhookDelivery.id.in_(ids) & (WebhookDelivery.state != "running")).execute(self.db)
            on_commit(self.db, lambda: self._enqueue_all(ids))
        return ids

    def circuits(self) -> list[CircuitState]:
        """Targets whose circuit is open or probing, with when each is probed next and how many
        deliveries wait for it; an empty list when every target is healthy."""
        self.ensure_tables()
        states = self.breaker.states(None, utcnow())
        if not states:
            return []
        # The live partial index holds the waiting deliveries (SQLite uses it only when the
        # query repeats its condition, hence the NOT_DELIVERED term).
        waiting = dict(
            WebhookDelivery.select(WebhookDelivery.origin, peewee.fn.COUNT(WebhookDelivery.id))
            .where(
                WebhookDelivery.state.in_(NOT_DELIVERED)
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

    def stats(self) -> dict[str, int]:
        self.ensure_tables()
        rows = (
            WebhookDelivery.select(WebhookDelivery.state, peewee.fn.COUNT(WebhookDelivery.id))
            .group_by(WebhookDelivery.state).tuples().execute(self.db)
        )
        return {state: count for state, count in rows}
