"""The "before" of the CRUD-code metric: the product repository written by hand on Peewee.

It does what ``czo_product.repository`` gets from the kit's builders (validated writes,
optimistic locking, soft delete and restore, filters, offset and signed cursor pages,
savepoint-aware after-commit callbacks, hooks, events checked before commit, cache
invalidation) without any of the kit's repository code: the kit's ``RepositoryContract``
runs against both (tests/test_loc_equivalence.py), and ``python -m benchmarks.loc`` counts
their lines. Its collaborators (hooks, events, cache) are passed in, as any module would be
handed them; it raises the kit's public error types, which the contract checks.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import peewee

from czo_kit.errors import (
    ConflictError,
    InvalidCursorError,
    InvalidDataError,
    InvalidFilterError,
    NotFoundError,
    OptimisticLockError,
)
from czo_product.events import ProductCreated, ProductDeleted, ProductRestored, ProductUpdated
from czo_product.models import Product

__all__ = ["HandwrittenProductRepository", "Page", "WriteContext"]

log = logging.getLogger(__name__)
R = TypeVar("R")

TABLE = "product"
WRITABLE = ("shop_id", "name", "slug", "price", "currency")
REQUIRED = ("shop_id", "name", "slug", "price")
MANAGED = ("id", "created_at", "updated_at", "version", "deleted_at")
INT_FIELDS = {"id": 2**63, "version": 2**31, "shop_id": 2**31, "price": 2**31}
TEXT_FIELDS = {"name": 200, "slug": 200, "currency": 3}
TIME_FIELDS = ("created_at", "updated_at", "deleted_at")
COLUMNS = {f.name: f for f in Product._meta.sorted_fields}
OPERATORS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains", "icontains", "startswith", "is_null")
COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": lambda f, v: f == v, "ne": lambda f, v: f != v, "lt": lambda f, v: f < v,
    "lte": lambda f, v: f <= v, "gt": lambda f, v: f > v, "gte": lambda f, v: f >= v,
}
MAX_CONDITIONS, MAX_IN, MAX_SORT_KEYS = 64, 10_000, 8
DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET = 20, 500, 10_000_000
MAX_CURSOR, MAC_BYTES, MAGIC = 2048, 16, b"prd"
MAX_ROWS_PER_INSERT = 30_000 // len(COLUMNS)  # under SQLite's bound-parameter limit
PAST = {"create": "created", "create_many": "created", "update": "updated", "delete": "deleted",
        "restore": "restored", "hard_delete": "hard_deleted"}
EVENT_TYPES: dict[str, type[msgspec.Struct]] = {
    "product.created": ProductCreated, "product.updated": ProductUpdated,
    "product.deleted": ProductDeleted, "product.restored": ProductRestored,
}
_INT_TEXT = re.compile(r"[+-]?\d{1,20}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_frames = threading.local()  # per thread: database id -> stack of after-commit callback lists
_process_key = secrets.token_bytes(32)


@dataclass(frozen=True)
class Page:
    """One page of products; ``total`` only in offset mode, cursors where there is a page that way."""

    items: list[Product]
    limit: int
    offset: int | None = None
    total: int | None = None
    has_next: bool = False
    has_prev: bool = False
    next_cursor: str | None = None
    prev_cursor: str | None = None


@dataclass
class WriteContext:
    """What a hook sees; ``before`` hooks may change ``data`` (or ``rows``)."""

    operation: str
    id: Any = None
    data: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] | None = None
    expected_version: int | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    bound = INT_FIELDS[name]
    if not -bound <= value < bound:
        raise ValueError(f"{value} is out of range: {name} holds integers from {-bound} to {bound - 1}")
    return value


def _value(name: str, value: Any) -> Any:
    """``value`` as column ``name`` holds it, or ``ValueError`` saying what was expected."""
    if isinstance(value, peewee.Node):
        raise ValueError("values must be plain data, not SQL expressions")
    if name in INT_FIELDS:
        return _integer(name, value)
    if name in TEXT_FIELDS:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        if "\x00" in value:
            raise ValueError("strings cannot contain NUL characters")
        if len(value) > TEXT_FIELDS[name]:
            raise ValueError(f"{len(value)} characters is longer than the {TEXT_FIELDS[name]} allowed")
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected an ISO 8601 datetime, got {value!r}") from None
    if not isinstance(value, dt.datetime):
        raise ValueError(f"expected a datetime, got {type(value).__name__}")
    return value


class HandwrittenProductRepository:
    """Every query and mutation of ``Product``, by hand."""

    def __init__(
        self,
        db: peewee.Database,
        *,
        hooks: Any = None,
        events: Any = None,
        async_events: bool = False,
        cache: Any = None,
        secret_key: str | bytes | None = None,
    ) -> None:
        if async_events and not callable(getattr(events, "emit_async", None)):
            raise TypeError("async_events=True needs events= with an emit_async method")
        self.db, self.hooks, self.events, self.cache = db, hooks, events, cache
        self.async_events = async_events
        key = secret_key or os.environ.get("CZO_SECRET_KEY") or _process_key
        key = key.encode() if isinstance(key, str) else key
        self._mac_key = hmac.new(key, b"product-cursor", hashlib.sha256).digest()

    # -- transactions -------------------------------------------------------------------

    def _stack(self) -> list[list[Callable[[], Any]]]:
        stack: list[list[Callable[[], Any]]] = _frames.__dict__.setdefault(str(id(self.db)), [])
        return stack

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction, or a savepoint inside one; its callbacks follow its fate."""
        stack = self._stack()
        stack.append([])
        try:
            with self.db.atomic():
                yield
        except BaseException:
            stack.pop()  # rolled back (or the commit failed): its callbacks never run
            raise
        callbacks = stack.pop()
        if stack:
            stack[-1].extend(callbacks)
            return
        for fn in callbacks:
            try:
                fn()
            except Exception:  # the data is committed: one callback must not stop the others
                log.exception("on_commit callback %r failed", fn)

    def on_commit(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``fn`` after the outermost commit; at once outside a transaction."""
        stack = self._stack()
        if stack:
            stack[-1].append(fn)
        elif self.db.in_transaction():
            self.db.after_commit(fn)
        else:
            fn()
        return fn

    # -- cache tags ---------------------------------------------------------------------

    @property
    def list_tag(self) -> str:
        return f"{TABLE}:list"

    def row_tag(self, id: Any) -> str:
        return f"{TABLE}:{self._check_id(id)}"

    def _forget(self, id: Any) -> None:
        # A write by id found the row changed: a stale cached copy would fail every retry.
        if self.cache is not None:
            self.cache.invalidate_tags([self.row_tag(id)])

    # -- checks -------------------------------------------------------------------------

    def _check_id(self, id: Any) -> int:
        if id is None:
            raise InvalidFilterError("Product id: None is not a valid id; pass the row's primary key")
        try:
            return _integer("id", id)
        except ValueError as exc:
            raise InvalidFilterError(f"Product id {id!r}: {exc}") from None

    def _check_expected(self, expected: Any) -> int | None:
        if expected is not None and (
            not isinstance(expected, int) or isinstance(expected, bool) or not 1 <= expected < 2**31
        ):
            raise InvalidDataError(
                f"Product expected_version {expected!r}: expected the row's version, an integer "
                f"from 1 to {2**31 - 1}"
            )
        return expected

    def _clean(self, data: Any, *, creating: bool) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise InvalidDataError(f"Product: data must be a mapping of field to value, got {type(data).__name__}")
        cleaned: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise InvalidDataError(f"Product: field names must be strings, got {key!r}")
            if key in MANAGED:
                raise InvalidDataError(f"Product.{key} is managed by the repository and cannot be set", field=key)
            if key not in WRITABLE:
                raise InvalidDataError(f"Product: unknown field {key!r}; allowed: {', '.join(WRITABLE)}", field=key)
            if value is None:
                raise InvalidDataError(f"Product.{key} cannot be null", field=key)
            try:
                cleaned[key] = _value(key, value)
            except ValueError as exc:
                raise InvalidDataError(f"Product.{key}: {exc}", field=key) from None
        if creating:
            for key in REQUIRED:
                if key not in cleaned:
                    raise InvalidDataError(f"Product: required field {key!r} is missing", field=key)
            now = _now()
            cleaned = {"currency": "EUR", **cleaned, "created_at": now, "updated_at": now, "version": 1}
        return cleaned

    # -- filters and order --------------------------------------------------------------

    def _condition(self, key: Any, value: Any) -> Any:
        if not isinstance(key, str):
            raise InvalidFilterError(f"filter keys must be strings like 'price__gte', got {key!r}")
        name, sep, op = key.rpartition("__")
        if not sep:
            name, op = key, "eq"
        elif op not in OPERATORS:
            raise InvalidFilterError(f"filter {key!r}: unknown operator {op!r}; allowed: {', '.join(OPERATORS)}")
        column = COLUMNS.get(name)
        if column is None:
            raise InvalidFilterError(
                f"filter: unknown field {name!r} on Product; allowed: {', '.join(sorted(COLUMNS))}"
            )

        def scalar(item: Any) -> Any:
            if isinstance(item, (Mapping, list, tuple, set, frozenset)):
                raise InvalidFilterError(
                    f"filter {key!r}: expected a single value, got {type(item).__name__}; use __in for a list"
                )
            try:
                return _value(name, item)
            except ValueError as exc:
                raise InvalidFilterError(
                    f"filter {key!r}: not a valid value for {type(column).__name__} {name!r}: {exc}"
                ) from None

        if op in COMPARE:
            if value is None and op in ("eq", "ne"):
                return column.is_null(op == "eq")
            if value is None:
                raise InvalidFilterError(f"filter {key!r}: cannot compare with None; use __is_null")
            return COMPARE[op](column, scalar(value))
        if op in ("in", "not_in"):
            if not isinstance(value, (list, tuple, set, frozenset)):
                raise InvalidFilterError(f"filter {key!r}: expected a list of values, got {type(value).__name__}")
            if len(value) > MAX_IN:
                raise InvalidFilterError(f"filter {key!r}: {len(value)} values is more than the {MAX_IN} allowed")
            if any(item is None for item in value):
                raise InvalidFilterError(f"filter {key!r}: None is not allowed in a list; use __is_null")
            items = [scalar(item) for item in value]
            if not items:  # IN () matches nothing, NOT IN () everything
                return peewee.SQL("1 = 0" if op == "in" else "1 = 1")
            return column.in_(items) if op == "in" else column.not_in(items)
        if op == "is_null":
            if not isinstance(value, bool):
                raise InvalidFilterError(f"filter {key!r}: expected true or false, got {value!r}")
            return column.is_null(value)
        if not isinstance(value, str):
            raise InvalidFilterError(f"filter {key!r}: expected a string, got {type(value).__name__}")
        # Substring functions rather than LIKE: a % or _ in the value stays a literal character.
        sqlite = isinstance(self.db, peewee.SqliteDatabase)
        position = peewee.fn.instr if sqlite else peewee.fn.strpos
        text = peewee.Value(value, converter=False)
        if op == "contains":
            return position(column, text) > 0
        if op == "icontains":
            return position(peewee.fn.lower(column), peewee.fn.lower(text)) > 0
        return peewee.fn.substr(column, 1, len(value)) == text

    def _where(self, where: Any, with_deleted: bool, only_deleted: bool) -> Any:
        if with_deleted and only_deleted:
            raise InvalidFilterError("pass with_deleted or only_deleted, not both")
        query = Product.select().bind(self.db)
        if not with_deleted:
            query = query.where(Product.deleted_at.is_null(not only_deleted))
        if where is None or isinstance(where, peewee.Node):
            return query if where is None else query.where(where)
        if not isinstance(where, Mapping):
            raise InvalidFilterError(
                f"where must be a mapping like {{'price__gte': 10}} or a Peewee expression, got {type(where).__name__}"
            )
        if len(where) > MAX_CONDITIONS:
            raise InvalidFilterError(f"where has {len(where)} conditions; at most {MAX_CONDITIONS} are allowed")
        for key, value in where.items():
            query = query.where(self._condition(key, value))
        return query

    def _order(self, order_by: Any) -> list[tuple[str, bool]]:
        """``[(field, descending), ...]`` ending with the id as tie-breaker."""
        if order_by is None:
            items: list[Any] = []
        elif isinstance(order_by, (str, peewee.Field, peewee.Ordering)):
            items = [order_by]
        elif isinstance(order_by, (list, tuple)):
            items = list(order_by)
        else:
            raise InvalidFilterError(
                f"order_by must be a field name like 'price' or '-price', a field, or a list of those; "
                f"got {type(order_by).__name__}"
            )
        if len(items) > MAX_SORT_KEYS:
            raise InvalidFilterError(f"order_by has {len(items)} keys; at most {MAX_SORT_KEYS} allowed")
        keys: list[tuple[str, bool]] = []
        for item in items:
            if isinstance(item, str):
                name, descending = item.lstrip("+-"), item.startswith("-")
            elif isinstance(item, peewee.Ordering) and isinstance(item.node, peewee.Field):
                name, descending = item.node.name, item.direction.upper() == "DESC"
            elif isinstance(item, peewee.Field):
                name, descending = item.name, False
            else:
                raise InvalidFilterError(f"order_by: cannot order by {item!r}")
            column = item.node if isinstance(item, peewee.Ordering) else item
            if isinstance(column, peewee.Field) and column.model is not Product:
                raise InvalidFilterError(f"order_by: field {name!r} belongs to {column.model.__name__}, not Product")
            if name not in COLUMNS:
                raise InvalidFilterError(f"order_by: unknown field {name!r} on Product; allowed: {', '.join(sorted(COLUMNS))}")
            if any(name == seen for seen, _ in keys):
                raise InvalidFilterError(f"order_by names {name!r} twice")
            keys.append((name, descending))
        if not any(name == "id" for name, _ in keys):
            keys.append(("id", keys[-1][1] if keys else False))
        return keys

    @staticmethod
    def _orderings(keys: list[tuple[str, bool]], reverse: bool = False) -> list[Any]:
        result = []
        for name, descending in keys:
            column, down = COLUMNS[name], descending != reverse
            if column.null:  # NULL sorts as the greatest value on both databases
                result.append(column.desc(nulls="first") if down else column.asc(nulls="last"))
            else:
                result.append(column.desc() if down else column.asc())
        return result

    @staticmethod
    def _after(keys: list[tuple[str, bool]], values: list[Any], forward: bool) -> Any:
        """Rows strictly beyond ``values`` in the order: (a > x) OR (a = x AND b > y) OR ..."""
        clauses = []
        for i, (name, descending) in enumerate(keys):
            column, value, greater = COLUMNS[name], values[i], descending != forward
            if greater:
                term = None if value is None else ((column > value) | column.is_null() if column.null else column > value)
            else:
                term = column.is_null(False) if value is None else column < value
            if term is None:
                continue
            for (prior, _), prior_value in zip(keys[:i], values[:i]):
                term = (COLUMNS[prior].is_null() if prior_value is None else COLUMNS[prior] == prior_value) & term
            clauses.append(term)
        if not clauses:
            return peewee.SQL("1 = 0")
        expression = clauses[0]
        for clause in clauses[1:]:
            expression = expression | clause
        return expression

    # -- cursors ------------------------------------------------------------------------

    @staticmethod
    def _spec(keys: list[tuple[str, bool]]) -> str:
        return TABLE + ":" + ",".join(("-" if down else "") + name for name, down in keys)

    def _encode(self, keys: list[tuple[str, bool]], row: Product, direction: str) -> str:
        values = [getattr(row, name) for name, _ in keys]
        values = [v.isoformat() if isinstance(v, dt.datetime) else v for v in values]
        payload = json.dumps({"d": direction, "o": self._spec(keys), "v": values}, separators=(",", ":")).encode()
        body = MAGIC + len(payload).to_bytes(2, "big") + payload
        mac = hmac.new(self._mac_key, body, hashlib.sha256).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def _decode(self, keys: list[tuple[str, bool]], token: Any) -> tuple[bool, list[Any]]:
        """``(forward, values)`` of a cursor made by ``_encode`` for this order and key."""
        if not isinstance(token, str):
            raise InvalidCursorError(f"cursor must be a string, got {type(token).__name__}")
        if not token:
            raise InvalidCursorError("cursor is empty")
        if len(token) > MAX_CURSOR:
            raise InvalidCursorError(f"cursor is {len(token)} characters long; a valid one is under {MAX_CURSOR}")
        bad_base64 = InvalidCursorError(
            "cursor is not a valid cursor: it is not base64url (malformed encoding); pass next_cursor "
            "or prev_cursor back unchanged"
        )
        if not _BASE64URL.fullmatch(token):
            raise bad_base64
        # A cursor cut off mid-character leaves a length no base64 text has: read what is whole.
        cut = len(token) % 4 == 1
        try:
            raw = base64.urlsafe_b64decode(token[:-1] + "=" * 3 if cut else token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise bad_base64 from None
        ours = raw.startswith(MAGIC) or (len(raw) < len(MAGIC) and MAGIC.startswith(raw) and raw != b"")
        if cut and not ours:
            raise bad_base64
        if not ours:
            raise InvalidCursorError(
                "cursor is not a valid cursor: these bytes were never a cursor; pass next_cursor or "
                "prev_cursor back unchanged"
            )
        size = int.from_bytes(raw[3:5], "big") if len(raw) >= 5 else None
        if cut or size is None or len(raw) < 5 + size + MAC_BYTES:
            raise InvalidCursorError(
                "cursor is truncated: it ends early, as if cut off when copied; pass back the whole "
                "next_cursor or prev_cursor"
            )
        body, mac = raw[: 5 + size], raw[5 + size :]
        expected = hmac.new(self._mac_key, body, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise InvalidCursorError(
                "cursor signature does not match: it was altered, or signed with another secret key"
            )
        content = json.loads(body[5:])
        if content["o"] != self._spec(keys):
            raise InvalidCursorError(
                f"cursor was made for another sort order; this query orders by {self._spec(keys)} "
                "(start again without a cursor)"
            )
        try:
            values = [None if v is None else _value(name, v) for (name, _), v in zip(keys, content["v"])]
        except ValueError:
            raise InvalidCursorError("cursor values do not match the sort fields") from None
        return content["d"] == "n", values

    # -- reads --------------------------------------------------------------------------

    def find_by_id(self, id: Any, *, with_deleted: bool = False, only_deleted: bool = False) -> Product | None:
        query = self._where(None, with_deleted, only_deleted).where(Product.id == self._check_id(id))
        return query.first()

    def get_by_id(self, id: Any, *, with_deleted: bool = False, only_deleted: bool = False) -> Product:
        row = self.find_by_id(id, with_deleted=with_deleted, only_deleted=only_deleted)
        if row is None:
            raise NotFoundError("Product", id)
        return row

    def find_by_ids(self, ids: Iterable[Any], *, with_deleted: bool = False, only_deleted: bool = False) -> list[Product]:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise InvalidFilterError(f"ids must be a list of ids, got {type(ids).__name__}")
        wanted = list(ids)
        if len(wanted) > MAX_IN:
            raise InvalidFilterError(f"{len(wanted)} ids is more than the {MAX_IN} allowed")
        wanted = [self._check_id(id) for id in wanted]
        if not wanted:
            return []
        found = {row.id: row for row in self._where(None, with_deleted, only_deleted).where(Product.id.in_(set(wanted)))}
        return [found[id] for id in wanted if id in found]

    def find_one(self, where: Any, *, order_by: Any = None, with_deleted: bool = False, only_deleted: bool = False) -> Product | None:
        order = self._orderings(self._order(order_by))
        return self._where(where, with_deleted, only_deleted).order_by(*order).first()

    def count(self, where: Any = None, *, with_deleted: bool = False, only_deleted: bool = False) -> int:
        return int(self._where(where, with_deleted, only_deleted).count())

    def exists(self, where: Any, *, with_deleted: bool = False, only_deleted: bool = False) -> bool:
        return bool(self._where(where, with_deleted, only_deleted).exists())

    def find_many(
        self,
        where: Any = None,
        *,
        order_by: Any = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
        with_total: bool = True,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> Page:
        size = DEFAULT_LIMIT if limit is None else limit
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_LIMIT:
            raise InvalidFilterError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        keys = self._order(order_by)
        if offset is not None and cursor is not None:
            raise InvalidFilterError("pass either offset or cursor, not both")
        query = self._where(where, with_deleted, only_deleted)
        if offset is not None:
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise InvalidFilterError(f"offset must be a non-negative integer, got {offset!r}")
            if offset > MAX_OFFSET:
                raise InvalidFilterError("offset is larger than 10,000,000; use cursor pagination")
            rows = list(query.order_by(*self._orderings(keys)).limit(size + 1).offset(offset))
            items, has_next, has_prev = rows[:size], len(rows) > size, offset > 0
            total = query.count() if with_total else None
        else:
            forward = True
            if cursor is not None:
                forward, values = self._decode(keys, cursor)
                query = query.where(self._after(keys, values, forward))
            rows = list(query.order_by(*self._orderings(keys, reverse=not forward)).limit(size + 1))
            items, more, total = rows[:size], len(rows) > size, None
            if forward:
                has_next, has_prev = more and bool(items), cursor is not None and bool(items)
            else:
                items.reverse()
                has_next, has_prev = bool(items), more and bool(items)
        return Page(
            items=items, limit=size, offset=offset, total=total, has_next=has_next, has_prev=has_prev,
            next_cursor=self._encode(keys, items[-1], "n") if has_next and items else None,
            prev_cursor=self._encode(keys, items[0], "p") if has_prev and items else None,
        )

    # -- the product module's own queries -----------------------------------------------

    def find_by_slug(self, shop_id: int, slug: str) -> Product | None:
        return self.find_one({"shop_id": shop_id, "slug": slug})

    def list_for_shop(self, shop_id: int, **page: Any) -> Page:
        return self.find_many({"shop_id": shop_id}, order_by=["price"], **page)

    # -- writes -------------------------------------------------------------------------

    def _run(self, ctx: WriteContext, operation: Callable[[WriteContext], R]) -> R:
        """Run a write through its hooks and announce it, in a transaction when it needs one."""
        name = f"{TABLE}.{ctx.operation}"
        if self.hooks is not None and self.hooks.has(name):
            written: list[R] = []

            def guarded(current: WriteContext) -> R:
                with self.transaction():  # a failed write leaves error hooks a usable transaction
                    result = operation(current)
                written.append(result)
                return result

            with self.transaction():
                final: R = self.hooks.run(name, ctx, guarded)
                if written:  # announce what was written, not what an error hook recovered
                    self._announce(ctx.operation, written[0])
            return final
        if self.events is not None or self.db.in_transaction():
            # A savepoint keeps a failed write from poisoning the caller's transaction, and the
            # event check (or outbox row) shares the write's fate.
            with self.transaction():
                result = operation(ctx)
                self._announce(ctx.operation, result)
            return result
        result = operation(ctx)
        self._announce(ctx.operation, result)
        return result

    def _announce(self, operation: str, result: Any) -> None:
        rows = result if isinstance(result, list) else [result]
        name = f"{TABLE}.{PAST[operation]}"
        payloads = [dict(row.__data__) for row in rows]  # taken now: the caller may change rows
        if self.events is not None and name in EVENT_TYPES:
            for payload in payloads:
                try:
                    msgspec.convert(payload, EVENT_TYPES[name])
                except msgspec.ValidationError as exc:
                    raise InvalidDataError(f"Product {operation}: nothing was written; the row does not fit {name} ({exc})") from None
        if self.events is not None and self.async_events:
            for payload in payloads:  # into the outbox now, committed or rolled back with the row
                self.events.emit_async(name, payload)

        def fire() -> None:
            if self.cache is not None:  # first, so that listeners reading back see the new rows
                self.cache.invalidate_tags([self.list_tag, *(self.row_tag(row.id) for row in rows)])
            if self.events is not None and not self.async_events:
                for payload in payloads:
                    self.events.emit(name, payload)

        self.on_commit(fire)

    def _execute(self, query: Any) -> list[Product]:
        try:
            return list(query.bind(self.db).execute())
        except peewee.IntegrityError as exc:
            text = str(exc).lower()
            if getattr(getattr(exc, "orig", None), "pgcode", None) == "23505" or "unique" in text:
                raise ConflictError(
                    f"Product: a live product of this shop already has this slug ({str(exc).splitlines()[0]})",
                    fields=("shop_id", "slug"),
                ) from None
            raise InvalidDataError(f"Product: the database refused the row ({str(exc).splitlines()[0]})") from None

    def _write_by_id(self, id: int, values: dict[str, Any], expected: int | None, *, deleted: bool | None) -> Product:
        """``UPDATE ... SET ..., version = version + 1 WHERE id = ? [AND version = ?]``, or why not."""
        query = Product.update({**values, Product.version: Product.version + 1}).where(Product.id == id)
        if expected is not None:
            query = query.where(Product.version == expected)
        if deleted is not None:
            query = query.where(Product.deleted_at.is_null(not deleted))
        rows = self._execute(query.returning(Product))
        if rows:
            return rows[0]
        self._forget(id)
        current = Product.select().where(Product.id == id).bind(self.db).first()
        if current is None or (deleted is not None and (current.deleted_at is not None) != deleted):
            raise NotFoundError("Product", id)
        raise OptimisticLockError("Product", id, expected=expected or 0, actual=current.version)

    def create(self, data: Mapping[str, Any]) -> Product:
        if not isinstance(data, Mapping):
            raise InvalidDataError(f"data must be a mapping of field to value, got {type(data).__name__}")

        def insert(ctx: WriteContext) -> Product:
            return self._execute(Product.insert(self._clean(ctx.data, creating=True)).returning(Product))[0]

        return self._run(WriteContext("create", data=dict(data)), insert)

    def create_many(self, rows: Iterable[Mapping[str, Any]]) -> list[Product]:
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
            raise InvalidDataError(f"rows must be a list of mappings, got {type(rows).__name__}")
        given = list(rows)
        for row in given:
            if not isinstance(row, Mapping):
                raise InvalidDataError(f"data must be a mapping of field to value, got {type(row).__name__}")

        def insert(ctx: WriteContext) -> list[Product]:
            cleaned = [self._clean(row, creating=True) for row in ctx.rows or []]
            names = [name for name in COLUMNS if name != "id"]
            created: list[Product] = []
            # Past SQLite's parameter limit the rows go in several statements, in one transaction.
            block = self.transaction() if len(cleaned) > MAX_ROWS_PER_INSERT else contextlib.nullcontext()
            with block:
                for start in range(0, len(cleaned), MAX_ROWS_PER_INSERT):
                    chunk = [tuple(row.get(n) for n in names) for row in cleaned[start : start + MAX_ROWS_PER_INSERT]]
                    query = Product.insert_many(chunk, fields=[COLUMNS[n] for n in names]).returning(Product)
                    created.extend(self._execute(query))
            return created

        return self._run(WriteContext("create_many", rows=[dict(row) for row in given]), insert)

    def update(self, id: Any, data: Mapping[str, Any], *, expected_version: int | None = None) -> Product:
        if not isinstance(data, Mapping):
            raise InvalidDataError(f"data must be a mapping of field to value, got {type(data).__name__}")
        ctx = WriteContext("update", id=self._check_id(id), data=dict(data), expected_version=self._check_expected(expected_version))

        def write(ctx: WriteContext) -> Product:
            values = {**self._clean(ctx.data, creating=False), "updated_at": _now()}
            return self._write_by_id(ctx.id, values, ctx.expected_version, deleted=False)

        return self._run(ctx, write)

    def delete(self, id: Any, *, expected_version: int | None = None) -> Product:
        ctx = WriteContext("delete", id=self._check_id(id), expected_version=self._check_expected(expected_version))

        def write(ctx: WriteContext) -> Product:
            now = _now()
            return self._write_by_id(ctx.id, {"deleted_at": now, "updated_at": now}, ctx.expected_version, deleted=False)

        return self._run(ctx, write)

    def restore(self, id: Any, *, expected_version: int | None = None) -> Product:
        ctx = WriteContext("restore", id=self._check_id(id), expected_version=self._check_expected(expected_version))

        def write(ctx: WriteContext) -> Product:
            row = self.find_by_id(ctx.id, only_deleted=True)
            if row is None:
                self._forget(ctx.id)
                raise NotFoundError("Product", ctx.id)
            if self.exists({"shop_id": row.shop_id, "slug": row.slug}):
                raise ConflictError(
                    f"cannot restore Product id={ctx.id!r}: another live row already has the same shop_id, slug",
                    fields=("shop_id", "slug"),
                )
            return self._write_by_id(ctx.id, {"deleted_at": None, "updated_at": _now()}, ctx.expected_version, deleted=True)

        with self.transaction():  # the uniqueness check and the write see the same data
            return self._run(ctx, write)

    def hard_delete(self, id: Any) -> Product:
        def write(ctx: WriteContext) -> Product:
            rows = self._execute(Product.delete().where(Product.id == ctx.id).returning(Product))
            if not rows:
                self._forget(ctx.id)
                raise NotFoundError("Product", ctx.id)
            return rows[0]

        return self._run(WriteContext("hard_delete", id=self._check_id(id)), write)
