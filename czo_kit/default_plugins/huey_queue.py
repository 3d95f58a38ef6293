"""Queue backends for async events: Huey on SQLite (embedded default) or on Redis.

Both honour priority (``SqliteHuey`` orders by it; on Redis the kit uses ``PriorityRedisHuey``,
since plain ``RedisHuey`` ignores it). Both use the msgspec serializer: nothing is pickled. The
Redis one connects on first use and rides out outages (``czo_kit.events._outage``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from huey import SqliteHuey

from czo_kit.default_plugins.sqlite import check_sqlite_directory, parse_sqlite_url
from czo_kit.errors import ConfigurationError
from czo_kit.events.queue import MsgspecSerializer
from czo_kit.hookspecs import hookimpl

if TYPE_CHECKING:
    from huey import Huey

    from czo_kit.settings import Settings

__all__ = ["create_redis_queue", "create_sqlite_queue", "refuse_cluster_queue"]


def create_sqlite_queue(url: str, *, settings: Settings, name: str) -> Huey:
    """``sqlite:///czo-queue.sqlite3``: a queue file next to the application."""
    try:
        path, options = parse_sqlite_url(url)
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).replace("SQLite URL", "SQLite queue URL"), variable="CZO_QUEUE_URL") from None
    if path == ":memory:":
        raise ConfigurationError(
            "CZO_QUEUE_URL cannot be an in-memory SQLite database: the worker would not see it",
            variable="CZO_QUEUE_URL",
        )
    check_sqlite_directory(path, url, variable="CZO_QUEUE_URL")
    return SqliteHuey(
        name,
        filename=path,
        results=False,
        utc=True,
        serializer=MsgspecSerializer(),
        timeout=options.get("timeout", 10.0),
    )


def create_redis_queue(url: str, *, settings: Settings, name: str) -> Huey:
    """``redis://host:6379/0``: a priority-ordered queue in Redis."""
    if not urlsplit(url).hostname:
        raise ConfigurationError(
            "invalid CZO_QUEUE_URL: no host; expected 'redis://host:6379/0'", variable="CZO_QUEUE_URL"
        )
    import redis

    from czo_kit.events._outage import RedisQueue
    from czo_kit.settings import redact_url

    # Huey names its client with a command at construction (so a kit could not start while
    # Redis is down); a connection option names each connection when it opens instead.
    pool = redis.ConnectionPool.from_url(
        url, client_name="czo-kit-queue", socket_connect_timeout=5.0, socket_keepalive=True
    )
    return RedisQueue(
        name,
        connection_pool=pool,
        results=False,
        utc=True,
        serializer=MsgspecSerializer(),
        where=f"CZO_QUEUE_URL={redact_url(url)}",
    )


def refuse_cluster_queue(url: str, *, settings: Settings, name: str) -> Huey:
    """``redis+cluster://`` is the cache's, not the queue's: refused, saying what to use.

    Huey's Redis storage talks to one server through a single-node client, and its keys
    (``huey.redis.<name>``, ``huey.schedule.<name>``, ``huey.results.<name>``, ...) hash to
    different slots: on a cluster, delayed tasks, retries and locks answer MOVED. Braces that
    would pin them to one slot are not allowed in CZO_QUEUE_NAME (Huey strips them from its keys).
    """
    raise ConfigurationError(
        "CZO_QUEUE_URL cannot be a Redis Cluster: Huey's Redis storage needs one standalone "
        "Redis server (its keys huey.redis.<name>, huey.schedule.<name>, ... fall in different "
        "hash slots, so delays and retries fail on a cluster); use redis://host:6379/0 on a "
        "server outside the cluster (the cache may stay on redis+cluster://), see "
        "docs/operations.md, 'Redis Cluster'",
        variable="CZO_QUEUE_URL",
    )


@hookimpl
def czo_register_queue_backends(register: Any) -> None:
    register("sqlite", create_sqlite_queue)
    register("redis", create_redis_queue)
    register("rediss", create_redis_queue)
    register("redis+cluster", refuse_cluster_queue)
    register("rediss+cluster", refuse_cluster_queue)
