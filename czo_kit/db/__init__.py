"""Repository builders on Peewee: ``Model``, ``create_queries``, ``create_mutations``,
``create_repository``, pagination and transactions.

Names are imported lazily, so ``from czo_kit.db import create_queries`` loads the query
builder only, not the mutation machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from czo_kit.db._base import RepositoryBase
    from czo_kit.db.filters import OPERATORS, compile_where
    from czo_kit.db.migrations import Migrations
    from czo_kit.db.model import (
        Model,
        SoftDeleteModel,
        TimestampedModel,
        UTCDateTimeField,
        VersionedModel,
        utcnow,
    )
    from czo_kit.db.mutations import MutationContext, Mutations, create_mutations
    from czo_kit.db.pagination import PaginatedResult
    from czo_kit.db.queries import Queries, create_queries
    from czo_kit.db.repository import Repository, create_repository
    from czo_kit.db.cached import CachedQueries, CachedRepository, create_cached_queries
    from czo_kit.db.transactions import (
        TransactionalDatabaseMixin,
        in_transaction,
        on_commit,
        transaction,
    )

_EXPORTS = {
    "Model": "czo_kit.db.model",
    "SoftDeleteModel": "czo_kit.db.model",
    "TimestampedModel": "czo_kit.db.model",
    "VersionedModel": "czo_kit.db.model",
    "UTCDateTimeField": "czo_kit.db.model",
    "utcnow": "czo_kit.db.model",
    "create_queries": "czo_kit.db.queries",
    "Queries": "czo_kit.db.queries",
    "create_mutations": "czo_kit.db.mutations",
    "Mutations": "czo_kit.db.mutations",
    "MutationContext": "czo_kit.db.mutations",
    "create_repository": "czo_kit.db.repository",
    "create_cached_queries": "czo_kit.db.cached",
    "CachedQueries": "czo_kit.db.cached",
    "CachedRepository": "czo_kit.db.cached",
    "Repository": "czo_kit.db.repository",
    "RepositoryBase": "czo_kit.db._base",
    "PaginatedResult": "czo_kit.db.pagination",
    "OPERATORS": "czo_kit.db.filters",
    "compile_where": "czo_kit.db.filters",
    "transaction": "czo_kit.db.transactions",
    "on_commit": "czo_kit.db.transactions",
    "in_transaction": "czo_kit.db.transactions",
    "TransactionalDatabaseMixin": "czo_kit.db.transactions",
    "Migrations": "czo_kit.db.migrations",
}

__all__ = [
    "CachedQueries",
    "CachedRepository",
    "create_cached_queries",
    "Migrations",
    "Model",
    "MutationContext",
    "Mutations",
    "OPERATORS",
    "PaginatedResult",
    "Queries",
    "Repository",
    "RepositoryBase",
    "SoftDeleteModel",
    "TimestampedModel",
    "TransactionalDatabaseMixin",
    "UTCDateTimeField",
    "VersionedModel",
    "compile_where",
    "create_mutations",
    "create_queries",
    "create_repository",
    "in_transaction",
    "on_commit",
    "transaction",
    "utcnow",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'czo_kit.db' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
