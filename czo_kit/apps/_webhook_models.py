"""The webhook tables (deliveries, their attempts, the circuit of each target origin) and the
dispatcher's settings.

Deliveries are read two ways. The worker, the sweep and ``stats`` want live work (queued,
running, retry) and dead letters: a handful of rows whatever the history. Pruning wants the
oldest delivered rows. Each has a partial index of its own, so neither reads the other's rows,
and both cost the same with a week of history as on an empty table.
"""

from __future__ import annotations

from dataclasses import dataclass

import peewee

from czo_kit.apps.registry import AppInstallation
from czo_kit.db.model import BytesField, KitTable, UTCDateTimeField

__all__ = [
    "DEFAULT_RETENTION",
    "DEFAULT_SCHEDULE",
    "LIVE_STATES",
    "NOT_DELIVERED",
    "NOT_DELIVERED_TERM",
    "WEBHOOK_MODELS",
    "WebhookAttempt",
    "WebhookCircuit",
    "WebhookDelivery",
    "WebhookSettings",
]

DEFAULT_SCHEDULE: tuple[float, ...] = (10, 60, 300, 1800, 3600, 7200, 14400)
"""Seconds before each retry: 8 attempts in all, over about 7.5 hours."""

DEFAULT_RETENTION = 7 * 86400.0
"""Seconds a delivered delivery (and its attempts) is kept before it is pruned."""

LIVE_STATES: tuple[str, ...] = ("queued", "running", "retry")
"""States a worker still has to act on."""

NOT_DELIVERED: tuple[str, ...] = (*LIVE_STATES, "dead")
"""Every state but ``delivered``: live work and dead letters (which stay until an operator
redelivers or discards them): what the live index holds."""


class WebhookDelivery(KitTable):
    id = peewee.BigAutoField()
    message_id = peewee.CharField(max_length=48, unique=True)
    installation = peewee.ForeignKeyField(AppInstallation, on_delete="CASCADE", backref="deliveries")
    shop_id = peewee.IntegerField(index=True)
    webhook_name = peewee.CharField(max_length=64)
    event_id = peewee.CharField(max_length=36)
    event_name = peewee.CharField(max_length=200)
    target_url = peewee.CharField(max_length=2000)
    origin = peewee.CharField(max_length=300)
    body = BytesField()
    state = peewee.CharField(max_length=16, default="queued")
    attempts = peewee.IntegerField(default=0)
    max_attempts = peewee.IntegerField()
    next_attempt_at = UTCDateTimeField(null=True)
    lease_until = UTCDateTimeField(null=True)
    last_status = peewee.IntegerField(null=True)
    last_error = peewee.TextField(null=True)
    last_error_detail = peewee.TextField(null=True)
    """The traceback of the last attempt, when it failed with an exception: bounded, with the
    target's query string and the signing secrets masked (``czo-kit webhooks dead ID``)."""
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()
    delivered_at = UTCDateTimeField(null=True)
    correlation_id = peewee.TextField(null=True)
    """The correlation id of the event (of the request or command that caused it), sent as
    ``X-CZO-Correlation-Id``."""

    class Meta:
        table_name = "czo_webhook_delivery"


# Partial indexes (PostgreSQL and SQLite both have them). SQLite uses one only when the query
# repeats its WHERE term (a bound parameter may stand for the literal), so the queries that
# want the live index say `state != 'delivered'` (NOT_DELIVERED_TERM), even next to a
# narrower condition on the state. The conditions are literals: SQLite refuses parameters in
# a CREATE INDEX. They replace a (state, updated_at) index over every row: an older
# installation keeps that one until an operator drops it (docs/operations-webhooks.md).
WebhookDelivery.add_index(
    WebhookDelivery.state, WebhookDelivery.updated_at,
    where=WebhookDelivery.state != peewee.SQL("'delivered'"), name="czo_webhook_delivery_live",
)
WebhookDelivery.add_index(
    WebhookDelivery.updated_at,
    where=WebhookDelivery.state == peewee.SQL("'delivered'"), name="czo_webhook_delivery_delivered",
)

NOT_DELIVERED_TERM = WebhookDelivery.state != "delivered"
"""The live index's condition, for queries to repeat (see above)."""


class WebhookAttempt(KitTable):
    id = peewee.BigAutoField()
    delivery = peewee.ForeignKeyField(WebhookDelivery, on_delete="CASCADE", backref="attempt_log")
    attempt = peewee.IntegerField()
    at = UTCDateTimeField()
    status = peewee.IntegerField(null=True)
    duration_ms = peewee.FloatField()
    response = peewee.TextField(null=True)
    error = peewee.TextField(null=True)
    error_detail = peewee.TextField(null=True)
    """The attempt's traceback when it failed with an exception (bounded and scrubbed)."""

    class Meta:
        table_name = "czo_webhook_attempt"


class WebhookCircuit(KitTable):
    """A target origin that failed lately. ``opened_until`` is set while it is paused: until
    then its deliveries wait. ``probe_started_at`` is set while the one probe allowed after a
    cool-down is out (``opened_until`` is then the probe's own deadline)."""

    origin = peewee.CharField(max_length=300, primary_key=True)
    failures = peewee.IntegerField(default=0)
    opened_until = UTCDateTimeField(null=True)
    probe_started_at = UTCDateTimeField(null=True)
    updated_at = UTCDateTimeField()

    class Meta:
        table_name = "czo_webhook_circuit"


WEBHOOK_MODELS: tuple[type[peewee.Model], ...] = (WebhookDelivery, WebhookAttempt, WebhookCircuit)


@dataclass(frozen=True)
class WebhookSettings:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    lease: float = 120.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 60.0
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    retention: float = DEFAULT_RETENTION
    """Seconds a delivered delivery is kept; then the sweep (or ``webhooks prune``) deletes it."""
    shutdown_timeout: float = 3.0
    """Seconds ``close()`` waits for the queue to take the deliveries the relay still holds."""
