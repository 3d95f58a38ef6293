"""``czo-kit events ...``: what an operator sees and does about async events (status, dead
letters and their tracebacks, replay, discard, sweep, prune). Listings take ``--json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

__all__ = ["events_group"]


@contextmanager
def _kit() -> Iterator[Any]:
    from czo_kit.cli import _kit as kit_of_this_command  # the CLI's own error reporting

    with kit_of_this_command() as kit:
        yield kit


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group("events")
def events_group() -> None:
    """Inspect async event deliveries, and replay dead letters."""


@events_group.command("status")
@click.option("--all", "finished", is_flag=True,
              help="Also count delivered rows kept for CZO_EVENTS_RETENTION (reads them all).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def events_status(finished: bool, as_json: bool) -> None:
    """Count the events and deliveries still at work, by state, with the age of the oldest;
    open dead letters; and the subscribers whose deliveries wait for a worker that has them."""
    import msgspec

    with _kit() as kit:
        status = kit.outbox.status(finished=finished)
    if as_json:
        _echo_json(msgspec.to_builtins(status))
        return
    click.echo("outbox (committed events not yet dispatched)")
    for state, row in status.outbox.items():
        age = f"  oldest due {_age(row.oldest_age)} ago" if row.oldest_age is not None else ""
        later = f"  {row.scheduled} delayed, not due yet" if row.scheduled else ""
        click.echo(f"  {state:<10}{row.count:>8}{age}{later}")
    click.echo("deliveries (one per event and subscriber)")
    for state, row in status.deliveries.items():
        age = f"  oldest {_age(row.oldest_age)}" if row.oldest_age is not None else ""
        click.echo(f"  {state:<10}{row.count:>8}{age}")
    hint = "  (czo-kit events dead)" if status.dead_letters else ""
    click.echo(f"  {'dead':<10}{status.dead_letters:>8}{hint}")
    if status.finished is not None:
        click.echo("finished (kept until CZO_EVENTS_RETENTION runs out)")
        for state, count in status.finished.items():
            click.echo(f"  {state:<10}{count:>8}")
    if status.waiting_subscribers:
        click.echo("waiting for a worker that has their subscriber (start one, or discard a subscriber "
                   "removed on purpose with `czo-kit events discard --subscriber NAME`):")
        for subscriber, count in sorted(status.waiting_subscribers.items()):
            click.echo(f"  {subscriber}  {count}")


def _age(seconds: float) -> str:
    """``12s``, ``3m 05s``, ``2h 03m``, ``4d 02h``: an age an operator reads at a glance."""
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit} {(whole % size) // sub_size:02d}{sub}"
    return f"{whole}s"  # pragma: no cover - every value of at least 60 matched above


if TYPE_CHECKING:
    _FloatParam = click.ParamType[float]
else:  # click before 8.2 (the range pyproject allows) has no generic ParamType
    _FloatParam = click.ParamType


class Duration(_FloatParam):
    """``30d``, ``12h``, ``15m``, ``90s``, ``1w`` or a number of seconds."""

    name = "duration"
    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        unit = self._UNITS.get(text[-1:]) if text else None
        number = text[:-1] if unit is not None else text
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0 or seconds == float("inf"):
            self.fail(f"{value!r} is not a duration; write e.g. 30d, 12h, 15m, 90s, 1w or a number of seconds",
                      param, ctx)
        return seconds


@events_group.command("discard")
@click.argument("dead_letter_id", required=False)
@click.option("--older-than", type=Duration(), default=None, metavar="DURATION",
              help="Every open dead letter that died longer ago than this (e.g. 30d).")
@click.option("--subscriber", default=None, metavar="NAME",
              help="Every delivery not run yet of a subscriber removed on purpose (e.g. 'item.created|audit').")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def events_discard(dead_letter_id: str | None, older_than: float | None, subscriber: str | None, yes: bool) -> None:
    """Give up on dead letter DEAD_LETTER_ID, on every dead letter --older-than DURATION, or on
    the deliveries of a --subscriber removed on purpose. Discarded dead letters are kept (not
    replayable) until CZO_EVENTS_RETENTION prunes them."""
    given = [name for name, value in (("DEAD_LETTER_ID", dead_letter_id), ("--older-than", older_than),
                                      ("--subscriber", subscriber)) if value is not None]
    if len(given) != 1:
        raise click.UsageError("give one of DEAD_LETTER_ID, --older-than DURATION or --subscriber NAME"
                               + (f" (got {', '.join(given)})" if given else ""))
    if dead_letter_id is not None and not dead_letter_id.isdigit():
        hint = f" (to discard the deliveries of that subscriber: --subscriber {dead_letter_id!r})" if "|" in \
            dead_letter_id else ""
        raise click.UsageError(f"DEAD_LETTER_ID must be a number, got {dead_letter_id!r}{hint}")
    with _kit() as kit:
        if subscriber is not None:
            _discard_subscriber(kit, subscriber, yes=yes)
            return
        if dead_letter_id is not None:
            kit.outbox.discard_dead(int(dead_letter_id))
            click.echo(f"dead letter {dead_letter_id} discarded")
            return
        assert older_than is not None
        if not yes:
            click.confirm(f"Discard every open dead letter that died more than {older_than:g}s ago?", abort=True)
        count = kit.outbox.discard_dead(older_than=older_than)
        click.echo(f"discarded {count} dead letter{'' if count == 1 else 's'}")


def _discard_subscriber(kit: Any, subscriber: str, *, yes: bool) -> None:
    if kit.events.subscription(subscriber) is not None:
        raise click.ClickException(
            f"subscriber {subscriber!r} is registered in this installation: a worker will run its "
            "deliveries; discard only a subscriber that was removed"
        )
    waiting = kit.outbox.waiting().get(subscriber, 0)
    if not yes:
        click.confirm(
            f"Discard every delivery of {subscriber!r} not run yet ({waiting} waiting for a worker)?",
            abort=True,
        )
    count = kit.outbox.discard(subscriber)
    click.echo(f"discarded {count} deliver{'y' if count == 1 else 'ies'} of {subscriber!r}")


@events_group.command("prune")
@click.option("--older-than", type=Duration(), default=None, metavar="DURATION",
              help="Keep what is younger than this (default: CZO_EVENTS_RETENTION).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def events_prune(older_than: float | None, as_json: bool) -> None:
    """Delete delivered events, finished deliveries, replayed or discarded dead letters and
    idempotency markers older than the retention, in small batches (the worker does it at
    its sweeps). Nothing still at work and no open dead letter is ever deleted."""
    with _kit() as kit:
        counts = kit.outbox.prune(older_than=older_than)
    if as_json:
        _echo_json(counts)
        return
    click.echo(", ".join(f"{kind}: {count}" for kind, count in counts.items()))


@events_group.command("dead")
@click.argument("dead_letter_id", type=click.IntRange(1), required=False)
@click.option("--all", "include_replayed", is_flag=True, help="Include dead letters already replayed or discarded.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def events_dead(dead_letter_id: int | None, include_replayed: bool, limit: int, as_json: bool) -> None:
    """List deliveries that exhausted their retries, newest first; with DEAD_LETTER_ID, show
    that one with the traceback of its last attempt."""
    from czo_kit.events._admin import dead_letter_dict

    with _kit() as kit:
        if dead_letter_id is not None:
            letter = kit.outbox.dead_letter(dead_letter_id)
            if as_json:
                _echo_json(dead_letter_dict(letter))
            else:
                _show_dead_letter(letter)
            return
        letters = kit.outbox.dead_letters(include_replayed=include_replayed, limit=limit)
        if as_json:
            _echo_json([dead_letter_dict(letter) for letter in letters])
            return
        if not letters:
            click.echo("no dead letters")
        for letter in letters:
            replayed = f" (replayed {letter.replayed_at:%Y-%m-%d %H:%M})" if letter.replayed_at else ""
            if letter.discarded_at:
                replayed = f" (discarded {letter.discarded_at:%Y-%m-%d %H:%M})"
            click.echo(
                f"{letter.id}  {letter.died_at:%Y-%m-%d %H:%M:%S}  {letter.name}  -> {letter.subscriber}  "
                f"after {letter.attempts} attempt(s): {letter.error}{replayed}"
            )


def _show_dead_letter(letter: Any) -> None:
    replayed = f"{letter.replayed_at:%Y-%m-%d %H:%M:%S} UTC" if letter.replayed_at else "no"
    if letter.discarded_at:
        replayed = f"no, discarded {letter.discarded_at:%Y-%m-%d %H:%M:%S} UTC"
    for label, value in (
        ("dead letter", letter.id),
        ("event", f"{letter.name} {letter.event_id}"),
        ("subscriber", letter.subscriber),
        ("died", f"{letter.died_at:%Y-%m-%d %H:%M:%S} UTC after {letter.attempts} attempt(s)"),
        ("delivery", letter.delivery_id),
        ("replayed", replayed),
        ("error", letter.error or "-"),
    ):
        click.echo(f"{label + ':':<13}{value}")
    click.echo("")
    click.echo((letter.traceback or "(no traceback: this attempt did not raise in a handler)").rstrip("\n"))


@events_group.command("replay")
@click.argument("dead_letter_id", type=click.IntRange(1))
def events_replay(dead_letter_id: int) -> None:
    """Send dead letter DEAD_LETTER_ID again, with a fresh set of retries."""
    with _kit() as kit:
        delivery = kit.outbox.replay(dead_letter_id)
        click.echo(f"dead letter {dead_letter_id} queued again (delivery {delivery})")


@events_group.command("sweep")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def events_sweep(as_json: bool) -> None:
    """Re-queue events and deliveries that a crash left behind (the worker does this too)."""
    with _kit() as kit:
        kit.outbox.queue.pending()  # it needs the queue: one that does not answer is the error
        counts = kit.outbox.sweep()
    if as_json:
        _echo_json(counts)
        return
    click.echo(", ".join(f"{k}: {v}" for k, v in counts.items()) or "nothing to do")


def run_without_queue(kit: Any, *, workers: int, worker_type: str, sweep_interval: float | None) -> None:
    """``czo-kit worker`` without a queue: the in-process deliverer in the foreground, until
    SIGINT or SIGTERM; then what is due runs by CZO_EVENTS_SHUTDOWN_TIMEOUT (kit.close())."""
    import signal
    import threading

    if worker_type != "thread":
        raise click.ClickException(
            f"-k {worker_type} needs a queue (CZO_QUEUE_URL); without one the worker runs threads"
        )
    deliverer = kit.deliverer
    deliverer.workers = workers
    if sweep_interval:
        deliverer.sweep_interval = sweep_interval
    stop = threading.Event()

    def stop_on(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stop_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        deliverer.start()
        click.echo(
            f"czo-kit worker: no queue (CZO_QUEUE_URL is empty): {workers} thread(s) deliver events and "
            f"webhooks in this process; sweeping every {deliverer.sweep_interval:g}s", err=True,
        )
        while not stop.wait(3600):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
