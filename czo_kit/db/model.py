"""Base models for module authors: ids, UTC timestamps, optimistic-lock versions, soft delete.

``Model`` has all of it. To opt out, subclass a narrower base: ``TimestampedModel`` (id and
timestamps only), ``VersionedModel`` (no soft delete) or ``SoftDeleteModel`` (no versions).
Repository builders look at which fields a model has and adapt.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import peewee

__all__ = [
    "KitTable",
    "Model",
    "SoftDeleteModel",
    "TimestampedModel",
    "BytesField",
    "UTCDateTimeField",
    "VersionedModel",
    "has_soft_delete",
    "has_version",
    "utcnow",
]

UTC = dt.timezone.utc


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC, to the microsecond."""
    return dt.datetime.now(UTC)


class UTCDateTimeField(peewee.DateTimeField):
    """Stores UTC as a plain timestamp; always hands back timezone-aware UTC datetimes.

    An aware value is converted to UTC before it is stored; a naive one is taken as UTC.
    """

    def db_value(self, value: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return super().db_value(value)  # type: ignore[no-untyped-call]

    def python_value(self, value: Any) -> Any:
        value = super().python_value(value)  # type: ignore[no-untyped-call]
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            return value.astimezone(UTC)
        return value


class TimestampedModel(peewee.Model):
    """An ``id`` primary key plus ``created_at`` / ``updated_at`` (UTC, set by repositories)."""

    id = peewee.BigAutoField()
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        legacy_table_names = False


class VersionedModel(TimestampedModel):
    """Adds ``version``, bumped by every repository write, for optimistic locking."""

    version = peewee.IntegerField(default=1)


class SoftDeleteModel(TimestampedModel):
    """Adds ``deleted_at``: repository ``delete`` marks the row instead of removing it."""

    deleted_at = UTCDateTimeField(null=True, index=True)


class Model(VersionedModel, SoftDeleteModel):
    """The usual base: id, created_at, updated_at, version and deleted_at."""


class KitTable(peewee.Model):
    """Base of the kit's own tables (outbox, deliveries, apps, webhooks): no columns imposed,
    unlike ``Model``; each names its table (``czo_...``) itself."""

    class Meta:
        legacy_table_names = False

    @classmethod
    def delete_rows(cls) -> peewee.ModelDelete:
        """``cls.delete()``: the same query, typed alike by every release of the peewee stubs
        (some make class access to ``Model.delete`` ambiguous to mypy)."""
        return peewee.ModelDelete(cls)


class BytesField(peewee.BlobField):
    """Binary data as plain ``bytes`` on every database.

    Peewee's ``BlobField`` wraps values in the driver type of the database its model was
    bound to when the model was bound, so a model used by two kits on different databases
    would hand PostgreSQL's wrapper to SQLite. Both drivers take ``bytes`` as they are.
    """

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return value.encode("utf-8")
        return bytes(value)

    def python_value(self, value: Any) -> Any:
        return bytes(value) if value is not None else None


def has_soft_delete(model: type[peewee.Model]) -> bool:
    """Whether repositories of ``model`` soft-delete (it has a ``deleted_at`` field)."""
    return "deleted_at" in model._meta.fields


def has_version(model: type[peewee.Model]) -> bool:
    """Whether repositories of ``model`` check and bump a ``version`` field."""
    return "version" in model._meta.fields
