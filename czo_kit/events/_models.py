"""The tables of durable async events: the outbox, one delivery per (event, subscriber), dead
letters and the markers of ``idempotent`` handlers."""

from __future__ import annotations

import peewee

from czo_kit.db.model import BytesField, KitTable, UTCDateTimeField
from czo_kit.events._heartbeat import WorkerHeartbeat

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
        indexes = ((("event_id", "subscriber"), True),)


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
    discarded_at = UTCDateTimeField(null=True)
    """When an operator gave up on it (``czo-kit events discard ID``)."""

    class Meta:
        table_name = "czo_event_dead_letter"


class ProcessedEvent(KitTable):
    """Markers written by ``idempotent`` handlers, in the same transaction as their effects."""

    key = peewee.CharField(max_length=500, primary_key=True)
    processed_at = UTCDateTimeField()

    class Meta:
        table_name = "czo_event_processed"


# Sweeps, status and recovery read only live rows, and delivered rows pile up until they are
# pruned: each table's live rows have a partial index of their own (SQLite and PostgreSQL
# both have them), so that what a sweep reads does not grow with what is kept. A query uses
# one only if it repeats its predicate word for word, with the values inline (SQLite does
# not look into bound parameters): hence these expressions, shared by the indexes and the
# queries. Finished rows have one too, for the prune.

OUTBOX_LIVE_STATES = ("pending", "queued")
DELIVERY_LIVE_STATES = ("queued", "running", "retry", "waiting")
DELIVERY_FINISHED_STATES = ("done", "discarded")

OUTBOX_LIVE = peewee.ValueLiterals(EventOutbox.state.in_(OUTBOX_LIVE_STATES))
OUTBOX_DISPATCHED = peewee.ValueLiterals(EventOutbox.state == "dispatched")
DELIVERY_LIVE = peewee.ValueLiterals(EventDelivery.state.in_(DELIVERY_LIVE_STATES))
DELIVERY_FINISHED = peewee.ValueLiterals(EventDelivery.state.in_(DELIVERY_FINISHED_STATES))
LETTER_OPEN = DeadLetter.replayed_at.is_null(True) & DeadLetter.discarded_at.is_null(True)

EventOutbox.add_index(EventOutbox.index(EventOutbox.state, EventOutbox.updated_at, name="czo_event_outbox_live",
                                        where=OUTBOX_LIVE))
EventOutbox.add_index(EventOutbox.index(EventOutbox.updated_at, name="czo_event_outbox_dispatched",
                                        where=OUTBOX_DISPATCHED))
EventDelivery.add_index(EventDelivery.index(EventDelivery.state, EventDelivery.updated_at,
                                            name="czo_event_delivery_live", where=DELIVERY_LIVE))
EventDelivery.add_index(EventDelivery.index(EventDelivery.finished_at, name="czo_event_delivery_finished",
                                            where=DELIVERY_FINISHED))
DeadLetter.add_index(DeadLetter.index(DeadLetter.died_at, name="czo_event_dead_letter_open", where=LETTER_OPEN))
ProcessedEvent.add_index(ProcessedEvent.index(ProcessedEvent.processed_at, name="czo_event_processed_at"))

EVENT_MODELS: tuple[type[peewee.Model], ...] = (EventOutbox, EventDelivery, DeadLetter, ProcessedEvent, WorkerHeartbeat)
