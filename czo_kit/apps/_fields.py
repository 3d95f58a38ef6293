"""Which fields of an event's payload an app may see.

Modules declare them with ``register.event(name, resource=..., fields={...})``; this module
checks those declarations and filters payloads by them. Every field an app receives was
declared, with the permission it needs: a field nobody declared is never sent, so a column
added to a model later cannot leak to apps before someone decides who may see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, is_dataclass
from typing import Any, Union

import msgspec

from czo_kit.errors import ConfigurationError

__all__ = ["FieldSpec", "MAX_FIELD_DEPTH"]

Pair = tuple[str, str]

FieldSpec = Union[None, tuple[str, str], Mapping[str, "FieldSpec"]]
"""What one declared field needs: ``None`` (any app that hears the event sees it), a
``(resource, action)`` pair (only apps granted it see it), or a mapping declaring the fields
of a nested mapping (or of each mapping in a list) the same way."""

MAX_FIELD_DEPTH = 32
"""Most mappings nested in one declaration: payloads are shallow, a deeper one is a mistake."""

_FORMS = (
    "None (any app that hears the event sees it), a (resource, action) pair of strings "
    "(only apps granted it see it), or a mapping declaring the fields nested inside"
)


@dataclass(frozen=True, slots=True)
class Node:
    """A declared field, compiled: the permission it needs (``None``: the event's own) and,
    for a nested mapping, its declared fields."""

    needs: Pair | None
    children: Mapping[str, Node] | None


def compile_fields(event: str, fields: object) -> tuple[dict[str, FieldSpec], dict[str, Node]]:
    """The declaration normalised (pairs as tuples, mappings as dicts) and compiled; a
    ``ConfigurationError`` naming the event and the field when it is malformed."""
    if not isinstance(fields, Mapping):
        raise ConfigurationError(
            f"register.event({event!r}, fields=...): fields must be a mapping of field name to "
            f"{_FORMS}; got {type(fields).__name__}"
        )
    return _compile(event, fields, "", set(), 1)


def _compile(
    event: str, fields: Mapping[Any, Any], prefix: str, seen: set[int], depth: int
) -> tuple[dict[str, FieldSpec], dict[str, Node]]:
    if id(fields) in seen or depth > MAX_FIELD_DEPTH:
        raise ConfigurationError(
            f"register.event({event!r}, fields=...): the declaration of {prefix.rstrip('.') or 'fields'!r} "
            f"is nested more than {MAX_FIELD_DEPTH} levels deep, or contains itself"
        )
    seen = seen | {id(fields)}
    plain: dict[str, FieldSpec] = {}
    nodes: dict[str, Node] = {}
    for key, spec in fields.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"register.event({event!r}, fields=...): field names are non-empty strings; "
                f"got {key!r}" + (f" inside {prefix.rstrip('.')!r}" if prefix else "")
            )
        path = prefix + key
        if spec is None:
            plain[key], nodes[key] = None, Node(None, None)
        elif isinstance(spec, Mapping):
            if not spec:
                raise ConfigurationError(
                    f"register.event({event!r}, fields=...): field {path!r} declares an empty "
                    "mapping, which would send it empty; declare its nested fields, or give None "
                    "or a (resource, action) pair to send it whole"
                )
            plain[key], children = _compile(event, spec, path + ".", seen, depth + 1)
            nodes[key] = Node(None, children)
        elif _is_pair(spec):
            pair = (spec[0], spec[1])
            plain[key], nodes[key] = pair, Node(pair, None)
        else:
            hint = ""
            if isinstance(spec, str) and ":" in spec:
                resource, _, action = spec.partition(":")
                hint = f" (write ({resource!r}, {action!r}))"
            raise ConfigurationError(
                f"register.event({event!r}, fields=...): field {path!r} is declared as {spec!r}"
                f"{hint}; a field is declared with {_FORMS}"
            )
    return plain, nodes


def _is_pair(spec: object) -> bool:
    return (
        isinstance(spec, (tuple, list))
        and len(spec) == 2
        and all(isinstance(part, str) and part for part in spec)
    )


def needed_pairs(nodes: Mapping[str, Node], prefix: str = "") -> Iterable[tuple[str, Pair]]:
    """(dotted field path, pair) of every field that needs a permission."""
    for key, node in nodes.items():
        if node.needs is not None:
            yield prefix + key, node.needs
        if node.children is not None:
            yield from needed_pairs(node.children, prefix + key + ".")


Warn = Callable[[str, str, str], None]
"""``warn(event, dotted field path, why)``: called for each field left out undeclared."""


def visible(
    event: str, nodes: Mapping[str, Node], data: Mapping[Any, Any], allowed: Callable[[Pair], bool],
    warn: Warn, prefix: str = "",
) -> dict[Any, Any]:
    """The fields of ``data`` declared in ``nodes`` whose permission ``allowed`` grants;
    undeclared ones are reported to ``warn`` and left out. Only declared nesting is walked,
    so the depth of this recursion is bounded by the declaration's."""
    out: dict[Any, Any] = {}
    for key, value in data.items():
        node = nodes.get(key) if isinstance(key, str) else None
        if node is None:
            warn(event, prefix + str(key), "undeclared")
            continue
        if node.needs is not None and not allowed(node.needs):
            continue
        if node.children is None or value is None:
            out[key] = value
            continue
        path = prefix + key
        value = _plain(value)
        if isinstance(value, Mapping):
            out[key] = visible(event, node.children, value, allowed, warn, path + ".")
            continue
        items = [_plain(item) for item in value] if isinstance(value, (list, tuple)) else None
        if items is not None and all(item is None or isinstance(item, Mapping) for item in items):
            out[key] = [
                None if item is None else visible(event, node.children, item, allowed, warn, path + ".")
                for item in items
            ]
        else:
            # Declared as a mapping but holding something else: what it holds was never
            # declared, so it is not sent.
            warn(event, path, f"not a mapping ({type(value).__name__})")
    return out


def _plain(value: Any) -> Any:
    """A Struct or dataclass inside a mapping payload, as the mapping JSON would make of it."""
    if isinstance(value, msgspec.Struct) or (is_dataclass(value) and not isinstance(value, type)):
        return msgspec.to_builtins(value)
    return value
