"""Filters compiled once per query shape: the SQL with numbered slots, and how to fill them.

A shape is a ``where`` mapping with its values taken out: its keys in order, and for each value
only what changes the SQL (``None`` or not, ``True`` / ``False``, the length of an ``in`` list
rounded up to a power of two). A Peewee expression has a shape too when it is made only of
AND / OR over comparisons of this model's fields with plain values: the tree of operators and
fields, values taken out the same way. The statement for a shape is built by Peewee once; later
calls only check each value the way ``compile_where`` does (same errors) and bind it. Anything
else (functions, subqueries, other models' fields, a long ``in`` list) is left to Peewee.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Sequence
from typing import Any

import peewee

from czo_kit.db._sql import Slot
from czo_kit.db.filters import (
    _COLLECTIONS,
    _COMPARE,
    _check_scalar,
    _like,
    _like_escape,
    _split_key,
)
from czo_kit.errors import InvalidFilterError

__all__ = ["MAX_IN_SLOTS", "Condition", "bind_where", "compile_shape", "where_shape"]

# An ``in`` list longer than this is compiled by Peewee on each call: binding thousands of
# values costs more than compiling, and caching every length would bloat the shape cache.
MAX_IN_SLOTS = 64

_SCALAR = "v"  # a value's shape when it is neither None, a boolean, nor a list
# A boolean's shape. Not True / False themselves: they equal 1 / 0, the shapes of ``in`` lists
# of one and no values, and a shape key holding one would find the other's statement.
_TRUE, _FALSE = "true", "false"

# How a condition's value becomes parameters.
_BIND_NONE = 0  # no parameter: IS NULL / IS NOT NULL / IN () / NOT IN ()
_BIND_SCALAR = 1  # the value checked against the field
_BIND_LIST = 2  # each item checked, the list padded to its bucket with its last item
_BIND_CONTAINS = 3  # a string, as it is
_BIND_ICONTAINS = 4  # a string, as an escaped LIKE pattern %text%
_BIND_PREFIX = 5  # a string, as an escaped LIKE pattern text%
_BIND_PREFIX_SUBSTR = 6  # a string's length, then the string (SQLite's substr comparison)

Condition = tuple[str, peewee.Field, int, int]  # key, field, how to bind, list bucket

OP = peewee.OP
_JOINS = (OP.AND, OP.OR)
_COMPARISONS = frozenset((OP.EQ, OP.NE, OP.LT, OP.LTE, OP.GT, OP.GTE, OP.IN, OP.NOT_IN, OP.IS, OP.IS_NOT))
# Exact types only: a subclass may adapt itself differently when Peewee compiles it.
_PLAIN = frozenset((int, bool, float, str, decimal.Decimal, dt.datetime, dt.date, dt.time, uuid.UUID))


def _bucket(n: int) -> int:
    return 0 if n == 0 else 1 << (n - 1).bit_length()


def where_shape(model: type[peewee.Model], where: Any) -> tuple[Any, ...] | None:
    """The shape of ``where``, or ``None`` when it is not one that is compiled per shape."""
    if where is None:
        return ()
    if type(where) is peewee.Expression:
        tree = _expression_shape(model, where)
        return None if tree is None else ("expr", tree)
    if type(where) is not dict:
        return None
    shape = []
    for key, value in where.items():
        if type(key) is not str:
            return None
        if value is None:
            kind: Any = None
        elif value is True or value is False:
            kind = _TRUE if value else _FALSE
        elif isinstance(value, _COLLECTIONS):
            if len(value) > MAX_IN_SLOTS:
                return None
            kind = _bucket(len(value))
        else:
            kind = _SCALAR
        shape.append((key, kind))
    return tuple(shape)


def _expression_shape(model: type[peewee.Model], node: Any) -> tuple[Any, ...] | None:
    if type(node) is not peewee.Expression:
        return None
    op = node.op
    if op in _JOINS:
        left = _expression_shape(model, node.lhs)
        right = _expression_shape(model, node.rhs) if left is not None else None
        return None if right is None else (op, node.flat, left, right)
    field = node.lhs
    if op not in _COMPARISONS or not isinstance(field, peewee.Field) or field.model is not model:
        return None
    if not getattr(field, "_coerce", True):
        return None
    rhs = node.rhs
    kind: Any
    if rhs is None:
        kind = None
    elif type(rhs) in _PLAIN:
        kind = _SCALAR
    elif type(rhs) in _COLLECTIONS and op in (OP.IN, OP.NOT_IN) and len(rhs) <= MAX_IN_SLOTS:
        if not all(type(item) in _PLAIN for item in rhs):
            return None
        kind = _bucket(len(rhs))
    else:
        return None
    return (op, node.flat, field.name, kind)


def _compile_expression(model: type[peewee.Model], tree: tuple[Any, ...], n: int) -> tuple[Any, int]:
    """The expression of ``tree`` with slots from ``n`` on, in the order ``_bind_expression`` walks."""
    op, flat = tree[0], tree[1]
    if op in _JOINS:
        left, n = _compile_expression(model, tree[2], n)
        right, n = _compile_expression(model, tree[3], n)
        return peewee.Expression(left, op, right, flat=flat), n
    field = model._meta.fields[tree[2]]
    kind = tree[3]
    rhs: Any
    if kind is None:
        rhs = None
    elif kind == _SCALAR:
        rhs, n = Slot(n, field.db_value), n + 1
    elif kind == 0:
        rhs = ()
    else:
        rhs = peewee.EnclosedNodeList([Slot(n + i, field.db_value) for i in range(kind)])
        n += kind
    return peewee.Expression(field, op, rhs, flat=flat), n


def _bind_expression(node: Any, out: list[Any]) -> None:
    if node.op in _JOINS:
        _bind_expression(node.lhs, out)
        _bind_expression(node.rhs, out)
        return
    rhs = node.rhs
    if rhs is None:
        return
    if type(rhs) in _PLAIN:
        out.append(rhs)
        return
    items = list(rhs)
    if items:
        out.extend(items)
        out.extend([items[-1]] * (_bucket(len(items)) - len(items)))


def compile_shape(
    model: type[peewee.Model], db: peewee.Database, shape: Sequence[Any]
) -> tuple[Any, tuple[Condition, ...] | None, int]:
    """The condition for ``shape`` with slots ``0 .. n-1``, how to bind them, and ``n``.

    How to bind is ``None`` for an expression: its values are found by walking it again.

    Only call it for a shape whose ``where`` passed ``compile_where``: every combination of
    operator and value shape left here is then one ``compile_where`` accepts.
    """
    if shape and shape[0] == "expr":
        expression, n = _compile_expression(model, shape[1], 0)
        return expression, None, n
    is_sqlite = isinstance(db, peewee.SqliteDatabase)
    nodes: list[Any] = []
    conditions: list[Condition] = []
    n = 0
    for key, kind in shape:
        field, op = _split_key(model, key)
        bucket = 0
        node: Any
        if op == "is_null":
            bind, node = _BIND_NONE, field.is_null(kind == _TRUE)
        elif op in _COMPARE:
            if kind is None:  # eq / ne None; compile_where refused the others
                bind, node = _BIND_NONE, field.is_null(op == "eq")
            else:
                bind, node = _BIND_SCALAR, _COMPARE[op](field, Slot(n, field.db_value))
        elif op in ("in", "not_in"):
            bucket = kind
            if bucket == 0:
                bind, node = _BIND_NONE, peewee.SQL("1 = 0" if op == "in" else "1 = 1")
            else:
                slots = peewee.EnclosedNodeList([Slot(n + i, field.db_value) for i in range(bucket)])
                bind, node = _BIND_LIST, field.in_(slots) if op == "in" else field.not_in(slots)
        elif op == "icontains":
            bind, node = _BIND_ICONTAINS, _like(field, Slot(n), insensitive=not is_sqlite)
        elif op == "contains":
            function = peewee.fn.instr if is_sqlite else peewee.fn.strpos
            bind, node = _BIND_CONTAINS, function(field, Slot(n)) > 0
        elif is_sqlite:  # startswith
            bind, node = _BIND_PREFIX_SUBSTR, peewee.fn.substr(field, 1, Slot(n)) == Slot(n + 1)
        else:
            bind, node = _BIND_PREFIX, _like(field, Slot(n), insensitive=False)
        n += bucket if bind == _BIND_LIST else 2 if bind == _BIND_PREFIX_SUBSTR else (
            0 if bind == _BIND_NONE else 1
        )
        nodes.append(node)
        conditions.append((key, field, bind, bucket))
    expression = nodes[0] if nodes else None
    for node in nodes[1:]:
        expression = expression & node
    return expression, tuple(conditions), n


def bind_where(conditions: Sequence[Condition] | None, where: Any, out: list[Any]) -> None:
    """Append the parameters of ``where`` (of the shape ``conditions`` came from) to ``out``.

    Each value is checked as ``compile_where`` checks it, with the same errors.
    """
    if conditions is None:
        _bind_expression(where, out)
        return
    if not conditions:  # no where at all
        return
    for (key, field, bind, bucket), value in zip(conditions, where.values()):
        if bind == _BIND_SCALAR:
            out.append(_check_scalar(key, field, value))
        elif bind == _BIND_NONE:
            continue
        elif bind == _BIND_LIST:
            start = len(out)
            for item in value:
                if item is None:
                    raise InvalidFilterError(f"filter {key!r}: None is not allowed in a list; use __is_null")
                out.append(_check_scalar(key, field, item))
            # Repeating a value changes neither IN nor NOT IN.
            out.extend([out[-1]] * (bucket - (len(out) - start)))
        else:
            if not isinstance(value, str):
                raise InvalidFilterError(f"filter {key!r}: expected a string, got {type(value).__name__}")
            if bind == _BIND_CONTAINS:
                out.append(value)
            elif bind == _BIND_ICONTAINS:
                out.append(f"%{_like_escape(value)}%")
            elif bind == _BIND_PREFIX:
                out.append(f"{_like_escape(value)}%")
            else:
                out.append(len(value))
                out.append(value)
