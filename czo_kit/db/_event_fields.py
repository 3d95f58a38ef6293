"""The startup check that a declared event still carries every column of its model.

A repository's event payload is the written row; converting it to a declared ``Event`` keeps
the Struct's fields and drops the rest without a word. A column added to a model later would
thus never reach subscribers, webhooks or the outbox. The kit refuses to start instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import peewee

from czo_kit.db.mutations import PAST_TENSE
from czo_kit.events.types import Event, InvalidEventError, event_types

__all__ = ["check_model_events", "model_events"]


def model_events(models: Iterable[type[peewee.Model]]) -> list[tuple[type[Event], type[peewee.Model]]]:
    """Each declared event that carries rows of one of ``models``, with that model.

    An event is tied to a model by ``model=``, or, without it, by the name a repository of
    the model emits by default (``<table>.created``, ...).
    """
    by_table = {m._meta.table_name: m for m in models}
    wanted = set(by_table.values())
    verbs = set(PAST_TENSE.values())
    found: list[tuple[type[Event], type[peewee.Model]]] = []
    for name, kind in sorted(event_types().items()):
        model = kind.__event_model__
        if model is None:
            table, _, verb = name.rpartition(".")
            model = by_table.get(table) if verb in verbs else None
        if model in wanted:
            found.append((kind, model))
    return found


def check_model_events(models: Iterable[type[peewee.Model]]) -> None:
    """``InvalidEventError`` naming every event whose fields are not its model's columns."""
    problems: list[str] = []
    for kind, model in model_events(models):
        columns = [f.name for f in model._meta.sorted_fields]
        fields = list(kind.__struct_fields__)
        omit = kind.__event_omit__
        missing = [c for c in columns if c not in fields and c not in omit]
        extra = [f for f in fields if f not in columns]
        unknown = sorted(omit - set(columns))
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"extra {', '.join(extra)}")
        if unknown:
            parts.append(f"omit= names {', '.join(unknown)}, which are not columns")
        if parts:
            problems.append(
                f"event {kind.__event_name__ or kind.__name__!r} ({kind.__module__}.{kind.__qualname__}) "
                f"and its model {model.__name__}: {', '.join(parts)}"
            )
    if problems:
        raise InvalidEventError(
            "declared events do not match their models' columns: "
            + "; ".join(problems)
            + ". Add each missing column to the event (or name it in omit= to leave it out on "
            "purpose, or subscribers would never see it) and remove each extra field (the row "
            "has no such column)"
        )
