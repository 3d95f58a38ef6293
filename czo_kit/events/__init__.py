"""``czo_kit.events``: typed events between modules, in-process (``emit``) and through a
durable queue (``emit_async``), at least once, with retries and a dead-letter table."""

from __future__ import annotations

from czo_kit.events.emitter import EventEmitter, Subscription, current_event
from czo_kit.events.outbox import idempotent
from czo_kit.events.types import (
    Event,
    EventContext,
    EventError,
    EventHandlerError,
    InvalidEventError,
    Priority,
    event_type,
    uuid7,
)

__all__ = [
    "Event",
    "EventContext",
    "EventEmitter",
    "EventError",
    "EventHandlerError",
    "InvalidEventError",
    "Priority",
    "Subscription",
    "current_event",
    "event_type",
    "idempotent",
    "uuid7",
]
