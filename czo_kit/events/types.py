"""Event types and the context every delivery carries.

``class ItemCreated(Event, name="item.created")`` declares a typed event: a msgspec Struct
with a name. Declared names are kept in a process-wide registry so that an event emitted by
name, or decoded in a worker, is checked against (and turned into) its type. ``model=Item``
says the event carries rows of that model, which a kit checks field by field at startup.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import random
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from czo_kit.errors import CzoError

__all__ = [
    "Event",
    "EventContext",
    "EventError",
    "EventHandlerError",
    "InvalidEventError",
    "Priority",
    "event_type",
    "uuid7",
]


class EventError(CzoError):
    """Base of the errors raised by the event system."""


class InvalidEventError(EventError, ValueError):
    """An event name or payload is not acceptable (the message says which field and why)."""


class EventHandlerError(EventError):
    """Raised by ``emit`` in strict mode when handlers failed; ``errors`` holds each one."""

    def __init__(self, name: str, errors: list[tuple[str, BaseException]]) -> None:
        listed = "; ".join(f"{sub}: {exc!r}" for sub, exc in errors)
        super().__init__(f"{len(errors)} handler(s) of {name!r} failed: {listed}")
        self.errors = errors


class Priority(enum.IntEnum):
    """Our priority scale (0-100, higher runs first), mapped onto the queue's own."""

    LOW = 10
    NORMAL = 50
    HIGH = 80
    CRITICAL = 100


_registry: dict[str, type[Event]] = {}
_registry_lock = threading.Lock()
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-:")


_checked_names: set[str] = set()  # names already found valid (bounded: see below)


def check_event_name(name: Any) -> str:
    """``name`` if it is a valid event name (``item.created``), else ``InvalidEventError``."""
    if type(name) is str and name in _checked_names:
        return name
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or not set(name) <= _NAME_CHARS:
        raise InvalidEventError(
            f"invalid event name {name!r}: use 1-200 lowercase letters, digits and '._-:' "
            "(for example 'item.created')"
        )
    if type(name) is str and len(_checked_names) < 4096:
        _checked_names.add(name)
    return name


if TYPE_CHECKING:
    # Named for mypy, so that it sees Event's metaclass as msgspec's own and accepts
    # ``class X(Event, name="x.y")`` in module code (``type(...)`` as a base is opaque to it).
    _StructMeta = msgspec.StructMeta
else:
    _StructMeta = type(msgspec.Struct)


class _EventMeta(_StructMeta):
    """Takes the ``name=`` class keyword, which msgspec's own metaclass would reject."""

    def __new__(mcls, *args: Any, **kwargs: Any) -> Any:
        event_name = kwargs.pop("name", None)
        model = kwargs.pop("model", None)
        omit = kwargs.pop("omit", None)
        cls: Any = super().__new__(mcls, *args, **kwargs)
        if model is not None:
            if not isinstance(model, type):
                raise InvalidEventError(f"{cls.__name__}: model= must be a model class, got {model!r}")
            cls.__event_model__ = model
        if omit is not None:
            if isinstance(omit, str) or not all(isinstance(f, str) for f in omit):
                raise InvalidEventError(
                    f"{cls.__name__}: omit= must be a list of field names, got {omit!r}"
                )
            cls.__event_omit__ = frozenset(omit)
        if event_name is not None:
            check_event_name(event_name)
            cls.__event_name__ = event_name
            with _registry_lock:
                existing = _registry.get(event_name)
                if existing is not None and (existing.__module__, existing.__qualname__) != (
                    cls.__module__,
                    cls.__qualname__,
                ):
                    raise InvalidEventError(
                        f"event name {event_name!r} is already declared by "
                        f"{existing.__module__}.{existing.__qualname__}"
                    )
                _registry[event_name] = cls
        return cls

    def __init__(cls, *args: Any, **kwargs: Any) -> None:
        for keyword in ("name", "model", "omit"):
            kwargs.pop(keyword, None)
        super().__init__(*args, **kwargs)


class Event(msgspec.Struct, kw_only=True, metaclass=_EventMeta):
    """Base of typed events: ``class ItemCreated(Event, name="item.created"): id: int``.

    Every handler receives the same object: treat it as read-only (declare a subclass
    ``frozen=True`` to have that enforced).
    """

    __event_name__: ClassVar[str] = ""
    __event_model__: ClassVar[type[Any] | None] = None
    """The model whose rows this event carries (``model=``), inherited by subclasses."""
    __event_omit__: ClassVar[frozenset[str]] = frozenset()
    """Columns of that model the event leaves out on purpose (``omit=``)."""

    if TYPE_CHECKING:

        def __init_subclass__(
            cls, *, name: str = ..., model: type[Any] = ..., omit: Iterable[str] = ..., **kwargs: Any
        ) -> None: ...


def event_type(name: str) -> type[Event] | None:
    """The ``Event`` class declared for ``name``, if any."""
    return _registry.get(name)


def event_types() -> dict[str, type[Event]]:
    """Every declared event name and its class."""
    return dict(_registry)


_last_ms = 0
_seq = 0
_uuid_lock = threading.Lock()
# Random bits for ids come from a generator seeded from os.urandom, reseeded in every forked
# child so that processes never share a sequence; it is four times cheaper than os.urandom.
_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))


def _stamp() -> tuple[int, int, int]:
    """(nanosecond time, millisecond, counter) of a new UUIDv7, in creation order."""
    global _last_ms, _seq
    ns = time.time_ns()
    ms = ns // 1_000_000
    with _uuid_lock:
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:
                _last_ms += 1
                _seq = 0
        else:
            _last_ms = ms
            _seq = 0
        return ns, _last_ms, _seq


def _format_uuid7(ms: int, seq: int) -> str:
    stamp = ms & 0xFFFFFFFFFFFF
    tail = _random.getrandbits(62)
    # version 7, the 12-bit counter, variant 0b10, then 62 random bits.
    return "%08x-%04x-7%03x-%04x-%012x" % (
        stamp >> 16, stamp & 0xFFFF, seq, 0x8000 | tail >> 48, tail & 0xFFFFFFFFFFFF
    )


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48-bit millisecond time, then randomness; sorts by creation time.

    Within one millisecond a 12-bit counter keeps ids from one process in order.
    """
    _, ms, seq = _stamp()
    return _format_uuid7(ms, seq)


_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_NO_STAMP = (0, 0, 0)  # a context given both its id and its time never reads its stamp


class EventContext:
    """Who, when and why of one event; every handler receives it with the payload.

    ``event_id`` (a UUIDv7) and ``timestamp`` (UTC) are fixed when the event is emitted but
    only formatted when first read: most in-process handlers never look at them.
    """

    __slots__ = (
        "_event_id", "_stamp", "_timestamp", "_name", "_actor", "_correlation_id",
        "_causation_id", "_attempt", "_errors",
    )

    def __init__(
        self,
        *,
        name: str,
        event_id: str | None = None,
        timestamp: dt.datetime | None = None,
        actor: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        attempt: int = 1,
        errors: tuple[str, ...] = (),
    ) -> None:
        self._name = name
        self._actor = actor
        self._causation_id = causation_id
        self._attempt = attempt
        self._errors = errors
        self._correlation_id = correlation_id
        self._stamp = _stamp() if event_id is None or timestamp is None else _NO_STAMP
        self._event_id = event_id
        self._timestamp = timestamp

    @classmethod
    def _new(
        cls, name: str, actor: str | None, correlation_id: str | None, causation_id: str | None
    ) -> EventContext:
        """A fresh context for an event being emitted now (the emitter's fast path)."""
        self = _new_context(cls)
        self._name = name
        self._actor = actor
        self._causation_id = causation_id
        self._attempt = 1
        self._errors = ()
        self._correlation_id = correlation_id
        self._stamp = _stamp()
        self._event_id = None
        self._timestamp = None
        return self

    # Read-only properties: one context is shared by every handler of an event.
    @property
    def name(self) -> str:
        return self._name

    @property
    def actor(self) -> str | None:
        return self._actor

    @property
    def causation_id(self) -> str | None:
        """The event whose handler emitted this one; None for an event from outside a handler."""
        return self._causation_id

    @property
    def attempt(self) -> int:
        """1 for the first delivery; higher when an async delivery is retried or recovered."""
        return self._attempt

    @property
    def errors(self) -> tuple[str, ...]:
        """Set on the context ``emit`` returns: one line per failed handler."""
        return self._errors

    @property
    def event_id(self) -> str:
        if self._event_id is None:
            _, ms, seq = self._stamp
            self._event_id = _format_uuid7(ms, seq)
        return self._event_id

    @property
    def timestamp(self) -> dt.datetime:
        if self._timestamp is None:
            self._timestamp = _EPOCH + dt.timedelta(microseconds=self._stamp[0] // 1000)
        return self._timestamp

    @property
    def correlation_id(self) -> str:
        """Inherited from the emitting handler or request; the event's own id otherwise."""
        return self._correlation_id or self.event_id

    def with_errors(self, errors: tuple[str, ...]) -> EventContext:
        """The same context with ``errors`` set (what ``emit`` returns when handlers failed)."""
        return EventContext(
            name=self.name, event_id=self.event_id, timestamp=self.timestamp, actor=self.actor,
            correlation_id=self.correlation_id, causation_id=self.causation_id,
            attempt=self.attempt, errors=errors,
        )

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.event_id, self.name, self.timestamp, self.actor, self.correlation_id,
            self.causation_id, self.attempt, self.errors,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventContext):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self.event_id)

    def __repr__(self) -> str:
        return (
            f"EventContext(event_id={self.event_id!r}, name={self.name!r}, timestamp={self.timestamp!r}, "
            f"actor={self.actor!r}, correlation_id={self.correlation_id!r}, causation_id={self.causation_id!r}, "
            f"attempt={self.attempt!r}, errors={self.errors!r})"
        )


_new_context = object.__new__
