"""The database backend contract: repository behaviour every backend must show.

It is ``RepositoryContract`` on the kit's builders over ``ContractItem``, plus what needs
nullable columns and the builders' own features (models that opt out, composition).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import peewee
import pytest

from czo_kit.db.repository import Repository, create_repository
from czo_kit.errors import InvalidDataError, InvalidFilterError
from czo_kit.testing._support import (
    CONTRACT_MODELS,
    BySlug,
    ContractItem,
    ContractPlain,
    ContractSoft,
    ContractVersioned,
    RecordingEvents,
    StatementCounter,
    item,
)
from czo_kit.testing.repository import RepositoryContract, walk_every_order

__all__ = [
    "CONTRACT_MODELS",
    "ContractItem",
    "ContractPlain",
    "ContractSoft",
    "ContractVersioned",
    "DatabaseBackendContract",
    "RecordingEvents",
    "StatementCounter",
]


class DatabaseBackendContract(RepositoryContract):
    """Repository behaviour every database backend must show. Provide a ``db`` fixture."""

    def test_null_filters(self, repo: Repository[ContractItem]) -> None:
        repo.create(item(1, note="50% off"))
        repo.create(item(2, note="a_b"))
        repo.create(item(3, note=None))

        def slugs(where: Any) -> list[str]:
            return sorted(r.slug for r in repo.find_many(where, limit=50).items)

        assert slugs({"note__is_null": True}) == ["item-3"]
        assert slugs({"note__is_null": False}) == ["item-1", "item-2"]
        assert slugs({"note": None}) == ["item-3"]
        assert slugs({"note__ne": None}) == ["item-1", "item-2"]
        # LIKE wildcards in values are literal characters, not patterns.
        assert slugs({"note__icontains": "%"}) == ["item-1"]
        assert slugs({"note__icontains": "_"}) == ["item-2"]
        assert slugs({"note__contains": "%"}) == ["item-1"]
        with pytest.raises(InvalidFilterError) as info:
            repo.find_many({"note__is_null": "yes"})
        assert "true or false" in str(info.value)

    def test_cursor_with_nulls_and_datetimes(self, repo: Repository[ContractItem]) -> None:
        base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        repo.create_many(
            [
                item(
                    n,
                    shop_id=n % 3,
                    published_at=None if n % 4 == 0 else base + dt.timedelta(minutes=n % 5),
                    note=None if n % 3 == 0 else f"note {n % 2}",
                )
                for n in range(30)
            ]
        )
        sort_orders: list[list[str]] = [
            ["shop_id", "-price"], ["-shop_id", "name"], ["published_at"], ["-published_at", "slug"],
            ["note", "-published_at"], ["-note", "published_at"], ["-note"],
        ]
        walk_every_order(repo, sort_orders, rows=30)

    def test_models_that_opt_out(self, db: peewee.Database, tables: None) -> None:
        plain = create_repository(ContractPlain, db=db)
        row = plain.create({"name": "a"})
        assert "version" not in row.__data__ and "deleted_at" not in row.__data__
        assert plain.update(row.id, {"name": "b"}).name == "b"
        with pytest.raises(InvalidDataError):
            plain.update(row.id, {"name": "c"}, expected_version=1)
        with pytest.raises(InvalidFilterError):
            plain.count(only_deleted=True)
        with pytest.raises(InvalidDataError):
            plain.restore(row.id)
        assert plain.delete(row.id).id == row.id  # no soft delete: the row is gone
        assert plain.count(with_deleted=True) == 0

        versioned = create_repository(ContractVersioned, db=db)
        v = versioned.create({"name": "a"})
        assert versioned.update(v.id, {"name": "b"}, expected_version=1).version == 2
        versioned.delete(v.id, expected_version=2)
        assert versioned.count(with_deleted=True) == 0

        soft = create_repository(ContractSoft, db=db)
        s = soft.create({"name": "a"})
        soft.delete(s.id)
        assert soft.count() == 0 and soft.count(with_deleted=True) == 1
        assert soft.restore(s.id).deleted_at is None


    def test_composition_with_extra_functions(self, db: peewee.Database, tables: None) -> None:
        from czo_kit.db.mutations import create_mutations
        from czo_kit.db.queries import create_queries

        def by_slug(repo: Any, slug: str) -> ContractItem | None:
            found: ContractItem | None = repo.find_one({"slug": slug})
            return found

        composed = create_queries(ContractItem, db=db) | create_mutations(ContractItem, db=db) | {
            "by_slug": by_slug
        }
        assert isinstance(composed, Repository)
        composed.create(item(1))
        # Typed code reaches extras through a Protocol that declares them.
        assert cast(BySlug, composed).by_slug("item-1") is not None
        reversed_order = {"by_slug": by_slug} | create_queries(ContractItem, db=db)
        assert cast(BySlug, reversed_order).by_slug("item-1") is not None
        assert "by_slug" in composed.functions() and "create" in composed.functions()
        with pytest.raises(AttributeError) as info:
            getattr(composed, "no_such_function")
        assert "available:" in str(info.value)
        with pytest.raises(TypeError):
            create_queries(ContractItem, db=db) | create_queries(ContractPlain, db=db)
        with pytest.raises(ValueError):
            create_queries(ContractItem, db=db) | {"_private": by_slug}