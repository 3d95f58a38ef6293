"""The cache on Redis Cluster (``redis+cluster://host:port[,host:port...]``) through redis-py's
``RedisCluster``, which follows MOVED and ASK redirections and learns the slot map itself.

No cache key carries a hash tag, deliberately: entries and tag versions spread over every
primary, and no operation needs two keys in one slot. A multi-key read (an entry with the
versions of its tags, or ``get_many``) is one MGET per slot, pipelined to the nodes in one
round trip; writes and UNLINK are split by slot the same way; creating a tag version is
``SET key seed NX GET`` (one key, atomic) instead of the single-node driver's script over many
keys. An entry and its tag versions are then read in one pass rather than one atomic snapshot,
which is still exact: an entry is served only if every version it recorded equals the one read,
a version never comes back once bumped (removed; the next one is random), and a version read
before a concurrent bump is the answer a read made a moment earlier would have given.
Hash-tagging a namespace (``{shop}``) would instead put all of its entries on one primary,
which is what a cluster is there to avoid.

``invalidate(pattern)`` and ``clear()`` SCAN every primary. The near cache is refused: key
tracking reports writes made on the node a connection is on, so it would need one tracking
connection per primary, kept right through failovers and resharding. Needs Redis 7.0 or later
(``SET ... NX GET``). The client is built on first use, so the kit starts while the cluster is
down; until it answers, reads are misses as with the single-node driver.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from czo_kit.cache.driver import CacheUnavailable
from czo_kit.default_plugins._redis_common import RELEASE_SCRIPT, RedisCommands, import_redis, version_seed
from czo_kit.errors import ConfigurationError
from czo_kit.hookspecs import hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

    from czo_kit.settings import Settings

__all__ = ["ClusterURL", "RedisClusterDriver", "create_redis_cluster_driver", "parse_cluster_url"]

_EXAMPLE = "redis+cluster://10.0.0.1:6379,10.0.0.2:6379"


class ClusterURL:
    """What a ``redis+cluster://`` URL says: the nodes to start from, credentials, TLS."""

    def __init__(self, nodes: list[tuple[str, int]], username: str | None, password: str | None, tls: bool) -> None:
        self.nodes = nodes
        self.username = username
        self.password = password
        self.tls = tls


def _bad(what: str) -> ConfigurationError:
    return ConfigurationError(
        f"invalid Redis Cluster URL for CZO_CACHE_URL: {what}; expected {_EXAMPLE!r} "
        "(one or more host:port of cluster nodes, optional user:password@, no database, no options)",
        variable="CZO_CACHE_URL",
    )


def parse_cluster_url(url: str) -> ClusterURL:
    """``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster`` for TLS).

    The password is never repeated in an error."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis+cluster", "rediss+cluster"):
        raise _bad(f"the scheme must be redis+cluster or rediss+cluster, got {scheme!r}")
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark, rest.rfind("@") + 1)
        if found >= 0:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    if tail not in ("", "/", "/0"):
        if tail.startswith("/"):
            raise _bad(f"a cluster has only database 0, the URL asks for {tail.split('?')[0][:20]!r}")
        raise _bad(f"options after the hosts are not supported ({tail[:30]!r})")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hosts:
        raise _bad("no host")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        if item.startswith("["):  # IPv6: [::1]:7000
            host, bracket, port_text = item[1:].partition("]")
            if not bracket or (port_text and not port_text.startswith(":")):
                raise _bad(f"the host {item[:60]!r} is not [ipv6]:port")
            port_text = port_text[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host or any(ch.isspace() for ch in host):
            raise _bad(f"the host {item[:60]!r} is empty or has spaces")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _bad(f"the host {item[:60]!r} needs a port from 1 to 65535")
        nodes.append((host, int(port_text)))
    return ClusterURL(nodes, username, password, tls=scheme == "rediss+cluster")


class RedisClusterDriver(RedisCommands):
    """A ``CacheDriver`` over a Redis Cluster; ``connect`` builds the ``RedisCluster`` client
    (it contacts the cluster, so it runs on first use, and again after a failed attempt)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        super().__init__()
        self._connect = connect
        self._client: Any = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._closed:
                    raise CacheUnavailable("the Redis Cluster cache is closed")
                if self._client is None:
                    self._client = self._call(self._connect)
                client = self._client
        return client

    def _outage(self, exc: BaseException) -> str | None:
        errors = self._redis.exceptions
        # Raised when no node answers, a slot has no live primary (CLUSTERDOWN, MASTERDOWN),
        # a slot is mid-migration (TRYAGAIN), or redirections never settle: all pass with
        # time, like an outage. MOVED and ASK are followed by the client and reach us only
        # when they never end.
        if isinstance(exc, (errors.RedisClusterException, errors.ClusterError, errors.TryAgainError,
                            errors.AskError)):
            return f"Redis Cluster cannot serve the command: {type(exc).__name__}: {exc}"
        if isinstance(exc, errors.ClusterCrossSlotError):  # pragma: no cover - every command is split by slot
            return f"a command spanned hash slots (a bug in the cluster driver): {exc}"
        if isinstance(exc, AttributeError) and _raised_in(exc, self._redis):
            # An ASK redirection to a node that its slot map does not name yet (a new primary
            # that slots are migrating to holds none, so no map names it): redis-py looks the
            # node up, gets None, and fails on it. It passes once the slot is moved.
            return f"Redis Cluster client failed on a slot being moved to a node it does not know yet: {exc!r}"
        return super()._outage(exc)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if len(keys) == 1:
            key = keys[0]
            return [self._call(lambda: self.client.get(key))]
        # One MGET per slot, pipelined: the keys of an entry and its tag versions may live on
        # every primary.
        return list(self._call(lambda: self.client.mget_nonatomic(list(keys))))

    def tag_versions(self, tags: Sequence[str], tag_prefix: str, ttl_ms: int) -> list[bytes]:
        if not tags:
            return []
        seed = version_seed()
        fresh = [f"{seed}{i}".encode() for i in range(1, len(tags) + 1)]
        ttl = max(1, ttl_ms)

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for tag, value in zip(tags, fresh):
                key = tag_prefix + tag
                # One key, atomic: the version already there, or (nil) ours, just created.
                pipe.set(key, value, nx=True, get=True, px=ttl)
                # An existing key lives at least ``ttl`` more: GT pushes a sooner expiry out
                # (never in), NX gives one to a key that had none.
                pipe.pexpire(key, ttl, gt=True)
                pipe.pexpire(key, ttl, nx=True)
            return list(pipe.execute())[::3]

        return [old if old is not None else new for old, new in zip(self._call(run), fresh)]

    def _scan(self, pattern: str, batch: int) -> Iterator[Any]:
        from redis.cluster import RedisCluster

        client = self.client
        # The client refreshes its slot map only on a redirection or an error: a primary added
        # since it last looked (slots moved onto it) would go unscanned, its keys kept. One
        # CLUSTER SLOTS first, then SCAN every primary, each to its end.
        client.nodes_manager.initialize()
        keys: Iterator[Any] = client.scan_iter(match=pattern, count=batch, target_nodes=RedisCluster.PRIMARIES)
        return keys

    def release_lock(self, key: str, token: str) -> bool:
        return bool(self._call(lambda: self.client.eval(RELEASE_SCRIPT, 1, key, token)))

    def ping(self) -> bool:
        """Whether every primary answers (a dead one leaves its slots' keys unreachable)."""

        def every_primary() -> bool:
            client = self.client
            client.nodes_manager.initialize()  # a primary added since the last redirection too
            return all(client.ping(target_nodes=node) for node in client.get_primaries())

        try:
            return self._call(every_primary)
        except CacheUnavailable:
            return False

    def health(self) -> tuple[bool, str]:
        """Whether every primary answers, and which do not (for ``czo-kit status``)."""
        try:
            client = self.client
            self._call(client.nodes_manager.initialize)  # the slot map as it is now
        except CacheUnavailable as exc:
            return False, f"no node of the cluster answers: {exc}"
        down = []
        primaries = client.get_primaries()
        for node in primaries:
            try:
                client.ping(target_nodes=node)
            except Exception as exc:
                if self._outage(exc) is None:
                    raise
                down.append(node.name)
        if down:
            return False, f"primary {', '.join(down)} of {len(primaries)} does not answer"
        return True, f"{len(primaries)} primaries answer"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()


def create_redis_cluster_driver(url: str, *, settings: Settings) -> RedisClusterDriver:
    """``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://``: TLS)."""
    parsed = parse_cluster_url(url)
    if settings.cache_near_entries > 0:
        raise ConfigurationError(
            "the near cache (CZO_CACHE_NEAR_ENTRIES="
            f"{settings.cache_near_entries}) does not work on Redis Cluster: key tracking reports "
            "only writes made on the node a connection is on; set CZO_CACHE_NEAR_ENTRIES=0 to use "
            "a redis+cluster:// cache",
            variable="CZO_CACHE_NEAR_ENTRIES",
        )
    import_redis()
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    def connect() -> Any:
        return RedisCluster(
            startup_nodes=[_node(host, port) for host, port in parsed.nodes],
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.tls,
            socket_timeout=settings.cache_timeout,
            socket_connect_timeout=settings.cache_timeout,
            # No retries: a node that does not answer costs one timeout and the manager serves
            # misses; the topology refresh the failure asks for runs on the next command.
            retry=Retry(NoBackoff(), 0),
            client_name="czo-kit-cache",
        )

    return RedisClusterDriver(connect)


def _raised_in(exc: BaseException, module: Any) -> bool:
    """Whether ``exc`` was raised by code of ``module``'s package (its innermost frame)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.abspath(module.__file__))
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def _node(host: str, port: int) -> Any:
    from redis.cluster import ClusterNode

    return ClusterNode(host, port)  # type: ignore[no-untyped-call]


@hookimpl
def czo_register_cache_drivers(register: Any) -> None:
    register("redis+cluster", create_redis_cluster_driver)
    register("rediss+cluster", create_redis_cluster_driver)
