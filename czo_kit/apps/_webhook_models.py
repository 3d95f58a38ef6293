"""The webhook tables (deliveries, their attempts, the circuit of each target origin) and the
dispatcher's settings."""

from __future__ import annotations

from dataclasses import dataclass

import peewee

from czo_kit.apps.registry import AppInstallation
from czo_kit.db.model import BytesField, KitTable, UTCDateTimeField

__all__ = [
    "DEFAULT_SCHEDULE",
    "LIVE_STATES",
    "NOT_DELIVERED",
    "WEBHOOK_MODELS",
    "WebhookAttempt",
    "WebhookCircuit",
    "WebhookDelivery",
    "WebhookSettings",
]

DEFAULT_SCHEDULE: tuple[float, ...] = (10, 60, 300, 1800, 3600, 7200, 14400)
"""Seconds before each retry: 8 attempts in all, over about 7.5 hours."""

LIVE_STATES: tuple[str, ...] = ("queued", "running", "retry")
"""States a worker still has to act on."""

NOT_DELIVERED: tuple[str, ...] = (*LIVE_STATES, "dead")
"""Every state but ``delivered``: live work and dead letters (which stay until an operator
redelivers or discards them)."""


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

    class Meta:
        table_name = "czo_webhook_delivery"
        indexes = ((("state", "updated_at"), False),)


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
    shutdown_timeout: float = 3.0
    """Seconds ``close()`` waits for the queue to take the deliveries the relay still holds."""
