"""``create_queries``: reads for a model, soft-delete aware, with offset and cursor pagination."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import peewee

from czo_kit.db._base import RepositoryBase, register_composition
from czo_kit.db._shapes import bind_where, compile_shape, where_shape
from czo_kit.db._sql import Slot, SqlTemplate
from czo_kit.db.filters import compile_where
from czo_kit.db.pagination import (
    CursorCodec,
    Direction,
    PaginatedResult,
    SortOrder,
    edge_values,
    keyset_condition,
    parse_order,
)
from czo_kit.errors import InvalidCursorError, InvalidFilterError, NotFoundError

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Queries", "create_queries"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=peewee.Model)

DEFAULT_LIMIT = 20
MAX_LIMIT = 500

_process_key: bytes | None = None


def _fallback_key() -> bytes:
    global _process_key
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
        log.warning(
            "no secret key configured (CZO_SECRET_KEY): pagination cursors are signed with a "
            "random per-process key and will not survive a restart"
        )
    return _process_key


def _resolve_key(db: peewee.Database, secret_key: str | bytes | None) -> bytes:
    if secret_key is None:
        secret_key = getattr(db, "czo_secret_key", None)
    if secret_key is None:
        return _fallback_key()
    return secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)


class Queries(RepositoryBase[M]):
    """Read functions for one model. Every one hides soft-deleted rows unless asked."""

    PARTS: ClassVar[frozenset[str]] = frozenset({"queries"})

    def _setup(self) -> None:
        super()._setup()
        options = self._options
        self._codec = CursorCodec(_resolve_key(self.db, options.get("secret_key")))
        self._default_limit: int = options.get("default_limit", DEFAULT_LIMIT)
        self._max_limit: int = options.get("max_limit", MAX_LIMIT)
        self._orders: dict[Any, SortOrder] = {}

    # -- single rows --------------------------------------------------------------------

    def find_by_id(self, id: Any, *, with_deleted: bool = False, only_deleted: bool = False) -> M | None:
        """The row with this primary key, or ``None``."""
        id = self._check_id(id)
        info = self._info
        mode = (with_deleted, only_deleted)

        def build() -> peewee.Node:
            query = info.select_all().where(info.pk == Slot("id", info.pk.db_value))
            clause = info.deleted_clause(with_deleted=with_deleted, only_deleted=only_deleted)
            return query.where(clause) if clause is not None else query

        template = info.template(("find_by_id", mode), build)
        row = info.execute(template, {"id": id}).fetchone()
        return info.load(row) if row is not None else None

    def get_by_id(self, id: Any, *, with_deleted: bool = False, only_deleted: bool = False) -> M:
        """The row with this primary key; ``NotFoundError`` if there is none."""
        row = self.find_by_id(id, with_deleted=with_deleted, only_deleted=only_deleted)
        if row is None:
            raise NotFoundError(self.model.__name__, id)
        return row

    def find_by_ids(
        self, ids: Iterable[Any], *, with_deleted: bool = False, only_deleted: bool = False
    ) -> list[M]:
        """Rows for these ids, in the order of ``ids``; missing ids are skipped."""
        wanted = self._check_ids(ids)
        if not wanted:
            return []
        info = self._info
        query = info.select_all().where(info.pk.in_(list(dict.fromkeys(wanted))))
        clause = info.deleted_clause(with_deleted=with_deleted, only_deleted=only_deleted)
        if clause is not None:
            query = query.where(clause)
        found = {row.__data__[info.pk.name]: row for row in info.load_all(info.execute_query(query).fetchall())}
        pk_python = info.pk.python_value
        result = []
        for id in wanted:
            row = found.get(id)
            if row is None:
                row = found.get(pk_python(info.pk.db_value(id)))  # type: ignore[no-untyped-call]
            if row is not None:
                result.append(row)
        return result

    def find_one(
        self,
        where: Any,
        *,
        order_by: Any = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> M | None:
        """The first row matching ``where`` (in ``order_by``, then primary key order), or ``None``."""
        order = self._order(order_by)
        query = self._select(where, with_deleted, only_deleted).order_by(*order.orderings()).limit(1)
        row = self._info.execute_query(query).fetchone()
        return self._info.load(row) if row is not None else None

    # -- many rows ----------------------------------------------------------------------

    def _order(self, order_by: Any) -> SortOrder:
        key = order_by if isinstance(order_by, (str, type(None))) else None
        if key is not None or order_by is None:
            cached = self._orders.get(key)
            if cached is not None:
                return cached
        order = parse_order(self.model, order_by)
        if key is not None or order_by is None:
            if len(self._orders) < 256:
                self._orders[key] = order
        return order

    def _select(self, where: Any, with_deleted: bool, only_deleted: bool) -> peewee.ModelSelect[M]:
        return self._scoped(compile_where(self.model, where, db=self.db), with_deleted, only_deleted)

    def _scoped(self, condition: Any, with_deleted: bool, only_deleted: bool) -> peewee.ModelSelect[M]:
        info = self._info
        query = info.select_all()
        clause = info.deleted_clause(with_deleted=with_deleted, only_deleted=only_deleted)
        if condition is not None:
            query = query.where(condition)
        if clause is not None:
            query = query.where(clause)
        return query

    def _fetch_page(
        self,
        where: Any,
        order: SortOrder,
        size: int,
        offset: int | None,
        cursor: str | None,
        with_deleted: bool,
        only_deleted: bool,
    ) -> tuple[list[M], Direction]:
        """Up to ``size + 1`` rows of a page, and its direction (``prev`` only for a prev cursor).

        A ``where`` with a shape (see ``_shapes``) runs the statement compiled for that shape,
        with its values bound; anything else is compiled by Peewee on each call.
        """
        info = self._info
        direction: Direction = "next"
        values: list[Any] | None = None
        if cursor is not None:
            try:
                direction, values = self._codec.decode(order, cursor)
            except InvalidCursorError:
                self._select(where, with_deleted, only_deleted)  # a bad filter is reported first
                raise
        backward = direction == "prev"
        shape = where_shape(self.model, where)
        if shape is None:
            query = self._select(where, with_deleted, only_deleted)
            if values is not None:
                query = query.where(keyset_condition(order, values, direction=direction))
            query = query.order_by(*order.orderings(reverse=backward)).limit(size + 1)
            if offset is not None:
                query = query.offset(offset)
            return info.load_all(info.execute_query(query).fetchall()), direction
        key = (
            "page", with_deleted, only_deleted, order.fingerprint, shape, offset is not None,
            None if values is None
            else (backward, tuple(value is None for value in values) if None in values else ()),
        )
        entry = info.shapes.get(key)
        if entry is None:
            self._select(where, with_deleted, only_deleted)  # the checks and errors of the Peewee path
            condition, conditions, n = compile_shape(self.model, self.db, shape)
            query = self._scoped(condition, with_deleted, only_deleted)
            if values is not None:
                query = query.where(keyset_condition(
                    order, values, direction=direction,
                    placeholder=lambda i, key: Slot(n + i, key.field.db_value),
                ))
                n += len(values)
            query = query.order_by(*order.orderings(reverse=backward)).limit(Slot(n))
            if offset is not None:
                query = query.offset(Slot(n + 1))
            template = SqlTemplate(self.db, query)
            entry = (template, conditions)
            info.shapes.put(key, entry, len(template.plan))
        template, conditions = entry
        params: list[Any] = []
        bind_where(conditions, where, params)
        if values is not None:
            params.extend(values)
        params.append(size + 1)
        if offset is not None:
            params.append(offset)
        return info.load_all(info.execute(template, params).fetchall()), direction

    def _check_limit(self, limit: Any) -> int:
        if limit is None:
            return self._default_limit
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= self._max_limit:
            raise InvalidFilterError(
                f"limit must be an integer from 1 to {self._max_limit}, got {limit!r}"
            )
        return limit

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
    ) -> PaginatedResult[M]:
        """A page of rows.

        Offset mode when ``offset`` is given (``total`` counted unless ``with_total=False``);
        otherwise cursor mode: the first page without ``cursor``, then pass ``next_cursor`` or
        ``prev_cursor`` back. Cursor mode stays fast at any depth and never skips or repeats
        a row when others are inserted or deleted between pages.
        """
        size = self._check_limit(limit)
        order = self._order(order_by)
        if offset is not None and cursor is not None:
            raise InvalidFilterError("pass either offset or cursor, not both")
        if offset is not None:
            return self._offset_page(where, order, size, offset, with_total, with_deleted, only_deleted)
        return self._cursor_page(where, order, size, cursor, with_deleted, only_deleted)

    def _offset_page(
        self,
        where: Any,
        order: SortOrder,
        size: int,
        offset: Any,
        with_total: bool,
        with_deleted: bool,
        only_deleted: bool,
    ) -> PaginatedResult[M]:
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidFilterError(f"offset must be a non-negative integer, got {offset!r}")
        if offset > 10_000_000:
            raise InvalidFilterError("offset is larger than 10,000,000; use cursor pagination")
        rows, _ = self._fetch_page(where, order, size, offset, None, with_deleted, only_deleted)
        has_next = len(rows) > size
        items = rows[:size]
        total = self._count(where, with_deleted, only_deleted) if with_total else None
        return PaginatedResult(
            items=items,
            limit=size,
            offset=offset,
            total=total,
            has_next=has_next,
            has_prev=offset > 0,
            next_cursor=(
                self._codec.encode(order, edge_values(order, items[-1]), "next")
                if has_next and items else None
            ),
            prev_cursor=(
                self._codec.encode(order, edge_values(order, items[0]), "prev")
                if offset > 0 and items else None
            ),
        )

    def _cursor_page(
        self,
        where: Any,
        order: SortOrder,
        size: int,
        cursor: str | None,
        with_deleted: bool,
        only_deleted: bool,
    ) -> PaginatedResult[M]:
        rows, direction = self._fetch_page(where, order, size, None, cursor, with_deleted, only_deleted)
        backward = direction == "prev"
        more = len(rows) > size
        items = rows[:size]
        if backward:
            items.reverse()
            has_prev, has_next = more, True
        else:
            has_prev, has_next = cursor is not None, more
        return PaginatedResult(
            items=items,
            limit=size,
            offset=None,
            total=None,
            has_next=has_next and bool(items),
            has_prev=has_prev and bool(items),
            next_cursor=(
                self._codec.encode(order, edge_values(order, items[-1]), "next")
                if has_next and items else None
            ),
            prev_cursor=(
                self._codec.encode(order, edge_values(order, items[0]), "prev")
                if has_prev and items else None
            ),
        )

    # -- aggregates ---------------------------------------------------------------------

    def _count_query(self, query: peewee.ModelSelect[M]) -> int:
        counted = query.select(peewee.fn.COUNT(peewee.SQL("*"))).order_by()
        row = self._info.execute_query(counted).fetchone()
        return int(row[0]) if row else 0

    def count(self, where: Any = None, *, with_deleted: bool = False, only_deleted: bool = False) -> int:
        """How many rows match ``where``."""
        return self._count(where, with_deleted, only_deleted)

    def _count(self, where: Any, with_deleted: bool, only_deleted: bool) -> int:
        # Not count(): a subclass's count (a cached one) must not answer for an offset page.
        shape = where_shape(self.model, where)
        if shape is None:
            return self._count_query(self._select(where, with_deleted, only_deleted))
        info = self._info
        key = ("count", with_deleted, only_deleted, shape)
        entry = info.shapes.get(key)
        if entry is None:
            self._select(where, with_deleted, only_deleted)  # the checks and errors of the Peewee path
            condition, conditions, _ = compile_shape(self.model, self.db, shape)
            query = self._scoped(condition, with_deleted, only_deleted)
            counted = query.select(peewee.fn.COUNT(peewee.SQL("*"))).order_by()
            template = SqlTemplate(self.db, counted)
            entry = (template, conditions)
            info.shapes.put(key, entry, len(template.plan))
        template, conditions = entry
        params: list[Any] = []
        bind_where(conditions, where, params)
        row = info.execute(template, params).fetchone()
        return int(row[0]) if row else 0

    def exists(self, where: Any, *, with_deleted: bool = False, only_deleted: bool = False) -> bool:
        """Whether any row matches ``where``."""
        query = self._select(where, with_deleted, only_deleted).select(peewee.SQL("1")).limit(1)
        return self._info.execute_query(query).fetchone() is not None


register_composition(Queries.PARTS, Queries)


def create_queries(
    model: type[M],
    *,
    db: peewee.Database,
    secret_key: str | bytes | None = None,
    default_limit: int = DEFAULT_LIMIT,
    max_limit: int = MAX_LIMIT,
) -> Queries[M]:
    """Read functions for ``model`` on ``db``.

    Cursors are signed with ``secret_key``, else the kit's ``CZO_SECRET_KEY`` (set on databases
    the kit opens), else a random per-process key.
    """
    if not 1 <= default_limit <= max_limit:
        raise ValueError(f"default_limit must be between 1 and max_limit ({max_limit})")
    return Queries(
        model,
        db=db,
        options={"secret_key": secret_key, "default_limit": default_limit, "max_limit": max_limit},
    )
