"""Durable async events through the outbox and a Huey queue, consumed in this process.

Each test builds a kit with a queue (a SQLite file, or Redis under a private queue name),
on SQLite or PostgreSQL, and runs ``kit.consumer()`` on threads; waits poll with a deadline.
Crashes of real processes are in ``tests/test_worker.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import pickle
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import peewee
import pytest
from click.testing import CliRunner, Result

from czo_kit import Kit
from czo_kit.db import Model, create_mutations
from czo_kit.events import Event, EventContext, Priority, idempotent
from czo_kit.events.outbox import (
    EVENT_MODELS,
    EventDelivery,
    EventOutbox,
    ProcessedEvent,
    backoff,
)
from czo_kit.errors import ConfigurationError
from czo_kit.events.queue import MsgspecSerializer
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until

SettingsFor = Callable[..., Settings]
SECRET = "outbox-test-secret-" + "o" * 32
TIMEOUT = 15.0


class ParcelSent(Event, name="test.parcel.sent"):
    id: int
    weight: float
    sent_at: dt.datetime | None = None


class Ledger(peewee.Model):
    """Effects of handlers, without a unique constraint: a repeated effect is a second row."""

    event_id = peewee.CharField(max_length=36)
    amount = peewee.IntegerField()

    class Meta:
        table_name = "czo_test_outbox_ledger"


class Gadget(Model):
    label = peewee.CharField(max_length=40)

    class Meta:
        table_name = "czo_test_outbox_gadget"


# -- backends -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backend:
    database_url: str
    queue_url: str
    queue_name: str


def _backend(database: str, queue: str) -> Any:
    marks = []
    if database == "postgresql":
        marks.append(pytest.mark.postgres)
    if queue == "redis":
        marks.append(pytest.mark.redis)
    return pytest.param((database, queue), id=f"{database}-{queue}queue", marks=marks)


ALL = [_backend(d, q) for d in ("sqlite", "postgresql") for q in ("sqlite", "redis")]
"""Every database with every queue: for the basic promises."""
PAIRED = [_backend("sqlite", "sqlite"), _backend("postgresql", "redis")]
"""Each database and each queue once: for the slower tests."""
DATABASES = [_backend("sqlite", "sqlite"), _backend("postgresql", "sqlite")]
"""Each database: for what the queue plays no part in."""
NO_QUEUE = [_backend("sqlite", "none"), _backend("postgresql", "none")]
"""Each database without a queue (``CZO_QUEUE_URL=""``): the kit's in-process deliverer."""


def flush_redis_queue(url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = [key for key in client.scan_iter(match=f"huey.*{name}*", count=500)]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    database, queue = request.param
    url = str(request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url"))
    name = f"t{uuid.uuid4().hex[:12]}"  # private queue name: no test sees another's tasks
    if queue == "sqlite":
        yield Backend(url, f"sqlite:///{tmp_path / 'queue.sqlite3'}", name)
        return
    if queue == "none":
        yield Backend(url, "", name)
        return
    redis_url = str(request.getfixturevalue("redis_url"))
    yield Backend(url, redis_url, name)
    flush_redis_queue(redis_url, name)


@pytest.fixture
def make_kit(backend: Backend, settings_for: SettingsFor) -> Iterator[Callable[..., Kit]]:
    """Kits with a queue on the backend under test; their tables are dropped afterwards."""
    kits: list[Kit] = []

    def make(*, models: tuple[type[peewee.Model], ...] = (), create: bool = True, **changes: Any) -> Kit:
        options: dict[str, Any] = {
            "queue_url": backend.queue_url,
            "queue_name": backend.queue_name,
            "plugins": (),
            "events_retry_base": 0.2,
            "events_retry_max": 1.0,
            "events_sweep_interval": 0.2,  # the in-process deliverer's (a consumer gets its own)
            **changes,
        }
        kit = Kit(settings_for(backend.database_url, **options))
        first = not kits
        kits.append(kit)
        assert kit.outbox is not None and (kit.queue is not None) == bool(backend.queue_url)
        kit.db.bind(list(models))
        setattr(kit, "_test_models", models)
        if first:
            # PostgreSQL tests share one schema per session: start from empty event tables, so
            # an event another test left pending cannot be swept into this one.
            with kit.db.bind_ctx(list(EVENT_MODELS)):
                kit.db.drop_tables(list(EVENT_MODELS), safe=True)
        if create:
            # Created up front, so a consumer's sweep and the first emit never race to it.
            kit.outbox.ensure_tables()
            kit.db.create_tables(list(models), safe=True)
        return kit

    yield make
    for kit in reversed(kits):
        try:
            models = [*kit.all_models(), *getattr(kit, "_test_models", ())]
            with kit.db.bind_ctx(models):
                kit.db.drop_tables(models, safe=True)
            for table in kit.db.get_tables():
                if table.startswith("czo_migrations"):
                    kit.db.execute_sql(f'DROP TABLE "{table}"')
        finally:
            kit.close()


@contextlib.contextmanager
def consuming(kit: Kit, *, workers: int = 2, sweep_interval: float = 0.2) -> Iterator[None]:
    """Workers for the kit's deliveries while the block runs: a queue's consumer on threads of
    this process or, without a queue, the kit's own in-process deliverer (which goes on
    running until the kit closes)."""
    if kit.queue is None:
        assert kit.deliverer is not None
        kit.deliverer.start()
        yield
        return
    with kit.consumer(workers=workers, sweep_interval=sweep_interval):
        yield


def outbox_rows(kit: Kit, **where: Any) -> list[EventOutbox]:
    query = EventOutbox.select().order_by(EventOutbox.created_at)
    for field, value in where.items():
        query = query.where(getattr(EventOutbox, field) == value)
    return list(query.execute(kit.db))


def deliveries(kit: Kit, event_id: str | None = None) -> list[EventDelivery]:
    query = EventDelivery.select().order_by(EventDelivery.id)
    if event_id is not None:
        query = query.where(EventDelivery.event_id == event_id)
    return list(query.execute(kit.db))


class Recorder:
    """A handler that records (payload, ctx) from whichever thread runs it."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[Any, EventContext]] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()

    def __call__(self, payload: Any, ctx: EventContext) -> None:
        with self._lock:
            self.calls.append((payload, ctx))
            if len(self.calls) <= self.fail_first:
                raise RuntimeError(f"failing on purpose ({len(self.calls)})")

    @property
    def payloads(self) -> list[Any]:
        return [payload for payload, _ in self.calls]


# -- delivery -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL + NO_QUEUE, indirect=True)
def test_async_event_reaches_every_subscriber(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    by_class, by_name = Recorder(), Recorder()
    kit.events.on(ParcelSent, by_class, id="by-class")
    kit.events.on("test.parcel.sent", by_name, id="by-name")
    sent_at = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    with consuming(kit):
        with kit.events.correlation("req-9"), kit.db.atomic():
            ctx = kit.events.emit_async(ParcelSent(id=7, weight=1.5, sent_at=sent_at), actor="user:3")
        assert wait_until(lambda: len(by_class.calls) == 1 and len(by_name.calls) == 1, timeout=TIMEOUT)
        assert wait_until(lambda: kit.outbox.stats() == {"done": 2}, timeout=TIMEOUT)
    for recorder in (by_class, by_name):
        ((payload, got),) = recorder.calls
        assert type(payload) is ParcelSent and payload == ParcelSent(id=7, weight=1.5, sent_at=sent_at)
        assert (got.event_id, got.name, got.actor, got.correlation_id, got.causation_id) == (
            ctx.event_id, "test.parcel.sent", "user:3", "req-9", None,
        )
        assert got.timestamp == ctx.timestamp and got.timestamp.tzinfo is not None
        assert got.attempt == 1
    (row,) = outbox_rows(kit)
    assert (row.event_id, row.state) == (ctx.event_id, "dispatched")
    assert sorted(d.subscriber for d in deliveries(kit)) == ["test.parcel.sent|by-class", "test.parcel.sent|by-name"]


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_rollback_emits_nothing_and_commit_emits_exactly_once(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    handler = Recorder()
    kit.events.on("test.stock.changed", handler, id="stock")
    with kit.consumer(workers=2, sweep_interval=0.2):
        with pytest.raises(RuntimeError):
            with kit.db.atomic():
                rolled_back = kit.events.emit_async("test.stock.changed", {"n": "rolled back"})
                raise RuntimeError("abort")
        assert outbox_rows(kit) == []
        with kit.db.atomic():
            committed = kit.events.emit_async("test.stock.changed", {"n": "committed"})
        # The committed event went through the same queue after the rolled-back one would
        # have: once it is done, the rolled-back one can no longer show up.
        assert wait_until(lambda: kit.outbox.stats() == {"done": 1}, timeout=TIMEOUT)
        kit.outbox.sweep()  # nothing for a sweep to find either
    assert handler.payloads == [{"n": "committed"}]
    assert [row.event_id for row in outbox_rows(kit)] == [committed.event_id]
    assert [d.event_id for d in deliveries(kit)] == [committed.event_id]
    assert rolled_back.event_id != committed.event_id
    (delivery,) = deliveries(kit)
    assert (delivery.state, delivery.attempts) == ("done", 1)


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_savepoint_rollback_drops_only_the_inner_event(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    handler = Recorder()
    kit.events.on("test.stock.changed", handler)
    with kit.consumer(workers=2, sweep_interval=0.2):
        with kit.db.atomic():
            outer = kit.events.emit_async("test.stock.changed", {"n": "outer"})
            with pytest.raises(RuntimeError):
                with kit.db.atomic():
                    kit.events.emit_async("test.stock.changed", {"n": "inner"})
                    raise RuntimeError("roll back the savepoint only")
            with kit.db.atomic():
                last = kit.events.emit_async("test.stock.changed", {"n": "after"})
            assert handler.calls == []  # nothing leaves before the outermost commit
        assert wait_until(lambda: kit.outbox.stats() == {"done": 2}, timeout=TIMEOUT)
    assert sorted(p["n"] for p in handler.payloads) == ["after", "outer"]
    assert {row.event_id for row in outbox_rows(kit)} == {outer.event_id, last.event_id}


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_first_emit_in_a_transaction_on_a_fresh_database_makes_no_ddl(make_kit: Callable[..., Kit]) -> None:
    # A fresh database: DDL in the caller's transaction would vanish with its rollback while
    # the process believed the tables made, so the emit is refused with what to do instead;
    # outside a transaction the first emit makes the tables itself.
    kit = make_kit(create=False)
    assert "czo_event_outbox" not in kit.db.get_tables()
    with pytest.raises(ConfigurationError, match=r"run `czo-kit db init`"):
        with kit.db.atomic():
            kit.events.emit_async("test.stock.changed", {"n": 1})
    assert "czo_event_outbox" not in kit.db.get_tables()
    ctx = kit.events.emit_async("test.stock.changed", {"n": 2})
    assert [row.event_id for row in outbox_rows(kit)] == [ctx.event_id]
    with kit.db.atomic():
        inside = kit.events.emit_async("test.stock.changed", {"n": 3})
    assert [row.event_id for row in outbox_rows(kit)] == [ctx.event_id, inside.event_id]


@pytest.mark.parametrize("backend", PAIRED + NO_QUEUE, indirect=True)
def test_once_with_async_runs_for_a_single_event(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    once, steady = Recorder(), Recorder()
    kit.events.once("test.stock.changed", once, id="once")
    kit.events.on("test.stock.changed", steady, id="steady")
    with consuming(kit):
        for n in range(3):
            kit.events.emit_async("test.stock.changed", {"n": n})
        assert wait_until(lambda: len(steady.calls) == 3, timeout=TIMEOUT)
        assert wait_until(lambda: kit.outbox.stats() == {"done": 4}, timeout=TIMEOUT)
    assert len(once.calls) == 1 and once.payloads[0]["n"] in (0, 1, 2)
    assert kit.outbox.dead_letters() == []
    assert kit.events.subscribers("test.stock.changed")[0].id == "test.stock.changed|steady"
    assert kit.events.subscription("test.stock.changed|once") is None  # forgotten once delivered
    kit.events.once("test.stock.changed", Recorder(), id="once")  # so its id is free again


@pytest.mark.parametrize("backend", [_backend("sqlite", "sqlite"), _backend("sqlite", "redis"), _backend("sqlite", "none")], indirect=True)
def test_delay_is_honoured(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    ran_at: list[float] = []
    # Wall-clock time, the clock of Huey's schedule (a task runs once its eta has passed).
    kit.events.on("test.reminder", lambda payload, ctx: ran_at.append(time.time()))
    with consuming(kit):
        start = time.time()
        ctx = kit.events.emit_async("test.reminder", {}, delay=2)
        (row,) = outbox_rows(kit)
        assert row.deliver_at - row.created_at >= dt.timedelta(seconds=2)
        assert wait_until(lambda: bool(ran_at), timeout=TIMEOUT)
    # Not earlier than the delay (the scheduler's one-second tick may make it later); the
    # millisecond allows for datetimes kept to the microsecond.
    assert ran_at[0] - start >= 2 - 0.001, f"delivered after {ran_at[0] - start:.3f}s"
    assert [d.event_id for d in deliveries(kit)] == [ctx.event_id]


# -- retries and dead letters -----------------------------------------------------------------


@pytest.mark.parametrize("backend", PAIRED + NO_QUEUE, indirect=True)
def test_a_failing_subscriber_is_retried_alone(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    flaky, good = Recorder(fail_first=2), Recorder()
    kit.events.on("test.stock.changed", flaky, id="flaky")
    kit.events.on("test.stock.changed", good, id="good")
    with consuming(kit):
        ctx = kit.events.emit_async("test.stock.changed", {"n": 1}, retries=3)
        assert wait_until(lambda: kit.outbox.stats() == {"done": 2}, timeout=TIMEOUT)
    assert [c.attempt for _, c in flaky.calls] == [1, 2, 3]
    assert [c.attempt for _, c in good.calls] == [1]
    assert all(c.event_id == ctx.event_id for _, c in flaky.calls + good.calls)
    by_subscriber = {d.subscriber: d for d in deliveries(kit)}
    flaky_delivery = by_subscriber["test.stock.changed|flaky"]
    assert (flaky_delivery.state, flaky_delivery.attempts, flaky_delivery.max_attempts) == ("done", 3, 4)
    assert "failing on purpose (2)" in (flaky_delivery.last_error or "")
    assert by_subscriber["test.stock.changed|good"].attempts == 1
    assert kit.outbox.dead_letters() == []


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)]:
        waits = [backoff(attempt, base=2.0, cap=3600.0) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1  # jittered
    assert all(5.0 <= backoff(30, base=2.0, cap=10.0) <= 10.0 for _ in range(100))


def cli_env(monkeypatch: pytest.MonkeyPatch, kit: Kit) -> None:
    monkeypatch.setenv("CZO_DATABASE_URL", kit.settings.database_url)
    monkeypatch.setenv("CZO_QUEUE_URL", kit.settings.queue_url)
    monkeypatch.setenv("CZO_QUEUE_NAME", kit.settings.queue_name)
    monkeypatch.setenv("CZO_SECRET_KEY", SECRET)
    monkeypatch.setenv("CZO_PLUGINS", "")  # no installed modules: only the built-ins
    for name in ("CZO_DISABLE_PLUGINS", "CZO_LOG_LEVEL", "CZO_CACHE_URL"):
        monkeypatch.delenv(name, raising=False)


def run_cli(*args: str) -> Result:
    from czo_kit.cli import cli

    return CliRunner().invoke(cli, list(args), prog_name="czo-kit")


@pytest.mark.parametrize("backend", PAIRED + NO_QUEUE, indirect=True)
def test_exhausted_retries_land_in_dead_letters_and_replay_delivers(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = make_kit(events_retries=1)  # the default for emit_async: two attempts in all
    broken = threading.Event()
    broken.set()
    attempts: list[int] = []
    delivered: list[EventContext] = []

    def fragile(payload: Any, ctx: EventContext) -> None:
        attempts.append(ctx.attempt)
        if broken.is_set():
            raise ConnectionError("payment gateway unreachable")
        delivered.append(ctx)

    good = Recorder()
    kit.events.on("test.payment.captured", fragile, id="gateway")
    kit.events.on("test.payment.captured", good, id="receipt")
    cli_env(monkeypatch, kit)
    with consuming(kit):
        ctx = kit.events.emit_async("test.payment.captured", {"order": 12})
        assert wait_until(lambda: bool(kit.outbox.dead_letters()), timeout=TIMEOUT)
        (letter,) = kit.outbox.dead_letters()
        assert attempts == [1, 2]
        assert (letter.event_id, letter.name, letter.subscriber, letter.attempts) == (
            ctx.event_id, "test.payment.captured", "test.payment.captured|gateway", 2,
        )
        assert "payment gateway unreachable" in (letter.error or "")
        assert len(good.calls) == 1  # the other subscriber is not affected
        assert wait_until(lambda: kit.outbox.stats() == {"dead": 1, "done": 1}, timeout=TIMEOUT)

        listed = run_cli("events", "dead")
        assert listed.exit_code == 0, listed.output
        assert f"{letter.id}  " in listed.output
        assert "test.payment.captured  -> test.payment.captured|gateway  after 2 attempt(s)" in listed.output
        assert "payment gateway unreachable" in listed.output
        status = run_cli("events", "status")
        assert status.exit_code == 0, status.output
        assert re.search(r"^  dead\s+1  \(czo-kit events dead\)$", status.output, re.M), status.output

        broken.clear()  # the gateway is back
        replayed = run_cli("events", "replay", str(letter.id))
        assert replayed.exit_code == 0, replayed.output
        assert f"dead letter {letter.id} queued again" in replayed.output
        assert wait_until(lambda: bool(delivered), timeout=TIMEOUT)
        assert wait_until(lambda: kit.outbox.stats() == {"done": 2}, timeout=TIMEOUT)

    assert attempts == [1, 2, 1]  # a fresh set of attempts
    assert delivered[0].event_id == ctx.event_id
    assert len(good.calls) == 1  # replay sends only the dead delivery
    assert kit.outbox.dead_letters() == []
    (again,) = kit.outbox.dead_letters(include_replayed=True)
    assert again.replayed_at is not None
    assert "no dead letters" in run_cli("events", "dead").output
    assert "(replayed " in run_cli("events", "dead", "--all").output


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_cli_events_commands_report_errors_and_sweep(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = make_kit()
    cli_env(monkeypatch, kit)
    missing = run_cli("events", "replay", "999")
    assert missing.exit_code == 1
    assert "999" in missing.output and "DeadLetter" in missing.output
    assert run_cli("events", "replay", "0").exit_code == 2  # not a valid id at all
    idle = run_cli("events", "status").output
    assert re.findall(r"^  (\w+)\s+(\d+)$", idle, re.M) == [(state, "0") for state in (
        "pending", "queued", "queued", "running", "retry", "waiting", "dead")], idle
    swept = run_cli("events", "sweep")
    assert swept.exit_code == 0, swept.output
    assert swept.output.strip() == "events: 0, recovered: 0, requeued: 0"
    monkeypatch.setenv("CZO_QUEUE_URL", "")  # no queue: the same tables, the same commands
    for command in ("status", "dead", "sweep"):
        result = run_cli("events", command)
        assert result.exit_code == 0, result.output


# -- priority -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [_backend("sqlite", "sqlite"), _backend("sqlite", "redis")], indirect=True)
def test_higher_priority_runs_first(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    order: list[int] = []
    kit.events.on("test.job", lambda payload, ctx: order.append(payload["priority"]))
    priorities = [20, 95, 5, 60, Priority.CRITICAL, 40, Priority.HIGH, 0, 70, Priority.LOW]
    for priority in priorities:  # no consumer yet: every dispatch task waits in the queue
        kit.events.emit_async("test.job", {"priority": int(priority)}, priority=priority)
    assert kit.outbox is not None
    kit.outbox.flush()  # hand every committed event to the queue now, not on the relay thread
    assert len(kit.queue) == len(priorities)
    # One worker: each dispatch fans out to a deliver task carrying the event's priority,
    # which is then the most urgent task in the queue.
    with kit.consumer(workers=1, sweep_interval=0.2):
        assert wait_until(lambda: len(order) == len(priorities), timeout=TIMEOUT)
    assert order == sorted((int(p) for p in priorities), reverse=True)
    assert {d.priority for d in deliveries(kit)} == {int(p) for p in priorities}


# -- recovery -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_emit_async_returns_without_waiting_for_the_queue(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The outbox row is the durable record; the queue round trip is the relay thread's.
    kit = make_kit()
    assert kit.outbox is not None and kit.queue is not None
    handler = Recorder()
    kit.events.on("test.stock.changed", handler)
    original = kit.queue_tasks.dispatch
    release = threading.Event()
    relayed: list[tuple[str, str]] = []

    def slow_dispatch(event_id: str, *, delay: float, priority: int) -> None:
        assert release.wait(TIMEOUT), "the test never released the queue"
        relayed.append((event_id, threading.current_thread().name))
        original(event_id, delay=delay, priority=priority)

    original_many = kit.queue_tasks.dispatch_many

    def slow_dispatch_many(event_ids: list[str], *, delay: float, priority: int) -> None:
        # Events committed while the queue was blocked go in one batch task.
        assert release.wait(TIMEOUT), "the test never released the queue"
        relayed.extend((event_id, threading.current_thread().name) for event_id in event_ids)
        original_many(event_ids, delay=delay, priority=priority)

    monkeypatch.setattr(kit.queue_tasks, "dispatch", slow_dispatch)
    monkeypatch.setattr(kit.queue_tasks, "dispatch_many", slow_dispatch_many)
    first = kit.events.emit_async("test.stock.changed", {"n": 1})
    with kit.db.atomic():
        second = kit.events.emit_async("test.stock.changed", {"n": 2})
    assert relayed == []  # both returned while the queue was still blocked
    assert [row.state for row in outbox_rows(kit)] == ["pending", "pending"]
    release.set()
    assert wait_until(lambda: len(relayed) == 2, timeout=TIMEOUT)
    assert relayed == [(first.event_id, "czo-outbox-relay"), (second.event_id, "czo-outbox-relay")]
    assert wait_until(lambda: [row.state for row in outbox_rows(kit)] == ["queued", "queued"], timeout=TIMEOUT)
    with kit.consumer(workers=1):
        assert wait_until(lambda: len(handler.calls) == 2, timeout=TIMEOUT)
    assert sorted(payload["n"] for payload, _ in handler.calls) == [1, 2]


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_flush_queues_and_marks_now_and_leaves_the_callers_connection_open(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.outbox is not None and kit.queue is not None
    kit.db.connect(reuse_if_open=True)
    event = kit.events.emit_async("test.stock.changed", {"n": 1})
    kit.outbox.flush()
    assert not kit.db.is_closed()  # a query made below would have reopened it: check first
    # Flushed in this thread: queued and marked before flush returns, not by the next batch.
    assert [(row.event_id, row.state) for row in outbox_rows(kit)] == [(event.event_id, "queued")]
    assert len(kit.queue) == 1


def test_a_script_that_exits_without_closing_its_kit_still_hands_events_over(
    tmp_path: Any, settings_for: SettingsFor
) -> None:
    import subprocess
    import sys

    database = f"sqlite:///{tmp_path / 'script.sqlite3'}"
    queue = f"sqlite:///{tmp_path / 'script-queue.sqlite3'}"
    script = tmp_path / "emit_and_exit.py"
    script.write_text(
        "from czo_kit import Kit\n"
        "from czo_kit.settings import Settings\n"
        f"kit = Kit(settings=Settings(database_url={database!r}, queue_url={queue!r}, secret_key={SECRET!r}))\n"
        "for n in range(5):\n"
        "    kit.events.emit_async('test.script.done', {'n': n})\n"
        "# no kit.close(): the interpreter's exit hands the held events to the queue\n"
    )
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kit = Kit(settings=settings_for(database, queue_url=queue))
    try:
        assert kit.outbox is not None and kit.queue is not None
        assert len(kit.queue_tasks.queued_events()) == 5  # each handed over once (in fewer tasks)
        assert {row.state for row in outbox_rows(kit)} == {"queued"}
    finally:
        kit.close()


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_sweep_queues_an_event_that_was_committed_but_never_queued(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = make_kit()
    assert kit.outbox is not None and kit.queue is not None
    handler = Recorder()
    kit.events.on("test.stock.changed", handler)
    original = kit.queue_tasks.dispatch
    failures: list[str] = []

    def dispatch_fails_once(event_id: str, *, delay: float, priority: int) -> None:
        if not failures:
            failures.append(event_id)
            raise ConnectionError("queue unreachable")
        original(event_id, delay=delay, priority=priority)

    monkeypatch.setattr(kit.queue_tasks, "dispatch", dispatch_fails_once)
    with kit.db.atomic():
        ctx = kit.events.emit_async("test.stock.changed", {"n": 1}, priority=Priority.HIGH)
    kit.outbox.flush()
    assert failures == [ctx.event_id]  # the relay ran after commit, and failed
    (row,) = outbox_rows(kit)
    assert row.state == "pending"
    assert len(kit.queue) == 0
    # Within the grace period the sweep leaves it alone: the relay may still be under way.
    assert kit.outbox.sweep() == {"events": 0, "recovered": 0, "requeued": 0}
    kit.outbox.settings = dataclasses.replace(kit.outbox.settings, relay_grace=0.0)
    assert kit.outbox.sweep()["events"] == 1
    assert outbox_rows(kit)[0].state == "queued"
    assert len(kit.queue) == 1
    with kit.consumer(workers=2, sweep_interval=0.2):
        assert wait_until(lambda: kit.outbox.stats() == {"done": 1}, timeout=TIMEOUT)
    assert handler.payloads == [{"n": 1}]
    assert handler.calls[0][1].event_id == ctx.event_id
    assert deliveries(kit)[0].priority == Priority.HIGH


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_sweep_recovers_a_delivery_whose_worker_died(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.outbox is not None
    handler = Recorder()
    kit.events.on("test.stock.changed", handler, id="h")
    ctx = kit.events.emit_async("test.stock.changed", {"n": 1})
    assert kit.outbox.dispatch(ctx.event_id) == 1  # what the dispatch task does
    (delivery,) = deliveries(kit)
    # What a worker killed mid-handler leaves: running, one attempt, a lease.
    lease_until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60)
    EventDelivery.update(state="running", attempts=1, lease_until=lease_until).where(
        EventDelivery.id == delivery.id
    ).execute(kit.db)
    assert kit.outbox.sweep()["recovered"] == 0  # the lease still runs: the worker may be alive
    expired = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    EventDelivery.update(lease_until=expired).where(EventDelivery.id == delivery.id).execute(kit.db)
    assert kit.outbox.sweep()["recovered"] == 1
    assert deliveries(kit)[0].state == "queued"
    with kit.consumer(workers=2, sweep_interval=0.2):
        # The queue also holds the first deliver task and the relay's dispatch task: each is
        # a duplicate by now, and finds nothing left to claim.
        assert wait_until(lambda: kit.outbox.stats() == {"done": 1}, timeout=TIMEOUT)
        assert wait_until(lambda: len(kit.queue) == 0, timeout=TIMEOUT)
    assert [c.attempt for _, c in handler.calls] == [2]  # at least once: it runs again
    assert deliveries(kit)[0].attempts == 2


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_duplicate_deliver_tasks_run_the_handler_once(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.outbox is not None
    handler = Recorder()
    kit.events.on("test.stock.changed", handler)
    ctx = kit.events.emit_async("test.stock.changed", {"n": 1})
    assert kit.outbox.dispatch(ctx.event_id) == 1
    assert kit.outbox.dispatch(ctx.event_id) == 0  # a duplicate dispatch adds and re-queues nothing
    (delivery,) = deliveries(kit)
    assert kit.outbox.deliver(delivery.id) == "done"
    assert kit.outbox.deliver(delivery.id) == "skipped"
    assert kit.outbox.dispatch(ctx.event_id) == 0  # nothing queued any more
    assert kit.outbox.deliver(10**9) == "skipped"  # unknown delivery
    assert len(handler.calls) == 1


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_concurrent_deliver_tasks_run_the_handler_once(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.outbox is not None
    outbox = kit.outbox
    handler = Recorder()
    kit.events.on("test.stock.changed", handler)
    ctx = kit.events.emit_async("test.stock.changed", {"n": 1})
    outbox.dispatch(ctx.event_id)
    (delivery,) = deliveries(kit)
    barrier = threading.Barrier(6)
    results: list[str] = []

    def deliver() -> None:
        barrier.wait()
        results.append(outbox.deliver(delivery.id))
        kit.db.close()

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["done"] + ["skipped"] * 5
    assert len(handler.calls) == 1


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_idempotent_handler_applies_its_effect_once(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(models=(Ledger,))
    assert kit.outbox is not None
    runs: list[int] = []
    wrapper_runs: list[str] = []

    @idempotent(kit.db)
    def credit(payload: Any, ctx: EventContext) -> None:
        runs.append(ctx.attempt)
        Ledger.insert(event_id=ctx.event_id, amount=payload["amount"]).execute()

    def counting(payload: Any, ctx: EventContext) -> None:
        wrapper_runs.append(ctx.event_id)
        credit(payload, ctx)

    kit.events.on("test.payment.captured", counting, id="ledger.credit")
    ctx = kit.events.emit_async("test.payment.captured", {"amount": 500})
    kit.outbox.dispatch(ctx.event_id)
    (delivery,) = deliveries(kit)
    assert kit.outbox.deliver(delivery.id) == "done"
    # At least once: the worker died after the handler committed but before it recorded the
    # delivery as done, so the sweep makes it due again and it runs a second time.
    EventDelivery.update(state="queued").where(EventDelivery.id == delivery.id).execute(kit.db)
    assert kit.outbox.deliver(delivery.id) == "done"
    assert len(wrapper_runs) == 2
    assert runs == [1]
    assert [(r.event_id, r.amount) for r in Ledger.select()] == [(ctx.event_id, 500)]
    (marker,) = ProcessedEvent.select().execute(kit.db)
    assert marker.key.endswith(f"|{ctx.event_id}") and "credit" in marker.key
    # Another event is a new effect.
    other = kit.events.emit_async("test.payment.captured", {"amount": 7})
    kit.outbox.dispatch(other.event_id)
    assert kit.outbox.deliver(deliveries(kit, other.event_id)[0].id) == "done"
    assert sorted(r.amount for r in Ledger.select()) == [7, 500]


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_idempotent_handler_that_fails_leaves_no_marker(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(models=(Ledger,))
    calls: list[int] = []

    @idempotent(kit.db, key=lambda ctx: f"custom:{ctx.event_id}")
    def credit(payload: Any, ctx: EventContext) -> str:
        calls.append(ctx.attempt)
        Ledger.insert(event_id=ctx.event_id, amount=1).execute()
        if len(calls) == 1:
            raise RuntimeError("fails after writing")
        return "ok"

    ctx = EventContext(event_id="e-1", name="x.y", timestamp=dt.datetime.now(dt.timezone.utc), correlation_id="c")
    with pytest.raises(RuntimeError):
        credit({}, ctx)
    assert Ledger.select().count() == 0  # the write rolled back with the marker
    assert credit({}, ctx) == "ok"
    assert credit({}, ctx) is None  # already processed
    assert calls == [1, 1]
    assert Ledger.select().count() == 1
    assert [m.key for m in ProcessedEvent.select().execute(kit.db)] == ["custom:e-1"]
    assert credit.__name__ == "credit" and credit.__qualname__.endswith("credit")


# -- the queue's serializer -------------------------------------------------------------------


def _messages() -> list[Any]:
    from huey import MemoryHuey

    huey = MemoryHuey("serializer-test", results=False, utc=True, serializer=MsgspecSerializer())

    @huey.task(name="plain")
    def plain(a: int, b: str = "x") -> None:
        pass

    @huey.task(retries=3, retry_delay=1.5, priority=7, expires=30)
    def fancy(delivery_id: int) -> None:
        pass

    eta = dt.datetime(2030, 1, 2, 3, 4, 5, 678901)
    expiring = fancy.s(42, eta=eta)
    expiring.resolve_expires(True)  # what enqueue does: expires_resolved is a datetime
    tasks = [plain.s(1, b="y", priority=10), expiring, plain.s(1).then(fancy, 2).error(plain, 3)]
    return [huey._registry.create_message(task) for task in tasks]


def test_serializer_round_trips_huey_messages() -> None:
    serializer = MsgspecSerializer()
    for message in _messages():
        data = serializer.serialize(message)
        assert data[:1] == b"M"
        assert serializer.deserialize(data) == message
    # (Huey itself drops the microseconds of an eta; the serializer keeps whatever it gets.)
    delayed = _messages()[1]._replace(eta=dt.datetime(2030, 1, 2, 3, 4, 5, 678901))
    back = serializer.deserialize(serializer.serialize(delayed))
    assert back == delayed
    assert back.eta == dt.datetime(2030, 1, 2, 3, 4, 5, 678901) and back.eta.tzinfo is None
    assert (back.retries, back.retry_delay, back.priority, back.args) == (3, 1.5, 7, (42,))
    assert isinstance(back.expires_resolved, dt.datetime) and back.expires_resolved == delayed.expires_resolved
    chained = serializer.deserialize(serializer.serialize(_messages()[2]))
    assert (chained.on_complete.args, chained.on_error.args) == ((2,), (3,))
    aware = delayed._replace(eta=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
    assert serializer.deserialize(serializer.serialize(aware)).eta == aware.eta
    # Results and error values, when a backend stores any, are plain msgpack too.
    assert serializer.deserialize(serializer.serialize({"ok": [1, 2]})) == {"ok": [1, 2]}


def test_serializer_refuses_foreign_data() -> None:
    serializer = MsgspecSerializer()
    message = _messages()[0]
    with pytest.raises(ValueError, match="czo-kit's msgpack format"):
        serializer.deserialize(pickle.dumps(message))
    with pytest.raises(ValueError, match="czo-kit's msgpack format"):
        serializer.deserialize(b"")
    with pytest.raises(msgspec.DecodeError):
        serializer.deserialize(b"M" + msgspec.msgpack.encode({"not": "a message"}))
    with pytest.raises((TypeError, msgspec.EncodeError)):
        serializer.serialize(message._replace(args=(object(),)))


@pytest.mark.parametrize("backend", [_backend("sqlite", "sqlite"), _backend("sqlite", "redis")], indirect=True)
def test_nothing_is_pickled_on_the_way(make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch) -> None:
    kit = make_kit()
    pickled: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            pickled.append(name)
            raise AssertionError(f"pickle.{name} called")

        return fail

    for name in ("dumps", "loads", "dump", "load"):
        monkeypatch.setattr(pickle, name, refuse(name))
    handler = Recorder(fail_first=1)  # a retry goes through the schedule (an eta) as well
    kit.events.on(ParcelSent, handler)
    with kit.consumer(workers=2, sweep_interval=0.2):
        kit.events.emit_async(ParcelSent(id=1, weight=0.5, sent_at=dt.datetime.now(dt.timezone.utc)))
        assert wait_until(lambda: kit.outbox.stats() == {"done": 1}, timeout=TIMEOUT)
    assert pickled == []
    assert [c.attempt for _, c in handler.calls] == [1, 2]


# -- repositories and modules ------------------------------------------------------------------


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_mutation_events_are_written_with_the_row(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(models=(Gadget,))
    mutations = create_mutations(Gadget, db=kit.db, events=kit.events, async_events=True)
    created: list[Any] = []
    kit.events.on("czo_test_outbox_gadget.created", lambda payload, ctx: created.append(payload))
    with pytest.raises(RuntimeError):
        with kit.db.atomic():
            mutations.create({"label": "rolled back"})
            assert len(outbox_rows(kit)) == 1  # in the transaction, next to the row
            raise RuntimeError("abort")
    assert Gadget.select().count() == 0
    assert outbox_rows(kit) == []
    with kit.consumer(workers=2, sweep_interval=0.2):
        gadget = mutations.create({"label": "kept"})
        with kit.db.atomic():
            mutations.update(gadget.id, {"label": "renamed"})
        assert wait_until(lambda: kit.outbox.stats() == {"done": 1}, timeout=TIMEOUT)
    assert Gadget.select().count() == 1
    assert [row.name for row in outbox_rows(kit)] == [
        "czo_test_outbox_gadget.created",
        "czo_test_outbox_gadget.updated",
    ]
    assert [(p["id"], p["label"]) for p in created] == [(gadget.id, "kept")]


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_mutation_event_outside_a_transaction_commits_with_the_row(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = make_kit(models=(Gadget,))
    assert kit.outbox is not None
    mutations = create_mutations(Gadget, db=kit.db, events=kit.events, async_events=True)

    def outbox_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("outbox insert failed")

    monkeypatch.setattr(kit.outbox, "publish", outbox_down)
    with pytest.raises(ConnectionError):
        mutations.create({"label": "must not exist without its event"})
    assert Gadget.select().count() == 0


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_order_lines_follow_the_product_whatever_order_its_events_run_in(make_kit: Callable[..., Kit]) -> None:
    # Deleted, then restored; the events run the other way round (two workers, a batch
    # handed back, a redelivery): the lines end as the product is, available.
    import czo_order
    from czo_product import ProductRepository

    kit = make_kit(plugins=("czo_product", "czo_order"))
    kit.create_tables()
    products = kit.services.get_abstract(ProductRepository)
    orders = kit.services.get(czo_order.OrderService)
    mug = products.create({"shop_id": 1, "name": "Blue Mug", "price": 1200})
    order = orders.place(shop_id=1, customer_email="a@example.com", items=[(mug, 1)])
    products.delete(mug.id)  # recorded in the outbox only: no consumer runs here
    products.restore(mug.id)
    assert kit.outbox is not None
    kit.outbox.flush()
    by_name = {row.name: row.event_id for row in EventOutbox.select().execute(kit.db)}
    assert kit.outbox.dispatch_many([by_name["product.restored"]]) == {"done": 1}
    assert kit.outbox.dispatch_many([by_name["product.deleted"]]) == {"done": 1}
    assert [bool(line.product_available) for line in orders.lines_of(order.id)] == [True]
    products.delete(mug.id)  # deleted for good this time: its event alone, after the others
    kit.outbox.flush()
    last = [row.event_id for row in EventOutbox.select().execute(kit.db) if row.event_id not in by_name.values()]
    assert kit.outbox.dispatch_many(last) == {"done": 1}
    assert [bool(line.product_available) for line in orders.lines_of(order.id)] == [False]


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_order_lines_follow_product_deletion(make_kit: Callable[..., Kit]) -> None:
    import czo_order
    from czo_product import ProductRepository

    kit = make_kit(plugins=("czo_product", "czo_order"))
    kit.create_tables()
    products = kit.services.get_abstract(ProductRepository)
    orders = kit.services.get(czo_order.OrderService)
    kept = products.create({"shop_id": 1, "name": "Blue Mug", "price": 1200})
    dropped = products.create({"shop_id": 1, "name": "Red Mug", "price": 900})
    order = orders.place(shop_id=1, customer_email="a@example.com", items=[(kept, 1), (dropped, 2)])

    def availability() -> dict[int, bool]:
        return {int(line.product_id): bool(line.product_available) for line in orders.lines_of(order.id)}

    assert availability() == {kept.id: True, dropped.id: True}
    with kit.consumer(workers=2, sweep_interval=0.2):
        products.delete(dropped.id)
        assert wait_until(lambda: availability() == {kept.id: True, dropped.id: False}, timeout=TIMEOUT)
        products.restore(dropped.id)
        assert wait_until(lambda: availability() == {kept.id: True, dropped.id: True}, timeout=TIMEOUT)
        assert wait_until(lambda: "retry" not in kit.outbox.stats() and "queued" not in kit.outbox.stats(),
                          timeout=TIMEOUT)
    assert kit.outbox.dead_letters() == []
    subscribers = {d.subscriber for d in deliveries(kit)}
    assert subscribers == {"product.deleted|czo_order.mark_lines_unavailable",
                           "product.restored|czo_order.mark_lines_available"}
