"""The kit's Huey queue: a msgspec serializer (no pickle), the event tasks under fixed names,
an in-process consumer for tests and the demo, and the background sweeper."""

from __future__ import annotations

import datetime as dt
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from huey import Huey
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import PriorityRedisStorage

from czo_kit.events.outbox import Enqueuer

if TYPE_CHECKING:
    from czo_kit.events._heartbeat import Heartbeat
    from czo_kit.events.outbox import Outbox

__all__ = [
    "DELIVER_TASK", "DISPATCH_MANY_TASK", "DISPATCH_TASK", "HueyQueue", "InProcessConsumer", "MsgspecSerializer",
    "Sweeper",
]

log = logging.getLogger("czo_kit.events")

DISPATCH_TASK = "czo_events_dispatch"
DISPATCH_MANY_TASK = "czo_events_dispatch_many"
DELIVER_TASK = "czo_events_deliver"
WEBHOOK_TASK = "czo_webhooks_deliver"
WEBHOOKS_TASK = "czo_webhooks_deliver_many"

WEBHOOK_TASK_BATCH = 64
"""Most webhook deliveries one queue task carries: a burst is spread over several tasks (so
over the consumer's threads), each of which pays the queue's round trips once for all its
deliveries."""

WEBHOOK_TASK_SPREAD = 2
"""A burst of fewer than ``WEBHOOK_TASK_SPREAD * WEBHOOK_TASK_BATCH`` deliveries still goes
out as this many tasks, so that a slow target is not waited on by one consumer thread alone;
more would cost a claim and a record per task (the batch's main saving)."""


class _WireMessage(msgspec.Struct, array_like=True):
    """Huey's ``Message`` as msgpack. Task arguments are plain ids, never user objects."""

    id: str
    name: str
    eta: dt.datetime | None
    retries: int | None
    retry_delay: float | None
    priority: float | None
    args: list[Any]
    kwargs: dict[str, Any]
    on_complete: _WireMessage | None = None
    on_error: _WireMessage | None = None
    expires: float | dt.datetime | None = None
    expires_resolved: dt.datetime | None = None
    timeout: float | None = None
    chord_config: list[Any] | None = None
    retry_backoff: float | None = None


def _to_wire(message: Any) -> _WireMessage | None:
    if message is None:
        return None
    return _WireMessage(
        id=message.id,
        name=message.name,
        eta=message.eta,
        retries=message.retries,
        retry_delay=message.retry_delay,
        priority=message.priority,
        args=list(message.args or ()),
        kwargs=dict(message.kwargs or {}),
        on_complete=_to_wire(message.on_complete),
        on_error=_to_wire(message.on_error),
        expires=message.expires.total_seconds() if isinstance(message.expires, dt.timedelta) else message.expires,
        expires_resolved=message.expires_resolved,
        timeout=message.timeout,
        chord_config=list(message.chord_config) if message.chord_config else None,
        retry_backoff=message.retry_backoff,
    )


def _from_wire(wire: _WireMessage | None) -> Any:
    if wire is None:
        return None
    return Message(
        wire.id, wire.name, wire.eta, wire.retries, wire.retry_delay, wire.priority,
        tuple(wire.args), wire.kwargs, _from_wire(wire.on_complete), _from_wire(wire.on_error),
        wire.expires, wire.expires_resolved, wire.timeout,
        tuple(wire.chord_config) if wire.chord_config else None, wire.retry_backoff,
    )


class MsgspecSerializer(Serializer):  # type: ignore[misc]
    """Huey serializer that writes msgpack with msgspec instead of pickling."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(_WireMessage)
        self._any = msgspec.msgpack.Decoder()

    def _serialize(self, data: Any) -> bytes:
        if isinstance(data, Message):
            return b"M" + self._encoder.encode(_to_wire(data))
        return b"V" + self._encoder.encode(data)  # results and errors, when stored at all

    def _deserialize(self, data: bytes) -> Any:
        kind, body = data[:1], data[1:]
        if kind == b"M":
            return _from_wire(self._decoder.decode(body))
        if kind == b"V":
            return self._any.decode(body)
        raise ValueError("queue message is not in czo-kit's msgpack format")


_PRIORITIES_READ = 32
"""Distinct task priorities ``HueyQueue.oldest_waiting`` reads at most (the kit uses a few)."""


def _task_ids(values: Any, kind: type, task: str) -> list[Any]:
    """The ids a many-task carries, checked: a list of ``kind`` (no bool for int). A task
    written by anything else (a string would read as one id per character) fails with this
    error; its rows stay in the tables, where the sweep finds them."""
    if not isinstance(values, (list, tuple)) or any(
        type(value) is not kind for value in values  # noqa: E721 - exactly int or str, not bool
    ):
        raise TypeError(f"task {task} expects a list of {kind.__name__} ids, got {str(values)[:200]!r}")
    return list(values)


class HueyQueue(Enqueuer):
    """Registers the event tasks on ``huey`` and enqueues them for the outbox."""

    def __init__(self, huey: Huey) -> None:
        self.huey = huey
        self.outbox: Outbox | None = None
        self.webhooks: Any = None

        # Task names and arguments are a contract with workers of other releases: a queue may
        # hold tasks of the previous release during a rolling deploy. dispatch(event_id) and
        # deliver(delivery_id) are those of every release; dispatch_many(event_ids) is newer.
        def dispatch(event_id: str) -> None:
            self._outbox().dispatch_many([event_id])

        def dispatch_many(event_ids: list[str]) -> None:
            self._outbox().dispatch_many(_task_ids(event_ids, str, DISPATCH_MANY_TASK))

        def deliver(delivery_id: int) -> None:
            self._outbox().deliver(int(delivery_id))

        def deliver_webhook(delivery_id: int) -> None:
            if self.webhooks is None:
                raise RuntimeError("the queue is not attached to a webhook dispatcher")
            self.webhooks.deliver(int(delivery_id))

        def deliver_webhooks(delivery_ids: list[int]) -> None:
            if self.webhooks is None:
                raise RuntimeError("the queue is not attached to a webhook dispatcher")
            self.webhooks.deliver_many(_task_ids(delivery_ids, int, WEBHOOKS_TASK))

        self._dispatch = huey.task(name=DISPATCH_TASK)(dispatch)
        self._dispatch_many = huey.task(name=DISPATCH_MANY_TASK)(dispatch_many)
        self._deliver = huey.task(name=DELIVER_TASK)(deliver)
        self._deliver_webhook = huey.task(name=WEBHOOK_TASK)(deliver_webhook)
        self._deliver_webhooks = huey.task(name=WEBHOOKS_TASK)(deliver_webhooks)

    def _outbox(self) -> Outbox:
        if self.outbox is None:
            raise RuntimeError("the event queue is not attached to an outbox")
        return self.outbox

    def dispatch(self, event_id: str, *, delay: float, priority: int) -> None:
        self.huey.enqueue(self._dispatch.s(event_id, delay=delay or None, priority=priority))

    def dispatch_many(self, event_ids: list[str], *, delay: float, priority: int) -> None:
        if len(event_ids) == 1:
            self.dispatch(event_ids[0], delay=delay, priority=priority)
        else:
            self.huey.enqueue(self._dispatch_many.s(list(event_ids), delay=delay or None, priority=priority))

    def deliver(self, delivery_id: int, *, delay: float, priority: int) -> None:
        self.huey.enqueue(self._deliver.s(int(delivery_id), delay=delay or None, priority=priority))

    def dispatch_each(self, items: Sequence[tuple[str, float, int]]) -> None:
        self._enqueue_many([self._dispatch.s(e, delay=d or None, priority=p) for e, d, p in items])

    def deliver_each(self, items: Sequence[tuple[int, float, int]]) -> None:
        self._enqueue_many([self._deliver.s(int(i), delay=d or None, priority=p) for i, d, p in items])

    def _enqueue_many(self, tasks: list[Any]) -> None:
        """One call to the queue for all of ``tasks`` where it can (the kit's Redis queue),
        else one each."""
        many = getattr(self.huey, "enqueue_many", None)
        if many is not None:
            many(tasks)
            return
        for task in tasks:
            self.huey.enqueue(task)

    def pending(self) -> int:
        count: int = self.huey.pending_count()
        return count

    def oldest_waiting(self) -> dt.datetime | None:
        """When the oldest task still waiting in the queue was enqueued (now if none waits),
        or None where the storage cannot say. Huey's Redis priority storage prefixes each
        member with its enqueue time and sorts members of one priority by it, so the first
        member of each priority is that priority's oldest: a few reads, whatever the backlog.
        The sweep uses it to tell a lost task from one still waiting behind a backlog."""
        storage = self.huey.storage
        if not isinstance(storage, PriorityRedisStorage):
            return None
        oldest: int | None = None
        low: str = "-inf"
        for _ in range(_PRIORITIES_READ):
            first = storage.conn.zrangebyscore(storage.queue_key, low, "+inf", start=0, num=1, withscores=True)
            if not first:
                break
            member, score = first[0]
            (stamp,) = struct.unpack(">Q", bytes(member[:8]))
            oldest = stamp if oldest is None else min(oldest, stamp)
            low = f"({score!r}"
        else:
            return None  # more priorities than read: cannot say
        if oldest is None:
            return dt.datetime.now(dt.timezone.utc)
        return dt.datetime.fromtimestamp(oldest / 1e6, dt.timezone.utc)

    def queued_events(self) -> list[str]:
        """The event ids in the dispatch tasks that wait in the queue (not those scheduled
        for later), in queue order: a batch task counts for each of its events."""
        found: list[str] = []
        for task in self.huey.pending():
            if task.name == DISPATCH_MANY_TASK:
                found += [str(event_id) for event_id in task.args[0]]
            elif task.name == DISPATCH_TASK:
                found.append(str(task.args[0]))
        return found


class WebhookQueue:
    """Enqueues webhook deliveries on the kit's queue (the task is registered by HueyQueue)."""

    def __init__(self, queue: HueyQueue) -> None:
        self.queue = queue

    def deliver(self, delivery_id: int, *, delay: float) -> None:
        self.queue.huey.enqueue(self.queue._deliver_webhook.s(int(delivery_id), delay=delay or None, priority=60))

    def deliver_many(self, delivery_ids: list[int], *, delay: float) -> None:
        """Enqueue ``delivery_ids`` as a few tasks of at most ``WEBHOOK_TASK_BATCH`` each."""
        ids = [int(i) for i in delivery_ids]
        size = max(1, min(WEBHOOK_TASK_BATCH, -(-len(ids) // WEBHOOK_TASK_SPREAD)))
        for start in range(0, len(ids), size):
            part = ids[start:start + size]
            if len(part) == 1:
                self.deliver(part[0], delay=delay)
            else:
                self.queue.huey.enqueue(self.queue._deliver_webhooks.s(part, delay=delay or None, priority=60))

    def pending(self) -> int:
        return self.queue.pending()

    def oldest_waiting(self) -> dt.datetime | None:
        return self.queue.oldest_waiting()


PRUNE_BUDGET = 2.0
"""Seconds a sweeper spends pruning at each sweep at most (the next sweep goes on)."""


class Sweeper:
    """A worker's housekeeping thread: every ``interval`` seconds it sweeps the outbox (and any
    other given recoverer, such as the webhook dispatcher) and prunes what the retention let go
    of; with a ``heartbeat``, it also records every few seconds that this worker is alive, and
    removes that record when it stops."""

    def __init__(
        self,
        outbox: Any,
        interval: float,
        *others: Any,
        on_start: Callable[[], Any] | None = None,
        heartbeat: Heartbeat | None = None,
        prune: bool = True,
    ) -> None:
        self.outbox = outbox
        self.others = [o for o in others if o is not None]
        self.interval = interval
        self.on_start = on_start
        """Run once on the sweeper's thread before its first sweep (the in-process deliverer's
        recovery)."""
        self.heartbeat = heartbeat
        self.prune = prune
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: dict[str, type[BaseException]] = {}  # by step: what it last raised

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="czo-event-sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if hasattr(self.outbox, "ensure_tables"):
            self._step("table check", self.outbox.ensure_tables)  # before the first heartbeat
        if self.on_start is not None:
            self._step("start-up step", self.on_start)
        heartbeat = self.heartbeat
        next_sweep = time.monotonic()
        try:
            while not self._stop.is_set():
                if heartbeat is not None:
                    self._step("heartbeat", heartbeat.beat)
                if time.monotonic() >= next_sweep:
                    for target in (self.outbox, *self.others):
                        self._step(f"sweep of {type(target).__name__}", target.sweep)
                    if self.prune and hasattr(self.outbox, "prune"):
                        self._step("prune", self._prune)
                    next_sweep = time.monotonic() + self.interval
                    if any(getattr(t, "sweep_unfinished", False) is True for t in (self.outbox, *self.others)):
                        next_sweep = time.monotonic()  # a backlog: on with it after a heartbeat
                # The sweeper sleeps most of the time: give its connections back meanwhile.
                for target in (self.outbox, *self.others):
                    _release(getattr(target, "db", None))
                wait = next_sweep - time.monotonic()
                self._stop.wait(max(0.0, min(wait, heartbeat.interval) if heartbeat is not None else wait))
        finally:
            if heartbeat is not None:
                heartbeat.stop()  # a clean stop: this worker is gone
                _release(heartbeat.db)

    def _prune(self) -> None:
        pruned = self.outbox.prune(budget=PRUNE_BUDGET)
        if any(pruned.values()):
            log.info("pruned what the retention let go of: %s", pruned)

    def _step(self, name: str, run: Callable[[], Any]) -> None:
        """Run one step; when it starts failing, say so once (with the traceback unless a
        server is unreachable: an outage, which the sweeper outlives), not at every turn."""
        try:
            run()
        except Exception as exc:
            if self._failing.get(name) == type(exc):
                log.debug("the %s failed again", name, exc_info=True)
                return
            self._failing[name] = type(exc)
            log.warning(
                "the %s failed (%s: %s); trying again every %gs", name, type(exc).__name__, exc, self.interval,
                exc_info=not _server_unreachable(exc),
            )
        else:
            if self._failing.pop(name, None) is not None:
                log.warning("the %s works again", name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _release(db: Any) -> None:
    if db is not None and not db.is_closed() and not db.in_transaction():
        try:
            db.close()
        except Exception:  # a server gone away: nothing to give back
            log.debug("could not close the sweeper's connection", exc_info=True)


def _server_unreachable(exc: BaseException) -> bool:
    """A connection to a server (the queue's Redis, the database) failed, rather than a bug."""
    import peewee

    if isinstance(exc, (OSError, peewee.OperationalError, peewee.InterfaceError)):
        return True
    try:
        import redis
    except ImportError:  # pragma: no cover - the redis extra is not installed
        return False
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


class InProcessConsumer:
    """A Huey consumer on threads of this process (tests, the demo, small installations).

    ``czo-kit worker`` is the production entry point; this one installs no signal handlers.
    """

    def __init__(
        self, huey: Huey, *, workers: int = 2, outbox: Outbox | None = None, sweep_interval: float = 1.0,
        also_sweep: Any = None,
    ) -> None:
        self.consumer = huey.create_consumer(
            workers=workers, periodic=False, initial_delay=0.01, backoff=1.2, max_delay=0.25,
            scheduler_interval=1, check_worker_health=False,
        )
        self.sweeper: Sweeper | None = None
        if outbox is not None:
            heartbeat = outbox.heartbeat(f"in-process consumer ({workers} threads)")
            self.sweeper = Sweeper(outbox, sweep_interval, also_sweep, heartbeat=heartbeat)
        self._started = False

    def start(self) -> InProcessConsumer:
        if self._started:
            return self
        consumer = self.consumer
        consumer.scheduler.start()
        for _, worker in consumer.worker_threads:
            worker.start()
        if self.sweeper is not None:
            self.sweeper.start()
        self._started = True
        return self

    def stop(self) -> None:
        if not self._started:
            return
        if self.sweeper is not None:
            self.sweeper.stop()
        self.consumer.stop(graceful=True)
        self._started = False

    def __enter__(self) -> InProcessConsumer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
