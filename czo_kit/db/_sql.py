"""Compiled SQL for a model's hot paths, and a fast row-to-instance loader.

Peewee spends far longer building and compiling a query than the database spends answering
a primary-key lookup. Here each hot statement is built once with Peewee (never from strings),
with named slots where the values go, and kept; later calls only fill the parameters in.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import peewee

from czo_kit.db.model import UTCDateTimeField, has_soft_delete, has_version
from czo_kit.errors import ConflictError, InvalidDataError, InvalidFilterError

__all__ = ["MAX_SHAPES", "MAX_SHAPE_PARAMETERS", "ModelInfo", "ShapeCache", "Slot", "SqlTemplate", "model_info"]

M = TypeVar("M", bound=peewee.Model)


class Slot(peewee.ColumnBase):
    """A named placeholder: compiles to the driver's parameter marker and records its place."""

    def __init__(self, name: Hashable, converter: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        self.name = name
        self.convert = converter

    def __sql__(self, ctx: peewee.Context) -> peewee.Context:
        # Record the slot itself where Peewee records a parameter value.
        values: list[Any] = getattr(ctx, "_values")
        values.append(self)
        return ctx.literal(ctx.state.param or "?")


class SqlTemplate:
    """SQL text plus a plan that turns named values into the parameter list, in order."""

    __slots__ = ("plan", "sql")

    def __init__(self, db: peewee.Database, query: peewee.Node) -> None:
        sql, params = db.get_sql_context().sql(query).query()
        self.sql: str = sql
        self.plan: tuple[tuple[bool, Any, Callable[[Any], Any] | None], ...] = tuple(
            (True, p.name, p.convert) if isinstance(p, Slot) else (False, p, None)
            for p in params
        )

    def params(self, values: Mapping[Any, Any] | Sequence[Any]) -> list[Any]:
        """The parameters in SQL order: ``values`` by slot name (or by index, for a list)."""
        out = []
        for is_slot, item, converter in self.plan:
            if is_slot:
                value = values[item]
                out.append(converter(value) if converter is not None and value is not None else value)
            else:
                out.append(item)
        return out


MAX_SHAPES = 2048  # compiled query shapes kept per model and database
# Parameters of those statements kept in all (per model and database). A shape can hold
# thousands (64 conditions, ``in`` lists of up to 64 values), each costing a plan entry; a count
# of entries alone would let a client fill the cache with its largest shapes (hundreds of MB).
MAX_SHAPE_PARAMETERS = 65_536


class ShapeCache:
    """A thread-safe LRU of compiled statements keyed by query shape, at most ``size`` long
    and at most ``budget`` in total weight (a statement's weight: its number of parameters).

    Distinct filters a client can send are unbounded; the least recently used shape is
    dropped (and compiled again if it comes back) so memory stays flat whatever arrives.
    """

    __slots__ = ("_entries", "_lock", "_weight", "_weights", "budget", "size")

    def __init__(self, size: int, budget: int = MAX_SHAPE_PARAMETERS) -> None:
        self.size = size
        self.budget = budget
        self._entries: OrderedDict[Any, Any] = OrderedDict()
        self._weights: dict[Any, int] = {}
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Any, entry: Any, weight: int = 1) -> None:
        with self._lock:
            self._weight += weight - self._weights.get(key, 0)
            self._weights[key] = weight
            self._entries[key] = entry
            self._entries.move_to_end(key)
            # The newest entry stays even when it alone is over the budget: it is in use.
            while len(self._entries) > self.size or (self._weight > self.budget and len(self._entries) > 1):
                old, _ = self._entries.popitem(last=False)
                self._weight -= self._weights.pop(old)

    @property
    def weight(self) -> int:
        """The total weight of the statements kept."""
        return self._weight

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._weights.clear()
            self._weight = 0


def _is_plain_utc(field: peewee.Field) -> bool:
    """A ``UTCDateTimeField`` whose conversion to Python is the stock one."""
    return type(field).python_value is UTCDateTimeField.python_value


def _python_converter(field: peewee.Field) -> Callable[[Any], Any]:
    """``field.python_value``, with a shortcut for what a driver already hands back typed."""
    convert: Callable[[Any], Any] = field.python_value
    if _is_plain_utc(field):
        # psycopg2 returns a naive datetime for a timestamp column: only the zone is missing.
        # combine() gives what replace(tzinfo=UTC) gives, several times faster (replace parses
        # keyword arguments), and a page of rows converts two timestamps per row.
        def utc(
            value: Any,
            convert: Callable[[Any], Any] = convert,
            combine: Callable[..., dt.datetime] = dt.datetime.combine,
            time_of: Callable[[dt.datetime], dt.time] = dt.datetime.time,
        ) -> Any:
            if type(value) is dt.datetime and value.tzinfo is None:
                return combine(value, time_of(value), dt.timezone.utc)
            return convert(value)

        return utc
    return convert


def _needs_conversion(field: peewee.Field) -> bool:
    # Integers and strings come back from both drivers already as int / str.
    kind = type(field)
    if kind.python_value is not peewee.Field.python_value:
        return True
    adapt = kind.adapt
    return adapt not in (peewee.IntegerField.adapt, peewee.CharField.adapt, peewee.TextField.adapt)


class ModelInfo(Generic[M]):
    """Per (model, database) facts and compiled statements shared by every builder."""

    def __init__(self, model: type[M], db: peewee.Database) -> None:
        self.model = model
        self.db = db
        meta = model._meta
        self.table: str = meta.table_name
        pk = meta.primary_key
        if not isinstance(pk, peewee.Field) or isinstance(pk, peewee.CompositeKey):
            raise TypeError(f"{model.__name__}: repositories need a single-column primary key")
        self.pk: peewee.Field = pk
        self.fields: tuple[peewee.Field, ...] = tuple(meta.sorted_fields)
        self.field_map: dict[str, peewee.Field] = dict(meta.fields)
        # Foreign keys are also accepted by column name (owner_id as well as owner).
        self.column_map: dict[str, peewee.Field] = {
            f.column_name: f for f in self.fields if f.column_name not in self.field_map
        }
        self.names: tuple[str, ...] = tuple(f.name for f in self.fields)
        self.soft_delete = has_soft_delete(model)
        self.versioned = has_version(model)
        self.deleted_at: peewee.Field | None = meta.fields.get("deleted_at")
        self.version: peewee.Field | None = meta.fields.get("version")
        self.updated_at: peewee.Field | None = meta.fields.get("updated_at")
        self._convert = tuple(
            (i, f.name, _python_converter(f)) for i, f in enumerate(self.fields) if _needs_conversion(f)
        )
        # load_all converts plain UTCDateTimeFields inline (no call per value), the rest as load.
        self._utc_fields: tuple[tuple[int, str, Callable[[Any], Any]], ...] = tuple(
            (i, f.name, f.python_value) for i, f in enumerate(self.fields) if _is_plain_utc(f)
        )
        self._other_convert = tuple(
            (i, f.name, _python_converter(f))
            for i, f in enumerate(self.fields)
            if _needs_conversion(f) and not _is_plain_utc(f)
        )
        self._templates: dict[Any, SqlTemplate] = {}
        # Query shapes come from user input (filters), so these are kept in a bounded LRU.
        self.shapes: ShapeCache = ShapeCache(MAX_SHAPES)
        self._row_type: Any = None
        self._lock = threading.Lock()
        self.unique_groups: tuple[tuple[peewee.Field, ...], ...] = _unique_groups(model)

    # -- rows ---------------------------------------------------------------------------

    def load(self, row: Sequence[Any]) -> M:
        """A model instance from a row selected in ``self.fields`` order, marked clean."""
        data = dict(zip(self.names, row, strict=True))
        for index, name, convert in self._convert:
            value = row[index]
            if value is not None:
                data[name] = convert(value)
        # What peewee's own cursor wrapper builds, without running __init__ and its defaults.
        obj: M = object.__new__(self.model)
        obj.__data__ = data
        obj._dirty = set()  # type: ignore[attr-defined]
        obj.__rel__ = {}
        return obj

    def load_all(self, rows: Sequence[Sequence[Any]]) -> list[M]:
        """``load`` for each row; inlined, as a page of rows is the hot path of every list."""
        names, conversions, model, new = self.names, self._other_convert, self.model, object.__new__
        utc_fields, combine, time_of, utc, datetime = (
            self._utc_fields, dt.datetime.combine, dt.datetime.time, dt.timezone.utc, dt.datetime
        )
        out: list[M] = []
        append = out.append
        for row in rows:
            data = dict(zip(names, row))  # a SELECT of self.fields: one value per name
            for index, name, convert in utc_fields:
                value = row[index]
                if value is not None:
                    # What _python_converter's shortcut does, without a call per value.
                    data[name] = (
                        combine(value, time_of(value), utc)
                        if type(value) is datetime and value.tzinfo is None
                        else convert(value)
                    )
            for index, name, convert in conversions:
                value = row[index]
                if value is not None:
                    data[name] = convert(value)
            obj = new(model)
            obj.__data__ = data
            obj._dirty = set()  # type: ignore[attr-defined]
            obj.__rel__ = {}
            append(obj)
        return out

    def values_of(self, obj: M) -> list[Any]:
        """An instance's Python values in field order (what the row cache stores)."""
        data = obj.__data__
        return [data.get(name) for name in self.names]

    def from_values(self, values: Sequence[Any]) -> M:
        """An instance from Python values in field order, as ``values_of`` gave them."""
        obj: M = object.__new__(self.model)
        obj.__data__ = dict(zip(self.names, values, strict=True))
        obj._dirty = set()  # type: ignore[attr-defined]
        obj.__rel__ = {}
        return obj

    @property
    def row_type(self) -> Any:
        """The msgspec type of one row's values, so cached rows decode to exact types."""
        if self._row_type is None:
            self._row_type = tuple[tuple(python_type(f) for f in self.fields)]  # type: ignore[misc]
        return self._row_type

    # -- statements ---------------------------------------------------------------------

    def template(self, key: Any, build: Callable[[], peewee.Node]) -> SqlTemplate:
        """The compiled statement for ``key``, built on first use."""
        template = self._templates.get(key)
        if template is None:
            template = SqlTemplate(self.db, build())
            with self._lock:
                if len(self._templates) > 512:  # shapes come from code, but stay bounded
                    self._templates.clear()
                self._templates[key] = template
        return template

    def execute(self, template: SqlTemplate, values: Mapping[Any, Any] | Sequence[Any]) -> Any:
        """Run a template; integrity errors become ``ConflictError`` / ``InvalidDataError``."""
        try:
            return self.db.execute_sql(template.sql, template.params(values))
        except peewee.IntegrityError as exc:
            raise translate_integrity_error(self.model, exc) from exc

    def execute_query(self, query: peewee.Node) -> Any:
        sql, params = self.db.get_sql_context().sql(query).query()
        try:
            return self.db.execute_sql(sql, params)
        except peewee.IntegrityError as exc:
            raise translate_integrity_error(self.model, exc) from exc

    def select_all(self) -> peewee.ModelSelect[M]:
        return self.model.select(*self.fields)

    def deleted_clause(self, *, with_deleted: bool, only_deleted: bool) -> peewee.Expression | None:
        if with_deleted and only_deleted:
            raise InvalidFilterError("with_deleted and only_deleted cannot both be true")
        if self.deleted_at is None:
            if only_deleted:
                raise InvalidFilterError(
                    f"only_deleted: {self.model.__name__} has no soft delete (no deleted_at field)"
                )
            return None
        if with_deleted:
            return None
        if only_deleted:
            return self.deleted_at.is_null(False)
        return self.deleted_at.is_null(True)


def _unique_groups(model: type[peewee.Model]) -> tuple[tuple[peewee.Field, ...], ...]:
    groups: list[tuple[peewee.Field, ...]] = []
    meta = model._meta
    for field in meta.sorted_fields:
        if field.unique and not field.primary_key:
            groups.append((field,))
    for index in meta.indexes:
        if isinstance(index, tuple) and len(index) == 2 and index[1]:
            groups.append(tuple(meta.fields[name] for name in index[0]))
        elif isinstance(index, peewee.ModelIndex) and getattr(index, "_unique", False):
            expressions = getattr(index, "_expressions", ())
            fields = tuple(f for f in expressions if isinstance(f, peewee.Field))
            if fields:
                groups.append(fields)
    return tuple(groups)


def python_type(f: peewee.Field) -> Any:
    """The Python type a field's values have (``None`` allowed when the field is nullable)."""
    target = f.rel_field if isinstance(f, peewee.ForeignKeyField) else f
    kind: Any = Any
    for field_type, python in _PYTHON_TYPES:
        if isinstance(target, field_type):
            kind = python
            break
    return kind | None if f.null and kind is not Any else kind


_PYTHON_TYPES: tuple[tuple[type[peewee.Field], Any], ...] = (
    (peewee.BooleanField, bool),
    (peewee.IntegerField, int),
    (peewee.FloatField, float),
    (peewee.DecimalField, decimal.Decimal),
    (peewee.DateTimeField, dt.datetime),
    (peewee.DateField, dt.date),
    (peewee.TimeField, dt.time),
    (peewee.UUIDField, uuid.UUID),
    (peewee.BlobField, bytes),
    (peewee.CharField, str),
    (peewee.TextField, str),
)


_infos: dict[tuple[type[peewee.Model], int], ModelInfo[Any]] = {}
_infos_lock = threading.Lock()


def model_info(model: type[M], db: peewee.Database) -> ModelInfo[M]:
    """The shared ``ModelInfo`` of ``model`` on ``db`` (one per pair, built once)."""
    key = (model, id(db))
    info = _infos.get(key)
    if info is None or info.db is not db:
        info = ModelInfo(model, db)
        with _infos_lock:
            _infos[key] = info
    return info


def translate_integrity_error(model: type[peewee.Model], exc: peewee.IntegrityError) -> Exception:
    """Turn a driver integrity error into an error that says which rule was broken."""
    cause = exc.__cause__ or exc.__context__ or exc
    code = getattr(cause, "pgcode", None)
    text = str(exc)
    lowered = text.lower()
    name = model.__name__
    if code == "23505" or "unique constraint" in lowered or "duplicate key" in lowered:
        return ConflictError(f"{name}: a row with the same unique value already exists ({_first_line(text)})")
    if code == "23503" or "foreign key" in lowered:
        return InvalidDataError(f"{name}: a foreign key points at a row that does not exist ({_first_line(text)})")
    if code == "23502" or "not null" in lowered:
        return InvalidDataError(f"{name}: a required field is missing ({_first_line(text)})")
    return InvalidDataError(f"{name}: the data breaks a database constraint ({_first_line(text)})")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no detail"
