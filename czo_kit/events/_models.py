"""The tables of durable async events: the outbox, one delivery per (event, subscriber), dead
letters and the markers of ``idempotent`` handlers."""

from __future__ import annotations

import peewee

from czo_kit.db.model import BytesField, KitTable, UTCDateTimeField

__all__ = ["EVENT_MODELS", "TRACEBACK_LIMIT", "DeadLetter", "EventDelivery", "EventOutbox", "ProcessedEvent"]

TRACEBACK_LIMIT = 8192
"""Characters of a failed handler's traceback that are kept (the end: where it raised)."""


class EventOutbox(KitTable):
    """An async event, written in the transaction that emitted it."""

    event_id = peewee.CharField(max_length=36, primary_key=True)
    name = peewee.CharField(max_length=200)
    payload = BytesField()
    actor = peewee.CharField(max_length=200, null=True)
    correlation_id = peewee.CharField(max_length=64)
    causation_id = peewee.CharField(max_length=36, null=True)
    created_at = UTCDateTimeField()
    deliver_at = UTCDateTimeField()
    retries = peewee.IntegerField()
    priority = peewee.IntegerField()
    state = peewee.CharField(max_length=16, default="pending")
    updated_at = UTCDateTimeField()
    subscribers = peewee.TextField(null=True)
    """The producer's subscribers of the event (a JSON list of ids after ``<name>|``), so that a
    worker without some of them still creates their deliveries."""

    class Meta:
        table_name = "czo_event_outbox"
        indexes = ((("state", "updated_at"), False),)


class EventDelivery(KitTable):
    """One subscriber's delivery of one event: the unit that is retried and recovered.

    States: ``queued``, ``running``, ``retry`` (after a failure), ``waiting`` (for a worker
    that has the subscriber), then ``done``, ``dead`` or ``discarded`` (by an operator).
    """

    id = peewee.BigAutoField()
    event_id = peewee.CharField(max_length=36, index=True)
    subscriber = peewee.CharField(max_length=460)
    state = peewee.CharField(max_length=16, default="queued")
    attempts = peewee.IntegerField(default=0)
    max_attempts = peewee.IntegerField()
    priority = peewee.IntegerField(default=50)
    next_attempt_at = UTCDateTimeField(null=True)
    lease_until = UTCDateTimeField(null=True)
    last_error = peewee.TextField(null=True)
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()
    finished_at = UTCDateTimeField(null=True)
    last_traceback = peewee.TextField(null=True)
    """The traceback of the last failed attempt, its last ``TRACEBACK_LIMIT`` characters."""

    class Meta:
        table_name = "czo_event_delivery"
        indexes = (
            (("event_id", "subscriber"), True),
            (("state", "updated_at"), False),
        )


class DeadLetter(KitTable):
    """A delivery that exhausted its retries; ``czo-kit events replay ID`` sends it again."""

    id = peewee.BigAutoField()
    delivery_id = peewee.BigIntegerField(index=True)
    event_id = peewee.CharField(max_length=36)
    name = peewee.CharField(max_length=200)
    subscriber = peewee.CharField(max_length=460)
    attempts = peewee.IntegerField()
    error = peewee.TextField(null=True)
    died_at = UTCDateTimeField()
    replayed_at = UTCDateTimeField(null=True)
    traceback = peewee.TextField(null=True)
    """The traceback of the last attempt, its last ``TRACEBACK_LIMIT`` characters."""

    class Meta:
        table_name = "czo_event_dead_letter"


class ProcessedEvent(KitTable):
    """Markers written by ``idempotent`` handlers, in the same transaction as their effects."""

    key = peewee.CharField(max_length=500, primary_key=True)
    processed_at = UTCDateTimeField()

    class Meta:
        table_name = "czo_event_processed"


EVENT_MODELS: tuple[type[peewee.Model], ...] = (EventOutbox, EventDelivery, DeadLetter, ProcessedEvent)
