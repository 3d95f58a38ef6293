"""Checks of the options that shape a repository's writes: ``event_prefix`` and ``input_type``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import peewee

from czo_kit.errors import InvalidDataError

__all__ = ["check_input_type", "check_prefix"]


def check_prefix(prefix: Any) -> str:
    """``prefix`` if ``<prefix>.created`` and the other event names it makes are valid."""
    from czo_kit.events.types import InvalidEventError, check_event_name

    if not isinstance(prefix, str) or not prefix or prefix.startswith(".") or prefix.endswith("."):
        raise InvalidEventError(
            f"event_prefix {prefix!r}: expected text such as 'catalog.item' (events are then "
            "'catalog.item.created', ...), not starting or ending with '.'"
        )
    try:
        # The longest name it makes: if that one is valid, all are.
        check_event_name(f"{prefix}.hard_deleted")
    except InvalidEventError as exc:
        raise InvalidEventError(f"event_prefix {prefix!r}: {exc}") from None
    return prefix


def _input_fields(input_type: Any) -> list[str] | None:
    """The field names of a msgspec Struct class or a TypedDict class; None for anything else."""
    if input_type is msgspec.Struct:
        return None  # the base class itself, not a declared input
    if isinstance(input_type, type) and issubclass(input_type, msgspec.Struct):
        return list(input_type.__struct_fields__)
    # typing and typing_extensions each make their own TypedDicts: both are dict subclasses
    # with __total__ and __annotations__.
    if isinstance(input_type, type) and issubclass(input_type, dict) and hasattr(input_type, "__total__"):
        return list(getattr(input_type, "__annotations__", {}))
    return None


def check_input_type(
    model: type[peewee.Model], names: Iterable[str], input_type: Any, *, managed: frozenset[str]
) -> type[Any]:
    """``input_type`` if it is a Struct or TypedDict whose fields the model can take."""
    fields = _input_fields(input_type)
    if fields is None:
        raise TypeError(
            f"{model.__name__}: input_type must be a msgspec Struct class or a TypedDict class, "
            f"got {input_type!r}"
        )
    allowed = [n for n in names if n not in managed]
    wrong = [f for f in fields if f not in allowed]
    if wrong:
        # Caught here, where it is declared: mypy checks callers against the input type, but
        # nothing would check the input type against the model.
        raise InvalidDataError(
            f"{model.__name__}: input_type {input_type.__name__} has field(s) "
            f"{', '.join(wrong)} that {model.__name__} cannot take; allowed: {', '.join(allowed)}",
            field=wrong[0],
        )
    checked: type[Any] = input_type
    return checked
