"""``czo-kit status``: the one screen an operator reads first. Whether the database, the cache
and the queue answer (and how fast); the outbox's live work and the age of its oldest; event
and webhook deliveries by state; dead letters; webhook targets whose circuit is open; the
workers seen recently and what each loaded. Everything is read through the same live-work
indexes as the sweeps, so it costs the same at any history size."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from czo_kit.settings import redact_url

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = ["Check", "KitStatus", "collect", "render"]


class Check(msgspec.Struct, frozen=True):
    """Whether one server answered, how fast, and where it is (password masked)."""

    name: str
    ok: bool
    url: str
    latency_ms: float | None = None
    detail: str = ""


class KitStatus(msgspec.Struct, frozen=True):
    at: dt.datetime
    checks: list[Check]
    outbox: Any = None  # czo_kit.events.OutboxStatus, when the database answered
    webhooks: dict[str, int] | None = None
    circuits: list[Any] | None = None
    workers: list[Any] | None = None
    errors: list[str] = msgspec.field(default_factory=list)
    """What could not be read (a part of the screen left out), one line each."""

    @property
    def healthy(self) -> bool:
        return all(check.ok for check in self.checks)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _timed(name: str, url: str, probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail = probe()
    except Exception as exc:  # a status screen reports a failure, it does not stop on it
        return Check(name, False, redact_url(url), None, _first_line(exc))
    return Check(name, True, redact_url(url), round((time.perf_counter() - started) * 1000, 2), detail)


def collect(kit: Kit, *, workers_seen_within: float = 60.0) -> KitStatus:
    """Everything ``czo-kit status`` shows, as data (``--json`` prints it as it is)."""
    settings = kit.settings

    def database() -> str:
        kit.db.execute_sql("SELECT 1").fetchall()
        return ""

    def cache() -> str:
        # A driver over several servers (Redis Cluster) may say which of them answer: one
        # down primary leaves only its slots' keys unreachable.
        health = getattr(kit.cache.driver, "health", None)
        if callable(health):
            ok, detail = health()
            if not ok:
                raise ConnectionError(f"{detail} (reads are served as misses meanwhile)")
            return str(detail)
        if not kit.cache.ping():
            raise ConnectionError("it does not answer (reads are served as misses meanwhile)")
        return ""

    checks = [_timed("database", settings.database_url, database), _timed("cache", settings.cache_url, cache)]
    if kit.queue is not None:
        queue = kit.queue

        def waiting() -> str:
            return f"{queue.pending_count()} task(s) waiting"

        checks.append(_timed("queue", settings.queue_url, waiting))
    else:
        checks.append(Check("queue", True, "", None, "none: events and webhooks are delivered in-process"))
    status = KitStatus(at=dt.datetime.now(dt.timezone.utc), checks=checks)
    if not checks[0].ok:
        return status  # nothing below can be read without the database
    parts: dict[str, Any] = {}
    errors: list[str] = []
    readers: dict[str, Callable[[], Any]] = {
        "outbox": kit.outbox.status,
        "webhooks": kit.webhooks.stats,
        "circuits": kit.webhooks.circuits,
        "workers": lambda: kit.outbox.workers(seen_within=workers_seen_within),
    }
    for part, read in readers.items():
        try:
            parts[part] = read()
        except Exception as exc:
            errors.append(f"{part}: {_first_line(exc)}")
        finally:
            if not kit.db.in_transaction():
                kit.db.close()  # a pooled connection goes back between parts
    return msgspec.structs.replace(status, errors=errors, **parts)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _counts(counts: dict[str, Any]) -> str:
    shown = []
    for state, value in counts.items():
        count = getattr(value, "count", value)
        age = getattr(value, "oldest_age", None)
        shown.append(f"{state} {count}" + (f" (oldest {_age(age)})" if count and age is not None else ""))
    return ", ".join(shown) or "none"


def render(status: KitStatus) -> list[str]:
    """The screen, line by line."""
    lines = [f"czo-kit status at {status.at:%Y-%m-%d %H:%M:%S} UTC"]
    for check in status.checks:
        state = "ok" if check.ok else "DOWN"
        latency = f"{check.latency_ms:.1f} ms" if check.latency_ms is not None else ""
        where = "  ".join(part for part in (check.url, check.detail) if part)
        lines.append(f"{check.name:<10} {state:<5} {latency:>9}  {where}".rstrip())
    outbox = status.outbox
    if outbox is not None:
        lines.append(f"{'outbox':<10} {_counts(outbox.outbox)}")
        lines.append(f"{'events':<10} {_counts(outbox.deliveries)}; dead letters {outbox.dead_letters}")
        for subscriber, count in sorted(outbox.waiting_subscribers.items()):
            lines.append(f"{'':<10} {count} waiting for a worker with subscriber {subscriber}")
    if status.webhooks is not None:
        shown = {state: status.webhooks.get(state, 0) for state in ("queued", "running", "retry", "dead")}
        lines.append(f"{'webhooks':<10} {_counts({**shown, **status.webhooks})}")
    if status.circuits is not None:
        if not status.circuits:
            lines.append(f"{'circuits':<10} every webhook target closed (healthy)")
        for circuit in status.circuits:
            when = ""
            if circuit.next_probe_at is not None:
                delta = (circuit.next_probe_at - status.at).total_seconds()
                when = f", next probe in {_age(delta)}" if delta > 0 else ", probe due"
            lines.append(
                f"{'circuit':<10} {circuit.origin}: {circuit.state} after {circuit.failures} failure(s)"
                f"{when}, {circuit.waiting} delivery(ies) waiting"
            )
    if status.workers is not None:
        lines.append(f"{'workers':<10} {len(status.workers)} seen recently" + ("" if status.workers else ": none"))
        for worker in status.workers:
            lines.append(
                f"{'':<10} {worker.host} pid {worker.pid} ({worker.kind}, queue {worker.queue}) "
                f"up {_age((status.at - worker.started_at).total_seconds())}, seen {_age(worker.seen_ago)} ago; "
                f"plugins: {', '.join(worker.plugins) or 'none'}"
            )
    lines.extend(f"{'unread':<10} {error}" for error in status.errors)
    return lines
