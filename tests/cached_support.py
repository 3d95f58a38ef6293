"""What the repository tests share: a database of each backend with a test's tables, and a
cache of each driver under a prefix of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence

import peewee
import pytest

from czo_kit.cache import CacheManager, create_cache
from czo_kit.default_plugins.postgres import create_postgresql_database
from czo_kit.default_plugins.sqlite import create_sqlite_database
from czo_kit.settings import Settings

DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
"""Params of a ``db`` fixture: every test runs on SQLite and on PostgreSQL."""

CACHES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
"""Params of a ``cache`` fixture: every test runs with the memory and the Redis driver."""


def database_url_of(request: pytest.FixtureRequest) -> str:
    """The URL of the backend ``request.param`` names (a ``DATABASES`` param)."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def open_database(
    url: str, settings_for: Callable[..., Settings], models: Sequence[type[peewee.Model]]
) -> Iterator[peewee.Database]:
    """The body of a database fixture: ``url``'s database with fresh tables of ``models``,
    dropped afterwards."""
    factory = create_sqlite_database if url.startswith("sqlite") else create_postgresql_database
    database: peewee.Database = factory(url, settings=settings_for(url))
    database.bind(models)
    database.drop_tables(models, safe=True)
    database.create_tables(models)
    try:
        yield database
    finally:
        database.drop_tables(models, safe=True)
        database.close()
        close_all = getattr(database, "close_all", None)
        if callable(close_all):
            close_all()


def open_cache(request: pytest.FixtureRequest, stem: str) -> Iterator[CacheManager]:
    """The body of a ``cache`` fixture: the driver ``request.param`` under a prefix per test
    (``stem`` and random letters), so tests never share entries; cleared afterwards."""
    prefix = f"{stem}{uuid.uuid4().hex[:10]}:"
    if request.param == "memory":
        manager = create_cache("memory://", settings=Settings(), prefix=prefix)
    else:
        url = request.getfixturevalue("redis_url")
        manager = create_cache(url, settings=Settings(cache_url=url), prefix=prefix)
    try:
        yield manager
    finally:
        manager.clear()
        manager.close()
