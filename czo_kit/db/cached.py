"""``create_cached_queries``: the read functions of ``create_queries``, served from the cache.

Rows are cached as their field values (msgpack, decoded back to exact types), never as ORM
objects. A row is cached under its id with the tag ``db:<table>:<id>``; every other read
(``find_one``, ``find_many``, ``count``, ``exists``) under a hash of its arguments with the
tag ``db:<table>:list``. Mutations built with ``cache=`` bump those tags once their
transaction commits, so a read after a committed write never sees the old row, and a reader
that raced the write cannot store the old row as fresh (tag versions are snapshotted before
the database is read). Inside a transaction, reads skip the cache and go to the database.

With ``stale_while_revalidate`` and ``refresh_ahead``, a read past its TTL (or near its end)
returns the cached answer and the cache's refresh pool re-reads the database in the
background, on a connection of its own that it closes when done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

import msgspec
import peewee

from czo_kit.cache._refresh import check_refresh_ahead, check_stale_window, in_background_refresh
from czo_kit.cache.manager import CacheManager
from czo_kit.db._base import register_composition
from czo_kit.db._tags import id_token, list_tag, row_tag
from czo_kit.db.mutations import In, Mutations
from czo_kit.db.repository import Repository
from czo_kit.db.pagination import PaginatedResult
from czo_kit.db.queries import DEFAULT_LIMIT, MAX_LIMIT, Queries
from czo_kit.errors import InvalidCursorError, InvalidFilterError

__all__ = ["CachedQueries", "CachedRepository", "create_cached_queries", "list_tag", "row_tag"]

M = TypeVar("M", bound=peewee.Model)
R = TypeVar("R")

_KEY_ENCODER = msgspec.msgpack.Encoder()



class CachedQueries(Queries[M]):
    """``Queries`` whose answers come from the cache while fresh."""

    PARTS: ClassVar[frozenset[str]] = frozenset({"cached_queries"})

    def _setup(self) -> None:
        super()._setup()
        cache = self._options.get("cache")
        if not isinstance(cache, CacheManager):
            raise TypeError(f"cache must be a CacheManager, got {type(cache).__name__}")
        self._cache: CacheManager = cache.namespace("db").namespace(self._info.table)
        self._ttl: float | None = self._options.get("ttl")
        self._swr = check_stale_window(self._options.get("stale_while_revalidate"))
        self._ahead = check_refresh_ahead(self._options.get("refresh_ahead"))
        self._row_type = self._info.row_type
        # A page type per model, so cached rows decode straight to their exact types.
        self._page_type = msgspec.defstruct(
            f"{self.model.__name__}Page",
            [
                ("rows", list[self._row_type]),  # type: ignore[name-defined]
                ("limit", int),
                ("offset", int | None),
                ("total", int | None),
                ("has_next", bool),
                ("has_prev", bool),
                ("next_cursor", str | None),
                ("prev_cursor", str | None),
            ],
            array_like=True,
        )
        self._list_tags = [list_tag(self._info.table)]

    def _cached(self, key: str, load: Callable[[], R], tags: list[str], kind: Any) -> R:
        """``get_or_set`` with this repository's TTL, stale window and refresh-ahead."""
        value: R = self._cache.get_or_set(
            key, load, ttl=self._ttl, tags=tags, stale_while_revalidate=self._swr, type=kind,
            refresh_ahead=self._ahead,
        )
        return value

    def _query(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """``fn(self, *args, **kwargs)`` for a loader; as a background refresh, on a connection
        it closes when done: the refresh threads live as long as the cache, and would otherwise
        each keep a connection (a pool slot) open. A caller's reads keep the caller's connection.
        (Called by the loaders, not wrapped around them: a hit builds nothing more.)"""
        if not in_background_refresh():
            return fn(self, *args, **kwargs)
        with self.db.connection_context():
            return fn(self, *args, **kwargs)

    def _uncached(self) -> bool:
        """Whether to read the database directly: inside a transaction it may hold this
        connection's own uncommitted writes, which a cached row would hide, and which a row
        cached on a miss would publish to every reader, and keep after a rollback."""
        return bool(self.db.in_transaction())

    def _arguments_key(self, method: str, where: Any, extra: tuple[Any, ...]) -> str:
        """A digest of a read's arguments; Peewee expressions are keyed by their SQL."""
        if where is None or isinstance(where, dict):
            try:
                items = sorted(where.items()) if where else []
                blob = _KEY_ENCODER.encode((method, items, extra))
            except (TypeError, msgspec.EncodeError):
                blob = b""
            if blob:
                return method + ":" + hashlib.blake2b(blob, digest_size=16).hexdigest()
        query = self._select(where, True, False)  # raises InvalidFilterError on bad input
        sql, params = self.db.get_sql_context().sql(query).query()
        try:
            # Typed: 1 and "1" print alike but are other values to the database.
            blob = _KEY_ENCODER.encode((method, sql, [(type(p).__name__, str(p)) for p in params], extra))
        except (TypeError, msgspec.EncodeError):
            raise InvalidFilterError(f"cannot build a cache key for where={where!r}") from None
        return method + ":" + hashlib.blake2b(blob, digest_size=16).hexdigest()

    def _order_key(self, order_by: Any) -> str:
        """The sort order as parsed, so that an order the database would refuse (a field of
        another model, say) is refused before the cache is read, never answered from an entry
        of a same-named field of this model."""
        return self._order(order_by).describe()

    # -- rows by id ---------------------------------------------------------------------

    def _cached_values(self, id: Any) -> list[Any] | None:
        info = self._info

        def load() -> list[Any] | None:
            row = self._query(Queries.find_by_id, id, with_deleted=True)
            return info.values_of(row) if row is not None else None

        return self._cached(f"r:{id_token(id)}", load, [row_tag(info.table, id)], self._row_type | None)

    def _visible(self, row: M | None, with_deleted: bool, only_deleted: bool) -> M | None:
        info = self._info
        info.deleted_clause(with_deleted=with_deleted, only_deleted=only_deleted)  # validates flags
        if row is None or info.deleted_at is None or with_deleted:
            return row
        deleted = row.__data__.get("deleted_at") is not None
        return row if deleted == only_deleted else None

    def find_by_id(self, id: Any, *, with_deleted: bool = False, only_deleted: bool = False) -> M | None:
        id = self._check_id(id)
        if self._uncached():
            return Queries.find_by_id(self, id, with_deleted=with_deleted, only_deleted=only_deleted)
        values = self._cached_values(id)
        row = self._info.from_values(values) if values is not None else None
        return self._visible(row, with_deleted, only_deleted)

    def find_by_ids(
        self, ids: Iterable[Any], *, with_deleted: bool = False, only_deleted: bool = False
    ) -> list[M]:
        wanted = self._check_ids(ids)
        if self._uncached():
            return Queries.find_by_ids(self, wanted, with_deleted=with_deleted, only_deleted=only_deleted)
        info = self._info
        id_of = {f"r:{id_token(id)}": id for id in dict.fromkeys(wanted)}

        def load(missing: list[str]) -> dict[str, list[Any] | None]:
            # One query for every miss; each row is then stored under its own tag.
            missing_ids = [id_of[key] for key in missing]
            found = {
                row.__data__[info.pk.name]: row
                for row in self._query(Queries.find_by_ids, missing_ids, with_deleted=True)
            }
            return {
                key: info.values_of(found[id]) if id in found else None
                for key, id in zip(missing, missing_ids)
            }

        cached = self._cache.get_or_set_many(
            {key: [row_tag(info.table, id)] for key, id in id_of.items()},
            load,
            ttl=self._ttl,
            type=self._row_type | None,
            stale_while_revalidate=self._swr,
            refresh_ahead=self._ahead,
        )
        rows: dict[Any, M | None] = {}
        for key, id in id_of.items():
            values = cached.get(key)
            rows[id] = info.from_values(values) if values is not None else None
        result = []
        for id in wanted:
            visible = self._visible(rows.get(id), with_deleted, only_deleted)
            if visible is not None:
                result.append(visible)
        return result

    # -- everything else ----------------------------------------------------------------

    def find_one(
        self,
        where: Any,
        *,
        order_by: Any = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> M | None:
        if self._uncached():
            return Queries.find_one(
                self, where, order_by=order_by, with_deleted=with_deleted, only_deleted=only_deleted
            )
        info = self._info
        key = self._arguments_key("one", where, (self._order_key(order_by), with_deleted, only_deleted))

        def load() -> list[Any] | None:
            row = self._query(
                Queries.find_one, where, order_by=order_by, with_deleted=with_deleted, only_deleted=only_deleted
            )
            return info.values_of(row) if row is not None else None

        values = self._cached(key, load, self._list_tags, self._row_type | None)
        return info.from_values(values) if values is not None else None

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
        if self._uncached():
            return Queries.find_many(
                self, where, order_by=order_by, limit=limit, offset=offset, cursor=cursor,
                with_total=with_total, with_deleted=with_deleted, only_deleted=only_deleted,
            )
        info = self._info
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidCursorError(f"cursor must be a string, got {type(cursor).__name__}")
        # The limit as this repository resolves it (its own default and maximum) and its
        # cursor key: another repository of the table shares the cache namespace, and its
        # page, or its max_limit, or its cursors, must not answer here.
        size = self._check_limit(limit)
        key = self._arguments_key(
            "many",
            where,
            (
                self._order_key(order_by), size, offset, cursor, with_total, with_deleted, only_deleted,
                self._codec.key_id,
            ),
        )

        def load() -> Any:
            page = self._query(
                Queries.find_many,
                where,
                order_by=order_by,
                limit=limit,
                offset=offset,
                cursor=cursor,
                with_total=with_total,
                with_deleted=with_deleted,
                only_deleted=only_deleted,
            )
            return self._page_type(
                [info.values_of(row) for row in page.items],
                page.limit, page.offset, page.total, page.has_next, page.has_prev,
                page.next_cursor, page.prev_cursor,
            )

        page = self._cached(key, load, self._list_tags, self._page_type)
        return PaginatedResult(
            items=[info.from_values(values) for values in page.rows],
            limit=page.limit,
            offset=page.offset,
            total=page.total,
            has_next=page.has_next,
            has_prev=page.has_prev,
            next_cursor=page.next_cursor,
            prev_cursor=page.prev_cursor,
        )

    def count(self, where: Any = None, *, with_deleted: bool = False, only_deleted: bool = False) -> int:
        if self._uncached():
            return Queries.count(self, where, with_deleted=with_deleted, only_deleted=only_deleted)
        key = self._arguments_key("count", where, (with_deleted, only_deleted))
        result: int = self._cached(
            key, lambda: self._query(Queries.count, where, with_deleted=with_deleted, only_deleted=only_deleted),
            self._list_tags, int,
        )
        return result

    def exists(self, where: Any, *, with_deleted: bool = False, only_deleted: bool = False) -> bool:
        if self._uncached():
            return Queries.exists(self, where, with_deleted=with_deleted, only_deleted=only_deleted)
        key = self._arguments_key("exists", where, (with_deleted, only_deleted))
        result: bool = self._cached(
            key, lambda: self._query(Queries.exists, where, with_deleted=with_deleted, only_deleted=only_deleted),
            self._list_tags, bool,
        )
        return result


class CachedRepository(CachedQueries[M], Repository[M, In]):
    """Cached reads plus writes that invalidate them: ``create_repository(..., cache=)``."""

    PARTS: ClassVar[frozenset[str]] = CachedQueries.PARTS | Mutations.PARTS


register_composition(CachedQueries.PARTS, CachedQueries)
register_composition(CachedRepository.PARTS, CachedRepository)


def create_cached_queries(
    model: type[M],
    *,
    db: peewee.Database,
    cache: CacheManager,
    ttl: float | None = None,
    secret_key: str | bytes | None = None,
    default_limit: int = DEFAULT_LIMIT,
    max_limit: int = MAX_LIMIT,
    stale_while_revalidate: float | None = None,
    refresh_ahead: float | None = None,
) -> CachedQueries[M]:
    """``create_queries`` served from ``cache`` for ``ttl`` seconds (the cache's default if None).

    Compose with ``create_mutations(..., cache=cache)`` so that writes invalidate. With
    ``stale_while_revalidate`` (seconds), an answer past its TTL is still returned for that
    long while one background refresh re-reads it; with ``refresh_ahead`` (a fraction of the
    TTL, 0.8 for 80%), a read of an answer past that share of its TTL starts one. Writes
    still invalidate at once: an invalidated answer is never served stale.
    """
    if not 1 <= default_limit <= max_limit:
        raise ValueError(f"default_limit must be between 1 and max_limit ({max_limit})")
    return CachedQueries(
        model,
        db=db,
        options={
            "cache": cache,
            "ttl": ttl,
            "secret_key": secret_key,
            "default_limit": default_limit,
            "max_limit": max_limit,
            "stale_while_revalidate": check_stale_window(stale_while_revalidate),
            "refresh_ahead": check_refresh_ahead(refresh_ahead),
        },
    )
