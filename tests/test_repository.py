"""The repository contract on both built-in backends: SQLite (embedded) and PostgreSQL (real)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import peewee
import pytest

from czo_kit.default_plugins.postgres import create_postgresql_database
from czo_kit.default_plugins.sqlite import create_sqlite_database
from czo_kit.settings import Settings
from czo_kit.testing import DatabaseBackendContract


class TestSQLiteBackend(DatabaseBackendContract):
    @pytest.fixture
    def db(self, sqlite_url: str, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
        database = create_sqlite_database(sqlite_url, settings=settings_for(sqlite_url))
        yield database
        database.close()


@pytest.mark.postgres
class TestPostgreSQLBackend(DatabaseBackendContract):
    @pytest.fixture
    def db(self, pg_url: str, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
        database = create_postgresql_database(pg_url, settings=settings_for(pg_url))
        yield database
        database.close()
        database.close_all()  # type: ignore[attr-defined]
