"""``create_mutations``: writes for a model with optimistic locking, soft delete, hooks, events.

Every write runs through ``hooks.run("<table>.<operation>", ctx, ...)`` when hooks are given,
and emits ``<table>.created`` / ``.updated`` / ``.deleted`` / ``.restored`` / ``.hard_deleted``
(``<event_prefix>.created``, ... when one is given) once the outermost transaction commits
(never after a rollback). ``input_type=`` types what ``create`` and ``update`` take.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import msgspec
import peewee

from czo_kit.db._base import RepositoryBase, register_composition
from czo_kit.db._sql import Slot
from czo_kit.db._tags import list_tag, row_tag
from czo_kit.db._values import coerce, int_bound
from czo_kit.db._write_options import check_input_type, check_prefix
from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.errors import (
    ConflictError,
    InvalidDataError,
    NotFoundError,
    OptimisticLockError,
)

__all__ = ["EventSink", "HookRunner", "MutationContext", "Mutations", "create_mutations"]

M = TypeVar("M", bound=peewee.Model)
R = TypeVar("R")

if TYPE_CHECKING:
    # PEP 696 defaults, which mypy knows and Python 3.11's typing does not: Mutations[Item]
    # is Mutations[Item, Mapping[str, Any]], what every write took before inputs were typed.
    from typing_extensions import TypeVar as _DefaultedTypeVar

    In = _DefaultedTypeVar("In", contravariant=True, default=Mapping[str, Any])
else:
    In = TypeVar("In", contravariant=True)

MANAGED_FIELDS = frozenset({"version", "deleted_at", "updated_at"})
MAX_PARAMS_PER_STATEMENT = 30_000  # under SQLite's 32,766 bound-parameter limit

PAST_TENSE = {
    "create": "created",
    "create_many": "created",
    "update": "updated",
    "delete": "deleted",
    "restore": "restored",
    "hard_delete": "hard_deleted",
}


class HookRunner(Protocol):
    """What mutations need from ``kit.hooks`` (``HookRegistry`` has it)."""

    def has(self, name: str) -> bool: ...

    def run(self, name: str, ctx: Any, operation: Callable[[Any], Any]) -> Any: ...


class CacheInvalidator(Protocol):
    """What mutations need from ``kit.cache`` to drop cached reads of the rows they change."""

    def invalidate_tags(self, tags: Iterable[str]) -> None: ...


class EventSink(Protocol):
    """What mutations need from ``kit.events``: a synchronous ``emit(name, payload)``."""

    def emit(self, name: str, payload: Mapping[str, Any]) -> Any: ...


@dataclass
class MutationContext:
    """What a mutation hook sees. ``before`` hooks may change ``data`` (or ``rows``)."""

    operation: str
    model: type[peewee.Model]
    table: str
    id: Any = None
    data: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] | None = None
    expected_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hook_name(self) -> str:
        return f"{self.table}.{self.operation}"


def row_payload(row: peewee.Model) -> dict[str, Any]:
    """A row as a plain dict of field name to Python value (foreign keys as ids)."""
    return dict(row.__data__)


class Mutations(RepositoryBase[M], Generic[M, In]):
    """Write functions for one model; ``In`` is what ``create`` and ``update`` take."""

    PARTS: ClassVar[frozenset[str]] = frozenset({"mutations"})

    if not TYPE_CHECKING:

        def __class_getitem__(cls, params):
            # The runtime half of In's default: Repository[Item] must still subscript.
            if not isinstance(params, tuple):
                params = (params,)
            if len(params) == len(getattr(cls, "__parameters__", ())) - 1:
                params = (*params, Mapping[str, Any])
            return super().__class_getitem__(params)

    def _setup(self) -> None:
        super()._setup()
        prefix = self._options.get("event_prefix")
        self._event_prefix: str = self._info.table if prefix is None else check_prefix(prefix)
        input_type = self._options.get("input_type")
        self.input_type: type[Any] | None = (
            None
            if input_type is None
            else check_input_type(self.model, self._info.names, input_type, managed=MANAGED_FIELDS)
        )
        self._hooks: HookRunner | None = self._options.get("hooks")
        self._events: EventSink | None = self._options.get("events")
        self._async_events: bool = bool(self._options.get("async_events", False))
        if self._async_events and not callable(getattr(self._events, "emit_async", None)):
            raise TypeError("async_events=True needs events= with an emit_async method (kit.events)")
        self._after_write: list[Callable[[str, list[M]], None]] = list(
            self._options.get("after_write", ())
        )
        # The kit's cache too, without cache=: extras may cache reads under this table's tags.
        cache = self._found_cache()
        self._invalidates: CacheInvalidator | None = cache
        if cache is not None:
            self._after_write.insert(0, self._invalidator(cache))

    def _invalidator(self, cache: CacheInvalidator) -> Callable[[str, list[M]], None]:
        table = self._info.table
        pk = self._info.pk.name

        def invalidate(operation: str, rows: list[M]) -> None:
            # Runs at commit, before events: listeners that read back see the new rows.
            cache.invalidate_tags([list_tag(table), *(row_tag(table, r.__data__[pk]) for r in rows)])

        return invalidate

    # -- plumbing -----------------------------------------------------------------------

    def transaction(self) -> Any:
        """``db.atomic()``: a transaction, or a savepoint inside one. Context manager or decorator."""
        return self.db.atomic()

    def on_commit(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``fn`` after the outermost commit (dropped if its block rolls back)."""
        return on_commit(self.db, fn)

    def _run(self, ctx: MutationContext, operation: Callable[[MutationContext], R]) -> R:
        hooks = self._hooks
        if hooks is not None and hooks.has(ctx.hook_name):
            written: list[R] = []

            def guarded(current: MutationContext) -> R:
                # Its own savepoint: if the write fails, error hooks can still use the database.
                with self.db.atomic():
                    result = operation(current)
                written.append(result)
                return result

            # Hooks that write more share the operation's transaction.
            with self.db.atomic():
                final: R = hooks.run(ctx.hook_name, ctx, guarded)
                if written:  # announce what was written, not a value an error hook recovered
                    self._announce(ctx.operation, written[0])
            return final
        if self.db.in_transaction() or self._checks_event_in_transaction(ctx.operation):
            # A savepoint keeps a failed write from poisoning the caller's transaction. Outside
            # one, the block makes the write and its event's fate one: an async event's outbox
            # row commits with the row, and a sync event that does not fit its declared type
            # rolls the row back instead of failing once the row is committed.
            with self.db.atomic():
                result = operation(ctx)
                self._announce(ctx.operation, result)
            return result
        result = operation(ctx)
        self._announce(ctx.operation, result)
        return result

    def _event_name(self, operation: str) -> str:
        return f"{self._event_prefix}.{PAST_TENSE[operation]}"

    def _checks_event_in_transaction(self, operation: str) -> bool:
        """Whether this write's event must be handled before its commit."""
        if self._events is None:
            return False
        if self._async_events:
            return True
        # Looked up at each write: a module may declare its events after building repositories.
        return _declared_event(self._event_name(operation)) is not None

    def _announce(self, operation: str, result: Any) -> None:
        """Hand the written rows to the cache invalidation and the events of this write.

        Called inside the write's transaction (or right after an autocommitted write): async
        events and the checks of sync ones happen now, so a failure rolls the write back;
        invalidation and sync emission wait for the commit.
        """
        if self._events is None and not self._after_write:
            return
        rows: list[M] = result if isinstance(result, list) else [result]
        events = self._events
        name = self._event_name(operation)
        # Taken now: the caller may change the returned instances before the commit.
        payloads = [row_payload(row) for row in rows] if events is not None else []
        if events is not None:
            self._check_event(operation, name, payloads)
        if events is not None and self._async_events:
            # Written to the outbox now, inside the write's transaction: durable, and gone
            # with it on rollback. The outbox relays it after commit.
            emit_async = getattr(events, "emit_async")
            for payload in payloads:
                emit_async(name, payload)
            events = None

        def fire() -> None:
            for callback in self._after_write:
                callback(operation, rows)
            if events is not None:
                for payload in payloads:
                    events.emit(name, payload)

        if self._after_write or events is not None:
            on_commit(self.db, fire)

    def _check_event(self, operation: str, name: str, payloads: list[dict[str, Any]]) -> None:
        """Refuse, before commit, rows that the event declared for ``name`` cannot carry."""
        kind = _declared_event(name)
        if kind is None:
            return
        from czo_kit.events._payload import payload_for
        from czo_kit.events.types import InvalidEventError

        for payload in payloads:
            try:
                payload_for(name, payload)
            except InvalidEventError as exc:
                raise InvalidEventError(
                    f"{self.model.__name__} {operation}: nothing was written, because the row "
                    f"does not fit {kind.__name__}, the event declared for {name!r} ({exc}); "
                    f"make the event's fields match the model's"
                ) from None

    def _clean(self, data: Any, *, creating: bool) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise InvalidDataError(
                f"{self.model.__name__}: data must be a mapping of field to value, "
                f"got {type(data).__name__}"
            )
        info = self._info
        cleaned: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(key, peewee.Field):
                key = key.name
            if not isinstance(key, str):
                raise InvalidDataError(f"{self.model.__name__}: field names must be strings, got {key!r}")
            target = info.field_map.get(key) or info.column_map.get(key)
            if target is None:
                raise InvalidDataError(
                    f"{self.model.__name__}: unknown field {key!r}; allowed: "
                    f"{', '.join(n for n in info.names if n not in MANAGED_FIELDS)}",
                    field=key,
                )
            name = target.name
            if name in MANAGED_FIELDS:
                raise InvalidDataError(
                    f"{self.model.__name__}.{name} is managed by the repository and cannot be set",
                    field=name,
                )
            if target is info.pk and not creating:
                raise InvalidDataError(f"{self.model.__name__}: the primary key cannot be changed", field=name)
            cleaned[name] = _check_value(self.model, target, value)
        return cleaned

    def _with_defaults(self, data: dict[str, Any]) -> dict[str, Any]:
        """Every field with a default gets it now, so compiled inserts never freeze a default."""
        info = self._info
        now = utcnow()
        full = dict(data)
        for f in info.fields:
            if f.name in full or f is info.pk:
                continue
            if f.name in ("created_at", "updated_at"):
                full[f.name] = now
            elif f.default is not None:
                full[f.name] = f.default() if callable(f.default) else f.default
            elif not f.null:
                raise InvalidDataError(
                    f"{self.model.__name__}: required field {f.name!r} is missing", field=f.name
                )
        return full

    def _forget(self, id: Any) -> None:
        """Drop the cached copy of a row that a write by id did not find as expected.

        The caller built the write from a version (or a row) the database no longer has. If
        that came from the cache, an invalidation was lost, and until the entry expires every
        retry of a read-modify-write loop would read it again and fail again. Dropping it at
        once, inside a transaction too, is safe: it can only cause a fresh read.
        """
        if self._invalidates is not None:
            self._invalidates.invalidate_tags([row_tag(self._info.table, id)])

    def _diagnose(self, id: Any, expected_version: int | None, *, deleted_ok: bool) -> Exception:
        """Why a targeted write changed no row: gone, or a version conflict."""
        info = self._info
        query = info.select_all().where(info.pk == id)
        row = info.execute_query(query).fetchone()
        if row is None:
            return NotFoundError(self.model.__name__, id)
        current = info.load(row)
        if info.deleted_at is not None:
            is_deleted = current.__data__.get("deleted_at") is not None
            if is_deleted != deleted_ok:
                return NotFoundError(self.model.__name__, id)
        actual = current.__data__.get("version")
        return OptimisticLockError(self.model.__name__, id, expected=expected_version or 0, actual=actual)

    def _check_expected(self, expected_version: Any) -> int | None:
        if expected_version is None:
            return None
        info = self._info
        if not info.versioned or info.version is None:
            raise InvalidDataError(
                f"{self.model.__name__} has no version field; expected_version cannot be checked"
            )
        # The version field's own range, checked as ids are: past it, SQLite raises
        # OverflowError and PostgreSQL reports a conflict no retry can resolve.
        bound = int_bound(info.version)
        if (
            not isinstance(expected_version, int)
            or isinstance(expected_version, bool)
            or not 1 <= expected_version < bound
        ):
            raise InvalidDataError(
                f"{self.model.__name__} expected_version {expected_version!r}: expected the row's "
                f"version, an integer from 1 to {bound - 1}"
            )
        return expected_version

    def _write_by_id(
        self,
        kind: str,
        id: Any,
        values: dict[str, Any],
        expected_version: int | None,
        *,
        deleted: bool | None,
    ) -> M:
        """``UPDATE ... SET <values>, version = version + 1 WHERE id = ? [AND version = ?]``."""
        info = self._info
        keys = tuple(sorted(values))
        shape = (kind, keys, expected_version is not None, deleted)

        def build() -> peewee.Node:
            assignments: dict[Any, Any] = {
                info.field_map[k]: Slot(k, info.field_map[k].db_value) for k in keys
            }
            if info.version is not None:
                assignments[info.version] = info.version + 1
            query = info.model.update(assignments).where(info.pk == Slot("__id", info.pk.db_value))
            if expected_version is not None and info.version is not None:
                query = query.where(info.version == Slot("__expected"))
            if deleted is not None and info.deleted_at is not None:
                query = query.where(info.deleted_at.is_null(not deleted))
            return query.returning(*info.fields)

        template = info.template(shape, build)
        params = dict(values)
        params["__id"] = id
        params["__expected"] = expected_version
        row = info.execute(template, params).fetchone()
        if row is None:
            self._forget(id)
            raise self._diagnose(id, expected_version, deleted_ok=bool(deleted))
        return info.load(row)

    # -- writes -------------------------------------------------------------------------

    def create(self, data: In) -> M:
        """Insert one row and return it as stored (defaults and id filled in)."""
        ctx = MutationContext("create", self.model, self._info.table, data=dict(_mapping(data)))
        return self._run(ctx, self._create)

    def _create(self, ctx: MutationContext) -> M:
        info = self._info
        values = self._with_defaults(self._clean(ctx.data, creating=True))
        keys = tuple(sorted(values))

        def build() -> peewee.Node:
            row = {info.field_map[k]: Slot(k, info.field_map[k].db_value) for k in keys}
            return info.model.insert(row).returning(*info.fields)

        template = info.template(("insert", keys), build)
        created = info.execute(template, values).fetchone()
        return info.load(created)

    def create_many(self, rows: Iterable[In]) -> list[M]:
        """Insert many rows with one ``INSERT ... RETURNING``; returns them in input order."""
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
            raise InvalidDataError(f"rows must be a list of mappings, got {type(rows).__name__}")
        materialised = [dict(_mapping(row)) for row in rows]
        ctx = MutationContext("create_many", self.model, self._info.table, rows=materialised)
        return self._run(ctx, self._create_many)

    def _create_many(self, ctx: MutationContext) -> list[M]:
        info = self._info
        rows = [self._with_defaults(self._clean(row, creating=True)) for row in ctx.rows or []]
        if not rows:
            return []
        names = sorted({name for row in rows for name in row})
        for row in rows:
            for name in names:
                if name not in row:
                    target = info.field_map[name]
                    if target is info.pk:
                        raise InvalidDataError(
                            f"{self.model.__name__}: give an id to every row or to none", field=name
                        )
                    row[name] = None
        fields = [info.field_map[name] for name in names]
        per_statement = max(1, MAX_PARAMS_PER_STATEMENT // max(1, len(fields)))
        created: list[M] = []
        # Past SQLite's bound-parameter limit the rows go in several statements, then in one
        # transaction so the call stays all-or-nothing.
        with self.db.atomic() if len(rows) > per_statement else contextlib.nullcontext():
            for start in range(0, len(rows), per_statement):
                chunk = rows[start : start + per_statement]
                query = info.model.insert_many(
                    [tuple(row[name] for name in names) for row in chunk], fields=fields
                ).returning(*info.fields)
                created.extend(info.load_all(info.execute_query(query).fetchall()))
        return created

    def update(self, id: Any, data: In, *, expected_version: int | None = None) -> M:
        """Change some fields of a live row; bumps ``version``.

        With ``expected_version``, the write only happens if the row still has that version,
        else ``OptimisticLockError``; a missing or deleted row is ``NotFoundError``.
        """
        ctx = MutationContext(
            "update", self.model, self._info.table, id=self._check_id(id), data=dict(_mapping(data)),
            expected_version=self._check_expected(expected_version),
        )
        return self._run(ctx, self._update)

    def _update(self, ctx: MutationContext) -> M:
        values = self._clean(ctx.data, creating=False)
        if self._info.updated_at is not None:
            values["updated_at"] = utcnow()
        deleted = False if self._info.soft_delete else None
        return self._write_by_id("update", ctx.id, values, ctx.expected_version, deleted=deleted)

    def delete(self, id: Any, *, expected_version: int | None = None) -> M:
        """Soft-delete (set ``deleted_at``) where the model supports it, else delete the row."""
        ctx = MutationContext(
            "delete", self.model, self._info.table, id=self._check_id(id),
            expected_version=self._check_expected(expected_version),
        )
        return self._run(ctx, self._delete)

    def _delete(self, ctx: MutationContext) -> M:
        info = self._info
        if not info.soft_delete:
            return self._hard_delete(ctx)
        values: dict[str, Any] = {"deleted_at": utcnow()}
        if info.updated_at is not None:
            values["updated_at"] = values["deleted_at"]
        return self._write_by_id("delete", ctx.id, values, ctx.expected_version, deleted=False)

    def restore(self, id: Any, *, expected_version: int | None = None) -> M:
        """Bring a soft-deleted row back; ``ConflictError`` if a live row now holds its unique key."""
        if not self._info.soft_delete:
            raise InvalidDataError(f"{self.model.__name__} has no soft delete; nothing to restore")
        ctx = MutationContext(
            "restore", self.model, self._info.table, id=self._check_id(id),
            expected_version=self._check_expected(expected_version),
        )
        with self.db.atomic():  # the uniqueness check and the write see the same data
            return self._run(ctx, self._restore)

    def _restore(self, ctx: MutationContext) -> M:
        info = self._info
        row = info.execute_query(
            info.select_all().where(info.pk == ctx.id, info.deleted_at.is_null(False))  # type: ignore[union-attr]
        ).fetchone()
        if row is None:
            self._forget(ctx.id)
            raise NotFoundError(self.model.__name__, ctx.id)
        current = info.load(row)
        for group in info.unique_groups:
            condition = info.deleted_at.is_null(True) & (info.pk != ctx.id)  # type: ignore[union-attr]
            for f in group:
                value = current.__data__.get(f.name)
                condition &= f.is_null(True) if value is None else (f == value)
            taken = info.execute_query(info.model.select(peewee.SQL("1")).where(condition).limit(1)).fetchone()
            if taken is not None:
                names = tuple(f.name for f in group)
                raise ConflictError(
                    f"cannot restore {self.model.__name__} id={ctx.id!r}: another live row already "
                    f"has the same {', '.join(names)}",
                    fields=names,
                )
        values: dict[str, Any] = {"deleted_at": None}
        if info.updated_at is not None:
            values["updated_at"] = utcnow()
        return self._write_by_id("restore", ctx.id, values, ctx.expected_version, deleted=True)

    def hard_delete(self, id: Any) -> M:
        """Remove the row for good (deleted or not); returns it as it was."""
        ctx = MutationContext("hard_delete", self.model, self._info.table, id=self._check_id(id))
        return self._run(ctx, self._hard_delete)

    def _hard_delete(self, ctx: MutationContext) -> M:
        info = self._info

        def build() -> peewee.Node:
            return (
                info.model.delete()
                .where(info.pk == Slot("__id", info.pk.db_value))
                .returning(*info.fields)
            )

        row = info.execute(info.template(("hard_delete",), build), {"__id": ctx.id}).fetchone()
        if row is None:
            self._forget(ctx.id)
            raise NotFoundError(self.model.__name__, ctx.id)
        return info.load(row)


register_composition(Mutations.PARTS, Mutations)


def _declared_event(name: str) -> type | None:
    """The ``Event`` class declared for ``name``, if any."""
    # Imported here: mutations without events= never load the event system.
    from czo_kit.events.types import event_type

    return event_type(name)


def _mapping(data: Any) -> Mapping[Any, Any]:
    if isinstance(data, msgspec.Struct):
        # A typed input: its fields are the row's values. UNSET ones are left out, so that a
        # Struct with UNSET defaults serves partial updates.
        values = ((name, getattr(data, name)) for name in data.__struct_fields__)
        return {name: value for name, value in values if value is not msgspec.UNSET}
    if not isinstance(data, Mapping):
        raise InvalidDataError(
            f"data must be a mapping of field to value or a msgspec Struct, got {type(data).__name__}"
        )
    return data


def _check_value(model: type[peewee.Model], target: peewee.Field, value: Any) -> Any:
    label = f"{model.__name__}.{target.name}"
    if value is None:
        if not target.null and not target.primary_key:
            raise InvalidDataError(f"{label} cannot be null", field=target.name)
        return None
    try:
        return coerce(target, value)
    except ValueError as exc:
        raise InvalidDataError(f"{label}: {exc}", field=target.name) from None


def create_mutations(
    model: type[M],
    *,
    db: peewee.Database,
    hooks: HookRunner | None = None,
    events: EventSink | None = None,
    cache: CacheInvalidator | None = None,
    async_events: bool = False,
    event_prefix: str | None = None,
    input_type: type[In] | None = None,
) -> Mutations[M, In]:
    """Write functions for ``model`` on ``db``, run through ``hooks``, announced on ``events``.

    With ``cache`` (or, on ``kit.db``, the kit's cache), each committed write invalidates the
    cached reads of ``create_cached_queries`` for the rows it changed and the table's lists
    and counts. With ``async_events=True``, events go out with ``events.emit_async`` (through
    the durable outbox, in the write's own transaction) instead of ``emit`` after commit.
    ``event_prefix="catalog.item"`` names the events ``catalog.item.created``, ... instead of
    ``<table>.created``. ``input_type`` (a msgspec Struct or a TypedDict) is what ``create``
    and ``update`` take, for mypy; a Struct instance is written as its fields' values.
    """
    return Mutations(
        model,
        db=db,
        options={
            "hooks": hooks, "events": events, "cache": cache, "async_events": async_events,
            "event_prefix": event_prefix, "input_type": input_type,
        },
    )
