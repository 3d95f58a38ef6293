"""Who is acting, and as part of what: the actor (``user:<id>``, ``app:<id>``, ``cli:<user>``)
and the correlation id of the work in progress, an HTTP request or a CLI command. Events
emitted meanwhile carry them (repository events too), so do the webhooks and async handlers
those events cause, and log records through ``ContextFilter`` / ``JSONLogFormatter``."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "ContextFilter",
    "JSONLogFormatter",
    "acting",
    "clean_correlation_id",
    "current_actor",
    "current_correlation_id",
]

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("czo_actor", default=None)
# Shared with EventEmitter.correlation(): one notion of "the correlation id of this work".
correlation_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("czo_correlation", default=None)

# What a correlation id taken from outside (an X-Request-ID header) may look like: it is
# echoed in responses and written in logs and webhook headers, so nothing else gets through.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")


def current_actor() -> str | None:
    """The actor of the work in progress (the event being handled wins), if known."""
    from czo_kit.events.emitter import current_event

    event = current_event()
    if event is not None and event.actor is not None:
        return event.actor
    return _actor.get()


def current_correlation_id() -> str | None:
    """The correlation id of the work in progress (the event being handled wins), if any."""
    from czo_kit.events.emitter import current_event

    event = current_event()
    if event is not None:
        return event.correlation_id
    return correlation_var.get()


def clean_correlation_id(value: Any) -> str | None:
    """``value`` if it is a safe correlation id (1-128 letters, digits and ``._:@/+=-``,
    starting with a letter or digit), else None: a caller's X-Request-ID is taken only then."""
    if isinstance(value, str) and _SAFE_ID.fullmatch(value):
        return value
    return None


@contextlib.contextmanager
def acting(actor: str | None = None, *, correlation_id: str | None = None) -> Iterator[str]:
    """Run the block as ``actor``, under ``correlation_id`` (a new one if not given); yields
    the correlation id. Events emitted inside carry both unless they name their own actor."""
    from czo_kit.events.types import uuid7

    value = correlation_id or uuid7()
    actor_token = _actor.set(actor)
    correlation_token = correlation_var.set(value)
    try:
        yield value
    finally:
        correlation_var.reset(correlation_token)
        _actor.reset(actor_token)


def set_actor(actor: str | None) -> contextvars.Token[str | None]:
    """Name the actor once known (after authentication); reset with the returned token."""
    return _actor.set(actor)


def reset_actor(token: contextvars.Token[str | None]) -> None:
    _actor.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``correlation_id``, ``actor`` and ``event_id`` (None where unknown) to every
    record; attach it to a handler to use them in any format."""

    def filter(self, record: logging.LogRecord) -> bool:
        from czo_kit.events.emitter import current_event

        event = current_event()
        record.correlation_id = event.correlation_id if event is not None else correlation_var.get()
        record.actor = event.actor if event is not None and event.actor is not None else _actor.get()
        record.event_id = event.event_id if event is not None else None
        return True


class JSONLogFormatter(logging.Formatter):
    """One JSON object per line (``CZO_LOG_FORMAT=json``): time, level, logger, message, and
    the event id, correlation id and actor when known, the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("event_id", "correlation_id", "actor"):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        # As logging.Formatter does: a traceback already formatted (and scrubbed of secrets by
        # the kit, for webhook failures) in exc_text is used as it is.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["traceback"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)
