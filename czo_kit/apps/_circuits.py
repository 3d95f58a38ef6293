"""The circuit breaker of webhook targets, one circuit per origin (scheme, host and port).

After ``threshold`` consecutive retryable failures an origin is paused for ``cooldown``
seconds: its deliveries wait, they are not dropped. After the cool-down one caller takes the
single probe (half-open); its success closes the circuit, its failure pauses it again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import peewee

from czo_kit.apps._webhook_models import WebhookCircuit
from czo_kit.db._sql import Slot, model_info

__all__ = ["CircuitBreaker", "CircuitRow", "CircuitState"]

log = logging.getLogger("czo_kit.webhooks")

CircuitRow = tuple[int, "dt.datetime | None"]
"""(consecutive failures, paused until) of one origin, as the worker reads it."""


@dataclass(frozen=True)
class CircuitState:
    """How a target origin stands, as an operator sees it.

    ``closed``: deliveries go out (``failures`` counts recent failures below the threshold).
    ``open``: paused; ``next_probe_at`` is when the cool-down ends and the next delivery is
    sent as the probe (in the past: the probe is due, waiting for a delivery to carry it).
    ``probing``: the probe is out since ``probe_started_at``; ``next_probe_at`` is when another
    probe may go if this one never reports back.
    """

    origin: str
    state: Literal["closed", "open", "probing"]
    failures: int
    next_probe_at: dt.datetime | None
    probe_started_at: dt.datetime | None
    waiting: int = 0
    """Deliveries to this origin waiting to be sent (queued or retry)."""


def circuit_state(origin: str, row: WebhookCircuit | None, now: dt.datetime, *, waiting: int = 0) -> CircuitState:
    if row is None or row.opened_until is None:
        failures = int(row.failures) if row is not None else 0
        return CircuitState(origin, "closed", failures, None, None, waiting)
    probing = row.probe_started_at is not None and row.opened_until > now
    return CircuitState(
        origin, "probing" if probing else "open", int(row.failures), row.opened_until,
        row.probe_started_at if probing else None, waiting,
    )


class CircuitBreaker:
    def __init__(self, db: peewee.Database, *, threshold: int, cooldown: float) -> None:
        self.db = db
        self.threshold = threshold
        self.cooldown = cooldown

    def row(self, origin: str) -> CircuitRow | None:
        # Compiled once (Peewee builds it with a named slot): this runs for every delivery.
        info = model_info(WebhookCircuit, self.db)
        template = info.template(
            ("circuit",),
            lambda: WebhookCircuit.select(WebhookCircuit.failures, WebhookCircuit.opened_until).where(
                WebhookCircuit.origin == Slot("origin")
            ),
        )
        row = info.execute(template, {"origin": origin}).fetchone()
        if row is None:
            return None
        return int(row[0]), WebhookCircuit.opened_until.python_value(row[1])

    def wait(self, origin: str, now: dt.datetime, circuit: CircuitRow | None) -> float:
        """Seconds this target stays paused; 0 when closed, or when this caller takes the one
        probe allowed after a cool-down (half-open: everyone else keeps waiting)."""
        if circuit is None or circuit[1] is None:
            return 0.0
        opened_until = circuit[1]
        if opened_until <= now:
            probe_until = now + dt.timedelta(seconds=self.cooldown)
            taken = (
                WebhookCircuit.update(opened_until=probe_until, probe_started_at=now, updated_at=now)
                .where((WebhookCircuit.origin == origin) & (WebhookCircuit.opened_until <= now))
                .execute(self.db)
            )
            if taken:
                log.info("webhook target %s: cool-down over, sending one probe", origin)
                return 0.0
            again = self.row(origin)
            if again is None or again[1] is None:
                return 0.0
            opened_until = again[1]
        remaining: float = max(0.0, (opened_until - now).total_seconds())
        return remaining

    def result(self, origin: str, ok: bool, now: dt.datetime, circuit: tuple[int, Any] | None) -> None:
        if ok:
            if circuit is not None:  # nothing to close when no failure was ever recorded
                WebhookCircuit.delete_rows().where(WebhookCircuit.origin == origin).execute(self.db)
            return
        # One statement, so concurrent failures (threads, workers) each count: read, add one
        # and write back from Python would lose increments that land in between.
        opened = WebhookCircuit.opened_until.db_value(now + dt.timedelta(seconds=self.cooldown))
        count = WebhookCircuit.failures + 1
        row = (
            WebhookCircuit.insert(
                origin=origin, failures=1, opened_until=opened if self.threshold <= 1 else None, updated_at=now
            )
            .on_conflict(
                conflict_target=[WebhookCircuit.origin],
                update={
                    WebhookCircuit.failures: count,
                    WebhookCircuit.opened_until: peewee.Case(None, [(count >= self.threshold, opened)], None),
                    WebhookCircuit.probe_started_at: None, WebhookCircuit.updated_at: now,
                },
            )
            .returning(WebhookCircuit.failures)
            .tuples()
            .execute(self.db)
        )
        failures = int(next(iter(row))[0])
        if failures == self.threshold:  # exactly one caller sees the count reach it
            log.warning("webhook target %s failed %d times in a row: paused for %ss", origin, failures, self.cooldown)

    def states(self, origins: Iterable[str] | None, now: dt.datetime) -> dict[str, CircuitState]:
        """The state of each of ``origins`` (closed where no row), or with ``None`` of every
        origin that is open or probing."""
        query = WebhookCircuit.select()
        if origins is None:
            query = query.where(WebhookCircuit.opened_until.is_null(False))
            wanted: list[str] = []
        else:
            wanted = sorted(set(origins))
            if not wanted:
                return {}
            query = query.where(WebhookCircuit.origin.in_(wanted))
        rows = {str(row.origin): row for row in query.execute(self.db)}
        return {origin: circuit_state(origin, rows.get(origin), now) for origin in (wanted or sorted(rows))}
