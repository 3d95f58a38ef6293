"""The ``czo-kit apps`` and ``czo-kit webhooks`` command groups: installs, tokens and secrets
of apps, and the webhook deliveries an operator inspects, sends again or clears."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

__all__ = ["apps_group", "webhooks_group"]


@contextmanager
def _kit() -> Iterator[Any]:
    # czo_kit.cli imports this module: take its kit context only when a command runs.
    from czo_kit.cli import _kit as kit_context

    with kit_context() as kit:
        yield kit


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_value))


def shown_url(url: str) -> str:
    from czo_kit.apps.net import shown_url as shown  # the apps package is heavy: import on use

    return shown(url)


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


if TYPE_CHECKING:
    _FloatParam = click.ParamType[float]
else:  # click < 8.2, which the kit allows, has no generic ParamType at run time
    _FloatParam = click.ParamType


class Duration(_FloatParam):
    """A length of time: ``90s``, ``15m``, ``12h``, ``7d``, ``2w``, or plain seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        unit = _UNITS.get(text[-1:], None)
        number = text[:-1] if unit is not None else text
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            seconds = -1.0
        if not number or not seconds >= 0 or seconds == float("inf"):
            self.fail(
                f"{value!r} is not a duration: give a number followed by s, m, h, d or w "
                "(90s, 15m, 12h, 7d, 2w), or plain seconds", param, ctx,
            )
        return seconds


def _age(seconds: float) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@click.group("apps")
def apps_group() -> None:
    """Install, list and remove apps, shop by shop."""


@apps_group.command("list")
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
@json_option
def apps_list(shop_id: int, as_json: bool) -> None:
    """List the apps installed in a shop."""
    with _kit() as kit:
        rows = kit.apps.list(shop_id)
        if as_json:
            _echo_json([
                {"app_id": row.app_id, "name": row.name, "version": row.version, "shop_id": row.shop_id,
                 "installation_id": row.id, "permissions": json.loads(row.permissions),
                 "installed_at": row.installed_at, "installed_by": row.installed_by}
                for row in rows
            ])
            return
        if not rows:
            click.echo(f"no apps in shop {shop_id}")
        for row in rows:
            click.echo(f"{row.app_id}  {row.name} {row.version}  installed {row.installed_at:%Y-%m-%d %H:%M} by {row.installed_by}")


@apps_group.command("install")
@click.argument("manifest_url", metavar="MANIFEST_URL|APP_ID")
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
@click.option("--user", "user_id", required=True, help="Installing user (must hold apps:manage and every permission asked).")
def apps_install(manifest_url: str, shop_id: int, user_id: str) -> None:
    """Install the app whose manifest is at MANIFEST_URL, or the in-process app APP_ID (one a
    plugin registered; `czo-kit plugins` lists them). The token is printed once."""
    with _kit() as kit:
        # An app id never holds "://" (its manifest's pattern): anything else is a URL.
        source = {"manifest_url": manifest_url} if "://" in manifest_url else {"app_id": manifest_url}
        result = kit.apps.install(shop_id=shop_id, installer_id=user_id, **source)
        click.echo(f"installed {result.app_id} in shop {shop_id}")
        click.echo(f"app token (shown once): {result.token}")


@apps_group.command("uninstall")
@click.argument("app_id")
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
def apps_uninstall(app_id: str, shop_id: int) -> None:
    """Remove APP_ID from a shop, with its tokens and pending webhooks."""
    with _kit() as kit:
        kit.apps.uninstall(shop_id=shop_id, app_id=app_id)
        click.echo(f"uninstalled {app_id} from shop {shop_id}")


@apps_group.command("tokens")
@click.argument("app_id")
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
@json_option
def apps_tokens(app_id: str, shop_id: int, as_json: bool) -> None:
    """List APP_ID's tokens in a shop (their last four characters only)."""
    with _kit() as kit:
        tokens = kit.apps.tokens(shop_id=shop_id, app_id=app_id)
        if as_json:
            _echo_json([
                {"id": t.id, "name": t.name, "last4": t.last4, "created_at": t.created_at, "revoked_at": t.revoked_at}
                for t in tokens
            ])
            return
        for token in tokens:
            state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
            click.echo(f"{token.id}  {token.name:<16} ...{token.last4}  created {token.created_at:%Y-%m-%d %H:%M}  {state}")


@apps_group.command("token")
@click.argument("app_id")
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
@click.option("--name", default="cli", show_default=True, help="A label for the token.")
def apps_token(app_id: str, shop_id: int, name: str) -> None:
    """Create another token for APP_ID; it is printed once."""
    with _kit() as kit:
        token_id, token = kit.apps.create_token(shop_id=shop_id, app_id=app_id, name=name)
        click.echo(f"token {token_id} (shown once): {token}")


@apps_group.command("revoke-token")
@click.argument("app_id")
@click.argument("token_id", type=click.IntRange(1))
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
def apps_revoke_token(app_id: str, token_id: int, shop_id: int) -> None:
    """Revoke token TOKEN_ID of APP_ID: it stops working at once."""
    with _kit() as kit:
        kit.apps.revoke_token(shop_id=shop_id, app_id=app_id, token_id=token_id)
        click.echo(f"token {token_id} of {app_id} revoked")


@apps_group.command("rotate-secret")
@click.argument("app_id")
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
@click.option("--grace", type=click.FloatRange(0, 30 * 86400), default=86400.0, show_default=True,
              help="Seconds the old secret keeps signing next to the new one.")
def apps_rotate_secret(app_id: str, shop_id: int, grace: float) -> None:
    """Give APP_ID a new webhook secret (sent to its token_target_url); the old one is kept for --grace."""
    with _kit() as kit:
        kit.apps.rotate_webhook_secret(shop_id=shop_id, app_id=app_id, grace=grace)
        click.echo(f"new webhook secret for {app_id} in shop {shop_id}; the old one signs too for {grace:g}s")


@click.group("webhooks")
def webhooks_group() -> None:
    """Inspect webhook deliveries and send failed ones again."""


def _circuit_json(circuit: Any) -> dict[str, Any]:
    return {
        "origin": circuit.origin, "state": circuit.state, "failures": circuit.failures,
        "next_probe_at": circuit.next_probe_at, "probe_started_at": circuit.probe_started_at,
    }


def _delivery_json(row: Any, circuits: dict[str, Any]) -> dict[str, Any]:
    from czo_kit.apps._webhook_ops import next_attempt_at

    circuit = circuits.get(row.origin)
    return {
        "id": row.id, "state": row.state, "event": row.event_name, "event_id": row.event_id,
        "message_id": row.message_id, "shop_id": row.shop_id, "webhook": row.webhook_name,
        "target": shown_url(row.target_url), "attempts": row.attempts, "max_attempts": row.max_attempts,
        "last_status": row.last_status, "last_error": row.last_error,
        "created_at": row.created_at, "updated_at": row.updated_at, "delivered_at": row.delivered_at,
        "next_attempt_at": next_attempt_at(row, circuit),
        "circuit": _circuit_json(circuit) if circuit is not None else None,
    }


def _next(at: dt.datetime | None) -> str:
    if at is None:
        return "-"
    return "now" if at <= dt.datetime.now(dt.timezone.utc) else _when(at)


def _print_deliveries(rows: list[Any], circuits: dict[str, Any]) -> None:
    from czo_kit.apps._webhook_ops import next_attempt_at

    if not rows:
        click.echo("no deliveries")
    for row in rows:
        status = row.last_status if row.last_status is not None else "-"
        circuit = circuits.get(row.origin)
        click.echo(
            f"{row.id}  {row.state:<9} {row.event_name:<20} shop {row.shop_id}  -> {shown_url(row.target_url)}  "
            f"attempts {row.attempts}/{row.max_attempts}  last {status}  "
            f"circuit {circuit.state if circuit is not None else 'closed'}  next {_next(next_attempt_at(row, circuit))}"
            f"{'  ' + row.last_error if row.last_error else ''}"
        )


def _list_deliveries(kit: Any, rows: list[Any], *, as_json: bool) -> None:
    circuits = kit.webhooks.circuit_states({str(row.origin) for row in rows})
    if as_json:
        _echo_json([_delivery_json(row, circuits) for row in rows])
    else:
        _print_deliveries(rows, circuits)


@webhooks_group.command("deliveries")
@click.option("--state", type=click.Choice(["queued", "running", "retry", "delivered", "dead"]), default=None)
@click.option("--shop", "shop_id", type=click.IntRange(1), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
def webhooks_deliveries(state: str | None, shop_id: int | None, limit: int, as_json: bool) -> None:
    """List recent deliveries, newest first."""
    with _kit() as kit:
        _list_deliveries(kit, kit.webhooks.deliveries(state=state, shop_id=shop_id, limit=limit), as_json=as_json)


@webhooks_group.command("dead")
@click.argument("delivery_id", type=click.IntRange(1), required=False)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
def webhooks_dead(delivery_id: int | None, limit: int, as_json: bool) -> None:
    """List deliveries that failed for good (dead letters), newest first; with DELIVERY_ID,
    show that delivery with every attempt and the traceback of its last failure."""
    with _kit() as kit:
        if delivery_id is None:
            _list_deliveries(kit, kit.webhooks.deliveries(state="dead", limit=limit), as_json=as_json)
            return
        row = kit.webhooks.delivery(delivery_id)
        attempts = kit.webhooks.attempts(delivery_id)
        if as_json:
            _echo_json({
                **_delivery_json(row, kit.webhooks.circuit_states([row.origin])), "last_error_detail": row.last_error_detail,
                "attempt_log": [
                    {"attempt": a.attempt, "at": a.at, "status": a.status, "duration_ms": a.duration_ms,
                     "response": a.response, "error": a.error, "error_detail": a.error_detail}
                    for a in attempts
                ],
            })
            return
        _print_delivery(row, attempts)


def _print_delivery(row: Any, attempts: list[Any]) -> None:
    click.echo(f"delivery {row.id}: {row.state}, {row.event_name} of shop {row.shop_id} -> {shown_url(row.target_url)}")
    click.echo(f"  message {row.message_id}  event {row.event_id}  webhook {row.webhook_name}")
    click.echo(f"  created {_when(row.created_at)}  updated {_when(row.updated_at)}  "
               f"attempts {row.attempts}/{row.max_attempts}")
    if row.last_error:
        click.echo(f"  last error: {row.last_error}")
    for a in attempts:
        status = a.status if a.status is not None else "-"
        click.echo(f"  attempt {a.attempt}  {_when(a.at)}  status {status}  {a.duration_ms:.0f} ms"
                   f"{'  ' + a.error if a.error else ''}")
    if row.last_error_detail:
        click.echo("  traceback of the last attempt:")
        for line in str(row.last_error_detail).splitlines():
            click.echo("    " + line)


@webhooks_group.command("circuits")
@json_option
def webhooks_circuits(as_json: bool) -> None:
    """List target origins whose circuit is open (paused after failing) or probing, with when
    each is probed next and how many deliveries wait for it."""
    with _kit() as kit:
        circuits = kit.webhooks.circuits()
        if as_json:
            _echo_json([{**_circuit_json(c), "waiting": c.waiting} for c in circuits])
            return
        if not circuits:
            click.echo("every circuit is closed")
        for c in circuits:
            when = "probe out since " + _when(c.probe_started_at) if c.state == "probing" else "next probe " + _next(c.next_probe_at)
            click.echo(f"{c.origin}  {c.state:<7}  {c.failures} failure(s) in a row  {when}  {c.waiting} waiting")


@webhooks_group.command("prune")
@click.option("--older-than", "older_than", type=Duration(), default=None,
              help="Age of the delivered deliveries to delete (default: CZO_WEBHOOKS_RETENTION).")
def webhooks_prune(older_than: float | None) -> None:
    """Delete delivered deliveries and their attempts older than the retention period, in
    small batches (the worker's sweep does this on its own). Live and dead deliveries stay."""
    with _kit() as kit:
        age = kit.webhooks.settings.retention if older_than is None else older_than
        count = kit.webhooks.prune(older_than=age)
        click.echo(f"pruned {count} delivered deliver{'y' if count == 1 else 'ies'} older than {_age(age)}")


@webhooks_group.command("discard")
@click.argument("delivery_id", type=click.IntRange(1), required=False)
@click.option("--older-than", "older_than", type=Duration(), default=None,
              help="Discard every dead delivery that died longer ago than this (30d, 12h, ...).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def webhooks_discard(delivery_id: int | None, older_than: float | None, yes: bool) -> None:
    """Give up on dead deliveries for good: delete DELIVERY_ID, or every dead delivery older
    than --older-than, with their attempts. Only dead deliveries are ever discarded."""
    if delivery_id is None and older_than is None:
        raise click.UsageError("missing DELIVERY_ID or --older-than: say which dead deliveries to discard")
    if delivery_id is not None and older_than is not None:
        raise click.UsageError("give a DELIVERY_ID or --older-than, not both")
    with _kit() as kit:
        if delivery_id is not None:
            kit.webhooks.discard(delivery_id)
            click.echo(f"discarded dead delivery {delivery_id}")
            return
        assert older_than is not None
        if not yes:
            click.confirm(f"Delete every dead webhook delivery that died more than {_age(older_than)} ago?", abort=True)
        count = kit.webhooks.discard(older_than=older_than)
        click.echo(f"discarded {count} dead deliver{'y' if count == 1 else 'ies'} older than {_age(older_than)}")


@webhooks_group.command("redeliver")
@click.argument("delivery_id", type=click.IntRange(1), required=False)
@click.option("--all", "all_dead", is_flag=True, help="Redeliver every dead delivery.")
def webhooks_redeliver(delivery_id: int | None, all_dead: bool) -> None:
    """Queue DELIVERY_ID (dead, queued or waiting for a retry), or --all dead ones, again with a
    fresh set of attempts. A running or delivered delivery is left as it is (exit status 1)."""
    if delivery_id is None and not all_dead:
        raise click.UsageError("missing DELIVERY_ID or --all: give the id of a delivery to send again, "
                               "or --all for every dead one")
    if delivery_id is not None and all_dead:
        raise click.UsageError("give a DELIVERY_ID or --all, not both")
    with _kit() as kit:
        if all_dead:
            ids = kit.webhooks.redeliver(all_dead=True)
            click.echo(f"queued again: {', '.join(map(str, ids))}" if ids else "no dead deliveries: nothing to redeliver")
            return
        assert delivery_id is not None
        kit.webhooks.redeliver(delivery_id)  # a ConflictError says why not, with exit status 1
        click.echo(f"queued again: {delivery_id}")
