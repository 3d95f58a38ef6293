"""The ``czo-kit`` command line. Plugins add commands through ``czo_register_commands``."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from czo_kit import __version__
from czo_kit._cli_errors import FailureReportingGroup, describe_failure
from czo_kit.errors import CzoError

__all__ = ["build_cli", "main"]

_LEVELS = ("CRITICAL", "DEBUG", "ERROR", "INFO", "WARNING")


class _NoRandomKeyWarning(logging.Filter):
    """A one-shot command signs nothing that must outlive it, so the random-key warning is
    noise there; `serve`, whose cursors and tokens must survive a restart, says it itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("CZO_SECRET_KEY is not set")


@contextmanager
def _kit(**overrides: Any) -> Iterator[Any]:
    from czo_kit.kit import Kit

    quiet = _NoRandomKeyWarning()
    logging.getLogger("czo_kit.kit").addFilter(quiet)
    try:
        kit = Kit.from_env(**overrides)
    except CzoError as exc:
        raise click.ClickException(describe_failure(exc) or str(exc)) from exc
    finally:
        logging.getLogger("czo_kit.kit").removeFilter(quiet)
    try:
        yield kit
    except CzoError as exc:  # every command reports the kit's own errors the same way
        raise click.ClickException(str(exc)) from exc
    finally:
        kit.close()


@click.group(
    cls=FailureReportingGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="czo-kit")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Logging level (default: CZO_LOG_LEVEL, else WARNING).",
)
@click.option("--traceback", is_flag=True, help="On a failure, show the full traceback, not one line.")
def cli(log_level: str | None, traceback: bool) -> None:
    """czo-kit: run and inspect a c-zo installation.

    Settings come from CZO_* environment variables (CZO_DATABASE_URL, CZO_SECRET_KEY, ...);
    with none set, everything runs embedded on SQLite in the current directory.
    """
    import os

    from czo_kit.settings import Settings

    level = (log_level or os.environ.get("CZO_LOG_LEVEL") or Settings().log_level).strip().upper()
    if level not in _LEVELS:
        # Only the environment can get here (--log-level is a Choice); fail like Settings does.
        raise click.ClickException(
            f"invalid setting CZO_LOG_LEVEL={os.environ.get('CZO_LOG_LEVEL')!r}: "
            f"allowed: {', '.join(_LEVELS)}"
        )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins, the hooks each implements and what each registers."""
    from czo_kit.plugins import create_plugin_manager, describe_plugins, load_plugins
    from czo_kit.settings import Settings

    try:
        settings = Settings.from_env()
        manager = load_plugins(
            create_plugin_manager(), allow=settings.plugins, block=settings.disable_plugins
        )
    except CzoError as exc:
        raise click.ClickException(str(exc)) from exc
    infos = describe_plugins(manager)
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    for info in infos:
        origin = f"{info.distribution} {info.version or ''}".strip() if info.distribution else "registered by hand"
        click.echo(click.style(info.name, bold=True) + f"  ({origin})")
        click.echo(f"  implements: {', '.join(info.hooks) or 'none'}")
        for what, names in sorted(info.registers.items()):
            if names:
                click.echo(f"  {what}: {', '.join(names)}")


@cli.group("db")
def db_group() -> None:
    """Create tables and run schema migrations for every loaded module."""


@db_group.command("init")
def db_init() -> None:
    """Create the kit's own tables and those of every loaded module (existing tables are kept).

    A module whose tables are all new has its migrations marked applied; a module that
    already had tables gets its pending migrations applied instead.
    """
    with _kit() as kit:
        report = kit.create_tables()
        if not report:
            click.echo("no module registers models; nothing to create")
        for module, actions in report.items():
            click.echo(f"{module}: {'; '.join(actions) if actions else 'up to date'}")


@db_group.command("migrate")
@click.argument("module", required=False)
def db_migrate(module: str | None) -> None:
    """Apply pending migrations of MODULE (default: every module, and create the kit's own tables
    an upgrade added), in order."""
    with _kit() as kit:
        try:
            if module is None:
                click.echo(f"czo-kit: {'; '.join(kit.create_kit_tables()) or 'up to date'}")
            applied = kit.migrations.up(module)
        except CzoError as exc:
            raise click.ClickException(str(exc)) from exc
        for name, done in applied.items():
            click.echo(f"{name}: {', '.join(done) if done else 'up to date'}")


@db_group.command("status")
def db_status() -> None:
    """Show each module's migrations and whether they are applied."""
    with _kit() as kit:
        for module, rows in kit.migrations.status().items():
            click.echo(click.style(module, bold=True))
            for row in rows:
                state = f"applied {row.applied:%Y-%m-%d %H:%M}" if row.applied else "pending"
                click.echo(f"  {row.name}: {state}")


@db_group.command("makemigrations")
@click.argument("module")
@click.argument("name")
def db_makemigrations(module: str, name: str) -> None:
    """Write MODULE's next migration, NAME, from how its models differ from the database."""
    with _kit() as kit:
        try:
            path = kit.migrations.make(module, name)
        except CzoError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"wrote {path}; review it, then run: czo-kit db migrate" if path else "no changes")


@cli.command("worker")
@click.option("-w", "--workers", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Worker threads (or processes) running tasks.")
@click.option("-k", "--worker-type", type=click.Choice(["thread", "process", "greenlet"]),
              default="thread", show_default=True, help="How workers run.")
@click.option("--sweep-interval", type=click.FloatRange(0.1, 86400), default=None,
              help="Seconds between sweeps for lost events (default: CZO_EVENTS_SWEEP_INTERVAL).")
@click.option("--max-delay", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Longest pause between two polls of an idle queue (seconds).")
def worker_command(workers: int, worker_type: str, sweep_interval: float | None, max_delay: float) -> None:
    """Run the queue consumer: deliver async events, retry failures, recover after crashes.

    Same as `huey_consumer czo_kit.worker.huey`, plus the periodic sweep that re-queues
    events a crash left behind. Stop it with Ctrl-C (SIGINT, graceful) or SIGTERM. Without
    a queue (CZO_QUEUE_URL empty) it runs the in-process deliverer: retries, delayed events
    and webhooks that other processes left due.
    """
    from czo_kit._parent import tie_forked_workers
    from czo_kit.events.queue import Sweeper

    with _kit() as kit:
        if kit.queue is None:
            from czo_kit._cli_events import run_without_queue

            run_without_queue(kit, workers=workers, worker_type=worker_type, sweep_interval=sweep_interval)
            return
        interval = sweep_interval or kit.settings.events_sweep_interval
        heartbeat = kit.outbox.heartbeat(f"czo-kit worker ({workers} {worker_type})")
        sweeper = Sweeper(kit.outbox, interval, kit.webhooks, heartbeat=heartbeat)
        consumer = kit.queue.create_consumer(
            workers=workers, worker_type=worker_type, periodic=True, max_delay=max_delay
        )
        tie_forked_workers(consumer)  # -k process: children go when this process goes
        if worker_type == "process":
            # Forked workers must open their own database connections.
            close_all = getattr(kit.db, "close_all", None)
            if callable(close_all):
                close_all()
            kit.db.close()
        click.echo(f"czo-kit worker: {workers} {worker_type} worker(s) on queue {kit.settings.queue_name!r}; "
                   f"sweeping every {interval:g}s", err=True)
        # Start the sweep only once the consumer has started (forked) its workers: a child
        # forked while the sweeper thread holds a database connection or a lock inherits
        # them, and with -k process its first write then fails or hangs.
        start_consumer = consumer.start

        def start_then_sweep() -> None:
            start_consumer()
            sweeper.start()

        consumer.start = start_then_sweep
        try:
            consumer.run()
        finally:
            sweeper.stop()


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True, help="Request threads.")
def serve_command(host: str, port: int, threads: int) -> None:
    """Serve the HTTP API (apps, and every module's routes) with waitress."""
    from waitress import serve

    from czo_kit.http.api import create_api

    with _kit() as kit:
        if kit.settings.secret_key is None:
            click.echo("warning: CZO_SECRET_KEY is not set: cursors and user tokens this server "
                       "signs will not survive its restart", err=True)
        if kit.deliverer is not None:
            kit.deliverer.start()  # no queue: this process delivers, and resumes what was left due
        click.echo(f"czo-kit API on http://{host}:{port}/api/ ({threads} threads)", err=True)
        serve(create_api(kit), host=host, port=port, threads=threads, ident="czo-kit")


@cli.group("users")
def users_group() -> None:
    """Users of the built-in permission service and their API tokens."""


@users_group.command("token")
@click.argument("user_id")
@click.option("--ttl", type=click.FloatRange(60, 366 * 86400), default=3600.0, show_default=True,
              help="Seconds the token stays valid.")
def users_token(user_id: str, ttl: float) -> None:
    """Print a signed API token for USER_ID (the default authenticator's kind)."""
    from czo_kit.http.auth import issue_user_token

    with _kit() as kit:
        if kit.settings.secret_key is None:
            raise click.ClickException("set CZO_SECRET_KEY first: tokens signed with a per-process key die with it")
        click.echo(issue_user_token(kit.secret_key, user_id, ttl=ttl))


@users_group.command("grant")
@click.argument("user_id")
@click.argument("shop_id", type=click.IntRange(1))
@click.argument("role")
def users_grant(user_id: str, shop_id: int, role: str) -> None:
    """Give USER_ID the ROLE in SHOP_ID (built-in permission service)."""
    from czo_kit.apps.permissions import DefaultPermissionService

    with _kit() as kit:
        service = kit.permission_service
        if not isinstance(service, DefaultPermissionService):
            raise click.ClickException("roles are managed by the installed auth module, not by czo-kit")
        service.grant(user_id, shop_id, role)
        click.echo(f"user {user_id} is {role} in shop {shop_id}")


@cli.group("apps")
def apps_group() -> None:
    """Install, list and remove apps, shop by shop."""


@apps_group.command("list")
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
def apps_list(shop_id: int) -> None:
    """List the apps installed in a shop."""
    with _kit() as kit:
        rows = kit.apps.list(shop_id)
        if not rows:
            click.echo(f"no apps in shop {shop_id}")
        for row in rows:
            click.echo(f"{row.app_id}  {row.name} {row.version}  installed {row.installed_at:%Y-%m-%d %H:%M} by {row.installed_by}")


@apps_group.command("install")
@click.argument("manifest_url")
@click.option("--shop", "shop_id", type=click.IntRange(1), required=True)
@click.option("--user", "user_id", required=True, help="Installing user (must hold apps:manage and every permission asked).")
def apps_install(manifest_url: str, shop_id: int, user_id: str) -> None:
    """Install the app whose manifest is at MANIFEST_URL. The token is printed once."""
    with _kit() as kit:
        result = kit.apps.install(shop_id=shop_id, installer_id=user_id, manifest_url=manifest_url)
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
def apps_tokens(app_id: str, shop_id: int) -> None:
    """List APP_ID's tokens in a shop (their last four characters only)."""
    with _kit() as kit:
        for token in kit.apps.tokens(shop_id=shop_id, app_id=app_id):
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


@cli.group("webhooks")
def webhooks_group() -> None:
    """Inspect webhook deliveries and send failed ones again."""


def _print_deliveries(rows: list[Any]) -> None:
    if not rows:
        click.echo("no deliveries")
    for row in rows:
        status = row.last_status if row.last_status is not None else "-"
        click.echo(
            f"{row.id}  {row.state:<9} {row.event_name:<20} shop {row.shop_id}  -> {row.target_url}  "
            f"attempts {row.attempts}/{row.max_attempts}  last {status}{'  ' + row.last_error if row.last_error else ''}"
        )


@webhooks_group.command("deliveries")
@click.option("--state", type=click.Choice(["queued", "running", "retry", "delivered", "dead"]), default=None)
@click.option("--shop", "shop_id", type=click.IntRange(1), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def webhooks_deliveries(state: str | None, shop_id: int | None, limit: int) -> None:
    """List recent deliveries, newest first."""
    with _kit() as kit:
        _print_deliveries(kit.webhooks.deliveries(state=state, shop_id=shop_id, limit=limit))


@webhooks_group.command("dead")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def webhooks_dead(limit: int) -> None:
    """List deliveries that failed for good (dead letters)."""
    with _kit() as kit:
        _print_deliveries(kit.webhooks.deliveries(state="dead", limit=limit))


@webhooks_group.command("redeliver")
@click.argument("delivery_id", type=click.IntRange(1), required=False)
@click.option("--all", "all_dead", is_flag=True, help="Redeliver every dead delivery.")
def webhooks_redeliver(delivery_id: int | None, all_dead: bool) -> None:
    """Queue DELIVERY_ID (or --all dead ones) again with a fresh set of attempts."""
    if (delivery_id is None) == (not all_dead):
        raise click.UsageError("give a DELIVERY_ID or --all, not both")
    with _kit() as kit:
        ids = kit.webhooks.redeliver(delivery_id, all_dead=all_dead)
        click.echo(f"queued again: {', '.join(map(str, ids)) or 'nothing'}")


@cli.command("demo")
@click.option(
    "--database-url",
    default=None,
    help="Database to run the demo on (default: a fresh SQLite file in a temporary directory).",
)
def demo_command(database_url: str | None) -> None:
    """Walk through the kit with the example modules, on an embedded database, and report."""
    from czo_kit.demo import run_demo

    try:
        run_demo(database_url=database_url, echo=click.echo)
    except CzoError as exc:
        raise click.ClickException(str(exc)) from exc


def _add_command_groups() -> None:
    # Command groups kept in modules of their own (they import ``_kit`` from here lazily).
    from czo_kit._cli_events import events_group

    cli.add_command(events_group)


_add_command_groups()


def build_cli() -> click.Group:
    """The root command with every plugin's commands added."""
    from czo_kit.plugins import load_plugins

    try:
        manager = load_plugins()
    except CzoError as exc:
        click.echo(f"warning: plugins not loaded: {exc}", err=True)
        return cli
    manager.hook.czo_register_commands(cli=cli)
    return cli


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return build_cli().main(args=argv, prog_name="czo-kit", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
