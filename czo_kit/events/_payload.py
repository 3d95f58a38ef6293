"""What an event payload may hold, checked once at emit whoever listens.

A payload travels as msgpack (the outbox, the queue) and as JSON (webhooks), so it must suit
both: refused at emit, by ``emit`` and ``emit_async`` alike, are values nested more than
``MAX_DEPTH`` containers deep or containing themselves, dict keys JSON cannot write (``None``,
booleans, tuples), integers outside -2**63..2**64-1, and objects neither format knows. The
limit on depth is the kit's own, well below Python's recursion limit, so a payload accepted here
is also decoded by a worker and written to a webhook, however deep their call stacks are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec import inspect as mi

from czo_kit.events.types import Event, InvalidEventError, event_type

__all__ = ["MAX_DEPTH", "payload_for"]

MAX_DEPTH = 128
"""Most containers (mappings, lists, Structs) nested in one payload, the payload included."""

_msgpack = msgspec.msgpack.Encoder().encode
_json = msgspec.json.Encoder().encode
_plain = msgspec.msgpack.Decoder().decode
# Dict key types that JSON writes as strings: a declared dict field keyed by one of them
# needs no check of its keys.
_JSON_KEYS = (mi.StrType, mi.IntType, mi.FloatType, mi.EnumType, mi.LiteralType)


class _Declared:
    """What checking a typed event needs, worked out once per class."""

    __slots__ = ("decoder", "loose")

    def __init__(self, kind: type[Event]) -> None:
        self.decoder = msgspec.msgpack.Decoder(kind)
        # Fields typed ``Any``, or a type that contains itself, bound neither keys nor depth.
        self.loose = _loose(mi.type_info(kind), set(), set())


_declared: dict[type[Any], _Declared] = {}


def payload_for(name: str, payload: Any) -> tuple[Any, bytes]:
    """``payload`` checked against the type declared for ``name``, in that type, with its
    msgpack; ``InvalidEventError`` says what is wrong.

    Without a declared type, a mapping is accepted (as a dict) if both transports carry it.
    """
    kind = event_type(name)
    if kind is None and type(payload) is dict:
        # The common case, inlined: emit is a hot path.
        try:
            encoded: bytes = _msgpack(payload)
            text: bytes = _json(payload)
        except Exception as exc:
            raise _refused(name, payload, exc) from None
        if len(text) > 2 * MAX_DEPTH:
            _check_depth(name, text, encoded)
        return payload, encoded
    if isinstance(payload, Event):
        declared = type(payload).__event_name__
        if declared and declared != name:
            raise InvalidEventError(f"{type(payload).__name__} is event {declared!r}, not {name!r}")
        return payload, _typed(name, payload)
    if kind is None:
        if not isinstance(payload, Mapping):
            raise InvalidEventError(
                f"event {name!r}: payload must be a mapping or an Event, got {type(payload).__name__}"
            )
        return payload_for(name, dict(payload))
    try:
        value = msgspec.convert(payload, kind)
    except Exception as exc:
        raise _refused(name, payload, exc) from None
    return value, _typed(name, value)


def _typed(name: str, value: Any) -> bytes:
    """The msgpack of a typed event whose fields hold values of their declared types."""
    kind = type(value)
    declared = _declared.get(kind)
    if declared is None:
        declared = _declared[kind] = _Declared(kind)
    text = b""
    try:
        encoded: bytes = _msgpack(value)
        # msgspec does not check types when a Struct is built; its typed decoder does.
        declared.decoder.decode(encoded)
        if declared.loose:
            text = _json(value)
    except Exception as exc:
        raise _refused(name, value, exc) from None
    if len(text) > 2 * MAX_DEPTH:
        _check_depth(name, text, encoded)
    return encoded


def _check_depth(name: str, text: bytes, encoded: bytes) -> None:
    # Each level of nesting opens with "{" or "[" in JSON: only a payload with that many of
    # them can be too deep, and only such a payload is walked.
    if text.count(b"{") + text.count(b"[") > MAX_DEPTH and _depth(encoded) > MAX_DEPTH:
        raise _too_deep(name)


def _refused(name: str, value: Any, exc: Exception) -> Exception:
    """What to raise instead of ``exc``, an error encoding or converting ``value``."""
    if isinstance(exc, msgspec.ValidationError):
        return InvalidEventError(f"event {name!r}: payload does not match {_type_name(name, value)}: {exc}")
    if isinstance(exc, RecursionError):
        return _too_deep(name)
    if isinstance(exc, OverflowError):
        return InvalidEventError(
            f"event {name!r}: payload holds an integer out of range; events carry integers "
            "from -2**63 to 2**64-1 (send larger numbers as strings or Decimals)"
        )
    if not isinstance(exc, (TypeError, msgspec.EncodeError)):
        return exc
    detail = str(exc)
    if "keys" in detail:
        return InvalidEventError(
            f"event {name!r}: payload has a dict key JSON cannot write (None, a bool, a tuple...); "
            "use string keys (numbers, UUIDs, dates and enums are written as strings)"
        )
    return InvalidEventError(
        f"event {name!r}: payload cannot be encoded for the queue and webhooks: {detail}; payloads "
        "hold mappings, lists, strings, numbers, booleans, None, bytes, datetimes, Decimals, UUIDs, "
        "Structs and dataclasses"
    )


def _type_name(name: str, value: Any) -> str:
    kind = event_type(name)
    return kind.__name__ if kind is not None else type(value).__name__


def _too_deep(name: str) -> InvalidEventError:
    return InvalidEventError(
        f"event {name!r}: payload is nested more than {MAX_DEPTH} levels deep, or contains itself"
    )


def _depth(encoded: bytes) -> int:
    """How many containers deep a payload is (at most MAX_DEPTH + 1), counted without recursion."""
    try:
        plain = _plain(encoded)
    except RecursionError:
        return MAX_DEPTH + 1
    deepest = 0
    stack: list[tuple[Any, int]] = [(plain, 1)]
    while stack and deepest <= MAX_DEPTH:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if type(item) is dict else item
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return deepest


def _loose(info: Any, path: set[int], done: set[int]) -> bool:
    # Declared types nest a few levels at most: recursion is safe here.
    if isinstance(info, (mi.AnyType, mi.ExtType, mi.CustomType, mi.RawType)):
        return True
    if isinstance(info, (mi.StructType, mi.DataclassType, mi.TypedDictType, mi.NamedTupleType)):
        if id(info) in path:
            return True  # reachable from itself: no bound on depth
        if id(info) in done:
            return False
        path.add(id(info))
        loose = any(_loose(field.type, path, done) for field in info.fields)
        path.discard(id(info))
        done.add(id(info))
        return loose
    if isinstance(info, (mi.DictType, mi.FrozenDictType)):
        return not isinstance(info.key_type, _JSON_KEYS) or _loose(info.value_type, path, done)
    if isinstance(info, mi.UnionType):
        return any(_loose(t, path, done) for t in info.types)
    if isinstance(info, mi.TupleType):
        return any(_loose(t, path, done) for t in info.item_types)
    if isinstance(info, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return _loose(info.item_type, path, done)
    return False
