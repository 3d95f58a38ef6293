"""PostgreSQL and Redis plumbing shared by the benchmarks: scratch schemas, key clean-up.

Each benchmark works in a schema of its own (selected with libpq's
``options=-csearch_path=...``) and under Redis keys of its own, and removes both at the end,
so it never sees or touches what the test suite or another benchmark uses.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlencode

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REDIS_URL",
    "admin_sql",
    "check_schema_name",
    "database_url",
    "delete_redis_keys",
    "drop_schema",
    "fresh_schema",
    "redis_url",
    "schema_url",
]

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"  # the test suite uses db 15


def database_url() -> str:
    return os.environ.get("CZO_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def redis_url() -> str:
    return os.environ.get("CZO_BENCH_REDIS_URL", DEFAULT_REDIS_URL)


def check_schema_name(schema: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ValueError(f"schema must be a lower-case SQL identifier, got {schema!r}")
    return schema


def schema_url(base_url: str, schema: str) -> str:
    """``base_url`` with the search path set to ``schema`` (a libpq connection option)."""
    separator = "&" if "?" in base_url else "?"
    return base_url + separator + urlencode({"options": f"-csearch_path={schema}"})


def admin_sql(base_url: str, sql: str) -> None:
    """Run ``sql`` on a separate autocommit connection (schema creation and removal)."""
    import psycopg2

    from czo_kit.default_plugins.postgres import parse_postgresql_url

    dbname, params = parse_postgresql_url(base_url)
    conn = psycopg2.connect(dbname=dbname, connect_timeout=10, **params)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def fresh_schema(base_url: str, schema: str) -> None:
    name = check_schema_name(schema)
    # The name matched the identifier pattern above before it reaches SQL.
    admin_sql(base_url, f'DROP SCHEMA IF EXISTS "{name}" CASCADE; CREATE SCHEMA "{name}"')


def drop_schema(base_url: str, schema: str) -> None:
    name = check_schema_name(schema)
    admin_sql(base_url, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def delete_redis_keys(client: Any, patterns: list[str]) -> int:
    """UNLINK every key matching one of the glob ``patterns`` (SCAN, in batches)."""
    removed = 0
    for pattern in patterns:
        batch: list[Any] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += client.unlink(*batch)
                batch.clear()
        if batch:
            removed += client.unlink(*batch)
    return removed
