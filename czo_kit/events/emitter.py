"""``EventEmitter``: typed events between modules, delivered in-process or through the queue.

``emit`` runs every handler now, in this thread; a failing handler is logged and the others
still run (``strict=True`` raises them afterwards, for tests). ``emit_async`` hands the event
to the durable transport (outbox, then the Huey queue) when the kit has a queue, and otherwise
runs the handlers in-process once the surrounding transaction commits.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import msgspec

from czo_kit import metrics as _metrics
from czo_kit.context import _actor, correlation_var
from czo_kit.events._payload import payload_for
from czo_kit.plugins import Contributions
from czo_kit.events.types import (
    Event,
    EventContext,
    EventHandlerError,
    InvalidEventError,
    Priority,
    check_event_name,
    event_type,
    uuid7,
)

if TYPE_CHECKING:
    import peewee

__all__ = ["AsyncTransport", "EventEmitter", "Subscription", "current_event"]

log = logging.getLogger("czo_kit.events")

E = TypeVar("E", bound=Event)
Unsubscribe = Callable[[], None]

_current: contextvars.ContextVar[EventContext | None] = contextvars.ContextVar("czo_event", default=None)
_correlation = correlation_var  # the correlation id of the work in progress (czo_kit.context)
_UTC = dt.timezone.utc


def current_event() -> EventContext | None:
    """The context of the event whose handler is running in this thread, if any."""
    return _current.get()


class AsyncTransport(Protocol):
    """Where ``emit_async`` sends events when the kit has a queue (the durable outbox)."""

    def publish(
        self, ctx: EventContext, payload: bytes, *, delay: float, retries: int, priority: int
    ) -> None: ...


class Subscription:
    """One handler of one event name. ``id`` is stable across processes: it names the
    handler in delivery records, so a failing async handler is retried alone."""

    __slots__ = ("active", "handler", "id", "name", "once", "typed")

    def __init__(self, name: str, handler: Callable[..., Any], id: str, *, once: bool) -> None:
        self.name = name
        self.handler = handler
        self.id = id
        self.once = once
        self.active = True
        self.typed = event_type(name)

    def __repr__(self) -> str:
        return f"Subscription({self.name!r}, id={self.id!r})"


def handler_id(handler: Callable[..., Any]) -> str:
    """A stable default id for a handler: ``module:qualname``."""
    module = getattr(handler, "__module__", None) or "unknown"
    qualname = getattr(handler, "__qualname__", None) or getattr(handler, "__name__", None) or repr(handler)
    return f"{module}:{qualname}"


class EventEmitter:
    """Subscriptions and emission. Thread-safe; handlers are held strongly."""

    def __init__(
        self,
        *,
        db: peewee.Database | None = None,
        strict: bool = False,
        default_retries: int = 5,
        transport: AsyncTransport | None = None,
    ) -> None:
        self.db = db
        self.strict = strict
        self.default_retries = default_retries
        self.transport = transport
        self._subs: dict[str, tuple[Subscription, ...]] = {}
        self._by_id: dict[str, Subscription] = {}
        self._lock = threading.Lock()
        self._timers: set[threading.Timer] = set()
        self._taps: tuple[Callable[[EventContext, Any], Callable[[], Any] | None], ...] = ()
        self._contributions = Contributions()
        # Set here, not later: an attribute added after __init__ slows every attribute read.
        self.tick = _metrics.NEVER  # emits left before the next timed one (czo_kit.metrics)
        self.meter: Any = None

    # -- subscriptions ------------------------------------------------------------------

    @overload
    def on(self, event: type[E], handler: Callable[[E, EventContext], Any], *, id: str | None = None) -> Unsubscribe: ...

    @overload
    def on(self, event: str, handler: Callable[[Any, EventContext], Any], *, id: str | None = None) -> Unsubscribe: ...

    def on(self, event: Any, handler: Callable[..., Any], *, id: str | None = None) -> Unsubscribe:
        """Call ``handler(payload, ctx)`` for every ``event`` (a name or an ``Event`` class).

        ``id`` names the subscription in async delivery records; the default,
        ``module:qualname`` of the handler, is stable as long as the code is.
        """
        return self._subscribe(event, handler, id, once=False)

    @overload
    def once(self, event: type[E], handler: Callable[[E, EventContext], Any], *, id: str | None = None) -> Unsubscribe: ...

    @overload
    def once(self, event: str, handler: Callable[[Any, EventContext], Any], *, id: str | None = None) -> Unsubscribe: ...

    def once(self, event: Any, handler: Callable[..., Any], *, id: str | None = None) -> Unsubscribe:
        """Like ``on``, but the handler is removed before its first call."""
        return self._subscribe(event, handler, id, once=True)

    def off(self, event: Any, handler: Callable[..., Any]) -> bool:
        """Remove ``handler`` from ``event``; whether it was subscribed."""
        name = _name_of(event)
        with self._lock:
            subs = self._subs.get(name, ())
            # ``==``, not ``is``: a bound method is a new object on every attribute access.
            keep = tuple(s for s in subs if s.handler != handler)
            if len(keep) == len(subs):
                return False
            for sub in subs:
                if sub.handler == handler:
                    sub.active = False
                    self._by_id.pop(sub.id, None)
            self._store(name, keep)
            return True

    def _subscribe(self, event: Any, handler: Callable[..., Any], id: str | None, *, once: bool) -> Unsubscribe:
        name = _name_of(event)
        if not callable(handler):
            raise TypeError(f"event handler for {name!r} must be callable, got {handler!r}")
        base = id if id is not None else handler_id(handler)
        if not isinstance(base, str) or not base or len(base) > 250:
            raise ValueError(f"subscription id must be a non-empty string of at most 250 characters, got {base!r}")
        with self._lock:
            sub_id = f"{name}|{base}"
            if sub_id in self._by_id:
                if id is not None:
                    raise ValueError(f"subscription id {id!r} is already used for {name!r}")
                # The same function subscribed twice: number the copies so ids stay unique.
                sub_id = next(f"{name}|{base}#{n}" for n in itertools.count(2) if f"{name}|{base}#{n}" not in self._by_id)
            sub = Subscription(name, handler, sub_id, once=once)
            self._store(name, (*self._subs.get(name, ()), sub))
            self._by_id[sub_id] = sub
        self._contributions.record(f"{'once' if once else 'on'} {name}")

        def unsubscribe() -> None:
            with self._lock:
                if not sub.active:
                    return
                sub.active = False
                self._by_id.pop(sub.id, None)
                self._store(name, tuple(s for s in self._subs.get(name, ()) if s is not sub))

        return unsubscribe

    def _store(self, name: str, subs: tuple[Subscription, ...]) -> None:
        if subs:
            self._subs[name] = subs
        else:
            self._subs.pop(name, None)

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> what it subscribed to in ``czo_register_events`` (``"on item.created"``)."""
        return self._contributions.contributions()

    def subscribers(self, event: Any) -> tuple[Subscription, ...]:
        """The active subscriptions of ``event``, in subscription order."""
        return self._subs.get(_name_of(event), ())

    def subscription(self, sub_id: str) -> Subscription | None:
        """The subscription with this id (as stored in async delivery records)."""
        return self._by_id.get(sub_id)

    def claim_once(self, sub: Subscription) -> bool:
        """For async dispatch: take a ``once`` subscription for one event, if still active.

        It stops receiving new events but stays findable by id, so its delivery (and the
        delivery's retries) can still run; ``release_once`` forgets it when that is over.
        """
        with self._lock:
            if not sub.active:
                return False
            sub.active = False
            self._store(sub.name, tuple(s for s in self._subs.get(sub.name, ()) if s is not sub))
            return True

    def unclaim_once(self, sub: Subscription) -> None:
        """Undo ``claim_once`` when the dispatch that claimed it rolled back: the event is
        dispatched again later and must find it (unless it was unsubscribed meanwhile)."""
        with self._lock:
            if sub.active or self._by_id.get(sub.id) is not sub:
                return
            sub.active = True
            self._store(sub.name, (*self._subs.get(sub.name, ()), sub))

    def release_once(self, sub: Subscription) -> None:
        """Forget a ``once`` subscription whose async delivery has finished."""
        if not sub.once:
            return
        with self._lock:
            if self._by_id.get(sub.id) is sub:
                del self._by_id[sub.id]

    def names(self) -> list[str]:
        """Every event name with at least one subscriber."""
        return sorted(self._subs)

    def tap(self, fn: Callable[[EventContext, Any], Callable[[], Any] | None]) -> Unsubscribe:
        """Call ``fn(ctx, payload)`` for every event, at emit time, in the emitting thread,
        before handlers run or the event is queued. ``fn`` may return a write: ``emit_async``
        runs it in one transaction with the event's outbox row (and with the caller's, if one
        is open). The kit's webhook dispatcher records deliveries this way. An exception from
        a tap or its write propagates to the emitter."""
        with self._lock:
            self._taps = (*self._taps, fn)

        def untap() -> None:
            with self._lock:
                self._taps = tuple(t for t in self._taps if t is not fn)

        return untap

    # -- context ------------------------------------------------------------------------

    @contextlib.contextmanager
    def correlation(self, correlation_id: str | None = None) -> Iterator[str]:
        """Events emitted inside share ``correlation_id`` (a new one if not given)."""
        value = correlation_id or uuid7()
        token = _correlation.set(value)
        try:
            yield value
        finally:
            _correlation.reset(token)

    def _context(self, name: str, actor: str | None) -> EventContext:
        parent = _current.get()
        if parent is not None:
            return EventContext._new(
                name, actor if actor is not None else parent.actor, parent.correlation_id, parent.event_id
            )
        # No parent event: the actor of the request or command doing this, unless named.
        return EventContext._new(name, actor if actor is not None else _actor.get(), _correlation.get(), None)

    def _normalize(self, event: Any, payload: Any) -> tuple[str, Any, bytes]:
        """Name, payload and its msgpack: checked here, before any handler or tap sees it, so
        that a payload is refused or accepted the same way whoever listens."""
        if isinstance(event, Event):
            if payload is not None:
                raise InvalidEventError("pass either an Event instance or a name and a payload, not both")
            name = type(event).__event_name__
            if not name:
                raise InvalidEventError(f"{type(event).__name__} has no event name; declare it with name=")
            value, encoded = payload_for(name, event)
            return name, value, encoded
        name = check_event_name(event)
        value, encoded = payload_for(name, {} if payload is None else payload)
        return name, value, encoded

    # -- emission -----------------------------------------------------------------------

    def emit(self, event: Any, payload: Any = None, *, actor: str | None = None) -> EventContext:
        """Run every handler of the event now; returns its context, ``errors`` listing failures."""
        self.tick -= 1
        if self.tick < 0:  # this call is one czo_kit.metrics times
            return _metrics.timed_emit(self, event, payload, actor)
        name, value, _ = self._normalize(event, payload)
        ctx = self._context(name, actor)
        for tap in self._taps:
            write = tap(ctx, value)
            if write is not None:
                write()  # one statement: atomic on its own
        failures = self._run_handlers(self._subs.get(name, ()), value, ctx)
        if not failures:
            return ctx
        if self.strict:
            raise EventHandlerError(name, failures)
        return ctx.with_errors(tuple(f"{sub}: {exc!r}" for sub, exc in failures))

    def _run_handlers(
        self, subs: tuple[Subscription, ...], value: Any, ctx: EventContext
    ) -> list[tuple[str, BaseException]]:
        failures: list[tuple[str, BaseException]] = []
        token = _current.set(ctx)
        try:
            for sub in subs:
                if sub.once:
                    with self._lock:
                        if not sub.active:
                            continue
                        sub.active = False
                        self._by_id.pop(sub.id, None)
                        self._store(sub.name, tuple(s for s in self._subs.get(sub.name, ()) if s is not sub))
                try:
                    sub.handler(value, ctx)
                except Exception as exc:
                    log.exception("handler %s of event %s (%s) failed", sub.id, ctx.name, ctx.event_id)
                    failures.append((sub.id, exc))
                    _metrics.handler_failed(self, sub)
        finally:
            _current.reset(token)
        return failures

    def run_subscription(self, sub: Subscription, value: Any, ctx: EventContext) -> None:
        """Run one subscription for an async delivery; its exception propagates (to be retried)."""
        token = _current.set(ctx)
        started, failed = _metrics.clock(), True
        try:
            sub.handler(value, ctx)
            failed = False
        finally:
            _current.reset(token)
            _metrics.handler_ran(self, sub, started, failed)

    def decode(self, name: str, payload: bytes) -> Any:
        """An async payload back in the type declared for ``name`` (or as a mapping)."""
        kind = event_type(name)
        return msgspec.msgpack.decode(payload, type=kind) if kind is not None else msgspec.msgpack.decode(payload)

    def emit_async(
        self,
        event: Any,
        payload: Any = None,
        *,
        actor: str | None = None,
        delay: float | None = None,
        retries: int | None = None,
        priority: int = Priority.NORMAL,
    ) -> EventContext:
        """Deliver the event to every subscriber in the background, each retried on its own.

        Inside a transaction nothing leaves before the outermost commit, and nothing at all on
        rollback. ``delay`` is in seconds; ``retries`` is per subscriber (default from
        settings); ``priority`` is 0-100 on our scale (``Priority``), higher first.
        """
        self.tick -= 1
        started = _metrics.clock() if self.tick < 0 else 0
        name, value, encoded = self._normalize(event, payload)
        delay_s = _check_delay(delay)
        tries = self.default_retries if retries is None else _check_retries(retries)
        level = _check_priority(priority)
        ctx = self._context(name, actor)
        writes = [write for write in (tap(ctx, value) for tap in self._taps) if write is not None]
        if writes and self.db is not None:
            # What taps record (webhook deliveries) and the outbox row commit together, or not
            # at all: a failed outbox insert must not leave a webhook going out.
            with self.db.atomic():
                for write in writes:
                    write()
                self._publish(ctx, encoded, value, delay_s, tries, level)
        else:
            for write in writes:
                write()
            self._publish(ctx, encoded, value, delay_s, tries, level)
        if started:
            _metrics.emitted(self, name, started, "async")
        return ctx

    def _publish(self, ctx: EventContext, encoded: bytes, value: Any, delay: float, retries: int, priority: int) -> None:
        if self.transport is not None:
            self.transport.publish(ctx, encoded, delay=delay, retries=retries, priority=priority)
        else:
            self._after_commit(lambda: self._run_in_process(ctx.name, value, ctx, delay))

    def _after_commit(self, fn: Callable[[], None]) -> None:
        if self.db is None:
            fn()
            return
        from czo_kit.db.transactions import on_commit

        on_commit(self.db, fn)

    def _run_in_process(self, name: str, value: Any, ctx: EventContext, delay: float) -> None:
        if delay <= 0:
            self._run_handlers(self._subs.get(name, ()), value, ctx)
            return
        # Without a queue a delay is honoured by a timer thread; it does not survive a restart.
        def fire() -> None:
            self._timers.discard(timer)
            self._run_handlers(self._subs.get(name, ()), value, ctx)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def close(self) -> None:
        """Cancel in-process delayed deliveries that have not fired yet."""
        for timer in list(self._timers):
            timer.cancel()
        if self._timers:
            log.warning("%d delayed in-process event(s) dropped at shutdown (no queue configured)", len(self._timers))
        self._timers.clear()


def _name_of(event: Any) -> str:
    if isinstance(event, type) and issubclass(event, Event):
        if not event.__event_name__:
            raise InvalidEventError(f"{event.__name__} has no event name; declare it with name=")
        return event.__event_name__
    if isinstance(event, str):
        return check_event_name(event)
    raise InvalidEventError(f"events are named by a string or an Event class, got {event!r}")


def _check_delay(delay: Any) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 366 * 86400:
        raise InvalidEventError(f"delay must be a number of seconds from 0 to one year, got {delay!r}")
    return float(delay)


def _check_retries(retries: Any) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise InvalidEventError(f"retries must be an integer from 0 to 100, got {retries!r}")
    return retries


def _check_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise InvalidEventError(f"priority must be an integer from 0 to 100 (see Priority), got {priority!r}")
    return int(priority)


def as_mapping(value: Any) -> Mapping[str, Any]:
    """A payload as a plain mapping (for logs and webhooks)."""
    if isinstance(value, Mapping):
        return value
    result: Mapping[str, Any] = msgspec.to_builtins(value)
    return result
