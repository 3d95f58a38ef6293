"""The production cache driver: Redis through redis-py, one round trip per operation.

Reads are plain GET / MGET (the manager checks tag versions it reads in the same MGET), served
from a near cache in this process when it holds every key asked for (``czo_kit.cache.near``:
Redis key tracking drops a copy the moment the key changes anywhere). Timeouts are short and
retries off, so an unreachable Redis costs a caller milliseconds, not seconds; the manager turns
``CacheUnavailable`` into misses. Not for Redis Cluster (one MGET reads an entry with its tag
keys, which live in other hash slots): a cluster node's MOVED or CROSSSLOT reply degrades like
an outage, with a message naming ``redis+cluster://`` (``redis_cluster_cache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from czo_kit.cache.driver import CacheUnavailable
from czo_kit.cache.near import NearCache
from czo_kit.default_plugins._redis_common import RELEASE_SCRIPT, RedisCommands, import_redis, version_seed
from czo_kit.errors import ConfigurationError
from czo_kit.hookspecs import hookimpl

if TYPE_CHECKING:
    import redis

    from czo_kit.settings import Settings

__all__ = ["RedisDriver", "create_redis_driver"]

# Versions are random (a per-call seed and the tag's position), never a counter: a key that
# expired or was removed must not come back with a version an old entry still records. A key
# that would expire within ``ttl`` ms (or never: one written before versions expired) gets
# twice ``ttl``, so a hot tag is extended once per ``ttl``, not on every write: each PEXPIRE
# makes Redis tell every near cache to drop its copy of the key.
_TAG_VERSIONS = """
local prefix = ARGV[1]
local seed = ARGV[2]
local ttl = tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local key = prefix .. ARGV[i]
  local v = redis.call('GET', key)
  if not v then
    v = seed .. (i - 3)
    redis.call('SET', key, v, 'PX', 2 * ttl)
  else
    local left = redis.call('PTTL', key)
    if left < ttl then
      redis.call('PEXPIRE', key, 2 * ttl)
    end
  end
  out[i - 3] = v
end
return out
"""

# One batch of a pattern invalidation in one round trip: one SCAN step (ARGV: cursor, pattern,
# COUNT), its keys unlinked where they are (in UNLINKs of at most 1,000 keys: Lua's unpack has
# a limit, and SCAN may return more keys than COUNT). The key names never travel to this
# process and back, which halved the time to clear a million keys (benchmarks/cache_growth.py).
# A call holds Redis for its SCAN and its UNLINK together, so it scans _SCRIPT_STEP keys, not
# 1,000: other clients then wait less per call (~0.8 ms here) than behind the UNLINK of 1,000
# keys a client-side batch sends (~2.3 ms), and the round trips it adds cost no time overall.
_DELETE_BATCH = """
local reply = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local keys = reply[2]
local removed = 0
for i = 1, #keys, 1000 do
  removed = removed + redis.call('UNLINK', unpack(keys, i, math.min(i + 999, #keys)))
end
return {reply[1], removed}
"""

_SCRIPT_STEP = 250

_CLUSTER_REPLIES = ("MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN")


class RedisDriver(RedisCommands):
    """A ``CacheDriver`` over one Redis database."""

    def __init__(self, client: redis.Redis, *, near: NearCache | None = None) -> None:
        super().__init__()
        self.client = client
        self.near = near
        self._tag_versions = client.register_script(_TAG_VERSIONS)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._delete_batch = client.register_script(_DELETE_BATCH)

    def _outage(self, exc: BaseException) -> str | None:
        # A cluster node answers a key of another node's slot with MOVED (and a multi-key
        # command with CROSSSLOT): to a single-node client the cache is unusable, not broken
        # per call. Degrade like an outage, saying which URL to use instead.
        errors = self._redis.exceptions
        cluster_errors = (errors.AskError, errors.ClusterCrossSlotError, errors.ClusterDownError, errors.TryAgainError)
        if isinstance(exc, cluster_errors) or (
            isinstance(exc, errors.ResponseError) and str(exc).startswith(_CLUSTER_REPLIES)
        ):
            reply = f"{type(exc).__name__}: {exc}"
            return f"this Redis is a cluster node ({reply}); use CZO_CACHE_URL=redis+cluster://host:port"
        return super()._outage(exc)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        near, token = self.near, None
        if near is not None:
            held, token = near.lookup(keys)
            if held is not None:
                return held
        if len(keys) == 1:
            key = keys[0]
            values: list[Any] = [self._call(lambda: self.client.get(key))]
        else:
            values = list(self._call(lambda: self.client.mget(keys)))
        if near is not None and token is not None:
            near.store(keys, values, token)
        return values

    def tag_versions(self, tags: Sequence[str], tag_prefix: str, ttl_ms: int) -> list[bytes]:
        if not tags:
            return []
        seed = version_seed()
        keys = [tag_prefix + tag for tag in tags]
        try:
            versions: list[bytes] = self._call(
                lambda: self._tag_versions(keys=[], args=[tag_prefix, seed, max(1, ttl_ms), *tags])
            )
        except BaseException:
            self._forget(keys)
            raise
        if self.near is not None:
            # The script creates missing versions: a copy that says "absent" must go. Copies
            # that match what it returned are current, and keep serving reads.
            self.near.forget_unless_held(keys, versions)
        return versions

    def _unlink_matching(self, pattern: str, batch: int) -> int:
        cursor, removed, step = 0, 0, min(batch, _SCRIPT_STEP)
        while True:
            reply = self._delete_batch(keys=[], args=[cursor, pattern, step])
            cursor, removed = int(reply[0]), removed + int(reply[1])
            if cursor == 0:
                return removed

    def release_lock(self, key: str, token: str) -> bool:
        return bool(self._call(lambda: self._release(keys=[key], args=[token])))

    def ping(self) -> bool:
        try:
            return bool(self._call(self.client.ping))
        except CacheUnavailable:
            return False

    def close(self) -> None:
        if self.near is not None:
            self.near.close()
        self.client.close()


def create_redis_driver(url: str, *, settings: Settings) -> RedisDriver:
    """``redis://[:password@]host:port/db`` (``rediss://`` for TLS)."""
    redis_py = import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigurationError(
            f"invalid Redis URL for CZO_CACHE_URL: no host; expected 'redis://host:6379/0'",
            variable="CZO_CACHE_URL",
        )
    try:
        client = redis_py.Redis.from_url(
            url,
            socket_timeout=settings.cache_timeout,
            socket_connect_timeout=settings.cache_timeout,
            retry=Retry(NoBackoff(), 0),
            client_name="czo-kit-cache",
        )
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL for CZO_CACHE_URL: {exc}", variable="CZO_CACHE_URL") from None
    near = None
    if settings.cache_near_entries > 0:
        if not settings.cache_prefix:
            raise ConfigurationError(
                "the Redis cache's near cache tracks the keys under CZO_CACHE_PREFIX, which is empty; "
                "set a prefix (default 'czo:') or turn the near cache off with CZO_CACHE_NEAR_ENTRIES=0",
                variable="CZO_CACHE_PREFIX",
            )
        pool = client.connection_pool

        def tracking_connection() -> Any:
            options = {**pool.connection_kwargs, "protocol": 3, "client_name": "czo-kit-near-cache"}
            return pool.connection_class(**options)

        near = NearCache(
            tracking_connection,
            settings.cache_prefix,
            max_entries=settings.cache_near_entries,
            ping_timeout=settings.cache_timeout,
        )
    return RedisDriver(client, near=near)


@hookimpl
def czo_register_cache_drivers(register: Any) -> None:
    register("redis", create_redis_driver)
    register("rediss", create_redis_driver)
