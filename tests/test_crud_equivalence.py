"""The CRUD-code metric compares like with like: the product module's repository, built with
the kit, and the same repository written by hand (benchmarks/handwritten_product.py) pass the
kit's ``RepositoryContract``, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import peewee
import pytest

from benchmarks.handwritten_product import HandwrittenProductRepository
from czo_kit.default_plugins.postgres import create_postgresql_database
from czo_kit.default_plugins.sqlite import create_sqlite_database
from czo_kit.settings import Settings
from czo_kit.testing import RepositoryContract, RepositoryFactory
from czo_product import Product, build_product_repository


class _ProductContract(RepositoryContract):
    MODEL: ClassVar[type[peewee.Model]] = Product
    TABLES: ClassVar[tuple[type[peewee.Model], ...]] = (Product,)
    # Product has no nullable column of its own: a row left without a currency gets the default.
    SPARSE: ClassVar[tuple[str, Any, Any]] = ("currency", "USD", "EUR")
    BUILD: ClassVar[Callable[..., Any]]

    @pytest.fixture
    def make_repository(self, db: peewee.Database, tables: None) -> RepositoryFactory:
        build = type(self).BUILD

        def make(*, hooks: Any = None, events: Any = None, cache: Any = None, secret_key: bytes | None = None) -> Any:
            return build(db, hooks=hooks, events=events, cache=cache, secret_key=secret_key)

        return make


class _SQLite:
    @pytest.fixture
    def db(self, sqlite_url: str, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
        database = create_sqlite_database(sqlite_url, settings=settings_for(sqlite_url))
        yield database
        database.close()


class _PostgreSQL:
    @pytest.fixture
    def db(self, pg_url: str, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
        database = create_postgresql_database(pg_url, settings=settings_for(pg_url))
        yield database
        database.close()
        database.close_all()  # type: ignore[attr-defined]


class TestKitProductRepositorySQLite(_SQLite, _ProductContract):
    BUILD = staticmethod(build_product_repository)


@pytest.mark.postgres
class TestKitProductRepositoryPostgreSQL(_PostgreSQL, _ProductContract):
    BUILD = staticmethod(build_product_repository)


class TestHandwrittenProductRepositorySQLite(_SQLite, _ProductContract):
    BUILD = HandwrittenProductRepository


@pytest.mark.postgres
class TestHandwrittenProductRepositoryPostgreSQL(_PostgreSQL, _ProductContract):
    BUILD = HandwrittenProductRepository
