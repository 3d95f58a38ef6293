"""What every repository object shares: its model and database, options, and composition.

Builders return small objects (``Queries``, ``Mutations``, ``Repository``). They compose with
``|``: two builders of the same model give an object with both sets of methods; a mapping of
functions adds methods, each receiving the composed repository as its first argument.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import peewee

from czo_kit.db._sql import ModelInfo, model_info
from czo_kit.db._tags import list_tag, row_tag
from czo_kit.db._values import coerce
from czo_kit.db.filters import MAX_IN_VALUES
from czo_kit.errors import ConfigurationError, InvalidFilterError

if TYPE_CHECKING:
    from czo_kit.cache.manager import CacheManager

__all__ = ["RepositoryBase", "register_composition"]

M = TypeVar("M", bound=peewee.Model)
Self = TypeVar("Self", bound="RepositoryBase[Any]")

# (set of part names) -> class that has exactly those parts' methods.
_COMPOSITIONS: dict[frozenset[str], type[RepositoryBase[Any]]] = {}


def register_composition(parts: frozenset[str], cls: type[RepositoryBase[Any]]) -> None:
    """Declare which class results from composing builders with these parts."""
    _COMPOSITIONS[parts] = cls


class RepositoryBase(Generic[M]):
    """Model, database, options and extra functions; composes with ``|``."""

    PARTS: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        model: type[M],
        *,
        db: peewee.Database,
        options: Mapping[str, Any] | None = None,
        extras: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        if not (isinstance(model, type) and issubclass(model, peewee.Model)):
            raise TypeError(f"expected a peewee Model class, got {model!r}")
        if not isinstance(db, peewee.Database):
            raise TypeError(f"db must be a peewee.Database, got {type(db).__name__}")
        self.model: type[M] = model
        self.db: peewee.Database = db
        self._info: ModelInfo[M] = model_info(model, db)
        self._options: dict[str, Any] = dict(options or {})
        self._extras: dict[str, Callable[..., Any]] = {}
        self._setup()
        for name, fn in (extras or {}).items():
            self._bind_extra(name, fn)

    def _setup(self) -> None:
        """Read ``self._options`` into attributes; parts override and chain to super()."""

    # -- the cache, for extra functions -------------------------------------------------

    def _found_cache(self) -> Any:
        """The cache given to the builder, else the kit's (a kit's database carries it)."""
        cache = self._options.get("cache")
        if cache is None:
            cache = getattr(self.db, "czo_cache", None)
        return cache

    @property
    def cache(self) -> CacheManager:
        """The cache this repository's writes invalidate: the one given with ``cache=``, else
        the kit's, for a repository built on ``kit.db``.

        Extra functions cache their own reads here, tagged with ``list_tag`` (or
        ``row_tag(id)``), so that the repository's writes invalidate them.
        """
        cache = self._found_cache()
        if cache is None:
            # Not an AttributeError: __getattr__ and hasattr() would turn that into
            # "has no 'cache'", hiding the reason.
            raise ConfigurationError(
                f"{type(self).__name__} of {self.model.__name__} has no cache: build it on "
                "kit.db (a kit's database carries the kit's cache) or pass cache=kit.cache"
            )
        found: CacheManager = cache
        return found

    @property
    def list_tag(self) -> str:
        """The cache tag that every committed write of this table invalidates.

        Tag a cached read of several rows with it (``repo.cache.get_or_set(key, load,
        tags=[repo.list_tag])``) to have any create, update or delete drop it.
        """
        return list_tag(self._info.table)

    def row_tag(self, id: Any) -> str:
        """The cache tag that a committed write of the row ``id`` invalidates."""
        return row_tag(self._info.table, self._check_id(id))

    # -- ids ----------------------------------------------------------------------------

    def _check_id(self, id: Any) -> Any:
        """``id`` as the primary key holds it, or ``InvalidFilterError`` saying why not.

        Every function that takes an id calls this before building SQL: left to the driver,
        a bad id is a ``DataError`` quoting the SQL on PostgreSQL and an ``OverflowError``
        (or a silent miss) on SQLite.
        """
        if id is None:
            raise InvalidFilterError(
                f"{self.model.__name__} id: None is not a valid id; pass the row's primary key"
            )
        try:
            return coerce(self._info.pk, id)
        except ValueError as exc:
            raise InvalidFilterError(f"{self.model.__name__} id {id!r}: {exc}") from None

    def _check_ids(self, ids: Any) -> list[Any]:
        """Each of ``ids`` checked by ``_check_id``, in order; at most ``MAX_IN_VALUES``."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise InvalidFilterError(f"ids must be a list of ids, got {type(ids).__name__}")
        wanted = list(ids)
        if len(wanted) > MAX_IN_VALUES:
            raise InvalidFilterError(f"{len(wanted)} ids is more than the {MAX_IN_VALUES} allowed")
        return [self._check_id(id) for id in wanted]

    def _bind_extra(self, name: str, fn: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"extra function name {name!r} must be a public identifier")
        if not callable(fn):
            raise TypeError(f"extra {name!r} must be callable, got {fn!r}")
        if isinstance(getattr(type(self), name, None), property):
            raise ValueError(f"extra function name {name!r} is taken by the repository's {name!r} attribute")
        self._extras[name] = fn
        # An instance attribute shadows a method of the same name: extras may override.
        setattr(self, name, types.MethodType(fn, self))

    # -- composition --------------------------------------------------------------------

    def __or__(self, other: Any) -> Any:
        if isinstance(other, RepositoryBase):
            return _compose(self, other)
        if isinstance(other, Mapping):
            return _compose_extras(self, other)
        return NotImplemented

    def __ror__(self, other: Any) -> Any:
        if isinstance(other, Mapping):
            return _compose_extras(self, other)
        return NotImplemented

    if not TYPE_CHECKING:
        # Hidden from type checkers so that mypy still flags a misspelt built-in function;
        # typed code that calls extras declares them in a Protocol.
        def __getattr__(self, name: str) -> Callable[..., Any]:
            # Only reached for names that are not methods or extras: say what exists.
            if name.startswith("_"):
                raise AttributeError(name)
            raise AttributeError(
                f"{type(self).__name__} of {self.model.__name__} has no {name!r}; "
                f"available: {', '.join(self.functions())}"
            )

    def functions(self) -> list[str]:
        """Every public function of this repository, built-in and extra."""
        names = {n for n in dir(type(self)) if not n.startswith("_") and callable(getattr(type(self), n))}
        names.discard("functions")
        names.update(self._extras)
        return sorted(names)

    def __repr__(self) -> str:
        extras = f", extras={sorted(self._extras)}" if self._extras else ""
        return f"{type(self).__name__}({self.model.__name__}{extras})"


def _compose(left: RepositoryBase[Any], right: RepositoryBase[Any]) -> RepositoryBase[Any]:
    if left.model is not right.model:
        raise TypeError(
            f"cannot compose repositories of different models: {left.model.__name__} | "
            f"{right.model.__name__}"
        )
    if left.db is not right.db:
        raise TypeError(f"cannot compose repositories of {left.model.__name__} on different databases")
    parts = left.PARTS | right.PARTS
    cls = _COMPOSITIONS.get(parts)
    if cls is None:
        raise TypeError(
            f"no repository type combines {sorted(parts)}; known: "
            f"{[sorted(p) for p in _COMPOSITIONS]}"
        )
    # An option the right side leaves unset (None) does not erase the left side's value:
    # cached_queries(cache=c) | mutations() keeps the cache, whichever order they come in.
    options = dict(left._options)
    for key, value in right._options.items():
        if value is not None or key not in options:
            options[key] = value
    extras = {**left._extras, **right._extras}
    return cls(left.model, db=left.db, options=options, extras=extras)


def _compose_extras(base: RepositoryBase[Any], extras: Mapping[Any, Any]) -> RepositoryBase[Any]:
    cls = type(base)
    return cls(base.model, db=base.db, options=base._options, extras={**base._extras, **extras})
