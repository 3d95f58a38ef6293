"""Plugin tasks (``czo_register_tasks``) in one process: registration and its errors, cron
expressions, arguments, enqueue after commit, retries, the kit argument, periodic ticks.

The real consumer processes (``czo-kit worker``, ``huey_consumer``) are in
``tests/test_tasks_worker.py``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from czo_kit import Kit, hookimpl
from czo_kit._cron import Cron, CronError
from czo_kit.errors import PluginError
from czo_kit.events.outbox import EventDelivery, EventOutbox
from czo_kit.plugins import create_plugin_manager, describe_plugins
from czo_kit.settings import Settings
from czo_kit.tasks import TASK_EVENT_PREFIX, TaskError, TaskRegistry, TaskTick

SECRET = "tasks-test-secret-" + "t" * 32
UTC = dt.timezone.utc


def wait_for(condition: Callable[[], Any], *, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        time.sleep(0.02)


def make_plugin(register_tasks: Callable[[Any], None]) -> object:
    class Plugin:
        @staticmethod
        @hookimpl
        def czo_register_tasks(register: Any) -> None:
            register_tasks(register)

    return Plugin()


@pytest.fixture
def kit_for(database_url: str) -> Iterator[Callable[..., Kit]]:
    """A kit without a queue (the in-process deliverer runs tasks) on each database."""
    kits: list[Kit] = []

    def make(*plugins: object, **settings: Any) -> Kit:
        values: dict[str, Any] = {"queue_url": "", "plugins": (), "events_retry_base": 0.05}
        values.update(settings)
        kit = Kit(Settings(database_url=database_url, secret_key=SECRET, **values), plugins=plugins)
        kits.append(kit)
        kit.create_tables()
        return kit

    yield make
    for kit in kits:
        kit.close()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# -- registration --------------------------------------------------------------------------


def test_hook_czo_register_tasks(kit_for: Callable[..., Kit]) -> None:
    """The reviews test plugin, found by its entry point only, registers a task and a periodic
    task; they run on the in-process deliverer (no queue) and are listed as its contributions."""
    from czo_test_reviews.plugin import Review, ReviewStats

    kit = kit_for(plugins=("czo_test_reviews",))
    shop = int(uuid.uuid4().int % 1_000_000_000)
    assert kit.tasks.contributions()["czo_test_reviews"] == [
        "task czo_test_reviews.recompute_rating",
        "periodic czo_test_reviews.refresh_ratings (* * * * *)",
    ]
    with kit.db.atomic():
        for rating in (5, 4, 3):
            Review.create(shop_id=shop, rating=rating, body="ok", author_email="a@example.com")
        kit.tasks.get("czo_test_reviews.recompute_rating").enqueue(shop)
    stats = wait_for(lambda: ReviewStats.get_or_none(ReviewStats.shop_id == shop), what="the recompute task")
    assert (stats.reviews, stats.average) == (3, 4.0)
    # A minute years ahead, ticked by hand (the deliverer's own sweep ticks the current one).
    minute = dt.datetime(2101, 1, 1, 0, 0, tzinfo=UTC) + dt.timedelta(minutes=uuid.uuid4().int % 500_000)
    assert kit.tasks.tick(minute) == ["czo_test_reviews.refresh_ratings"]
    assert kit.tasks.tick(minute) == []  # once per tick
    wait_for(lambda: ReviewStats.get(ReviewStats.shop_id == shop).refreshes >= 1, what="the periodic refresh")


def register_in_plugin(register_tasks: Callable[[Any], None], name: str = "acme_reviews") -> TaskRegistry:
    manager = create_plugin_manager()
    manager.register(make_plugin(register_tasks), name=name)
    registry = TaskRegistry()
    from czo_kit.plugins import call_each_plugin

    call_each_plugin(manager.hook.czo_register_tasks, register=registry)
    return registry


def send_digest(user_id: int) -> None:
    pass


def prune_carts() -> None:
    pass


def test_task_names_are_the_plugin_and_the_function() -> None:
    registry = register_in_plugin(lambda r: (r.task(send_digest), r.periodic(prune_carts, cron="0 3 * * *")))
    assert [t.name for t in registry] == ["acme_reviews.send_digest", "acme_reviews.prune_carts"]
    assert registry.get("acme_reviews.send_digest").event == TASK_EVENT_PREFIX + "acme-reviews.send-digest"
    assert registry.contributions() == {
        "acme_reviews": ["task acme_reviews.send_digest", "periodic acme_reviews.prune_carts (0 3 * * *)"]
    }
    # Registered outside a hook: named by the function's module, listed for no plugin.
    loose = TaskRegistry()
    assert loose.task(send_digest).name == f"{__name__}.send_digest"
    assert loose.contributions() == {}


def test_a_plugin_registered_without_a_name_names_its_tasks_by_module() -> None:
    # pluggy names such a plugin by id(), different in every process: useless to a worker.
    manager = create_plugin_manager()
    manager.register(make_plugin(lambda r: r.task(send_digest)))
    registry = TaskRegistry()
    from czo_kit.plugins import call_each_plugin

    call_each_plugin(manager.hook.czo_register_tasks, register=registry)
    assert [t.name for t in registry] == [f"{__name__}.send_digest"]


def test_unknown_task_name_lists_the_registered_ones() -> None:
    registry = register_in_plugin(lambda r: r.task(send_digest))
    with pytest.raises(TaskError, match=r"no task is registered as 'nope'; registered: acme_reviews.send_digest"):
        registry.get("nope")


@pytest.mark.parametrize(
    ("register", "message"),
    [
        (lambda r: (r.task(send_digest), r.task(send_digest)),
         r"plugin 'acme_reviews': task name 'acme_reviews.send_digest' is already taken by "
         r"'acme_reviews.send_digest' of plugin 'acme_reviews'"),
        (lambda r: (r.task(send_digest, name="a.b_c"), r.task(prune_carts, name="A.b-c")),
         r"task name 'A.b-c' is already taken by 'a.b_c'.*compared without case, '_' as '-'"),
        (lambda r: r.task("send_digest"), r"task 'send_digest' is not callable; register a function"),
        (lambda r: r.task(lambda: None), r"has no function name to be known by; pass name="),
        (lambda r: r.task(send_digest, name="bad name!"), r"task name 'bad name!' is not allowed: use 1-150"),
        (lambda r: r.task(send_digest, retries=-1), r"retries must be an integer from 0 to 100, got -1"),
        (lambda r: r.task(send_digest, retries=True), r"retries must be an integer from 0 to 100, got True"),
        (lambda r: r.task(send_digest, retry_delay=-0.5), r"retry_delay must be a number of seconds from 0 to 86400, got -0.5"),
        (lambda r: r.task(send_digest, priority=101), r"priority must be an integer from 0 to 100, got 101"),
        (lambda r: r.periodic(send_digest, cron="* * * * *"),
         r"periodic task 'acme_reviews.send_digest' must take no arguments \(but kit=\)"),
        (lambda r: r.periodic(prune_carts, cron="*/5 * * *"),
         r"plugin 'acme_reviews': periodic task 'prune_carts': cron expression '\*/5 \* \* \*' has 4 field\(s\), not 5; "
         r"allowed: five fields"),
        (lambda r: r.periodic(prune_carts, cron="61 * * * *"),
         r"cron expression '61 \* \* \* \*': minute field '61' is out of range 0-59; allowed:"),
    ],
)
def test_bad_registrations_are_refused_clearly(register: Callable[[Any], Any], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        register_in_plugin(register)


async def _coroutine() -> None:
    pass


def test_coroutine_functions_are_refused() -> None:
    with pytest.raises(PluginError, match=r"is a coroutine function; register a plain function"):
        register_in_plugin(lambda r: r.task(_coroutine))


# -- cron ----------------------------------------------------------------------------------


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "matching", "not_matching"),
    [
        ("*/5 * * * *", ["2026-12-07T10:05", "2026-12-07T10:00"], ["2026-12-07T10:04"]),
        ("0 3 * * *", ["2026-12-07T03:00"], ["2026-12-07T03:01", "2026-12-07T04:00"]),
        ("15,45 8-10 * * *", ["2026-12-07T08:15", "2026-12-07T10:45"], ["2026-12-07T11:15", "2026-12-07T09:30"]),
        ("0 0 * * 1-5", ["2026-12-07T00:00"], ["2026-12-06T00:00"]),  # a Monday, a Sunday
        ("0 0 * * 7", ["2026-12-06T00:00"], ["2026-12-07T00:00"]),  # 7 is Sunday, as 0 is
        ("0 0 1 * 1", ["2026-12-01T00:00", "2026-12-07T00:00"], ["2026-12-02T00:00"]),  # day of month OR Monday
        ("0-30/10 * * 2 *", ["2026-02-03T01:20"], ["2026-02-03T01:40", "2026-03-03T01:20"]),
    ],
)
def test_cron_matches_the_minutes_it_names(expression: str, matching: list[str], not_matching: list[str]) -> None:
    cron = Cron(expression)
    assert all(cron.matches(at(t)) for t in matching)
    assert not any(cron.matches(at(t)) for t in not_matching)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (None, r"cron expression must be a string, got None"),
        ("", r"cron expression '' has 0 field\(s\), not 5"),
        ("* * * * * *", r"has 6 field\(s\), not 5"),
        ("*/0 * * * *", r"minute field '\*/0' has a step that is not a whole number from 1"),
        ("* 24 * * *", r"hour field '24' is out of range 0-23"),
        ("* * 0 * *", r"day of month field '0' is out of range 1-31"),
        ("* * * 13 *", r"month field '13' is out of range 1-12"),
        ("* * * * MON", r"day of week field 'MON' is not '\*', a number or a range 'a-b'"),
        ("5-1 * * * *", r"minute field '5-1' is a range whose end comes before its start"),
    ],
)
def test_bad_cron_expressions_name_the_field_and_what_is_allowed(expression: Any, message: str) -> None:
    with pytest.raises(CronError, match=message) as caught:
        Cron(expression)
    assert "allowed: five fields" in str(caught.value)


# -- arguments -----------------------------------------------------------------------------


class Money(msgspec.Struct):
    amount: int
    currency: str


def charge(order_id: int, price: Money, *, when: dt.datetime, ref: uuid.UUID, kit: Kit) -> None:
    pass


def test_enqueue_refuses_an_argument_msgspec_cannot_encode() -> None:
    task = TaskRegistry().task(charge, name="shop.charge")
    ok = dict(when=dt.datetime(2026, 1, 1, tzinfo=UTC), ref=uuid.uuid4())
    task.encode((1, Money(5, "EUR")), ok)  # fine
    with pytest.raises(TaskError, match=r"task 'shop.charge': argument 2 \(price\) = <object object at .*> "
                                        r"\(a object\) cannot be sent to a worker: .*; arguments are encoded with msgspec"):
        task.encode((1, object()), ok)
    with pytest.raises(TaskError, match=r"task 'shop.charge': argument 'ref' = \{1: <object object at .*>\} "
                                        r"\(a dict\) cannot be sent to a worker"):
        task.encode((1, Money(5, "EUR")), {**ok, "ref": {1: object()}})


def test_enqueue_refuses_arguments_the_function_cannot_take() -> None:
    task = TaskRegistry().task(charge, name="shop.charge")
    with pytest.raises(TaskError, match=r"task 'shop.charge' cannot take these arguments: missing a required "
                                        r"argument: 'price'; its signature is shop.charge\(order_id, price, \*, when, ref, kit\)$"):
        task.encode((1,), {})
    with pytest.raises(TaskError, match=r"task 'shop.charge': do not pass kit=; the worker passes its own kit"):
        task.encode((1, Money(5, "EUR")), {"when": None, "ref": None, "kit": object()})


def test_a_run_gets_its_arguments_back_in_their_annotated_types() -> None:
    task = TaskRegistry().task(charge, name="shop.charge")
    ref, when = uuid.uuid4(), dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    wire = msgspec.msgpack.decode(task.encode((7, Money(5, "EUR")), {"when": when, "ref": ref}))
    args, kwargs = task.decode(wire)
    assert args == [7, Money(5, "EUR")]
    assert kwargs == {"when": when, "ref": ref}


def test_the_kit_is_passed_only_to_functions_that_ask_for_it(kit_for: Callable[..., Kit]) -> None:
    seen: list[tuple[str, Any]] = []

    def with_kit(n: int, *, kit: Kit) -> None:
        seen.append(("with", kit))

    def without_kit(n: int, **extra: Any) -> None:
        seen.append(("without", extra))

    plugin = make_plugin(lambda r: (r.task(with_kit, name=unique("t.with")), r.task(without_kit, name=unique("t.without"))))
    kit = kit_for(plugin)
    for task in kit.tasks:
        task.enqueue(1)
    wait_for(lambda: len(seen) == 2, what="both tasks")
    assert sorted(seen, key=lambda item: item[0]) == [("with", kit), ("without", {})]


# -- after commit, durably -----------------------------------------------------------------


def test_enqueue_in_a_transaction_runs_after_commit_and_never_on_rollback(kit_for: Callable[..., Kit]) -> None:
    ran: list[str] = []
    name = unique("t.after_commit")
    kit = kit_for(make_plugin(lambda r: r.task(lambda label: ran.append(label), name=name)))
    task = kit.tasks.get(name)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with kit.db.atomic():
            task.enqueue("rolled back")
            raise Boom
    with kit.db.atomic():
        run_id = task.enqueue("committed")
        with pytest.raises(Boom):
            with kit.db.atomic():  # a savepoint that rolls back takes its enqueue with it
                task.enqueue("savepoint")
                raise Boom
        # Inside the transaction nothing has left: the row exists only in this transaction.
        assert ran == []
    wait_for(lambda: ran, what="the committed run")
    rows = list(EventOutbox.select(EventOutbox.event_id).where(EventOutbox.name == task.event).tuples())
    assert rows == [(run_id,)]
    deliveries = wait_for(
        lambda: [d.state for d in EventDelivery.select().where(EventDelivery.event_id == run_id)] == ["done"],
        what="the delivery to be done",
    )
    assert deliveries and ran == ["committed"]


def test_retries_wait_the_task_retry_delay_not_the_backoff(tmp_path: Path) -> None:
    """A failed run is due again ``retry_delay`` seconds later, exactly (no backoff, no jitter)."""
    name = unique("t.flaky")

    def flaky() -> None:
        raise RuntimeError("not yet")

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'data.sqlite3'}", queue_url=f"sqlite:///{tmp_path / 'q.sqlite3'}",
                        secret_key=SECRET, plugins=(), events_retry_base=1000.0)
    with Kit(settings, plugins=[make_plugin(lambda r: r.task(flaky, name=name, retries=3, retry_delay=7.5))]) as kit:
        kit.create_tables()
        run_id = kit.tasks.get(name).enqueue()
        kit.outbox.flush()
        kit.outbox.dispatch(run_id)  # what the worker's dispatch task does
        (delivery_id,) = [d.id for d in EventDelivery.select().where(EventDelivery.event_id == run_id)]
        for attempt in (1, 2):
            assert kit.outbox.deliver(delivery_id) == "retry"
            row = EventDelivery.get_by_id(delivery_id)
            assert row.attempts == attempt and "not yet" in row.last_error
            assert row.next_attempt_at - row.updated_at == dt.timedelta(seconds=7.5)
            EventDelivery.update(state="queued").where(EventDelivery.id == delivery_id).execute()


def test_a_task_failing_twice_then_succeeding_runs_three_times_without_a_queue(kit_for: Callable[..., Kit]) -> None:
    attempts: list[int] = []
    name = unique("t.twice")

    def flaky() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise RuntimeError(f"attempt {len(attempts)} fails")

    kit = kit_for(make_plugin(lambda r: r.task(flaky, name=name, retries=2, retry_delay=0.05)))
    run_id = kit.tasks.get(name).enqueue()
    wait_for(lambda: [d.state for d in EventDelivery.select().where(EventDelivery.event_id == run_id)] == ["done"],
             what="the third attempt to succeed")
    assert attempts == [1, 2, 3]
    assert EventDelivery.get(EventDelivery.event_id == run_id).attempts == 3


def test_without_a_queue_a_task_runs_on_the_deliverers_threads(kit_for: Callable[..., Kit]) -> None:
    import threading

    threads: list[str] = []
    name = unique("t.thread")
    kit = kit_for(make_plugin(lambda r: r.task(lambda: threads.append(threading.current_thread().name), name=name)))
    with kit.db.atomic():
        kit.tasks.get(name).enqueue()
    wait_for(lambda: threads, what="the task")
    assert threads[0].startswith("czo-deliverer-"), threads  # not the committing thread


# -- periodic ------------------------------------------------------------------------------


def test_a_tick_runs_each_due_periodic_task_once(kit_for: Callable[..., Kit]) -> None:
    runs: list[str] = []
    hourly, daily = unique("t.hourly"), unique("t.daily")
    kit = kit_for(make_plugin(lambda r: (
        r.periodic(lambda: runs.append("hourly"), cron="0 * * * *", name=hourly),
        r.periodic(lambda kit: runs.append(f"daily {type(kit).__name__}"), cron="0 0 * * *", name=daily),
    )))
    assert kit.deliverer is not None
    kit.deliverer.make_sweeper = None  # no tick of the real minute (at :00 it would run "hourly")
    assert kit.tasks.tick(at("2101-02-03T04:05")) == []
    assert kit.tasks.tick(at("2101-02-03T04:00")) == [hourly]
    assert kit.tasks.tick(at("2101-02-03T00:00:42")) == [hourly, daily]
    assert kit.tasks.tick(at("2101-02-03T00:00:59")) == []  # the same minute: already claimed
    stale = (dt.datetime.now(UTC) - dt.timedelta(days=3)).replace(minute=0)  # an hourly minute
    assert kit.tasks.tick(stale) == []  # over two days old: its claim may be pruned, so not run
    wait_for(lambda: len(runs) == 3, what="three periodic runs")
    assert sorted(runs) == ["daily Kit", "hourly", "hourly"]
    claims = TaskTick.select().where(TaskTick.task.in_([hourly, daily])).execute(kit.db)
    assert sorted((c.task, c.tick) for c in claims) == sorted(
        [(hourly, at("2101-02-03T04:00")), (hourly, at("2101-02-03T00:00")), (daily, at("2101-02-03T00:00"))]
    )


def test_without_a_queue_the_sweep_ticks_every_minute_since_the_last(kit_for: Callable[..., Kit]) -> None:
    name = unique("t.every")
    kit = kit_for(make_plugin(lambda r: r.periodic(lambda: None, cron="* * * * *", name=name)))
    claimed = lambda: sorted(c.tick for c in TaskTick.select().where(TaskTick.task == name).execute(kit.db))  # noqa: E731
    base = at("2102-05-06T07:08:30")
    assert kit.deliverer is not None
    kit.deliverer.make_sweeper = None  # this test is the sweeper: no other sweep ticks the real minute
    assert kit.tasks.sweep(now=base) == {"periodic": 1}
    assert kit.tasks.sweep(now=base + dt.timedelta(seconds=20)) == {}  # same minute
    assert kit.tasks.sweep(now=base + dt.timedelta(minutes=3)) == {"periodic": 3}  # caught up
    assert claimed() == [at("2102-05-06T07:08") + dt.timedelta(minutes=n) for n in range(4)]


TICK_SCRIPT = """
import datetime as dt, os, pathlib, sys, time
from czo_kit import Kit, hookimpl
from czo_kit.settings import Settings

class P:
    @staticmethod
    @hookimpl
    def czo_register_tasks(register):
        register.periodic(lambda: None, cron="* * * * *", name=sys.argv[2])

kit = Kit(Settings(database_url=sys.argv[1], queue_url="", secret_key="k" * 40, plugins=()), plugins=[P()])
kit.deliverer.make_sweeper = None  # only the ticks of this script
start = dt.datetime.fromisoformat(sys.argv[3])
barrier = pathlib.Path(sys.argv[5])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < 2:  # both processes built their kit: tick together
    time.sleep(0.005)
claimed = [kit.tasks.tick(start + dt.timedelta(minutes=n)) for n in range(int(sys.argv[4]))]
print(sum(len(c) for c in claimed))
kit.close()
"""


def test_two_processes_ticking_the_same_minutes_claim_each_once(
    kit_for: Callable[..., Kit], database_url: str, tmp_path: Path
) -> None:
    """The guard is a unique row per (task, minute) in the database: two processes ticking the
    same 40 minutes at once claim 40 between them, whoever wins each."""
    name = unique("t.race")
    kit = kit_for()  # creates the kit's tables
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    args = [sys.executable, "-c", TICK_SCRIPT, database_url, name, "2103-01-01T00:00:00+00:00", "40", str(barrier)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert sum(int(out) for out, _ in outputs) == 40
    assert TaskTick.select().where(TaskTick.task == name).count(kit.db) == 40


def test_the_consumers_scheduler_enqueues_the_tick_of_its_minute(tmp_path: Path) -> None:
    """Huey's scheduler asks every periodic task whether it is due: the kit's tick always is,
    and carries the minute the scheduler saw, so every worker names a minute alike."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'data.sqlite3'}", queue_url=f"sqlite:///{tmp_path / 'q.sqlite3'}",
                        secret_key=SECRET, plugins=())
    with Kit(settings, plugins=[make_plugin(lambda r: r.periodic(prune_carts, cron="* * * * *"))]) as kit:
        assert kit.queue is not None
        (tick,) = kit.queue.read_periodic(dt.datetime(2126, 12, 7, 10, 5, 42))
        assert tick.args == ("2126-12-07T10:05:00+00:00",)
        kit.queue.enqueue(tick)
        message = kit.queue.dequeue()  # through the msgspec serializer
        assert message.args == ("2126-12-07T10:05:00+00:00",)
        kit.create_tables()
        kit.queue.execute(message)
        assert [(c.task, c.tick) for c in TaskTick.select().execute(kit.db)] == [(f"{__name__}.prune_carts", at("2126-12-07T10:05"))]
    # A kit whose plugins have no periodic task puts nothing on the scheduler.
    with Kit(settings) as kit:
        assert kit.queue is not None and kit.queue.read_periodic(dt.datetime(2126, 12, 7, 10, 5)) == []


def test_an_older_tick_arriving_late_still_finds_its_claim(kit_for: Callable[..., Kit]) -> None:
    """Claims are pruned by the clock, not relative to the minute being claimed: a tick of
    2125 must not drop the claim of 2124, whose duplicate may still wait in a queue."""
    name = unique("t.yearly")
    kit = kit_for(make_plugin(lambda r: r.periodic(prune_carts, cron="0 0 1 1 *", name=name)))
    assert kit.tasks.tick(at("2124-01-01T00:00")) == [name]
    assert kit.tasks.tick(at("2125-01-01T00:00")) == [name]
    assert kit.tasks.tick(at("2124-01-01T00:00")) == []


def test_a_task_registered_on_a_built_kit_runs_and_the_registry_is_a_service(kit_for: Callable[..., Kit]) -> None:
    ran: list[int] = []
    kit = kit_for()
    assert kit.services.get(TaskRegistry) is kit.tasks
    late = kit.tasks.task(lambda n: ran.append(n), name=unique("t.late"))
    late.enqueue(3)
    wait_for(lambda: ran == [3], what="the task registered after the kit was built")


def test_a_tick_must_be_a_datetime(kit_for: Callable[..., Kit]) -> None:
    kit = kit_for(make_plugin(lambda r: r.periodic(prune_carts, cron="* * * * *")))
    with pytest.raises(TaskError, match=r"a tick is a datetime \(its minute, UTC if naive\), got '2026-01-01'"):
        kit.tasks.tick("2026-01-01")  # type: ignore[arg-type]


def test_czo_kit_plugins_lists_a_plugins_tasks(kit_for: Callable[..., Kit]) -> None:
    kit = kit_for(plugins=("czo_test_reviews",))
    (info,) = [info for info in describe_plugins(kit) if info.name == "czo_test_reviews"]
    assert info.registers["tasks"] == [
        "task czo_test_reviews.recompute_rating", "periodic czo_test_reviews.refresh_ratings (* * * * *)"
    ]


def test_what_cannot_run_says_why(kit_for: Callable[..., Kit]) -> None:
    loose = TaskRegistry().task(send_digest, name="loose.digest")
    with pytest.raises(TaskError, match=r"this task registry is not bound to a kit \(tasks run through kit.tasks\)"):
        loose.enqueue(1)
    kit = kit_for(make_plugin(lambda r: r.periodic(prune_carts, cron="* * * * *", name="queue.less")))
    with pytest.raises(TaskError, match=r"this kit has no queue \(CZO_QUEUE_URL is empty\): call kit.tasks.tick"):
        kit.tasks.schedule_tick(dt.datetime(2126, 1, 1, tzinfo=UTC))
    assert len(kit.tasks) == 1 and repr(kit.tasks.get("queue.less")) == "<Task queue.less (periodic '* * * * *')>"
