"""PostgreSQL through psycopg2, with a bounded connection pool per process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from czo_kit.db.transactions import TransactionalDatabaseMixin
from czo_kit.errors import ConfigurationError
from czo_kit.hookspecs import RegisterDatabaseBackend, hookimpl

if TYPE_CHECKING:
    from czo_kit.settings import Settings

__all__ = ["PostgresqlDatabase", "create_postgresql_database", "parse_postgresql_url"]


class PostgresqlDatabase(TransactionalDatabaseMixin, PooledPostgresqlDatabase):  # type: ignore[misc]
    """Pooled ``peewee`` PostgreSQL database with savepoint-aware ``on_commit``."""


def parse_postgresql_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split ``postgresql://user:password@host:port/dbname?sslmode=...`` for psycopg2."""
    parts = urlsplit(url)
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ConfigurationError(
            f"invalid PostgreSQL URL {_mask(url)}: no database name; expected "
            "'postgresql://user@host:5432/dbname'",
            variable="CZO_DATABASE_URL",
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            f"invalid PostgreSQL URL {_mask(url)}: the port is not a number in 1-65535",
            variable="CZO_DATABASE_URL",
        ) from None
    params: dict[str, Any] = {}
    if parts.hostname:
        params["host"] = parts.hostname
    if port:
        params["port"] = port
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    # Anything else is a libpq connection parameter (sslmode, application_name, ...).
    params.update(parse_qsl(parts.query))
    return dbname, params


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        return repr(parts._replace(netloc=netloc).geturl())
    return repr(url)


def create_postgresql_database(url: str, *, settings: Settings) -> peewee.Database:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "CZO_DATABASE_URL is a PostgreSQL URL but psycopg2 is not installed; "
            "install it with: pip install 'czo-kit[postgres]'",
            variable="CZO_DATABASE_URL",
        ) from None
    dbname, params = parse_postgresql_url(url)
    params.setdefault("connect_timeout", 10)
    return PostgresqlDatabase(
        dbname,
        max_connections=settings.db_pool_size,
        stale_timeout=int(settings.db_stale_timeout),
        timeout=settings.db_pool_timeout,
        **params,
    )


@hookimpl
def czo_register_database_backends(register: RegisterDatabaseBackend) -> None:
    register("postgresql", create_postgresql_database)
    register("postgres", create_postgresql_database)
