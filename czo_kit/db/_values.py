"""Checks that a value fits a field before it reaches the driver, with a readable reason.

Peewee passes most wrong values through untouched (``IntegerField`` keeps ``"ten"``), and each
database then does something different: SQLite stores it, PostgreSQL raises a driver error.
Checking here makes both backends refuse the same inputs with the same message.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import uuid
from typing import Any

import peewee

__all__ = ["coerce", "int_bound"]

_INT_TEXT = re.compile(r"[+-]?\d{1,20}")
_RANGES = {
    peewee.SmallIntegerField: 2**15,
    peewee.BigIntegerField: 2**63,
    peewee.BigAutoField: 2**63,
    peewee.IntegerField: 2**31,
}


def int_bound(field: peewee.Field) -> int:
    """The integers ``field`` holds are ``-bound <= n < bound``."""
    for kind, bound in _RANGES.items():
        if isinstance(field, kind):
            return bound
    return 2**63


def _target(field: peewee.Field) -> peewee.Field:
    if isinstance(field, peewee.ForeignKeyField):
        rel: peewee.Field = field.rel_field
        return rel
    return field


def coerce(field: peewee.Field, value: Any) -> Any:
    """``value`` as the field expects it, or ``ValueError`` saying what was expected.

    ``None`` is returned unchanged (nullability is the caller's rule).
    """
    if value is None:
        return None
    if isinstance(value, peewee.Node):
        raise ValueError("values must be plain data, not SQL expressions")
    target = _target(field)
    if isinstance(target, peewee.BooleanField):
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {_kind(value)}")
    if isinstance(target, peewee.IntegerField):
        return _integer(target, value)
    if isinstance(target, peewee.FloatField):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected a number, got {_kind(value)}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if isinstance(target, peewee.DecimalField):
        if isinstance(value, bool) or not isinstance(value, (int, float, str, decimal.Decimal)):
            raise ValueError(f"expected a decimal number, got {_kind(value)}")
        try:
            number_d = decimal.Decimal(str(value)) if not isinstance(value, decimal.Decimal) else value
        except decimal.InvalidOperation:
            raise ValueError(f"expected a decimal number, got {value!r}") from None
        if not number_d.is_finite():
            raise ValueError("expected a finite decimal number")
        return number_d
    if isinstance(target, (peewee.CharField, peewee.TextField)):
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_kind(value)}")
        if "\x00" in value:
            raise ValueError("strings cannot contain NUL characters")
        limit = getattr(target, "max_length", None)
        if isinstance(target, peewee.CharField) and limit and len(value) > limit:
            raise ValueError(f"{len(value)} characters is longer than the {limit} allowed")
        return value
    if isinstance(target, peewee.DateTimeField):
        if isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"expected an ISO 8601 datetime, got {value!r}") from None
        raise ValueError(f"expected a datetime, got {_kind(value)}")
    if isinstance(target, peewee.DateField):
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"expected an ISO 8601 date, got {value!r}") from None
        raise ValueError(f"expected a date, got {_kind(value)}")
    if isinstance(target, peewee.UUIDField):
        if isinstance(value, uuid.UUID):
            return value
        try:
            return uuid.UUID(str(value))
        except ValueError:
            raise ValueError(f"expected a UUID, got {value!r}") from None
    if isinstance(target, peewee.BlobField):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return value
        raise ValueError(f"expected bytes, got {_kind(value)}")
    try:
        target.db_value(value)
    except (ValueError, TypeError, OverflowError, decimal.InvalidOperation, AttributeError):
        raise ValueError(f"{value!r} is not a valid {type(target).__name__} value") from None
    return value


def _integer(field: peewee.Field, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        number = int(value)
    elif isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        number = int(value)
    else:
        raise ValueError(f"expected an integer, got {value!r}" if isinstance(value, (str, float)) else f"expected an integer, got {_kind(value)}")
    bound = int_bound(field)
    if not -bound <= number < bound:
        raise ValueError(
            f"{number} is out of range: {type(field).__name__} holds integers from {-bound} to {bound - 1}"
        )
    return number


def _kind(value: Any) -> str:
    return type(value).__name__
