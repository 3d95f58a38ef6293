"""Retention: what the kit deletes once ``CZO_EVENTS_RETENTION`` has run out, so that its
tables stay as large as a few days of traffic, however long it runs.

Deleted, older than the retention: finished deliveries (``done``, ``discarded``), outbox rows
that were dispatched and have no delivery still at work or dead, dead letters that were
replayed or discarded, idempotency markers, and the heartbeats of workers long gone. Never
deleted: anything pending, queued, running, retrying, waiting, or dead and not yet handled.

Each batch is one short statement of its own (no long transaction, no long lock), and reads
through an index on the finished rows, so a prune costs what it deletes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import peewee

from czo_kit.db.model import KitTable
from czo_kit.events._heartbeat import WorkerHeartbeat
from czo_kit.events._models import (
    DELIVERY_FINISHED,
    DELIVERY_FINISHED_STATES,
    OUTBOX_DISPATCHED,
    DeadLetter,
    EventDelivery,
    EventOutbox,
    ProcessedEvent,
)

__all__ = ["PRUNE_BATCH", "prune"]

PRUNE_BATCH = 500
"""Rows one statement deletes at most: short enough that no writer waits on it for long."""


def _finished_deliveries(before: dt.datetime, batch: int) -> peewee.Query:
    return (
        EventDelivery.select(EventDelivery.id)
        .where(DELIVERY_FINISHED & (EventDelivery.finished_at < before))
        .order_by(EventDelivery.finished_at)
        .limit(batch)
    )


def _delivered_events(before: dt.datetime, batch: int) -> peewee.Query:
    # A dispatched event is kept while any of its deliveries may still run (or be replayed):
    # a delivery reads its event's row for the payload.
    Other = EventDelivery.alias()
    at_work = Other.select(Other.id).where(
        (Other.event_id == EventOutbox.event_id) & Other.state.not_in(DELIVERY_FINISHED_STATES)
    )
    return (
        EventOutbox.select(EventOutbox.event_id)
        .where(OUTBOX_DISPATCHED & (EventOutbox.updated_at < before) & ~peewee.fn.EXISTS(at_work))
        .order_by(EventOutbox.updated_at)
        .limit(batch)
    )


def _closed_letters(before: dt.datetime, batch: int) -> peewee.Query:
    return (
        DeadLetter.select(DeadLetter.id)
        .where((DeadLetter.replayed_at < before) | (DeadLetter.discarded_at < before))
        .limit(batch)
    )


def _old_markers(before: dt.datetime, batch: int) -> peewee.Query:
    return (
        ProcessedEvent.select(ProcessedEvent.key)
        .where(ProcessedEvent.processed_at < before)
        .order_by(ProcessedEvent.processed_at)
        .limit(batch)
    )


def _gone_workers(before: dt.datetime, batch: int) -> peewee.Query:
    return WorkerHeartbeat.select(WorkerHeartbeat.id).where(WorkerHeartbeat.last_seen < before).limit(batch)


_STEPS: tuple[tuple[str, type[KitTable], peewee.Field, Callable[[dt.datetime, int], peewee.Query]], ...] = (
    # Deliveries first: an event goes once its deliveries are done with.
    ("deliveries", EventDelivery, EventDelivery.id, _finished_deliveries),
    ("events", EventOutbox, EventOutbox.event_id, _delivered_events),
    ("dead_letters", DeadLetter, DeadLetter.id, _closed_letters),
    ("markers", ProcessedEvent, ProcessedEvent.key, _old_markers),
    ("workers", WorkerHeartbeat, WorkerHeartbeat.id, _gone_workers),
)


def prune(
    db: peewee.Database, *, before: dt.datetime, batch: int = PRUNE_BATCH, budget: float | None = None
) -> dict[str, int]:
    """Delete what is finished and older than ``before``, ``batch`` rows per statement, until
    nothing is left or ``budget`` seconds have gone (the next call goes on); how many rows of
    each kind went."""
    deadline = time.monotonic() + budget if budget is not None else None
    counts = {name: 0 for name, *_ in _STEPS}
    for name, model, key, candidates in _STEPS:
        while deadline is None or time.monotonic() < deadline:
            # The sub-select is the index range scan; the DELETE goes by primary key.
            deleted = int(model.delete_rows().where(key.in_(candidates(before, batch))).execute(db))
            counts[name] += deleted
            if deleted < batch:
                break
    return counts
