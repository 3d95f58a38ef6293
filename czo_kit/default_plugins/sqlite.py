"""The embedded default database: SQLite in WAL mode, foreign keys on, RETURNING enabled."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee

from czo_kit.db.transactions import TransactionalDatabaseMixin
from czo_kit.errors import ConfigurationError
from czo_kit.hookspecs import RegisterDatabaseBackend, hookimpl
from czo_kit.settings import redact_url

if TYPE_CHECKING:
    from czo_kit.settings import Settings

__all__ = ["SqliteDatabase", "check_sqlite_directory", "create_sqlite_database", "parse_sqlite_url"]

_OPTIONS = {"timeout": float, "synchronous": str, "journal_mode": str, "cache_size": int, "transaction_mode": str}
_TRANSACTION_MODES = ("deferred", "immediate", "exclusive")
# SQLite ignores a pragma value it does not know, so a typo would pass silently.
_CHOICES = {
    "transaction_mode": _TRANSACTION_MODES,
    "journal_mode": ("delete", "truncate", "persist", "memory", "wal", "off"),
    "synchronous": ("off", "normal", "full", "extra", "0", "1", "2", "3"),
}


class SqliteDatabase(TransactionalDatabaseMixin, peewee.SqliteDatabase):
    """``peewee.SqliteDatabase`` with savepoint-aware ``on_commit``, whose transactions take
    the write lock when they begin (``BEGIN IMMEDIATE``) unless told otherwise.

    A deferred transaction that reads, then writes, must upgrade its lock; if another
    connection committed in between, SQLite refuses at once ("database is locked") without
    waiting out the busy timeout, so a repository's check-then-write (a restore, a unique
    check) would fail whenever a worker wrote meanwhile. Beginning immediately makes such a
    block wait for the lock instead, as other writers do.
    """

    def __init__(self, *args: Any, transaction_mode: str = "immediate", **kwargs: Any) -> None:
        if transaction_mode.lower() not in _TRANSACTION_MODES:
            raise ValueError(f"transaction_mode must be one of {', '.join(_TRANSACTION_MODES)}")
        self.transaction_mode = transaction_mode.upper()
        # Peewee's own option: every BEGIN it issues (atomic, transaction) names this lock.
        super().__init__(*args, lock_type=self.transaction_mode, **kwargs)


def parse_sqlite_url(url: str) -> tuple[str, dict[str, Any]]:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise ConfigurationError(
            f"invalid SQLite URL {redact_url(url)!r}: expected 'sqlite:///relative/path.db', "
            "'sqlite:////absolute/path.db' or 'sqlite:///:memory:' (no host part)",
            variable="CZO_DATABASE_URL",
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise ConfigurationError(
            f"invalid SQLite URL {redact_url(url)!r}: no file path; use 'sqlite:///czo.sqlite3'",
            variable="CZO_DATABASE_URL",
        )
    options: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        convert = _OPTIONS.get(key)
        if convert is None:
            raise ConfigurationError(
                f"invalid SQLite URL option {key!r}; allowed: {', '.join(sorted(_OPTIONS))}",
                variable="CZO_DATABASE_URL",
            )
        allowed = _CHOICES.get(key)
        if allowed is not None and value.lower() not in allowed:
            raise ConfigurationError(
                f"invalid SQLite URL option {key}={value!r}; allowed: {', '.join(allowed)}",
                variable="CZO_DATABASE_URL",
            )
        try:
            options[key] = convert(value)
        except ValueError:
            raise ConfigurationError(
                f"invalid SQLite URL option {key}={value!r}: expected {convert.__name__}",
                variable="CZO_DATABASE_URL",
            ) from None
    return path, options


def check_sqlite_directory(path: str, url: str, *, variable: str = "CZO_DATABASE_URL") -> None:
    """Refuse a file whose directory does not exist, before SQLite fails later with only
    'unable to open database file'."""
    directory = os.path.dirname(os.path.abspath(path))
    if path != ":memory:" and not os.path.isdir(directory):
        raise ConfigurationError(
            f"invalid SQLite URL {redact_url(url)!r}: the directory {directory!r} of its file does "
            "not exist; create it first",
            variable=variable,
        )


def create_sqlite_database(url: str, *, settings: Settings) -> peewee.Database:
    path, options = parse_sqlite_url(url)
    check_sqlite_directory(path, url)
    pragmas = {
        "journal_mode": options.get("journal_mode", "wal"),
        "foreign_keys": 1,
        "synchronous": options.get("synchronous", "normal"),
        "cache_size": options.get("cache_size", -16000),  # 16 MiB
    }
    return SqliteDatabase(
        path,
        pragmas=pragmas,
        timeout=options.get("timeout", 10.0),
        returning_clause=True,
        transaction_mode=options.get("transaction_mode", "immediate"),
    )


@hookimpl
def czo_register_database_backends(register: RegisterDatabaseBackend) -> None:
    register("sqlite", create_sqlite_database)
