"""Background tasks of plugins (``czo_register_tasks``): one-off tasks a module enqueues and
periodic ones the consumer's scheduler starts.

Both ride on the kit's durable outbox, as async events do: ``enqueue()`` writes an outbox row
in the caller's transaction (nothing leaves before the commit, nothing at all on rollback, and
a process that dies right after the commit loses nothing: the sweep queues the row), and the
task runs on the kit's consumer (or, without a queue, on the in-process deliverer's threads)
with the outbox's retries, dead letters and replay. Each task is the one subscriber of an event
of its own, ``czo.task:<name>``, so a worker that lacks a task leaves its runs to one that has
it. A periodic task's run is claimed per (task, minute) in ``czo_task_tick``: however many
schedulers saw the minute, one run is published.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import os
import re
import threading
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import peewee

from czo_kit._cron import Cron, CronError
from czo_kit.db._tables import ensure_tables
from czo_kit.db.model import KitTable, UTCDateTimeField, utcnow
from czo_kit.errors import CzoError, PluginError
from czo_kit.plugins import registering_plugin

if TYPE_CHECKING:
    from huey import Huey

    from czo_kit.kit import Kit

__all__ = [
    "TASK_EVENT_PREFIX",
    "TASK_MODELS",
    "TICK_TASK",
    "Task",
    "TaskError",
    "TaskRegistry",
    "TaskTick",
]

log = logging.getLogger("czo_kit.tasks")

TASK_EVENT_PREFIX = "czo.task:"
"""Event names of tasks in the outbox (``czo-kit events`` lists their runs under them)."""
TICK_TASK = "czo_tasks_tick"
"""The Huey periodic task the consumer's scheduler enqueues every minute."""
TICK_KEEP = dt.timedelta(days=2)
"""How long the claim of a tick is kept; a tick older than this is skipped, not run (its claim
may be gone)."""
CATCH_UP_MINUTES = 60
"""Minutes a sweep without a queue looks back for ticks it missed (a long sweep interval)."""

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,149}")
_ENCODABLE = (
    "None, bool, int, float, str, bytes, datetime, date, time, timedelta, UUID, Decimal, enums, "
    "lists, tuples, sets and dicts with str keys of those, msgspec Structs and dataclasses"
)


class TaskError(CzoError, ValueError):
    """A task was asked to run with arguments it cannot take or a worker cannot receive, or a
    task name that nobody registered."""


class TaskTick(KitTable):
    """A periodic task's run for one minute, claimed by the first worker that saw the minute:
    the unique key is what keeps several workers' schedulers from running it twice."""

    task = peewee.CharField(max_length=200)
    tick = UTCDateTimeField()
    claimed_at = UTCDateTimeField()
    pid = peewee.IntegerField(null=True)

    class Meta:
        table_name = "czo_task_tick"
        indexes = ((("task", "tick"), True),)


TASK_MODELS: tuple[type[peewee.Model], ...] = (TaskTick,)


class Task:
    """A registered task. ``enqueue(*args, **kwargs)`` runs it on a worker, after the commit
    when called inside a transaction; returns the id of the run (its outbox event id)."""

    def __init__(
        self,
        registry: TaskRegistry,
        fn: Callable[..., Any],
        *,
        name: str,
        plugin: str | None,
        retries: int,
        retry_delay: float,
        priority: int,
        cron: Cron | None,
    ) -> None:
        self._registry = registry
        self.fn = fn
        self.name = name
        self.plugin = plugin
        self.retries = retries
        self.retry_delay = retry_delay
        self.priority = priority
        self.cron = cron
        self.event = TASK_EVENT_PREFIX + name.lower().replace("_", "-")
        self.signature = _signature(fn)
        kit_param = self.signature.parameters.get("kit") if self.signature is not None else None
        # Only a parameter that can be passed by keyword asks for the kit.
        self.wants_kit = kit_param is not None and kit_param.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
        )
        self._hints: dict[str, Any] | None = None

    def enqueue(self, *args: Any, **kwargs: Any) -> str:
        """Run the task on a worker with these arguments (encoded with msgspec, never pickled)."""
        return self._registry._enqueue(self, self.encode(args, kwargs))

    def encode(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
        """The arguments as the worker receives them; refused here, naming the argument,
        when the task cannot take them or msgspec cannot encode them."""
        if self.wants_kit and "kit" in kwargs:
            raise TaskError(f"task {self.name!r}: do not pass kit=; the worker passes its own kit")
        if self.signature is not None:
            try:
                self.signature.bind(*args, **kwargs, **({"kit": None} if self.wants_kit else {}))
            except TypeError as exc:
                raise TaskError(
                    f"task {self.name!r} cannot take these arguments: {exc}; "
                    f"its signature is {self.name}{_plain(self.signature)}"
                ) from None
        try:
            return msgspec.msgpack.encode({"args": list(args), "kwargs": dict(kwargs)})
        except (TypeError, ValueError, OverflowError):
            pass
        labelled = [(f"{n + 1} ({self._positional_name(n)})", value) for n, value in enumerate(args)]
        labelled += [(repr(key), value) for key, value in kwargs.items()]
        for label, value in labelled:
            try:
                msgspec.msgpack.encode(value)
            except (TypeError, ValueError, OverflowError) as exc:
                shown = repr(value)
                raise TaskError(
                    f"task {self.name!r}: argument {label} = {shown[:80]}{'...' if len(shown) > 80 else ''} "
                    f"(a {type(value).__name__}) cannot be sent to a worker: {exc}; arguments are encoded "
                    f"with msgspec, which takes {_ENCODABLE} (pass an id rather than an object)"
                ) from None
        raise TaskError(f"task {self.name!r}: its arguments cannot be encoded with msgspec")  # pragma: no cover

    def _positional_name(self, index: int) -> str:
        if self.signature is not None:
            params = [
                p for p in self.signature.parameters.values()
                if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            ]
            if index < len(params):
                return params[index].name
        return "*args"

    def decode(self, payload: Any) -> tuple[list[Any], dict[str, Any]]:
        """The arguments of a run, each converted to its parameter's annotation where it has
        one msgspec knows (a Struct comes back a Struct, a UUID a UUID, not a dict or a str)."""
        args = list(payload.get("args") or ())
        kwargs = dict(payload.get("kwargs") or {})
        hints = self._type_hints()
        if not hints or self.signature is None:
            return args, kwargs
        bound = self.signature.bind_partial(*args, **kwargs)
        for key, value in bound.arguments.items():
            param = self.signature.parameters[key]
            hint = hints.get(key)
            if hint is None or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            try:
                bound.arguments[key] = msgspec.convert(value, hint, strict=False)
            except TypeError:  # a type msgspec does not know: the value as it came
                continue
        return list(bound.args), dict(bound.kwargs)

    def _type_hints(self) -> dict[str, Any]:
        if self._hints is None:
            try:
                hints = typing.get_type_hints(self.fn)
            except Exception:  # names only importable under TYPE_CHECKING: go without
                hints = {}
            hints.pop("return", None)
            hints.pop("kit", None)
            self._hints = hints
        return self._hints

    def run(self, payload: Any, kit: Kit) -> Any:
        """Run the task here, now, with a run's decoded payload (what a worker does)."""
        args, kwargs = self.decode(payload)
        if self.wants_kit:
            kwargs["kit"] = kit
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        kind = f"periodic {self.cron.expression!r}" if self.cron is not None else "task"
        return f"<Task {self.name} ({kind})>"


class TaskRegistry:
    """``kit.tasks``: what plugins registered through ``czo_register_tasks``, and what runs them.

    ``register.task(fn, *, retries=0, retry_delay=0, priority=0, name=None)`` returns a
    ``Task``; ``register.periodic(fn, *, cron="*/5 * * * *", name=None)`` runs ``fn`` once per
    matching minute (UTC) across all workers. A task is named ``<plugin>.<function name>``
    unless ``name=`` says otherwise: the name is how a worker finds the task, so keep it stable.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._by_event: dict[str, str] = {}
        self._kit: Kit | None = None
        self.db: peewee.Database | None = None
        """The kit's database once bound (the sweeper gives its connections back)."""
        self._lock = threading.Lock()
        self._last_minute: dt.datetime | None = None
        self._tables_ready = False

    # -- registration -------------------------------------------------------------------

    def task(
        self,
        fn: Callable[..., Any],
        *,
        retries: int = 0,
        retry_delay: float = 0,
        priority: int = 0,
        name: str | None = None,
    ) -> Task:
        """Register ``fn`` as a task; ``retries`` more attempts after a failure, each
        ``retry_delay`` seconds after the last; ``priority`` 0-100, higher first."""
        return self._add(fn, name=name, retries=retries, retry_delay=retry_delay, priority=priority, cron=None)

    def periodic(self, fn: Callable[..., Any], *, cron: str = "*/5 * * * *", name: str | None = None) -> Task:
        """Run ``fn()`` (or ``fn(kit=kit)``) once at every minute ``cron`` names, in UTC, on
        one of the workers."""
        plugin = registering_plugin()
        try:
            parsed = Cron(cron)
        except CronError as exc:
            raise PluginError(f"{_who(plugin)}periodic task {_fn_label(fn)}: {exc}") from None
        return self._add(fn, name=name, retries=0, retry_delay=0, priority=50, cron=parsed)

    def _add(
        self, fn: Any, *, name: str | None, retries: Any, retry_delay: Any, priority: Any, cron: Cron | None
    ) -> Task:
        plugin = registering_plugin()
        who = _who(plugin)
        kind = "periodic task" if cron is not None else "task"
        if not callable(fn):
            raise PluginError(f"{who}{kind} {fn!r} is not callable; register a function")
        if inspect.iscoroutinefunction(fn):
            raise PluginError(f"{who}{kind} {_fn_label(fn)} is a coroutine function; register a plain function")
        task_name = _task_name(fn, name, plugin, who, kind)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise PluginError(f"{who}task {task_name!r}: retries must be an integer from 0 to 100, got {retries!r}")
        if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or not 0 <= retry_delay <= 86400:
            raise PluginError(
                f"{who}task {task_name!r}: retry_delay must be a number of seconds from 0 to 86400, got {retry_delay!r}"
            )
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise PluginError(f"{who}task {task_name!r}: priority must be an integer from 0 to 100, got {priority!r}")
        task = Task(self, fn, name=task_name, plugin=plugin, retries=retries, retry_delay=float(retry_delay),
                    priority=priority, cron=cron)
        if cron is not None and task.signature is not None:
            try:
                task.signature.bind(**({"kit": None} if task.wants_kit else {}))
            except TypeError:
                raise PluginError(
                    f"{who}periodic task {task_name!r} must take no arguments (but kit=), "
                    f"its signature is {_plain(task.signature)}"
                ) from None
        with self._lock:
            other = self._tasks.get(task_name) or self._tasks.get(self._by_event.get(task.event, ""))
            if other is not None:
                raise PluginError(
                    f"{who}task name {task_name!r} is already taken by {other.name!r} of "
                    f"{_who(other.plugin).rstrip(': ') or 'code outside a plugin'}; task names are "
                    "unique (compared without case, '_' as '-'): pass name= to tell them apart"
                )
            self._tasks[task_name] = task
            self._by_event[task.event] = task_name
        if self._kit is not None:
            self._attach(task, self._kit)
        return task

    # -- what the kit and tools read ----------------------------------------------------

    def get(self, name: str) -> Task:
        """The task registered under ``name`` (``TaskError`` naming those that are)."""
        task = self._tasks.get(name)
        if task is None:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise TaskError(f"no task is registered as {name!r}; registered: {known}")
        return task

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def periodic_tasks(self) -> list[Task]:
        return [task for task in self._tasks.values() if task.cron is not None]

    def contributions(self) -> dict[str, list[str]]:
        """What each plugin registered: ``task <name>`` and ``periodic <name> (<cron>)``."""
        found: dict[str, list[str]] = {}
        for task in self._tasks.values():
            if task.plugin is None:
                continue
            label = f"periodic {task.name} ({task.cron.expression})" if task.cron is not None else f"task {task.name}"
            found.setdefault(task.plugin, []).append(label)
        return found

    # -- wiring -------------------------------------------------------------------------

    def bind(self, kit: Kit) -> None:
        """Subscribe every task to its event on ``kit`` and, with a queue, put the tick on the
        consumer's scheduler. Called by the kit once plugins have registered."""
        self._kit = kit
        self.db = kit.db
        for task in list(self._tasks.values()):
            self._attach(task, kit)
        if kit.queue is not None and self.periodic_tasks():
            self._add_tick(kit.queue)

    def _attach(self, task: Task, kit: Kit) -> None:
        def run(payload: Any, ctx: Any) -> None:
            task.run(payload, kit)

        run.__qualname__ = run.__name__ = task.name
        kit.events.on(task.event, run, id=task.name)
        kit.outbox.retry_delays[f"{task.event}|{task.name}"] = task.retry_delay
        if task.cron is not None and kit.queue is not None:
            self._add_tick(kit.queue)

    def _add_tick(self, huey: Huey) -> None:
        from huey.api import PeriodicTask

        if _has_tick(huey):
            return
        registry = self

        def czo_tasks_tick(minute: str) -> None:
            registry.tick(dt.datetime.fromisoformat(minute))

        def validate_datetime(task: Any, timestamp: dt.datetime) -> bool:
            # The scheduler enqueues the very instance it asked: it carries the minute it saw,
            # so two workers' schedulers name the same tick for the same minute.
            task.args = (_minute(timestamp).isoformat(),)
            return True

        huey.task_wrapper_class(
            huey, czo_tasks_tick, name=TICK_TASK, validate_datetime=validate_datetime, task_base=PeriodicTask
        )

    def schedule_tick(self, when: dt.datetime) -> None:
        """Enqueue the tick of ``when``'s minute on the queue, as a consumer's scheduler does
        every minute (a worker then runs the periodic tasks due at that minute, once)."""
        kit = self._bound()
        if kit.queue is None:
            raise TaskError("this kit has no queue (CZO_QUEUE_URL is empty): call kit.tasks.tick(when) instead")
        self._add_tick(kit.queue)
        task_class = kit.queue._registry._registry[_TICK_KEY]
        kit.queue.enqueue(task_class(args=(_minute(when).isoformat(),)))

    # -- running ------------------------------------------------------------------------

    def _bound(self) -> Kit:
        if self._kit is None:
            raise TaskError("this task registry is not bound to a kit (tasks run through kit.tasks)")
        return self._kit

    def _enqueue(self, task: Task, payload: bytes) -> str:
        kit = self._bound()
        ctx = kit.events._context(task.event, None)  # the actor and correlation of the caller
        kit.outbox.publish(ctx, payload, delay=0.0, retries=task.retries, priority=task.priority, background=True)
        return ctx.event_id

    def tick(self, when: dt.datetime) -> list[str]:
        """Publish one run of every periodic task due at ``when``'s minute whose run for that
        minute nobody claimed yet; returns the names of those this call claimed."""
        kit = self._bound()
        minute = _minute(when)
        due = [task for task in self.periodic_tasks() if task.cron is not None and task.cron.matches(minute)]
        if not due:
            return []
        if minute < utcnow() - TICK_KEEP:
            # Its claim may be pruned already: running it could run that minute twice.
            log.warning("the tick of %s is older than %s (a queue that was down?); skipped", minute, TICK_KEEP)
            return []
        if not self._tables_ready:
            self._tables_ready = ensure_tables(kit.db, TASK_MODELS)
        claimed: list[str] = []
        for task in due:
            with kit.db.atomic():
                try:
                    with kit.db.atomic():  # a savepoint: losing the race must not abort the rest
                        TaskTick.insert(task=task.name, tick=minute, claimed_at=utcnow(), pid=os.getpid()).execute(kit.db)
                except peewee.IntegrityError:
                    log.info("periodic task %s: the tick of %s was claimed by another worker", task.name, minute)
                    continue
                # Pruned by the clock, not by this minute: an older tick still in a queue must
                # find its claim (ticks older than the clock's cut are skipped above).
                cut = utcnow() - TICK_KEEP
                TaskTick.delete_rows().where((TaskTick.task == task.name) & (TaskTick.tick < cut)).execute(kit.db)
                # The claim and the run's outbox row commit together: a claimed tick always runs.
                self._enqueue(task, msgspec.msgpack.encode({"args": [], "kwargs": {}}))
            log.info("periodic task %s: tick of %s claimed (pid %d)", task.name, minute, os.getpid())
            claimed.append(task.name)
        return claimed

    def sweep(self, now: dt.datetime | None = None) -> dict[str, int]:
        """Without a queue, the in-process deliverer's sweeper is the scheduler: tick every
        minute since the last sweep (up to ``CATCH_UP_MINUTES``). With a queue, nothing: the
        consumers' schedulers tick."""
        kit = self._bound()
        if kit.queue is not None or not self.periodic_tasks():
            return {}
        current = _minute(now if now is not None else utcnow())
        with self._lock:
            last = self._last_minute
            if last is not None and current <= last:
                return {}
            self._last_minute = current
        start = current if last is None else max(last + dt.timedelta(minutes=1),
                                                 current - dt.timedelta(minutes=CATCH_UP_MINUTES - 1))
        claimed = 0
        minute = start
        while minute <= current:
            claimed += len(self.tick(minute))
            minute += dt.timedelta(minutes=1)
        return {"periodic": claimed}


def _minute(when: dt.datetime) -> dt.datetime:
    """``when``'s minute in UTC (a naive datetime is taken as UTC, as Huey's ``utc=True`` gives)."""
    if not isinstance(when, dt.datetime):
        raise TaskError(f"a tick is a datetime (its minute, UTC if naive), got {when!r}")
    when = when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)
    return when.replace(second=0, microsecond=0)


_TICK_KEY = f"{__name__}.{TICK_TASK}"  # Huey's registry names a task by its module and name


def _has_tick(huey: Huey) -> bool:
    return _TICK_KEY in huey._registry._registry


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: arguments are not checked early
        return None


def _plain(signature: inspect.Signature) -> str:
    """A signature without its annotations (under postponed annotations they show as strings)."""
    empty = inspect.Parameter.empty
    bare = [p.replace(annotation=empty, default=empty if p.default is empty else ...) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=empty)).replace("=Ellipsis", "=...")


def _who(plugin: str | None) -> str:
    return f"plugin {plugin!r}: " if plugin is not None else ""


def _fn_label(fn: Any) -> str:
    return repr(getattr(fn, "__qualname__", None) or fn)


def _task_name(fn: Any, name: str | None, plugin: str | None, who: str, kind: str) -> str:
    if name is None:
        base = getattr(fn, "__name__", None)
        if not isinstance(base, str) or not base.isidentifier():
            raise PluginError(f"{who}{kind} {fn!r} has no function name to be known by; pass name=")
        # A plugin registered without a name is known by a number that changes with every
        # process: its functions' module names the task instead, the same in every worker.
        namespace = plugin if plugin is not None and not plugin.isdigit() else getattr(fn, "__module__", None) or "tasks"
        name = f"{namespace}.{base}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PluginError(
            f"{who}{kind} name {name!r} is not allowed: use 1-150 letters, digits and '_.:-', "
            "starting with a letter, digit or '_' (such as 'my_plugin.send_digest')"
        )
    return name
