"""The ``czo-kit`` command line. Plugins add commands through ``czo_register_commands``."""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
import msgspec

from czo_kit import __version__
from czo_kit._cli_errors import FailureReportingGroup, NoRandomKeyWarning
from czo_kit.context import ContextFilter, JSONLogFormatter, acting
from czo_kit.errors import CzoError
from czo_kit.plugins import Contributions

if TYPE_CHECKING:
    import pluggy

__all__ = ["build_cli", "main"]

_LEVELS = ("CRITICAL", "DEBUG", "ERROR", "INFO", "WARNING")


@contextmanager
def _kit(**overrides: Any) -> Iterator[Any]:
    from czo_kit.kit import Kit

    quiet = NoRandomKeyWarning()
    logging.getLogger("czo_kit.kit").addFilter(quiet)
    # A failure here or in the command is reported by the group (FailureReportingGroup), the
    # same way for every command, the plugins' included.
    try:
        kit = Kit.from_env(**overrides)
    finally:
        logging.getLogger("czo_kit.kit").removeFilter(quiet)
    try:
        yield kit
    finally:
        kit.close()


class _CommandLine(FailureReportingGroup):
    """The root group: remembers which plugin added which command (``czo_register_commands``),
    for ``czo-kit plugins``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._contributions = Contributions()
        super().__init__(*args, **kwargs)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        self._contributions.record(name or cmd.name or "?")

    def contributions(self) -> dict[str, list[str]]:
        return self._contributions.contributions()


@click.group(
    cls=_CommandLine, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
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
    log_format = (os.environ.get("CZO_LOG_FORMAT") or Settings().log_format).strip().lower()
    if log_format not in ("text", "json"):
        raise click.ClickException(
            f"invalid setting CZO_LOG_FORMAT={os.environ.get('CZO_LOG_FORMAT')!r}: allowed: json, text"
        )
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JSONLogFormatter() if log_format == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])
    # Everything this command causes (events, webhooks, log records) names it as the actor,
    # under one correlation id.
    click.get_current_context().with_resource(acting(f"cli:{_os_user()}"))


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins, the hooks each implements and what each registers."""
    from czo_kit.plugins import describe_plugins

    # What each plugin registered is what the kit's registries recorded as it was built (a
    # kit starts with its database, cache or queue down, so this works during an outage too).
    with _kit() as kit:
        infos = describe_plugins(kit)
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


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--workers-within", type=click.FloatRange(1, 86400), default=60.0, show_default=True,
              help="Count workers whose heartbeat is at most this many seconds old.")
def status_command(as_json: bool, workers_within: float) -> None:
    """The screen to read first: whether the database, the cache and the queue answer; the
    outbox and deliveries by state, with the age of the oldest; dead letters; webhook targets
    with an open circuit; the workers seen recently and their plugins.

    Exits with status 1 when the database, the cache or the queue does not answer.
    """
    from czo_kit._status import collect, render

    with _kit() as kit:
        status = collect(kit, workers_seen_within=workers_within)
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(status), indent=2))
    else:
        for line in render(status):
            click.echo(line)
    if not status.healthy:
        raise SystemExit(1)


@cli.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def settings_command(as_json: bool) -> None:
    """List the kit's settings and every plugin's, as this process reads them (secrets masked)."""
    from czo_kit.settings import ENV_PREFIX, redact_url, secret_fields

    def shown(kind: Any, values: Any) -> dict[str, Any]:
        hidden = secret_fields(kind)
        return {
            name: "***" if name in hidden and value else redact_url(value) if isinstance(value, str) else value
            for name, value in msgspec.structs.asdict(values).items()
        }

    with _kit() as kit:
        sections = [("czo-kit", ENV_PREFIX, shown(type(kit.settings), kit.settings))]
        sections += [(plugin, prefix, shown(type(values), values)) for plugin, prefix, values in kit.plugin_settings()]
    if as_json:
        click.echo(json.dumps(
            [{"plugin": plugin, "prefix": prefix, "settings": values} for plugin, prefix, values in sections],
            indent=2, default=str,
        ))
        return
    for plugin, prefix, values in sections:
        click.echo(click.style(plugin, bold=True))
        for name, value in values.items():
            if isinstance(value, (tuple, list)):
                value = ",".join(str(item) for item in value)
            click.echo(f"  {prefix}{name.upper()}={'' if value is None else value}")


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
        if module is None:
            click.echo(f"czo-kit: {'; '.join(kit.create_kit_tables()) or 'up to date'}")
        applied = kit.migrations.up(module)
        for name, done in applied.items():
            click.echo(f"{name}: {', '.join(done) if done else 'up to date'}")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def db_status(as_json: bool) -> None:
    """Show each module's migrations and whether they are applied."""
    with _kit() as kit:
        status = kit.migrations.status()
        if as_json:
            click.echo(json.dumps({
                module: [
                    {"name": row.name, "applied": row.applied.isoformat() if row.applied else None,
                     "file": row.path is not None}
                    for row in rows
                ]
                for module, rows in status.items()
            }, indent=2))
            return
        for module, rows in status.items():
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
        path = kit.migrations.make(module, name)
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
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics at /metrics on this port; 0 picks one (default: CZO_METRICS_PORT, else none).")
@click.option("--metrics-host", default=None, help="Interface of the metrics endpoint (default: CZO_METRICS_HOST).")
def worker_command(
    workers: int, worker_type: str, sweep_interval: float | None, max_delay: float,
    metrics_port: int | None, metrics_host: str | None,
) -> None:
    """Run the queue consumer: deliver async events, retry failures, recover after crashes.

    Same as `huey_consumer czo_kit.worker.huey`, plus the periodic sweep that re-queues
    events a crash left behind. Stop it with Ctrl-C (SIGINT, graceful) or SIGTERM. Without
    a queue (CZO_QUEUE_URL empty) it runs the in-process deliverer: retries, delayed events
    and webhooks that other processes left due.
    """
    from czo_kit._parent import tie_forked_workers
    from czo_kit.events.queue import Sweeper
    from czo_kit.metrics import prepare_worker

    with _kit() as kit:
        kit.require_shared_secret_key("`czo-kit worker`")
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
        port = metrics_port if metrics_port is not None else kit.settings.metrics_port
        stop_metrics = prepare_worker(
            kit, consumer, process_workers=worker_type == "process", host=metrics_host or kit.settings.metrics_host,
            port=port, announce=lambda line: click.echo(line, err=True),
        )
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
            stop_metrics()


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True, help="Request threads.")
def serve_command(host: str, port: int, threads: int) -> None:
    """Serve the HTTP API (apps, and every module's routes) with waitress."""
    from waitress import serve

    from czo_kit.http.api import create_api
    from czo_kit.metrics import with_metrics

    with _kit() as kit:
        kit.require_shared_secret_key("`czo-kit serve`")
        if kit.settings.secret_key is None:  # embedded SQLite: one process, a newcomer's first run
            click.echo("warning: CZO_SECRET_KEY is not set: cursors and user tokens this server "
                       "signs will not survive its restart", err=True)
        if kit.deliverer is not None:
            kit.deliverer.start()  # no queue: this process delivers, and resumes what was left due
        click.echo(f"czo-kit API on http://{host}:{port}/api/ ({threads} threads)", err=True)
        serve(with_metrics(create_api(kit), kit), host=host, port=port, threads=threads, ident="czo-kit")


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


def _add_command_groups() -> None:
    # Command groups kept in modules of their own (they import ``_kit`` from here lazily).
    from czo_kit._cli_apps import apps_group, webhooks_group
    from czo_kit._cli_events import events_group

    cli.add_command(events_group)
    cli.add_command(apps_group)
    cli.add_command(webhooks_group)


_add_command_groups()


def build_cli(manager: pluggy.PluginManager | None = None) -> click.Group:
    """The root command with the commands of every plugin of ``manager`` (default: the
    process-wide one, loaded from the environment) added: a new group each time, so ``cli``
    itself stays the kit's own, and one that records which plugin added which command."""
    from czo_kit.plugins import call_each_plugin, load_plugins

    root = copy.copy(cli)
    root.commands = dict(cli.commands)
    root._contributions = Contributions()
    if manager is None:
        try:
            manager = load_plugins()
        except CzoError as exc:
            click.echo(f"warning: plugins not loaded: {exc}", err=True)
            return root
    call_each_plugin(manager.hook.czo_register_commands, cli=root)
    return root


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return build_cli().main(args=argv, prog_name="czo-kit", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
