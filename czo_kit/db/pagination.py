"""Offset and keyset (cursor) pagination: ``PaginatedResult``, sort parsing, signed cursors.

A cursor is opaque to clients: base64url of a msgpack payload (format version, direction, a
fingerprint of the table and sort order, the sort values of the edge row with the primary key
last) followed by a truncated HMAC-SHA256. A cursor that was altered, made with another key,
or made for another sort order is refused with an ``InvalidCursorError`` that says which.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import msgspec
import peewee

from czo_kit.db._sql import python_type
from czo_kit.db.filters import resolve_field
from czo_kit.errors import InvalidCursorError, InvalidFilterError

__all__ = [
    "MAX_CURSOR_LENGTH",
    "MAX_TEXT_CURSOR_LENGTH",
    "CursorCodec",
    "PaginatedResult",
    "SortKey",
    "keyset_condition",
    "parse_order",
]

T = TypeVar("T")

CURSOR_VERSION = 1
# The longest cursor taken back, unless its sort order can make longer ones: ordering on a long
# CharField raises the limit to what its longest values give, and on a TextField / BlobField
# (no length bound) to MAX_TEXT_CURSOR_LENGTH, about 48 KB of sort values.
MAX_CURSOR_LENGTH = 2048
MAX_TEXT_CURSOR_LENGTH = 65_536
MAX_SORT_KEYS = 8
_MAC_BYTES = 16
_FINGERPRINT_BYTES = 8

Direction = Literal["next", "prev"]


@dataclass(frozen=True, slots=True)
class PaginatedResult(Generic[T]):
    """One page of rows.

    ``total`` is set in offset mode (unless skipped with ``with_total=False``) and ``None`` in
    cursor mode. ``next_cursor`` / ``prev_cursor`` are set when there is a page that way.
    """

    items: list[T]
    limit: int
    offset: int | None = None
    total: int | None = None
    has_next: bool = False
    has_prev: bool = False
    next_cursor: str | None = None
    prev_cursor: str | None = None

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class SortKey:
    field: peewee.Field
    descending: bool

    def ordering(self, *, reverse: bool = False) -> peewee.Ordering:
        descending = self.descending != reverse
        if self.field.null:
            # NULL sorts as the greatest value on every database: last going up, first going down.
            return self.field.desc(nulls="first") if descending else self.field.asc(nulls="last")
        return self.field.desc() if descending else self.field.asc()

    def spec(self) -> str:
        name: str = self.field.name
        return ("-" if self.descending else "") + name


@dataclass(frozen=True, slots=True)
class SortOrder:
    keys: tuple[SortKey, ...]
    fingerprint: bytes = field(repr=False)

    def orderings(self, *, reverse: bool = False) -> list[peewee.Ordering]:
        return [key.ordering(reverse=reverse) for key in self.keys]

    def describe(self) -> str:
        return ", ".join(key.spec() for key in self.keys)


def parse_order(model: type[peewee.Model], order_by: Any) -> SortOrder:
    """Normalise ``order_by`` and append the primary key as the final tie-breaker.

    Accepts ``"price"``, ``"-price"``, a Peewee field, ``Item.price.desc()``, or a sequence
    of those. Unknown fields, and fields of another model, raise ``InvalidFilterError`` naming
    the allowed ones.
    """
    if order_by is None:
        items: Sequence[Any] = ()
    elif isinstance(order_by, (str, peewee.Field, peewee.Ordering)):
        items = (order_by,)
    elif isinstance(order_by, (list, tuple)):
        items = order_by
    else:
        raise InvalidFilterError(
            f"order_by must be a field name like 'price' or '-price', a field, or a list of "
            f"those; got {type(order_by).__name__}"
        )
    if len(items) > MAX_SORT_KEYS:
        raise InvalidFilterError(f"order_by has {len(items)} keys; at most {MAX_SORT_KEYS} allowed")
    keys: list[SortKey] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, str):
            descending = item.startswith("-")
            name = item[1:] if descending or item.startswith("+") else item
            resolved = resolve_field(model, name, what="order_by")
        elif isinstance(item, peewee.Ordering):
            node = item.node
            if not isinstance(node, peewee.Field):
                raise InvalidFilterError("order_by: only plain fields can be ordered on")
            resolved = resolve_field(model, node, what="order_by")
            descending = item.direction.upper() == "DESC"
        elif isinstance(item, peewee.Field):
            resolved = resolve_field(model, item, what="order_by")
            descending = False
        else:
            raise InvalidFilterError(f"order_by: cannot order by {item!r}")
        if resolved.name in seen:
            raise InvalidFilterError(f"order_by names {resolved.name!r} twice")
        seen.add(resolved.name)
        keys.append(SortKey(resolved, descending))
    pk = model._meta.primary_key
    if not isinstance(pk, peewee.Field):
        raise InvalidFilterError(f"{model.__name__} has no single-column primary key to page on")
    if pk.name not in seen:
        # The tie-breaker follows the last key's direction, so a uniform order stays uniform
        # and the database can use a row comparison on a matching index.
        keys.append(SortKey(pk, keys[-1].descending if keys else False))
    spec = model._meta.table_name + ":" + ",".join(key.spec() for key in keys)
    fingerprint = hashlib.blake2b(spec.encode(), digest_size=_FINGERPRINT_BYTES).digest()
    return SortOrder(tuple(keys), fingerprint)


def keyset_condition(
    order: SortOrder,
    values: Sequence[Any],
    *,
    direction: Direction,
    placeholder: Callable[[int, SortKey], Any] | None = None,
) -> Any:
    """Rows strictly after (``next``) or before (``prev``) ``values`` in ``order``.

    With ``placeholder``, each non-NULL value is replaced by ``placeholder(index, key)`` (a
    slot of a compiled statement): the SQL then depends only on which values are NULL.
    """
    keys = order.keys
    converted = [
        None if value is None
        else placeholder(i, key) if placeholder is not None
        else peewee.Value(key.field.db_value(value), converter=False)
        for i, (key, value) in enumerate(zip(keys, values))
    ]
    forward = direction == "next"
    if len({key.descending for key in keys}) == 1 and not any(key.field.null for key in keys):
        # One direction, no NULLs: a row comparison, which an index on the keys serves.
        left = peewee.Tuple(*[key.field for key in keys])
        right = peewee.Tuple(*converted)
        greater = keys[0].descending != forward
        return left > right if greater else left < right
    # General case: (a > x) OR (a = x AND b < y) OR ..., where NULL is the greatest value.
    clauses = []
    for i, key in enumerate(keys):
        term = _beyond(key.field, converted[i], greater=key.descending != forward)
        if term is None:
            continue
        for prior, value in zip(keys[:i], converted[:i]):
            term = _same(prior.field, value) & term
        clauses.append(term)
    if not clauses:
        return peewee.SQL("1 = 0")
    expression = clauses[0]
    for clause in clauses[1:]:
        expression = expression | clause
    return expression


def _same(f: peewee.Field, value: Any) -> Any:
    return f.is_null(True) if value is None else f == value


def _beyond(f: peewee.Field, value: Any, *, greater: bool) -> Any:
    """Rows whose ``f`` is strictly greater (or smaller) than ``value``, NULL being greatest."""
    if greater:
        if value is None:
            return None  # nothing is greater than NULL
        return (f > value) | f.is_null(True) if f.null else f > value
    if value is None:
        return f.is_null(False)  # every value is smaller than NULL
    return f < value


class CursorCodec:
    """Signs and checks cursors for one model with one key."""

    def __init__(self, key: bytes) -> None:
        # A dedicated sub-key, so a cursor MAC can never be replayed as any other signature.
        self._key = hmac.new(key, b"czo-kit:cursor:v1", hashlib.sha256).digest()
        self._encoder = msgspec.msgpack.Encoder()
        self._keyed = hmac.new(self._key, digestmod=hashlib.sha256)
        # Names the key without revealing it: cached pages hold cursors signed with it.
        self.key_id: bytes = hmac.new(self._key, b"key id", hashlib.sha256).digest()[:8]
        self._decoder = msgspec.msgpack.Decoder(tuple[int, str, bytes, list[Any]])
        # The typed shape of each sort order's values, built once (msgspec compiles a type
        # on first use; a fresh tuple[...] per call would be compiled every time).
        self._value_types: dict[bytes, tuple[Any, tuple[tuple[type, bool], ...] | None]] = {}
        self._limits: dict[bytes, int] = {}  # the longest cursor of each sort order

    def _mac(self, payload: bytes) -> bytes:
        # Copying a keyed HMAC skips hashing the key again: half the cost of hmac.new per call.
        mac = self._keyed.copy()
        mac.update(payload)
        return mac.digest()[:_MAC_BYTES]

    def encode(self, order: SortOrder, values: Sequence[Any], direction: Direction) -> str:
        payload = self._encoder.encode(
            (CURSOR_VERSION, direction[0], order.fingerprint, list(values))
        )
        mac = self._mac(payload)
        token: str = base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode("ascii")
        return token

    def decode(self, order: SortOrder, token: Any) -> tuple[Direction, list[Any]]:
        if not isinstance(token, str):
            raise InvalidCursorError(f"cursor must be a string, got {type(token).__name__}")
        if not token:
            raise InvalidCursorError("cursor is empty")
        limit = MAX_CURSOR_LENGTH
        if len(token) > limit:
            limit = self._limits.get(order.fingerprint) or _max_length(order)
            if len(self._limits) < 256:  # one per sort order; a request can pick any
                self._limits[order.fingerprint] = limit
        if len(token) > limit:
            raise InvalidCursorError(
                f"cursor is {len(token)} characters long; a valid one is under {limit}"
            )
        raw = _unbase64(token)
        if raw is None:
            raise InvalidCursorError(
                "cursor is not a valid cursor: it is not base64url (malformed encoding); pass "
                "next_cursor or prev_cursor back unchanged"
            )
        if not raw.startswith(_HEADERS) and not any(h.startswith(raw) for h in _HEADERS):
            raise InvalidCursorError(
                "cursor is not a valid cursor: its encoding is malformed (these bytes were "
                "never a cursor); pass next_cursor or prev_cursor back unchanged"
            )
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        expected = self._mac(payload)
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, expected):
            if _cut_short(payload):
                raise InvalidCursorError(
                    "cursor is truncated: it ends early, as if cut off when copied; pass back "
                    "the whole next_cursor or prev_cursor"
                )
            raise InvalidCursorError(
                "cursor signature does not match: it was altered, or signed with another "
                "secret key (CZO_SECRET_KEY changed, or the process restarted without one)"
            )
        try:
            version, direction, fingerprint, values = self._decoder.decode(payload)
        except msgspec.DecodeError:
            raise InvalidCursorError("cursor payload is malformed") from None
        if version != CURSOR_VERSION:
            raise InvalidCursorError(f"cursor format version {version} is not supported")
        if fingerprint != order.fingerprint:
            raise InvalidCursorError(
                f"cursor was made for another sort order; this query orders by "
                f"{order.describe()} (start again without a cursor)"
            )
        if direction not in ("n", "p") or len(values) != len(order.keys):
            raise InvalidCursorError("cursor payload is malformed")
        known = self._value_types.get(order.fingerprint)
        if known is None:
            known = _value_types(order)
            if len(self._value_types) < 256:  # one per sort order; a request can pick any
                self._value_types[order.fingerprint] = known
        value_type, exact = known
        if exact is not None and all(
            type(value) is kind or (value is None and nullable)
            for value, (kind, nullable) in zip(values, exact)
        ):
            # msgpack already gave each value its field's exact type: convert would return it.
            return ("next" if direction == "n" else "prev"), values
        try:
            typed = msgspec.convert(values, value_type, strict=False)
        except msgspec.ValidationError:
            raise InvalidCursorError("cursor values do not match the sort fields") from None
        return ("next" if direction == "n" else "prev"), list(typed)


def _max_length(order: SortOrder) -> int:
    """The longest cursor ``order`` can give (``MAX_CURSOR_LENGTH`` at least)."""
    size = 32 + _MAC_BYTES  # the header, fingerprint and array of values, then the MAC
    for key in order.keys:
        field = key.field.rel_field if isinstance(key.field, peewee.ForeignKeyField) else key.field
        kind = python_type(field)
        if isinstance(field, peewee.CharField) and field.max_length:
            size += 4 * field.max_length + 5  # up to 4 bytes of UTF-8 a character
        elif kind in _SHORT or getattr(kind, "__args__", (None,))[0] in _SHORT:
            size += 128  # a number, date, time, UUID or decimal (as text) is shorter
        else:  # text or bytes of any length, or a type of its own
            return MAX_TEXT_CURSOR_LENGTH
    return max(MAX_CURSOR_LENGTH, -(-size * 4 // 3))


_SHORT = (int, float, bool, decimal.Decimal, dt.datetime, dt.date, dt.time, uuid.UUID)


_EXACT = (int, str, float, bool, bytes)  # types msgpack decodes to exactly


def _value_types(order: SortOrder) -> tuple[Any, tuple[tuple[type, bool], ...] | None]:
    """The msgspec type of a cursor's values, and, when every sort field holds one of
    ``_EXACT``, each field's (type, nullable) for a check that needs no conversion."""
    types = tuple(python_type(key.field) for key in order.keys)
    exact: list[tuple[type, bool]] | None = []
    for key, kind in zip(order.keys, types):
        args = getattr(kind, "__args__", (kind,))
        plain = [arg for arg in args if arg is not type(None)]
        if exact is None or len(plain) != 1 or plain[0] not in _EXACT:
            exact = None
            continue
        exact.append((plain[0], bool(key.field.null)))
    return tuple[types], (None if exact is None else tuple(exact))  # type: ignore[valid-type]


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
# How every cursor starts: a 4-item msgpack array, the format version, the direction, and the
# 8-byte fingerprint's header. Bytes that start otherwise were never a cursor of this format.
_HEADERS = tuple(
    msgspec.msgpack.encode((CURSOR_VERSION, d, bytes(_FINGERPRINT_BYTES), []))[:6] for d in "np"
)


def _unbase64(token: str) -> bytes | None:
    # b64decode skips characters outside the alphabet: "ab!cd" would decode as "abcd".
    if not _BASE64URL.fullmatch(token):
        return None
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None


def _cut_short(payload: bytes) -> bool:
    """Whether ``payload`` is the start of a msgpack value rather than a whole (or bad) one.

    A cursor cut short loses the end of its MAC, so what is left before the last 16 bytes is a
    strict prefix of its payload, which msgpack reports as truncated input.
    """
    try:
        msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        return "truncated" in str(exc)
    except RecursionError:  # unsigned bytes nested deeper than msgspec recurses: never a cursor
        return False
    return False


def edge_values(order: SortOrder, row: Any) -> list[Any]:
    """The sort values of ``row`` (a model instance), in ``order``."""
    return [row.__data__.get(key.field.name) for key in order.keys]
