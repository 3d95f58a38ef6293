"""``EventEmitter`` in-process: subscriptions, emission, context, validation, and ``emit_async``
without a queue (handlers run after the outermost commit, savepoint-aware).

The durable path (outbox, Huey, consumer) is in ``tests/test_outbox.py``.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from apps_support import reset_event_tables
from czo_kit import Kit
from czo_kit.events import (
    Event,
    EventContext,
    EventEmitter,
    EventHandlerError,
    InvalidEventError,
    Priority,
    current_event,
    event_type,
    uuid7,
)
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until

SettingsFor = Callable[..., Settings]
Calls = list[tuple[str, Any]]


class WidgetCreated(Event, name="test.widget.created"):
    id: int
    name: str


class WidgetShipped(Event, name="test.widget.shipped"):
    id: int
    carrier: str = "post"


class Unnamed(Event):
    """An intermediate base: no event name of its own."""

    id: int


@pytest.fixture
def events() -> EventEmitter:
    return EventEmitter()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each database in turn (the conftest fixture of the same name, with the postgres mark)."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def kit(database_url: str, settings_for: SettingsFor) -> Iterator[Kit]:
    """A kit without a queue, on each database: ``emit_async`` runs handlers in-process."""
    reset_event_tables(database_url)  # its deliverer would run what other tests left
    with Kit(settings_for(database_url, queue_url="", plugins=())) as built:
        assert built.queue is None and built.deliverer is not None
        built.outbox.ensure_tables()  # as with a queue: no DDL in the first emit's transaction
        yield built


def recorder(calls: Calls, label: str) -> Callable[[Any, EventContext], None]:
    def handler(payload: Any, ctx: EventContext) -> None:
        calls.append((label, payload))

    return handler


# -- subscribing and unsubscribing ---------------------------------------------------------------


def test_on_by_name_receives_payload_and_context(events: EventEmitter) -> None:
    seen: list[tuple[Any, EventContext]] = []
    events.on("inventory.low", lambda payload, ctx: seen.append((payload, ctx)))
    ctx = events.emit("inventory.low", {"sku": "A1"}, actor="user:7")
    assert len(seen) == 1
    payload, got = seen[0]
    assert payload == {"sku": "A1"}
    assert got is ctx
    assert (ctx.name, ctx.actor, ctx.errors, ctx.attempt) == ("inventory.low", "user:7", (), 1)


def test_on_by_class_receives_the_struct(events: EventEmitter) -> None:
    seen: list[WidgetCreated] = []
    events.on(WidgetCreated, lambda event, ctx: seen.append(event))
    events.emit(WidgetCreated(id=1, name="bolt"))
    assert seen == [WidgetCreated(id=1, name="bolt")]


def test_by_name_subscriber_of_a_declared_type_gets_the_typed_struct(events: EventEmitter) -> None:
    seen: list[Any] = []
    events.on("test.widget.created", lambda payload, ctx: seen.append(payload))
    events.emit("test.widget.created", {"id": 2, "name": "nut"})  # by name, a mapping
    events.emit(WidgetCreated(id=3, name="washer"))  # by instance
    assert seen == [WidgetCreated(id=2, name="nut"), WidgetCreated(id=3, name="washer")]
    assert all(type(p) is WidgetCreated for p in seen)
    # Declared defaults are filled in when emitting by name.
    shipped: list[Any] = []
    events.on(WidgetShipped, lambda payload, ctx: shipped.append(payload))
    events.emit("test.widget.shipped", {"id": 4})
    assert shipped == [WidgetShipped(id=4, carrier="post")]


def test_class_and_name_subscriptions_share_one_event(events: EventEmitter) -> None:
    calls: Calls = []
    events.on(WidgetCreated, recorder(calls, "by-class"))
    events.on("test.widget.created", recorder(calls, "by-name"))
    events.emit(WidgetCreated(id=1, name="x"))
    assert [label for label, _ in calls] == ["by-class", "by-name"]
    assert [s.name for s in events.subscribers(WidgetCreated)] == ["test.widget.created"] * 2


def test_handlers_run_in_subscription_order(events: EventEmitter) -> None:
    calls: Calls = []
    for label in "abcde":
        events.on("order.test", recorder(calls, label), id=label)
    events.emit("order.test")
    assert [label for label, _ in calls] == list("abcde")


def test_unsubscribe_callable_is_idempotent(events: EventEmitter) -> None:
    calls: Calls = []
    off_a = events.on("x.y", recorder(calls, "a"), id="a")
    events.on("x.y", recorder(calls, "b"), id="b")
    off_a()
    off_a()  # a second call is harmless and does not remove anything else
    events.emit("x.y")
    assert [label for label, _ in calls] == ["b"]
    assert [s.id for s in events.subscribers("x.y")] == ["x.y|b"]
    assert events.subscription("x.y|a") is None


def test_off_by_handler_returns_whether_it_was_subscribed(events: EventEmitter) -> None:
    calls: Calls = []
    handler = recorder(calls, "h")
    other = recorder(calls, "other")
    events.on("x.y", handler)
    events.on("x.y", other, id="other")
    assert events.off("x.y", handler) is True
    assert events.off("x.y", handler) is False
    assert events.off("never.subscribed", handler) is False
    events.emit("x.y")
    assert [label for label, _ in calls] == ["other"]
    # Removing the last handler forgets the name altogether.
    assert events.off("x.y", other) is True
    assert "x.y" not in events.names()


def test_off_removes_every_copy_of_the_handler_and_the_unsubscribers_stay_harmless(events: EventEmitter) -> None:
    calls: Calls = []
    handler = recorder(calls, "h")
    off_1 = events.on("x.y", handler)
    off_2 = events.on("x.y", handler)
    assert events.off("x.y", handler) is True
    off_1()
    off_2()
    events.emit("x.y")
    assert calls == []
    assert events.subscribers("x.y") == ()


def test_off_by_class_and_with_a_bound_method(events: EventEmitter) -> None:
    class Listener:
        def __init__(self) -> None:
            self.count = 0

        def handle(self, event: WidgetCreated, ctx: EventContext) -> None:
            self.count += 1

    listener = Listener()
    events.on(WidgetCreated, listener.handle)
    # ``listener.handle`` is a new bound-method object on each access.
    assert events.off(WidgetCreated, listener.handle) is True
    events.emit(WidgetCreated(id=1, name="x"))
    assert listener.count == 0


def test_once_runs_a_single_time(events: EventEmitter) -> None:
    calls: Calls = []
    events.once("x.y", recorder(calls, "once"), id="once")
    events.on("x.y", recorder(calls, "always"), id="always")
    events.emit("x.y", {"n": 1})
    events.emit("x.y", {"n": 2})
    assert calls == [("once", {"n": 1}), ("always", {"n": 1}), ("always", {"n": 2})]
    assert events.subscription("x.y|once") is None
    # Its id is free again.
    events.once("x.y", recorder(calls, "again"), id="once")


def test_once_that_is_unsubscribed_first_never_runs(events: EventEmitter) -> None:
    calls: Calls = []
    off = events.once(WidgetCreated, recorder(calls, "once"))
    off()
    off()
    events.emit(WidgetCreated(id=1, name="x"))
    assert calls == []


def test_once_runs_once_even_when_emitted_from_many_threads(events: EventEmitter) -> None:
    calls: Calls = []
    events.once("x.y", recorder(calls, "once"))
    barrier = threading.Barrier(8)

    def emit() -> None:
        barrier.wait()
        events.emit("x.y")

    threads = [threading.Thread(target=emit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


def test_once_reentrant_emit_from_its_own_handler_does_not_run_it_again(events: EventEmitter) -> None:
    calls: list[int] = []

    def handler(payload: Any, ctx: EventContext) -> None:
        calls.append(payload["n"])
        if payload["n"] == 1:
            events.emit("x.y", {"n": 2})

    events.once("x.y", handler)
    events.emit("x.y", {"n": 1})
    assert calls == [1]


def test_handlers_are_held_strongly(events: EventEmitter) -> None:
    calls: list[int] = []
    events.on("x.y", lambda payload, ctx: calls.append(1))  # no other reference to the lambda
    gc.collect()
    events.emit("x.y")
    assert calls == [1]


def test_handler_must_be_callable(events: EventEmitter) -> None:
    with pytest.raises(TypeError, match="must be callable"):
        events.on("x.y", "not a function")  # type: ignore[call-overload]


# -- subscription ids ------------------------------------------------------------------------


def module_level_handler(payload: Any, ctx: EventContext) -> None:
    pass


def test_default_subscription_id_is_module_and_qualname(events: EventEmitter) -> None:
    events.on("x.y", module_level_handler)
    (sub,) = events.subscribers("x.y")
    assert sub.id == f"x.y|{__name__}:module_level_handler"
    assert events.subscription(sub.id) is sub

    def nested(payload: Any, ctx: EventContext) -> None:
        pass

    events.on("x.y", nested)
    assert events.subscribers("x.y")[1].id == (
        f"x.y|{__name__}:test_default_subscription_id_is_module_and_qualname.<locals>.nested"
    )


def test_explicit_subscription_id(events: EventEmitter) -> None:
    events.on(WidgetCreated, module_level_handler, id="inventory.reserve")
    assert [s.id for s in events.subscribers(WidgetCreated)] == ["test.widget.created|inventory.reserve"]


def test_the_same_function_twice_gets_numbered_ids(events: EventEmitter) -> None:
    calls: list[int] = []

    def handler(payload: Any, ctx: EventContext) -> None:
        calls.append(1)

    events.on("x.y", handler)
    events.on("x.y", handler)
    events.on("x.y", handler)
    base = f"x.y|{handler.__module__}:{handler.__qualname__}"
    assert [s.id for s in events.subscribers("x.y")] == [base, base + "#2", base + "#3"]
    events.emit("x.y")
    assert calls == [1, 1, 1]
    # The same function on another event does not collide.
    events.on("z.z", handler)
    assert events.subscribers("z.z")[0].id == f"z.z|{handler.__module__}:{handler.__qualname__}"


def test_duplicate_explicit_id_raises(events: EventEmitter) -> None:
    events.on("x.y", module_level_handler, id="billing.charge")
    with pytest.raises(ValueError, match="billing.charge"):
        events.on("x.y", lambda payload, ctx: None, id="billing.charge")
    # The first subscription is untouched, and the id is fine for another event.
    assert [s.id for s in events.subscribers("x.y")] == ["x.y|billing.charge"]
    events.on("other.event", module_level_handler, id="billing.charge")


@pytest.mark.parametrize("bad", ["", "x" * 251, 42])
def test_bad_subscription_ids_are_refused(events: EventEmitter, bad: Any) -> None:
    with pytest.raises(ValueError, match="subscription id"):
        events.on("x.y", module_level_handler, id=bad)
    assert events.subscribers("x.y") == ()


def test_unique_ids_when_many_threads_subscribe_the_same_function(events: EventEmitter) -> None:
    barrier = threading.Barrier(8)

    def subscribe() -> None:
        barrier.wait()
        for _ in range(50):
            events.on("x.y", module_level_handler)

    threads = [threading.Thread(target=subscribe) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [s.id for s in events.subscribers("x.y")]
    assert len(ids) == len(set(ids)) == 400


# -- failures and strict mode ----------------------------------------------------------------


def test_a_failing_handler_does_not_stop_the_others(events: EventEmitter, caplog: pytest.LogCaptureFixture) -> None:
    calls: Calls = []
    events.on("x.y", recorder(calls, "first"), id="first")

    def broken(payload: Any, ctx: EventContext) -> None:
        raise RuntimeError("boom")

    events.on("x.y", broken, id="broken")
    events.on("x.y", recorder(calls, "last"), id="last")
    with caplog.at_level(logging.ERROR, logger="czo_kit.events"):
        ctx = events.emit("x.y", {"n": 1})
    assert [label for label, _ in calls] == ["first", "last"]
    assert len(ctx.errors) == 1
    assert ctx.errors[0].startswith("x.y|broken: ") and "RuntimeError('boom')" in ctx.errors[0]
    (record,) = [r for r in caplog.records if r.name == "czo_kit.events"]
    assert record.levelno == logging.ERROR
    assert "x.y|broken" in record.getMessage() and ctx.event_id in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def test_strict_mode_raises_after_running_every_handler() -> None:
    events = EventEmitter(strict=True)
    calls: Calls = []

    def broken(payload: Any, ctx: EventContext) -> None:
        raise ValueError("bad value")

    def also_broken(payload: Any, ctx: EventContext) -> None:
        raise KeyError("missing")

    events.on("x.y", broken, id="one")
    events.on("x.y", recorder(calls, "middle"), id="middle")
    events.on("x.y", also_broken, id="two")
    with pytest.raises(EventHandlerError) as info:
        events.emit("x.y")
    assert [label for label, _ in calls] == ["middle"]  # ran despite the failure before it
    assert [sub for sub, _ in info.value.errors] == ["x.y|one", "x.y|two"]
    assert isinstance(info.value.errors[0][1], ValueError)
    assert isinstance(info.value.errors[1][1], KeyError)
    assert "2 handler(s) of 'x.y' failed" in str(info.value)
    # Without failures strict mode returns the context as usual.
    assert events.emit("quiet.event").errors == ()


def test_strict_mode_from_settings(sqlite_url: str, settings_for: SettingsFor) -> None:
    with Kit(settings_for(sqlite_url, queue_url="", plugins=(), events_strict=True)) as kit:
        kit.events.on("x.y", lambda payload, ctx: 1 / 0)
        with pytest.raises(EventHandlerError):
            kit.events.emit("x.y")


# -- context --------------------------------------------------------------------------------


def test_event_id_is_a_uuid7_string() -> None:
    value = uuid7()
    assert isinstance(value, str)
    parsed = uuid.UUID(value)
    assert str(parsed) == value
    assert parsed.version == 7
    assert value[14] == "7"  # the version nibble, as written
    assert parsed.variant == uuid.RFC_4122
    # The first 48 bits are the Unix time in milliseconds.
    millis = parsed.int >> 80
    assert abs(millis - time.time() * 1000) < 5_000


def test_event_ids_sort_by_creation_time() -> None:
    ids = [uuid7() for _ in range(20_000)]  # many within one millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    before = uuid7()
    time.sleep(0.002)
    after = uuid7()
    assert before < after


def test_event_ids_from_many_threads_are_unique() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def make(into: list[str]) -> None:
        for _ in range(2_000):
            into.append(uuid7())

    threads = [threading.Thread(target=make, args=(bucket,)) for bucket in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for bucket in results for value in bucket]
    assert len(set(every)) == len(every)
    for bucket in results:
        assert bucket == sorted(bucket)


def test_context_fields(events: EventEmitter) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    ctx = events.emit(WidgetCreated(id=1, name="x"), actor="user:7")
    after = dt.datetime.now(dt.timezone.utc)
    assert uuid.UUID(ctx.event_id).version == 7
    assert ctx.name == "test.widget.created"
    assert ctx.timestamp.tzinfo is not None and ctx.timestamp.utcoffset() == dt.timedelta(0)
    assert before <= ctx.timestamp <= after
    assert ctx.actor == "user:7"
    assert ctx.causation_id is None
    assert ctx.correlation_id == ctx.event_id  # a new correlation starts with this event
    assert events.emit("x.y").actor is None
    with pytest.raises(AttributeError):
        ctx.actor = "someone else"  # type: ignore[misc]


def test_context_ids_follow_emit_order_whenever_they_are_read(events: EventEmitter) -> None:
    # The id is formatted on first read; its time and counter are fixed at emit.
    contexts = [events.emit("x.y") for _ in range(2_000)]
    ids = [ctx.event_id for ctx in reversed(contexts)][::-1]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    first = contexts[0]
    assert first.event_id == first.event_id and first.timestamp is first.timestamp
    assert [ctx.timestamp for ctx in contexts] == sorted(ctx.timestamp for ctx in contexts)
    stamp = uuid.UUID(first.event_id).int >> 80  # milliseconds since the epoch
    millis = (first.timestamp - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)
    assert millis <= stamp < millis + 1000  # ahead only after >4096 ids in one millisecond


def test_context_equality_repr_and_errors(events: EventEmitter) -> None:
    ctx = events.emit("x.y", actor="user:1")
    same = EventContext(
        name="x.y", event_id=ctx.event_id, timestamp=ctx.timestamp, actor="user:1",
        correlation_id=ctx.correlation_id,
    )
    assert same == ctx and hash(same) == hash(ctx)
    assert ctx != events.emit("x.y", actor="user:1") and ctx != "x.y"
    failed = ctx.with_errors(("h: boom",))
    assert failed.errors == ("h: boom",) and failed.event_id == ctx.event_id and failed != ctx
    assert repr(ctx).startswith(f"EventContext(event_id={ctx.event_id!r}, name='x.y'")
    for field in ("name", "event_id", "timestamp", "correlation_id", "causation_id", "attempt", "errors"):
        with pytest.raises(AttributeError):
            setattr(ctx, field, None)


def test_invalid_names_stay_invalid_after_valid_ones_are_remembered(events: EventEmitter) -> None:
    events.emit("x.y")
    events.emit("x.y")
    for bad in ("X.Y", "x y", "", 42, None, ["x.y"], "x.y\n"):
        with pytest.raises(InvalidEventError):
            events.emit(bad)


def test_separate_emits_get_separate_correlations(events: EventEmitter) -> None:
    first = events.emit("x.y")
    second = events.emit("x.y")
    assert first.event_id != second.event_id
    assert first.correlation_id != second.correlation_id
    assert first.event_id < second.event_id


def test_an_event_emitted_by_a_handler_inherits_correlation_and_actor(events: EventEmitter) -> None:
    children: list[EventContext] = []
    grandchildren: list[EventContext] = []

    def on_created(event: WidgetCreated, ctx: EventContext) -> None:
        assert current_event() is ctx
        events.emit(WidgetShipped(id=event.id))

    def on_shipped(event: WidgetShipped, ctx: EventContext) -> None:
        children.append(ctx)
        events.emit("widget.audited", {"id": event.id}, actor="system:audit")

    events.on(WidgetCreated, on_created)
    events.on(WidgetShipped, on_shipped)
    events.on("widget.audited", lambda payload, ctx: grandchildren.append(ctx))
    parent = events.emit(WidgetCreated(id=5, name="x"), actor="user:1")
    (child,) = children
    (grandchild,) = grandchildren
    assert child.correlation_id == grandchild.correlation_id == parent.correlation_id == parent.event_id
    assert child.causation_id == parent.event_id
    assert grandchild.causation_id == child.event_id
    assert child.actor == "user:1"  # inherited
    assert grandchild.actor == "system:audit"  # explicit wins
    assert parent.event_id < child.event_id < grandchild.event_id
    assert current_event() is None  # reset once the handlers are done


def test_correlation_block_sets_the_correlation_id(events: EventEmitter) -> None:
    seen: list[EventContext] = []
    events.on("x.y", lambda payload, ctx: seen.append(ctx))
    with events.correlation("req-1") as value:
        assert value == "req-1"
        first = events.emit("x.y")
        second = events.emit("x.y")
    assert first.correlation_id == second.correlation_id == "req-1"
    assert first.causation_id is None
    outside = events.emit("x.y")
    assert outside.correlation_id == outside.event_id
    with events.correlation() as generated:
        assert uuid.UUID(generated).version == 7
        assert events.emit("x.y").correlation_id == generated


def test_correlation_is_per_thread(events: EventEmitter) -> None:
    other: list[str] = []
    with events.correlation("req-main"):
        thread = threading.Thread(target=lambda: other.append(events.emit("x.y").correlation_id))
        thread.start()
        thread.join()
        assert events.emit("x.y").correlation_id == "req-main"
    assert other and other[0] != "req-main"


# -- payload validation ----------------------------------------------------------------------


def test_struct_with_wrong_field_types_is_refused_at_emit(events: EventEmitter) -> None:
    calls: Calls = []
    events.on(WidgetCreated, recorder(calls, "h"))
    wrong = WidgetCreated(id="x", name="y")  # type: ignore[arg-type]  # msgspec does not check here
    with pytest.raises(InvalidEventError, match=r"test.widget.created.*WidgetCreated.*\$\.id"):
        events.emit(wrong)
    with pytest.raises(InvalidEventError, match=r"\$\.name"):
        events.emit_async(WidgetCreated(id=1, name=2))  # type: ignore[arg-type]
    assert calls == []


def test_emit_by_name_validates_against_the_declared_type(events: EventEmitter) -> None:
    calls: Calls = []
    events.on("test.widget.created", recorder(calls, "h"))
    with pytest.raises(InvalidEventError, match=r"\$\.id") as info:
        events.emit("test.widget.created", {"id": "not a number", "name": "x"})
    assert "WidgetCreated" in str(info.value) and "int" in str(info.value)
    with pytest.raises(InvalidEventError, match="missing required field `name`"):
        events.emit("test.widget.created", {"id": 1})
    with pytest.raises(InvalidEventError, match="WidgetShipped"):
        events.emit("test.widget.created", WidgetShipped(id=1))  # another event's Struct
    assert calls == []


def test_undeclared_names_accept_any_mapping(events: EventEmitter) -> None:
    seen: list[Any] = []
    events.on("inventory.low", lambda payload, ctx: seen.append(payload))
    events.emit("inventory.low", {"sku": "A1", "nested": {"n": [1, 2]}})
    events.emit("inventory.low")  # no payload: an empty mapping
    assert seen == [{"sku": "A1", "nested": {"n": [1, 2]}}, {}]
    assert event_type("inventory.low") is None
    assert event_type("test.widget.created") is WidgetCreated


@pytest.mark.parametrize(
    "name",
    ["Product.Created", "product created", "", "x" * 500, "produit.créé", "a/b", "a\nb", 42, None, b"x.y"],
)
def test_bad_event_names_are_refused(events: EventEmitter, name: Any) -> None:
    with pytest.raises(InvalidEventError, match="event name|named by a string"):
        events.emit(name, {})
    with pytest.raises(InvalidEventError):
        events.emit_async(name, {})
    with pytest.raises(InvalidEventError):
        events.on(name, module_level_handler)
    assert events.names() == []


def test_longest_valid_name(events: EventEmitter) -> None:
    name = "a" * 200
    events.on(name, module_level_handler)
    assert events.emit(name).name == name
    with pytest.raises(InvalidEventError):
        events.emit("a" * 201)


@pytest.mark.parametrize("payload", [[1, 2], "text", 42, object(), ("a", 1), {1, 2}])
def test_payload_that_is_not_a_mapping_is_refused(events: EventEmitter, payload: Any) -> None:
    with pytest.raises(InvalidEventError, match="payload must be a mapping"):
        events.emit("inventory.low", payload)


def test_declared_name_with_a_non_mapping_payload_is_refused(events: EventEmitter) -> None:
    with pytest.raises(InvalidEventError, match="WidgetCreated"):
        events.emit("test.widget.created", [1, "x"])


def test_event_instance_and_payload_together_are_refused(events: EventEmitter) -> None:
    with pytest.raises(InvalidEventError, match="not both"):
        events.emit(WidgetCreated(id=1, name="x"), {"id": 1})
    with pytest.raises(InvalidEventError, match="not both"):
        events.emit_async(WidgetCreated(id=1, name="x"), {"id": 1})


def test_event_class_without_a_name(events: EventEmitter) -> None:
    with pytest.raises(InvalidEventError, match="no event name"):
        events.emit(Unnamed(id=1))
    with pytest.raises(InvalidEventError, match="no event name"):
        events.on(Unnamed, module_level_handler)
    with pytest.raises(InvalidEventError, match="named by a string or an Event class"):
        events.on(int, module_level_handler)  # type: ignore[call-overload]


def test_declaring_one_name_in_two_classes_raises() -> None:
    class First(Event, name="test.duplicate.declared"):
        id: int

    with pytest.raises(InvalidEventError, match="already declared by .*First"):

        class Second(Event, name="test.duplicate.declared"):
            id: int

    assert event_type("test.duplicate.declared") is First


def test_declaring_an_invalid_name_raises() -> None:
    with pytest.raises(InvalidEventError, match="invalid event name"):

        class Bad(Event, name="Not Valid"):
            id: int


def test_unencodable_payload_is_refused_by_emit_and_emit_async() -> None:
    events = EventEmitter()
    calls: Calls = []
    events.on("inventory.low", recorder(calls, "h"))
    with pytest.raises(InvalidEventError, match="cannot be encoded"):
        events.emit_async("inventory.low", {"thing": object()})
    with pytest.raises(InvalidEventError, match="cannot be encoded"):
        events.emit("inventory.low", {"thing": object()})
    assert calls == []


# -- emit_async argument checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"delay": -1}, "delay"),
        ({"delay": 366 * 86400 + 1}, "delay"),
        ({"delay": float("nan")}, "delay"),
        ({"delay": float("inf")}, "delay"),
        ({"delay": True}, "delay"),
        ({"delay": "5"}, "delay"),
        ({"retries": -1}, "retries"),
        ({"retries": 101}, "retries"),
        ({"retries": True}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retries": "3"}, "retries"),
        ({"priority": -1}, "priority"),
        ({"priority": 101}, "priority"),
        ({"priority": False}, "priority"),
        ({"priority": 50.0}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"priority": None}, "priority"),
    ],
)
def test_emit_async_argument_checks(options: dict[str, Any], message: str) -> None:
    events = EventEmitter()
    calls: Calls = []
    events.on("x.y", recorder(calls, "h"))
    with pytest.raises(InvalidEventError, match=message):
        events.emit_async("x.y", {}, **options)
    assert calls == []


def test_emit_async_accepts_the_edges_of_each_range() -> None:
    events = EventEmitter()
    calls: Calls = []
    events.on("x.y", recorder(calls, "h"))
    events.emit_async("x.y", {}, delay=0, retries=0, priority=0)
    events.emit_async("x.y", {}, retries=100, priority=100)
    events.emit_async("x.y", {}, priority=Priority.CRITICAL)
    assert len(calls) == 3
    assert [p.value for p in Priority] == [10, 50, 80, 100]


# -- emit_async without a queue --------------------------------------------------------------


def test_emit_async_without_db_runs_at_once() -> None:
    events = EventEmitter()
    seen: list[EventContext] = []
    events.on(WidgetCreated, lambda event, ctx: seen.append(ctx))
    ctx = events.emit_async(WidgetCreated(id=1, name="x"), actor="user:1")
    assert seen == [ctx]


def test_emit_async_outside_a_transaction_runs_at_once(kit: Kit) -> None:
    calls: Calls = []
    kit.events.on(WidgetCreated, recorder(calls, "h"))
    kit.events.emit_async(WidgetCreated(id=1, name="x"))
    assert calls == [("h", WidgetCreated(id=1, name="x"))]


def test_emit_async_waits_for_the_outermost_commit(kit: Kit) -> None:
    calls: Calls = []
    kit.events.on("x.y", recorder(calls, "h"))
    with kit.db.atomic():
        kit.events.emit_async("x.y", {"n": 1})
        with kit.db.atomic():  # a savepoint
            kit.events.emit_async("x.y", {"n": 2})
        assert calls == []  # the savepoint committed, the transaction has not
    assert calls == [("h", {"n": 1}), ("h", {"n": 2})]


def test_emit_async_nothing_runs_on_rollback(kit: Kit) -> None:
    calls: Calls = []
    kit.events.on("x.y", recorder(calls, "h"))
    with pytest.raises(RuntimeError):
        with kit.db.atomic():
            kit.events.emit_async("x.y", {"n": 1})
            with kit.db.atomic():
                kit.events.emit_async("x.y", {"n": 2})
            raise RuntimeError("roll back")
    assert calls == []


def test_emit_async_savepoint_rollback_drops_only_its_own_events(kit: Kit) -> None:
    calls: Calls = []
    kit.events.on("x.y", recorder(calls, "h"))
    with kit.db.atomic():
        kit.events.emit_async("x.y", {"n": "outer"})
        with pytest.raises(RuntimeError):
            with kit.db.atomic():
                kit.events.emit_async("x.y", {"n": "inner"})
                with kit.db.atomic():
                    kit.events.emit_async("x.y", {"n": "innermost"})
                raise RuntimeError("roll back the savepoint")
        with kit.db.atomic():
            kit.events.emit_async("x.y", {"n": "after"})
    assert [p["n"] for _, p in calls] == ["outer", "after"]


def test_sync_emit_inside_a_transaction_runs_at_once(kit: Kit) -> None:
    calls: Calls = []
    kit.events.on("x.y", recorder(calls, "h"))
    with pytest.raises(RuntimeError):
        with kit.db.atomic():
            kit.events.emit("x.y", {"n": 1})
            assert len(calls) == 1
            raise RuntimeError
    assert len(calls) == 1


def test_emit_async_in_process_keeps_the_context(kit: Kit) -> None:
    seen: list[EventContext] = []
    kit.events.on("x.y", lambda payload, ctx: seen.append(ctx))
    with kit.events.correlation("req-42"), kit.db.atomic():
        ctx = kit.events.emit_async("x.y", {}, actor="user:3")
    assert seen == [ctx]
    assert ctx.correlation_id == "req-42" and ctx.actor == "user:3"


def test_emit_async_in_process_honours_delay() -> None:
    events = EventEmitter()
    ran_at: list[float] = []
    events.on("x.y", lambda payload, ctx: ran_at.append(time.monotonic()))
    start = time.monotonic()
    events.emit_async("x.y", {}, delay=0.5)
    assert ran_at == []
    assert wait_until(lambda: bool(ran_at), timeout=5)
    assert ran_at[0] - start >= 0.45
    events.close()


def test_emit_async_delay_counts_from_commit(kit: Kit) -> None:
    ran_at: list[float] = []
    kit.events.on("x.y", lambda payload, ctx: ran_at.append(time.monotonic()))
    with kit.db.atomic():
        kit.events.emit_async("x.y", {}, delay=0.3)
        time.sleep(0.2)  # time passes before the commit: a delay counted from emit ends early
        committed = time.monotonic()
    assert wait_until(lambda: bool(ran_at), timeout=5)
    assert ran_at[0] - committed >= 0.25


def test_emit_async_delay_dropped_on_rollback(kit: Kit) -> None:
    calls: Calls = []
    kit.events.on("x.y", recorder(calls, "h"))
    with pytest.raises(RuntimeError):
        with kit.db.atomic():
            kit.events.emit_async("x.y", {"n": "rolled back"}, delay=0.05)
            raise RuntimeError
    # A later event with the same delay marks the moment by which the first would have run.
    kit.events.emit_async("x.y", {"n": "committed"}, delay=0.05)
    assert wait_until(lambda: bool(calls), timeout=10)
    assert calls == [("h", {"n": "committed"})]


def test_close_cancels_delayed_in_process_events(caplog: pytest.LogCaptureFixture) -> None:
    events = EventEmitter()
    calls: Calls = []
    events.on("x.y", recorder(calls, "h"))
    events.emit_async("x.y", {}, delay=0.3)
    with caplog.at_level(logging.WARNING, logger="czo_kit.events"):
        events.close()
    assert any("1 delayed in-process event(s) dropped" in r.getMessage() for r in caplog.records)
    # An event scheduled after the close, with the same delay, fires after the cancelled one
    # would have: once it has run, the cancelled one has had every chance to.
    events.emit_async("x.y", {"n": "after close"}, delay=0.3)
    assert wait_until(lambda: bool(calls), timeout=10)
    assert calls == [("h", {"n": "after close"})]
    events.close()


def test_emit_async_failing_handler_in_process_does_not_stop_the_others(kit: Kit) -> None:
    calls: Calls = []
    kit.events.on("x.y", lambda payload, ctx: 1 / 0, id="broken")
    kit.events.on("x.y", recorder(calls, "ok"), id="ok")
    with kit.db.atomic():
        kit.events.emit_async("x.y", {})
    assert calls == [("ok", {})]


# -- thread safety ---------------------------------------------------------------------------


def test_subscribing_and_unsubscribing_while_emitting(events: EventEmitter) -> None:
    received: list[int] = []
    lock = threading.Lock()

    def steady(payload: Any, ctx: EventContext) -> None:
        with lock:
            received.append(payload["n"])

    events.on("x.y", steady, id="steady")
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            n = 0
            while not stop.is_set():
                off = events.on("x.y", lambda payload, ctx: None, id=f"churn-{worker}-{n}")
                handler = recorder([], "x")
                events.on("x.y", handler)
                events.once("x.y", handler)
                off()
                events.off("x.y", handler)
                n += 1
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        contexts = [events.emit("x.y", {"n": n}) for n in range(2_000)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert received == list(range(2_000))  # the steady handler saw every event, in order
    assert all(ctx.errors == () for ctx in contexts)
    # Everything the churn added is gone again (a once may have been consumed by an emit).
    assert [s.id for s in events.subscribers("x.y")] == ["x.y|steady"]
    assert events.names() == ["x.y"]


def test_handler_unsubscribing_during_emit_still_lets_the_others_run(events: EventEmitter) -> None:
    calls: Calls = []
    offs: list[Callable[[], None]] = []

    def first(payload: Any, ctx: EventContext) -> None:
        calls.append(("first", payload))
        for off in offs:
            off()

    offs.append(events.on("x.y", first, id="first"))
    offs.append(events.on("x.y", recorder(calls, "second"), id="second"))
    events.emit("x.y", {"n": 1})  # the snapshot taken at emit time still runs "second"
    events.emit("x.y", {"n": 2})
    assert calls == [("first", {"n": 1}), ("second", {"n": 1})]


def test_events_are_msgspec_structs() -> None:
    event = WidgetCreated(id=1, name="x")
    assert isinstance(event, msgspec.Struct)
    assert msgspec.json.decode(msgspec.json.encode(event), type=WidgetCreated) == event
    assert WidgetCreated.__event_name__ == "test.widget.created"


# -- the user guide keeps up -----------------------------------------------------------------


def test_events_doc_covers_commands_and_settings() -> None:
    from pathlib import Path

    import click

    from czo_kit.cli import cli

    text = (Path(__file__).resolve().parent.parent / "docs" / "events.md").read_text(encoding="utf-8")
    group = cli.commands["events"]
    assert isinstance(group, click.Group)
    for name in group.commands:
        assert f"czo-kit events {name}" in text, f"docs/events.md does not mention `czo-kit events {name}`"
    assert "czo-kit worker" in text and "huey_consumer czo_kit.worker.huey" in text
    settings = [f for f in msgspec.structs.fields(Settings) if f.name.startswith(("events_", "queue_"))]
    assert len(settings) >= 8
    for field in settings:
        assert f"CZO_{field.name.upper()}" in text, f"docs/events.md does not document CZO_{field.name.upper()}"
    for priority in Priority:
        assert f"Priority.{priority.name}" in text and f"| {priority.value} |" in text
