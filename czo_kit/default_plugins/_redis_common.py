"""What the single-node Redis driver and the Redis Cluster driver share: the commands whose
shape is the same on both (pipelined SETs, UNLINK, SCAN + UNLINK batches, the lock),
turning a server that does not answer into ``CacheUnavailable``, and redis-py's import.

Every command here names one key, or is split by slot by redis-py's cluster client
(``UNLINK`` with several keys; a non-transactional pipeline), so none needs its keys to share
a hash slot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import secrets
from typing import TYPE_CHECKING, Any, TypeVar

from czo_kit.cache.driver import CacheUnavailable
from czo_kit.errors import ConfigurationError

if TYPE_CHECKING:
    from czo_kit.cache.near import NearCache

__all__ = ["OUTAGE_REPLIES", "RELEASE_SCRIPT", "RedisCommands", "import_redis", "version_seed"]

T = TypeVar("T")

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

OUTAGE_REPLIES = ("OOM", "LOADING", "READONLY", "MISCONF", "MASTERDOWN", "BUSY")
"""Error replies of a server that is there but cannot serve now: an outage, not a bug."""


def version_seed() -> str:
    """The start of new tag versions: ``<seed><position of the tag>``. Random, never a counter,
    so a version never comes back once its key expired or was removed (an entry recording it
    would be valid again); the dot keeps seed 12 + position 3 apart from seed 1 + position 23."""
    return f"{secrets.randbits(64)}."


def import_redis() -> Any:
    """redis-py, or a ``ConfigurationError`` saying what to install."""
    try:
        import redis
    except ImportError:
        raise ConfigurationError(
            "CZO_CACHE_URL is a Redis URL but redis-py is not installed; install it with: "
            "pip install 'czo-kit[redis]'",
            variable="CZO_CACHE_URL",
        ) from None
    return redis


class RedisCommands:
    """The driver methods both Redis drivers run the same way; subclasses give ``client``
    (built without ``decode_responses``, so values are bytes) and ``_scan``, or their own
    ``_unlink_matching``."""

    client: Any
    near: NearCache | None = None

    def __init__(self) -> None:
        import redis

        self._redis = redis

    def _outage(self, exc: BaseException) -> str | None:
        """Why ``exc`` means the server cannot serve now (``None``: it is a bug, let it rise)."""
        errors = self._redis.exceptions
        if isinstance(exc, (errors.ConnectionError, errors.TimeoutError)):
            return f"Redis unreachable: {exc}"
        if isinstance(exc, errors.ResponseError) and str(exc).startswith(OUTAGE_REPLIES):
            return f"Redis refused the command: {exc}"
        return None

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            why = self._outage(exc)
            if why is None:
                raise
            raise CacheUnavailable(why) from exc

    def _forget(self, keys: Sequence[str]) -> None:
        # This process wrote them: drop its copies now rather than when Redis's push arrives.
        if self.near is not None:
            self.near.forget(keys)

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        if not items:
            return
        if len(items) == 1:
            key, value, ttl_ms = items[0]
            try:
                self._call(lambda: self.client.set(key, value, px=ttl_ms if ttl_ms > 0 else None))
            finally:
                self._forget([key])
            return

        def run() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key, value, ttl_ms in items:
                pipe.set(key, value, px=ttl_ms if ttl_ms > 0 else None)
            pipe.execute()

        try:
            self._call(run)
        finally:
            self._forget([key for key, _, _ in items])

    def delete_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        try:
            removed: int = self._call(lambda: self.client.unlink(*keys))
        finally:
            self._forget(keys)
        return removed

    def bump_tags(self, tags: Sequence[str], tag_prefix: str) -> None:
        if not tags:
            return
        keys = [tag_prefix + tag for tag in tags]
        # Removed, not incremented: a missing version invalidates, the next writer creates a
        # random one (``version_seed``), and a tag nobody writes again leaves no key behind.
        try:
            self._call(lambda: self.client.unlink(*keys))
        finally:
            self._forget(keys)

    def _scan(self, pattern: str, batch: int) -> Iterator[Any]:
        raise NotImplementedError

    def _unlink_matching(self, pattern: str, batch: int) -> int:
        """Remove the keys matching ``pattern``, ``batch`` at a time; how many there were."""
        removed = 0
        pending: list[Any] = []
        # SCAN visits a few keys per call and UNLINK frees memory in the background,
        # so neither blocks other clients the way KEYS or DEL on a big set would.
        for key in self._scan(pattern, batch):
            pending.append(key)
            if len(pending) >= batch:
                removed += self.client.unlink(*pending)
                pending.clear()
        if pending:
            removed += self.client.unlink(*pending)
        return removed

    def delete_matching(self, pattern: str, *, batch: int = 1000) -> int:
        try:
            result: int = self._call(lambda: self._unlink_matching(pattern, batch))
        finally:
            if self.near is not None:
                self.near.forget_all()
        return result

    def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        return bool(self._call(lambda: self.client.set(key, token, nx=True, px=ttl_ms)))
