"""The kit's Redis queue through an outage: nothing connects before it is used, so a kit (the
CLI, ``serve``, a script, a worker) starts while Redis is down; a consumer's workers and
scheduler wait with back-off instead of polling a dead server, and the outage is logged once
when it starts and once when it ends, not as a traceback per poll.

What is emitted meanwhile is safe in the outbox (the relay holds it, the sweep finds what a
stopped producer left), so catching up needs nothing more than the server coming back.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from huey import PriorityRedisHuey
from huey import signals as S
from huey.consumer import Consumer, Scheduler, Worker

__all__ = ["QueueOutage", "RedisQueue"]

log = logging.getLogger("czo_kit.events")

RETRY_FIRST = 0.25
RETRY_MAX = 5.0


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server could not be reached (as opposed to a bug)."""
    import redis

    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError))


class QueueOutage:
    """Whether the queue's server answers, as this process last found it; the back-off of
    its consumer's workers while it does not."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._failures = 0
        self._retry_in = RETRY_FIRST
        self._next_try = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def wait_left(self) -> float:
        """Seconds until the next attempt is due (0 when up, or when it is due)."""
        if self._down_since is None:
            return 0.0
        return max(0.0, self._next_try - time.monotonic())

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since, self._failures, self._retry_in = now, 0, RETRY_FIRST
                log.warning(
                    "the queue (%s) is unreachable (%s: %s); the workers try again with back-off up to "
                    "%gs; emitted events wait in the outbox meanwhile",
                    self.where, type(exc).__name__, exc, RETRY_MAX,
                )
            self._failures += 1
            self._next_try = now + self._retry_in
            self._retry_in = min(RETRY_MAX, self._retry_in * 2)

    def answered(self) -> None:
        if self._down_since is None:
            return  # the usual case: no lock taken
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:  # another thread may have logged the recovery first
            log.warning(
                "the queue (%s) answers again after %.1fs and %d failed attempt(s); catching up",
                self.where, time.monotonic() - since, self._failures,
            )


class RedisQueue(PriorityRedisHuey):  # type: ignore[misc]
    """``PriorityRedisHuey`` whose consumer rides out an outage of its server."""

    def __init__(self, *args: Any, where: str = "Redis", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = QueueOutage(where)

    def enqueue_many(self, tasks: Sequence[Any]) -> None:
        """Enqueue ``tasks`` in one ``ZADD`` (what ``enqueue`` does one task at a time): a
        sweep re-queues hundreds of rows at once, and a round trip each cost more than the rest.

        Each member is prefixed, as Huey's own priority storage does, with an 8-byte timestamp
        that keeps tasks of one priority in order; here a timestamp plus the task's position,
        so that the members of one call are distinct and keep their order."""
        if self._immediate or self.results:  # neither is how the kit builds it; Huey's own way
            for task in tasks:
                self.enqueue(task)
            return
        if not tasks:
            return
        storage = self.storage
        start = int(time.time() * 1e6)
        members: dict[bytes, float] = {}
        for offset, task in enumerate(tasks):
            self._emit(S.SIGNAL_ENQUEUED, task)
            prefix = struct.pack(">Q", start + offset)
            members[prefix + self.serialize_task(task)] = -(task.priority or 0)
        storage.conn.zadd(storage.queue_key, members)

    def dequeue(self) -> Any:
        try:
            task = super().dequeue()
        except Exception as exc:
            if not _unreachable(exc):
                raise
            self.outage.failed(exc)
            return None  # the worker waits out the back-off before its next poll
        self.outage.answered()
        return task

    def read_schedule(self, timestamp: Any = None) -> Any:
        try:
            tasks = super().read_schedule(timestamp)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            self.outage.failed(exc)
            return []  # what is scheduled stays in Redis (or, lost with it, in the outbox)
        self.outage.answered()
        return tasks

    def create_consumer(self, **options: Any) -> Consumer:
        return _Consumer(self, **options)


class _Worker(Worker):  # type: ignore[misc]
    def loop(self, now: Any = None) -> None:
        outage: QueueOutage = self.huey.outage
        wait = outage.wait_left()
        if wait > 0:
            self.stop_flag.wait(wait)  # wakes at once when the consumer stops
            return
        super().loop(now)


class _Scheduler(Scheduler):  # type: ignore[misc]
    def loop(self, now: Any = None) -> None:
        outage: QueueOutage = self.huey.outage
        wait = outage.wait_left()
        if wait > 0:
            self.stop_flag.wait(wait)
            return
        super().loop(now)


class _Consumer(Consumer):  # type: ignore[misc]
    worker_class = _Worker
    scheduler_class = _Scheduler
