"""Shared fixtures: real PostgreSQL (and later Redis) from the environment, SQLite in tmp.

Locally a missing server skips its tests; under CI (``CI=true``) it fails them, so a broken
service can never pass as a green run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from czo_kit.settings import Settings

# Each package coverage measures is held to --cov-fail-under on its own, not only the total.
pytest_plugins = ["coverage_floors"]

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_URL = os.environ.get("CZO_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CZO_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SECRET = "test-secret-key-" + "k" * 32


def service_unavailable(what: str, detail: str) -> None:
    """Skip locally, fail under CI: a test for a real server must never pass without it."""
    message = f"{what} is not reachable ({detail})"
    if CI:
        pytest.fail(message + "; CI=true requires every service", pytrace=False)
    pytest.skip(message)


def _pg_connect_error(url: str) -> str | None:
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - the dev extra installs it
        return "psycopg2 is not installed"
    from czo_kit.default_plugins.postgres import parse_postgresql_url

    dbname, params = parse_postgresql_url(url)
    try:
        conn = psycopg2.connect(dbname=dbname, connect_timeout=3, **params)
    except psycopg2.Error as exc:
        return str(exc).strip()
    conn.close()
    return None


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    error = _pg_connect_error(PG_URL)
    if error:
        service_unavailable(f"PostgreSQL at {PG_URL}", error)
    return PG_URL


@pytest.fixture(scope="session")
def pg_schema(pg_base_url: str) -> Iterator[str]:
    """A private schema for this test session, so runs never see each other's tables."""
    import psycopg2
    from psycopg2 import sql

    from czo_kit.default_plugins.postgres import parse_postgresql_url

    schema = f"czotest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dbname, params = parse_postgresql_url(pg_base_url)
    conn = psycopg2.connect(dbname=dbname, **params)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.close()


@pytest.fixture(scope="session")
def pg_url(pg_base_url: str, pg_schema: str) -> str:
    """``CZO_TEST_DATABASE_URL`` with ``search_path`` set to this session's schema."""
    separator = "&" if "?" in pg_base_url else "?"
    return pg_base_url + separator + urlencode({"options": f"-csearch_path={pg_schema}"})


@pytest.fixture(autouse=True)
def _private_working_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in an empty directory, so relative defaults (the embedded
    ``sqlite:///czo-queue.sqlite3`` queue, say) never land in the repository."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{os.path.join(os.fspath(tmp_path), 'test.sqlite3')}"


@pytest.fixture
def settings_for():  # type: ignore[no-untyped-def]
    """Build validated settings for a database URL with the test secret key."""

    def make(url: str, **changes: object) -> Settings:
        return Settings(database_url=url, secret_key=SECRET, **changes)  # type: ignore[arg-type]

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: the embedded default and the real PostgreSQL server."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A database URL of each backend: SQLite in tmp, then PostgreSQL (the session schema)."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def queue_mode(request: pytest.FixtureRequest) -> str:
    """``queue`` (a SQLite queue and its consumer) unless a test asks for both modes
    (``apps_support.BOTH_MODES``)."""
    return str(getattr(request, "param", "queue"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``CZO_TEST_REDIS_URL`` (default database 15 of the local server), checked reachable."""
    try:
        import redis
    except ImportError:  # pragma: no cover - the dev extra installs it
        service_unavailable("Redis", "redis-py is not installed")
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {REDIS_URL}", str(exc))
    return REDIS_URL


@pytest.fixture
def scratch_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the shared test Redis, its keys removed afterwards."""
    import redis

    prefix = f"sc{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A local Redis Cluster of three primaries (tests/redis_cluster.py), started once per
    session on free ports and killed at the end. Without redis-server and redis-cli the tests
    skip locally and fail under CI."""
    from redis_cluster import LocalCluster, cluster_binaries

    binaries = cluster_binaries()
    if binaries is None:
        service_unavailable("Redis Cluster", "redis-server or redis-cli is not installed")
    assert binaries is not None
    with LocalCluster(*binaries, tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster
