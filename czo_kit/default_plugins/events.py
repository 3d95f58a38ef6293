"""The tables of durable async events (outbox, deliveries, dead letters, idempotency markers)."""

from __future__ import annotations

from typing import Any

from czo_kit.events.outbox import EVENT_MODELS
from czo_kit.hookspecs import hookimpl


@hookimpl
def czo_register_models(register: Any) -> None:
    register(*EVENT_MODELS)
