"""The models, test doubles and row maker that the repository contract suites share."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

import peewee

from czo_kit.db.model import Model, SoftDeleteModel, TimestampedModel, UTCDateTimeField, VersionedModel

__all__ = [
    "CONTRACT_MODELS",
    "ContractItem",
    "ContractPlain",
    "ContractSoft",
    "ContractVersioned",
    "RecordingEvents",
    "StatementCounter",
]


class ContractItem(Model):
    shop_id = peewee.IntegerField(index=True)
    name = peewee.CharField(max_length=50)
    slug = peewee.CharField(max_length=50)
    price = peewee.IntegerField()
    note = peewee.CharField(max_length=50, null=True)
    published_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "czo_contract_item"


ContractItem.add_index(
    ContractItem.shop_id, ContractItem.slug, unique=True, where=ContractItem.deleted_at.is_null(True)
)


class ContractPlain(TimestampedModel):
    name = peewee.CharField(max_length=50)

    class Meta:
        table_name = "czo_contract_plain"


class ContractVersioned(VersionedModel):
    name = peewee.CharField(max_length=50)

    class Meta:
        table_name = "czo_contract_versioned"


class ContractSoft(SoftDeleteModel):
    name = peewee.CharField(max_length=50)

    class Meta:
        table_name = "czo_contract_soft"


CONTRACT_MODELS: tuple[type[peewee.Model], ...] = (ContractItem, ContractPlain, ContractVersioned, ContractSoft)


class RecordingEvents:
    """An ``EventSink`` that remembers what was emitted, for assertions."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def emit(self, name: str, payload: Mapping[str, Any]) -> None:
        with self._lock:
            self.emitted.append((name, dict(payload)))

    def names(self) -> list[str]:
        return [name for name, _ in self.emitted]


class StatementCounter:
    """Counts the SQL statements a database runs, through Peewee's query hooks."""

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self.statements: list[str] = []

    def __enter__(self) -> StatementCounter:
        self.db.query_hooks.append(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.query_hooks.remove(self._hook)

    def _hook(self, event: Any) -> None:
        self.statements.append(event.sql)

    def matching(self, prefix: str) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(prefix)]


def item(n: int, **overrides: Any) -> dict[str, Any]:
    """Row ``n`` of the catalogue shape every contract model has: shop, name, slug, price."""
    data: dict[str, Any] = {"shop_id": 1, "name": f"Item {n}", "slug": f"item-{n}", "price": n * 10}
    data.update(overrides)
    return data


class BySlug(Protocol):
    def by_slug(self, slug: str) -> ContractItem | None: ...
