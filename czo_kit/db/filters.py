"""``where`` filters: a mapping of ``field`` / ``field__op`` to values, compiled by Peewee.

Field names are looked up in the model, never pasted into SQL; values are bound parameters,
checked against the field's type first so that bad input is an ``InvalidFilterError`` that
names the key, not a driver error. A Peewee expression is accepted as-is (it is code, not input).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import peewee

from czo_kit.db._values import coerce
from czo_kit.errors import InvalidFilterError

__all__ = ["MAX_CONDITIONS", "MAX_IN_VALUES", "OPERATORS", "compile_where", "resolve_field"]

OPERATORS: tuple[str, ...] = (
    "eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in",
    "contains", "icontains", "startswith", "is_null",
)
MAX_CONDITIONS = 64
MAX_IN_VALUES = 10_000

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
    "lte": operator.le, "gt": operator.gt, "gte": operator.ge,
}
_COLLECTIONS = (list, tuple, set, frozenset)


def resolve_field(model: type[peewee.Model], name: Any, *, what: str = "filter") -> peewee.Field:
    """The field ``name`` of ``model`` (a foreign key also answers to its column name)."""
    fields = model._meta.fields
    if isinstance(name, peewee.Field):
        owner = name.model
        # A field of a base class is this model's field of that name; any other model's field
        # (even one named like a field here) would sort on a column of the wrong table.
        inherited = isinstance(owner, type) and issubclass(model, owner) and name.name in fields
        if owner is not model and not inherited:
            owner_name = getattr(owner, "__name__", None) or type(owner).__name__
            raise InvalidFilterError(
                f"{what}: field {name.name!r} belongs to {owner_name}, not {model.__name__}; "
                f"use a field of {model.__name__} ({', '.join(sorted(fields))})"
            )
        found: peewee.Field = fields[name.name]
        return found
    if not isinstance(name, str):
        raise InvalidFilterError(f"{what}: field names must be strings, got {name!r}")
    field = fields.get(name)
    if field is None:
        for candidate in model._meta.sorted_fields:
            if candidate.column_name == name:
                matched: peewee.Field = candidate
                return matched
        raise InvalidFilterError(
            f"{what}: unknown field {name!r} on {model.__name__}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    resolved: peewee.Field = field
    return resolved


def _split_key(model: type[peewee.Model], key: Any) -> tuple[peewee.Field, str]:
    if not isinstance(key, str):
        raise InvalidFilterError(f"filter keys must be strings like 'price__gte', got {key!r}")
    name, sep, op = key.rpartition("__")
    if not sep:
        return resolve_field(model, key), "eq"
    if op not in OPERATORS:
        if key in model._meta.fields:  # a field whose own name contains "__"
            return model._meta.fields[key], "eq"
        raise InvalidFilterError(
            f"filter {key!r}: unknown operator {op!r}; allowed: {', '.join(OPERATORS)}"
        )
    return resolve_field(model, name), op


def _check_scalar(key: str, field: peewee.Field, value: Any) -> Any:
    if isinstance(value, peewee.Node):
        raise InvalidFilterError(
            f"filter {key!r}: values must be plain data, not SQL expressions; "
            "pass a Peewee expression as the whole where instead"
        )
    if isinstance(value, (Mapping, *_COLLECTIONS)):
        raise InvalidFilterError(
            f"filter {key!r}: expected a single value, got {type(value).__name__}; "
            "use __in for a list"
        )
    try:
        return coerce(field, value)
    except ValueError as exc:
        raise InvalidFilterError(
            f"filter {key!r}: not a valid value for {type(field).__name__} {field.name!r}: {exc}"
        ) from None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like(field: peewee.Field, pattern: str | peewee.Node, *, insensitive: bool) -> peewee.Node:
    keyword = "ILIKE" if insensitive else "LIKE"
    value = pattern if isinstance(pattern, peewee.Node) else peewee.Value(pattern, converter=False)
    return peewee.NodeList((field, peewee.SQL(keyword), value, peewee.SQL("ESCAPE '\\'")))


def _condition(db: peewee.Database | None, key: str, field: peewee.Field, op: str, value: Any) -> Any:
    is_sqlite = isinstance(db, peewee.SqliteDatabase)
    if op in _COMPARE:
        if value is None:
            if op == "eq":
                return field.is_null(True)
            if op == "ne":
                return field.is_null(False)
            raise InvalidFilterError(f"filter {key!r}: cannot compare with None; use __is_null")
        return _COMPARE[op](field, _check_scalar(key, field, value))
    if op in ("in", "not_in"):
        if not isinstance(value, _COLLECTIONS):
            raise InvalidFilterError(
                f"filter {key!r}: expected a list of values, got {type(value).__name__}"
            )
        if len(value) > MAX_IN_VALUES:
            raise InvalidFilterError(
                f"filter {key!r}: {len(value)} values is more than the {MAX_IN_VALUES} allowed"
            )
        items = []
        for item in value:
            if item is None:
                raise InvalidFilterError(f"filter {key!r}: None is not allowed in a list; use __is_null")
            items.append(_check_scalar(key, field, item))
        if not items:
            # IN () matches nothing and NOT IN () matches everything, on every database.
            return peewee.SQL("1 = 0") if op == "in" else peewee.SQL("1 = 1")
        return field.in_(items) if op == "in" else field.not_in(items)
    if op == "is_null":
        if not isinstance(value, bool):
            raise InvalidFilterError(f"filter {key!r}: expected true or false, got {value!r}")
        return field.is_null(value)
    # contains / icontains / startswith
    if not isinstance(value, str):
        raise InvalidFilterError(f"filter {key!r}: expected a string, got {type(value).__name__}")
    if op == "icontains":
        return _like(field, f"%{_like_escape(value)}%", insensitive=not is_sqlite)
    if op == "contains":
        function = peewee.fn.instr if is_sqlite else peewee.fn.strpos
        return function(field, peewee.Value(value, converter=False)) > 0
    # startswith, case-sensitive everywhere (SQLite's LIKE ignores ASCII case).
    if is_sqlite:
        return peewee.fn.substr(field, 1, len(value)) == peewee.Value(value, converter=False)
    return _like(field, f"{_like_escape(value)}%", insensitive=False)


def compile_where(
    model: type[peewee.Model], where: Any, *, db: peewee.Database | None = None
) -> Any:
    """A Peewee expression for ``where`` (``None`` when there is nothing to filter on)."""
    if where is None:
        return None
    if isinstance(where, peewee.Node):
        return where
    if not isinstance(where, Mapping):
        raise InvalidFilterError(
            f"where must be a mapping like {{'price__gte': 10}} or a Peewee expression, "
            f"got {type(where).__name__}"
        )
    if len(where) > MAX_CONDITIONS:
        raise InvalidFilterError(
            f"where has {len(where)} conditions; at most {MAX_CONDITIONS} are allowed"
        )
    conditions = []
    for key, value in where.items():
        field, op = _split_key(model, key)
        conditions.append(_condition(db, key, field, op, value))
    if not conditions:
        return None
    expression = conditions[0]
    for condition in conditions[1:]:
        expression = expression & condition
    return expression
