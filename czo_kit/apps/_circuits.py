"""The circuit breaker of webhook targets, one circuit per origin (scheme, host and port).

After ``threshold`` consecutive retryable failures an origin is paused for ``cooldown``
seconds: its deliveries wait, they are not dropped. After the cool-down one caller takes the
single probe (half-open); its success closes the circuit, its failure pauses it again.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import peewee

from czo_kit.apps._webhook_models import WebhookCircuit
from czo_kit.db._sql import Slot, model_info

__all__ = ["CircuitBreaker", "CircuitRow"]

log = logging.getLogger("czo_kit.webhooks")

CircuitRow = tuple[int, "dt.datetime | None"]
"""(consecutive failures, paused until) of one origin, as the worker reads it."""


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
                WebhookCircuit.update(opened_until=probe_until, updated_at=now)
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
        current = self.row(origin)
        failures = (current[0] if current is not None else 0) + 1
        opened = None
        if failures >= self.threshold:
            opened = now + dt.timedelta(seconds=self.cooldown)
            if current is None or current[1] is None or current[1] <= now:
                log.warning("webhook target %s failed %d times in a row: paused for %ss", origin, failures, self.cooldown)
        (
            WebhookCircuit.insert(origin=origin, failures=failures, opened_until=opened, updated_at=now)
            .on_conflict(
                conflict_target=[WebhookCircuit.origin],
                update={WebhookCircuit.failures: failures, WebhookCircuit.opened_until: opened, WebhookCircuit.updated_at: now},
            )
            .execute(self.db)
        )
