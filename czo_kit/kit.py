"""``Kit``: the host object a process builds once. It loads plugins, opens the database,
binds every module's models, collects hooks and services, and closes it all again."""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import peewee
import pluggy

from huey import Huey

from czo_kit import metrics
from czo_kit._logging import install_log_redaction
from czo_kit.apps.extensions import DashboardRegistry
from czo_kit.apps.handoff import HandoffSigner
from czo_kit.apps.inprocess import InProcessApps
from czo_kit.apps.net import OutboundHTTP
from czo_kit.apps.permissions import PermissionRegistry, PermissionService
from czo_kit.apps.registry import APP_MODELS, AppRegistry
from czo_kit.apps.webhooks import WEBHOOK_MODELS, WebhookDispatcher, WebhookSettings
from czo_kit.cache import CacheManager, cache_drivers, create_cache
from czo_kit.events.emitter import EventEmitter
from czo_kit.events.deliverer import InProcessDeliverer
from czo_kit.events.outbox import EVENT_MODELS, Enqueuer, Outbox, OutboxSettings
from czo_kit.events.queue import HueyQueue, InProcessConsumer, Sweeper, WebhookQueue
from czo_kit.db._event_fields import check_model_events
from czo_kit.db._tables import upgrade_tables
from czo_kit.db.migrations import Migrations, ModuleMigrations
from czo_kit.errors import ConfigurationError, PluginError
from czo_kit.hookspecs import DatabaseFactory
from czo_kit.hooks import HookRegistry
from czo_kit.plugins import (
    Backends,
    backend_for,
    call_each_plugin,
    create_plugin_manager,
    load_plugins,
    registering_plugin,
)
from czo_kit.services import ServiceRegistry
from czo_kit.settings import ENV_PREFIX, Settings, read_settings, redact_url, unknown_variables
from czo_kit.tasks import TASK_MODELS, TaskRegistry

if TYPE_CHECKING:
    from czo_kit.http.api import Authenticators

__all__ = ["KIT_MODELS", "Kit"]

S = TypeVar("S")

# The kit's own tables: made by `czo-kit db init` / `db migrate` whatever plugins are loaded,
# since the outbox, the app registry and the webhook dispatcher are not plugins.
KIT_MODELS: tuple[type[peewee.Model], ...] = (*EVENT_MODELS, *APP_MODELS, *WEBHOOK_MODELS, *TASK_MODELS)

log = logging.getLogger(__name__)


class Kit:
    """Everything a module needs, wired from settings and plugins.

    ``Kit()`` reads the environment; ``Kit(Settings(...))`` takes explicit settings. Use it as
    a context manager, or call ``close()``. ``plugins=`` registers extra plugin objects by
    hand (tests, embedding) on top of the built-in and installed ones.
    """

    cache: CacheManager
    events: EventEmitter
    queue: Huey | None
    db: peewee.Database
    hooks: HookRegistry
    plugins: pluggy.PluginManager
    services: ServiceRegistry
    settings: Settings
    migrations: Migrations
    tasks: TaskRegistry

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        plugins: Iterable[object] = (),
        plugin_manager: pluggy.PluginManager | None = None,
    ) -> None:
        install_log_redaction()
        self.settings = settings if settings is not None else Settings.from_env()
        self._closed = False
        self._lock = threading.Lock()
        self._dashboard_lock = threading.Lock()
        self._authenticators_lock = threading.Lock()
        if plugin_manager is None:
            plugin_manager = load_plugins(
                create_plugin_manager(),
                allow=self.settings.plugins,
                block=self.settings.disable_plugins,
                extra=plugins,
            )
        else:
            for plugin in plugins:
                if not plugin_manager.is_registered(plugin):
                    plugin_manager.register(plugin)
            try:
                plugin_manager.check_pending()
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"{exc}; every @hookimpl must match a hookspec") from exc
        self.plugins = plugin_manager
        hook = self.plugins.hook

        self.database_backends: Backends = Backends()
        call_each_plugin(hook.czo_register_database_backends, register=self._register_backend)
        self.db = self._open_database(self.settings.database_url)
        try:
            self._wire()
        except BaseException:
            # A plugin failed half-way: release what was opened before re-raising.
            cache = getattr(self, "cache", None)
            if cache is not None:
                cache.close()
            close_all = getattr(self.db, "close_all", None)
            if callable(close_all):
                close_all()
            if not self.db.is_closed():
                self.db.close()
            raise

    def _wire(self) -> None:
        hook = self.plugins.hook
        key = self.settings.secret_key
        if key is None:
            log.warning(
                "CZO_SECRET_KEY is not set: using a random key for this process; cursors "
                "(and later tokens) it signs will not survive a restart"
            )
            self.secret_key = secrets.token_bytes(32)
        else:
            self.secret_key = key.encode()
        setattr(self.db, "czo_secret_key", self.secret_key)

        # First: what plugins read at startup below comes from their settings.
        self._plugin_settings: dict[type[Any], tuple[str, str, Any]] = {}
        call_each_plugin(hook.czo_register_settings, register=self._settings_registrar())

        self.models: dict[str, list[type[peewee.Model]]] = {}
        migration_dirs: dict[str, str] = {}
        call_each_plugin(hook.czo_register_models, register=self._model_registrar())
        call_each_plugin(hook.czo_register_migrations, register=self._migration_registrar(migration_dirs))
        all_models = [m for models in self.models.values() for m in models]
        if all_models:
            self.db.bind(all_models)
        modules = {
            name: ModuleMigrations(name, migration_dirs.get(name), self.models.get(name, []))
            for name in sorted(set(self.models) | set(migration_dirs))
        }
        self.migrations = Migrations(self.db, modules)

        self.hooks = HookRegistry()
        call_each_plugin(hook.czo_register_hooks, hooks=self.hooks)

        self.cache_drivers = cache_drivers(self.plugins)
        self.cache = create_cache(settings=self.settings, drivers=self.cache_drivers)
        # Repositories built on kit.db find the kit's cache here (repo.cache), as they find
        # the secret key: a module's service factory need not pass it along.
        setattr(self.db, "czo_cache", self.cache)

        settings = self.settings
        self.queue_backends: Backends = Backends()
        call_each_plugin(hook.czo_register_queue_backends, register=self._register_queue_backend)
        self.queue = self._open_queue(settings.queue_url) if settings.queue_url else None
        self.events = EventEmitter(
            db=self.db, strict=settings.events_strict, default_retries=settings.events_retries
        )
        outbox_settings = OutboxSettings(
            retry_base=settings.events_retry_base,
            retry_max=settings.events_retry_max,
            lease=settings.events_lease,
            relay_grace=min(10.0, settings.events_lease),
            shutdown_timeout=settings.events_shutdown_timeout,
            retention=settings.events_retention,
            dispatch_batch=settings.events_dispatch_batch,
        )
        self.deliverer: InProcessDeliverer | None = None
        enqueuer: Enqueuer
        if self.queue is not None:
            self.queue_tasks = HueyQueue(self.queue)
            enqueuer = self.queue_tasks
        else:
            # No queue: deliveries run on threads of this process, durable in the same tables.
            self.deliverer = enqueuer = InProcessDeliverer(
                sweep_interval=settings.events_sweep_interval, shutdown_timeout=settings.events_shutdown_timeout,
                maintenance=self._in_process_sweeper,
            )
        self.outbox: Outbox = Outbox(
            self.db, enqueuer, self.events, outbox_settings,
            plugins=tuple(name for name, _ in self.plugins.list_name_plugin()),
            queue_name=settings.queue_name if self.queue is not None else "",
        )
        self.events.transport = self.outbox
        if self.queue is not None:
            self.queue_tasks.outbox = self.outbox
            self._release_connections_after_tasks(self.queue, self.db)
        else:
            assert self.deliverer is not None
            self.deliverer.outbox = self.outbox
        call_each_plugin(hook.czo_register_events, events=self.events, kit=self)
        # After the events hook, where a module may declare its event types: a declared event
        # that no longer carries every column of its model would drop the new ones silently.
        check_model_events(self.all_models())
        # Tasks ride on the outbox (czo_kit.tasks): registered once the events are wired.
        self.tasks = TaskRegistry()
        call_each_plugin(hook.czo_register_tasks, register=self.tasks)
        self.tasks.bind(self)

        self.permissions = PermissionRegistry()
        call_each_plugin(hook.czo_register_permissions, register=self.permissions)
        # Every module has declared its resources now: event rules naming others are refused.
        self.permissions.check()
        # After the permissions: each app's handlers are checked against the event rules.
        in_process_apps = InProcessApps(self.permissions)
        call_each_plugin(hook.czo_register_apps, register=in_process_apps)
        self.http = OutboundHTTP(
            allow_private=settings.apps_allow_private_urls,
            read_timeout=settings.webhooks_timeout,
        )
        self.apps = AppRegistry(
            self.db, permissions=self.permissions, permission_service=lambda: self.permission_service, http=self.http,
            signer=HandoffSigner.from_secret_key(self.secret_key),
            mounts=lambda: self.dashboard.mount_names(),
            in_process=in_process_apps,
        )
        in_process_apps.kit = self
        self.webhooks = WebhookDispatcher(
            self.db,
            self.apps,
            self.permissions,
            self.http,
            WebhookSettings(
                schedule=tuple(settings.webhooks_retry_schedule),
                lease=settings.webhooks_lease,
                breaker_threshold=settings.webhooks_breaker_threshold,
                breaker_cooldown=settings.webhooks_breaker_cooldown,
                read_timeout=settings.webhooks_timeout,
                retention=settings.webhooks_retention,
                shutdown_timeout=settings.events_shutdown_timeout,
            ),
        )
        if self.queue is not None:
            self.queue_tasks.webhooks = self.webhooks
            self.webhooks.queue = WebhookQueue(self.queue_tasks)
        elif self.deliverer is not None:
            self.deliverer.webhooks = self.webhooks
            self.webhooks.queue = self.deliverer.webhook_queue
        self.events.tap(self.webhooks.on_event)
        metrics.attach(self)

        self.services = ServiceRegistry()
        self.services.register_value(Kit, self)
        self.services.register_value(Settings, self.settings)
        self.services.register_value(peewee.Database, self.db)
        self.services.register_value(HookRegistry, self.hooks)
        self.services.register_value(CacheManager, self.cache)
        self.services.register_value(EventEmitter, self.events)
        self.services.register_value(AppRegistry, self.apps)
        self.services.register_value(WebhookDispatcher, self.webhooks)
        self.services.register_value(PermissionRegistry, self.permissions)
        self.services.register_value(TaskRegistry, self.tasks)
        call_each_plugin(hook.czo_register_services, registry=self.services)

        hook.czo_startup(kit=self)

    # -- construction helpers -----------------------------------------------------------

    @classmethod
    def from_env(cls, **overrides: Any) -> Kit:
        """A kit from ``CZO_*`` environment variables; keyword arguments override them."""
        return cls(Settings.from_env(**overrides))

    def require_shared_secret_key(self, process: str) -> None:
        """Refuse to run ``process`` (a web server, a worker) on a shared database without
        ``CZO_SECRET_KEY``, raising ``ConfigurationError``.

        Such a process runs next to others on the same data: a cursor, API token, dashboard
        session or app hand-off one of them signs with a random key of its own is refused by
        the next. Only an embedded SQLite database is allowed to do without (a newcomer's
        first run, the demo). Call it from a WSGI module that builds ``create_api(kit)``."""
        if not isinstance(process, str) or not process.strip():
            raise ValueError(
                "require_shared_secret_key needs the name of the process it guards, such as 'gunicorn', "
                f"got {process!r}"
            )
        if self.settings.secret_key is not None or isinstance(self.db, peewee.SqliteDatabase):
            return
        scheme = urlsplit(self.settings.database_url).scheme or "this database"
        raise ConfigurationError(
            f"CZO_SECRET_KEY is not set, and {process} on {scheme} needs it: every process must sign "
            "cursors, API tokens, dashboard sessions and app hand-offs with the same key, or each "
            "rejects what the others signed; set one CZO_SECRET_KEY (at least 32 characters) in every "
            "process, for example the output of: "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'",
            variable="CZO_SECRET_KEY",
        )

    def _register_backend(self, scheme: str, factory: DatabaseFactory) -> None:
        if not isinstance(scheme, str) or not scheme.isidentifier() and "+" not in scheme:
            raise PluginError(f"database backend scheme must be a word like 'sqlite', got {scheme!r}")
        if not callable(factory):
            raise PluginError(f"database backend {scheme!r}: factory {factory!r} is not callable")
        self.database_backends.add(scheme, factory)

    def _register_queue_backend(self, scheme: str, factory: Any) -> None:
        if not isinstance(scheme, str) or not scheme:
            raise PluginError(f"queue backend scheme must be a non-empty string, got {scheme!r}")
        if not callable(factory):
            raise PluginError(f"queue backend {scheme!r}: factory {factory!r} is not callable")
        self.queue_backends.add(scheme, factory)

    def _open_queue(self, url: str) -> Huey:
        scheme = urlsplit(url).scheme.lower()
        factory = backend_for(url, self.queue_backends, variable="CZO_QUEUE_URL", kind="queue backend",
                              hint=" (or empty for no queue)")
        queue = factory(url, settings=self.settings, name=self.settings.queue_name)
        if not isinstance(queue, Huey):
            raise PluginError(f"queue backend {scheme!r} returned {queue!r}, not a huey.Huey")
        return queue

    @staticmethod
    def _release_connections_after_tasks(queue: Huey, db: peewee.Database) -> None:
        """Give each worker's connection back to the pool after every task and at shutdown,
        so stopped or idle workers never hold pooled connections."""

        def release(*_: Any) -> None:
            try:
                if not db.is_closed() and not db.in_transaction():
                    db.close()
            except Exception:  # closing must never fail a task
                log.debug("could not release a worker's database connection", exc_info=True)

        queue.post_execute()(release)
        queue.on_shutdown()(release)

    @property
    def permission_service(self) -> PermissionService:
        """What users hold in shops: the registered ``PermissionService`` (built on first use,
        so a kit whose permission plugin is blocked still starts)."""
        service = self.__dict__.get("_permission_service")
        if service is None:
            service = self.__dict__["_permission_service"] = self.permissions.build_service(self)
        return service

    @property
    def dashboard(self) -> DashboardRegistry:
        """The mounts and pages modules registered (``czo_register_dashboard``), collected on
        first use: by the HTTP API, or by an install that checks its extensions' mounts."""
        registry = self.__dict__.get("_dashboard")
        if registry is None:
            with self._dashboard_lock:
                registry = self.__dict__.get("_dashboard")
                if registry is None:  # once per kit, even when two requests come first together
                    registry = DashboardRegistry()
                    call_each_plugin(self.plugins.hook.czo_register_dashboard, register=registry, kit=self)
                    self.__dict__["_dashboard"] = registry
        return registry

    @property
    def authenticators(self) -> Authenticators:
        """Who a bearer token belongs to, as modules registered (``czo_register_authenticators``),
        collected on first use by the HTTP API."""
        registry = self.__dict__.get("_authenticators")
        if registry is None:
            from czo_kit.http.api import Authenticators

            with self._authenticators_lock:
                registry = self.__dict__.get("_authenticators")
                if registry is None:
                    registry = Authenticators()
                    call_each_plugin(self.plugins.hook.czo_register_authenticators, register=registry)
                    self.__dict__["_authenticators"] = registry
        return registry

    def consumer(self, *, workers: int = 2, sweep_interval: float | None = None) -> InProcessConsumer:
        """A consumer running on threads of this process (tests, the demo); ``czo-kit worker``
        is the production one. Use it as a context manager."""
        if self.queue is None:
            raise ConfigurationError(
                "this kit has no queue (CZO_QUEUE_URL is empty): its in-process deliverer, kit.deliverer, "
                "runs the deliveries instead (kit.deliverer.start())",
                variable="CZO_QUEUE_URL",
            )
        interval = self.settings.events_sweep_interval if sweep_interval is None else sweep_interval
        return InProcessConsumer(
            self.queue, workers=workers, outbox=self.outbox, sweep_interval=interval, also_sweep=self.webhooks
        )

    def _in_process_sweeper(self) -> Sweeper:
        """What a worker's sweeper does, for the in-process deliverer: first schedule what an
        earlier process left due, then sweep the outbox and the webhooks; with no consumer's
        scheduler, its sweep of the tasks ticks the periodic ones."""
        assert self.deliverer is not None
        return Sweeper(
            self.outbox, self.deliverer.sweep_interval, self.webhooks, self.tasks, on_start=self.deliverer.recover,
            heartbeat=self.outbox.heartbeat(f"in-process deliverer ({self.deliverer.workers} threads)"),
        )

    def _open_database(self, url: str) -> peewee.Database:
        scheme = urlsplit(url).scheme.lower()
        factory = backend_for(url, self.database_backends, variable="CZO_DATABASE_URL", kind="database backend",
                              none="none (all blocked?)")
        db = factory(url, settings=self.settings)
        if not isinstance(db, peewee.Database):
            raise PluginError(f"database backend {scheme!r} returned {db!r}, not a peewee.Database")
        return db

    def _model_registrar(self) -> Any:
        def register(*models: type[peewee.Model]) -> None:
            plugin = registering_plugin() or "unknown"
            for model in models:
                if not (isinstance(model, type) and issubclass(model, peewee.Model)):
                    raise PluginError(f"plugin {plugin!r} registered {model!r}, which is not a peewee Model")
                bucket = self.models.setdefault(plugin, [])
                if model not in bucket:
                    bucket.append(model)

        return register

    def _settings_registrar(self) -> Any:
        def register(kind: type[Any], *, prefix: str) -> None:
            plugin = registering_plugin() or "unknown"
            if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
                raise PluginError(f"plugin {plugin!r} registered settings {kind!r}, which is not a msgspec.Struct")
            if not (isinstance(prefix, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*_", prefix)) or prefix == ENV_PREFIX:
                raise PluginError(
                    f"plugin {plugin!r}: settings prefix {prefix!r} must be upper case, end with '_' and "
                    f"be the plugin's own (not {ENV_PREFIX!r}), such as 'CZO_WIDGET_'"
                )
            for other, (owner, other_prefix, _) in self._plugin_settings.items():
                if other is kind or other_prefix == prefix:
                    raise PluginError(
                        f"plugin {plugin!r} registered settings {kind.__name__} with prefix {prefix!r}, "
                        f"but plugin {owner!r} already registered {other.__name__} with {other_prefix!r}"
                    )
            for variable in unknown_variables(kind, prefix, os.environ):
                log.warning("unknown setting %s of plugin %s is ignored", variable, plugin)
            self._plugin_settings[kind] = (plugin, prefix, read_settings(kind, prefix=prefix))

        return register

    def settings_for(self, kind: type[S]) -> S:
        """The values of a plugin's settings Struct, read and validated at startup."""
        entry = self._plugin_settings.get(kind)
        if entry is None:
            known = ", ".join(sorted(k.__name__ for k in self._plugin_settings)) or "none"
            raise ConfigurationError(
                f"no plugin registered settings {getattr(kind, '__name__', kind)!r} "
                f"(czo_register_settings); registered: {known}"
            )
        value: S = entry[2]
        return value

    def plugin_settings(self) -> list[tuple[str, str, Any]]:
        """(plugin, prefix, values) of every plugin's settings, in registration order."""
        return list(self._plugin_settings.values())

    def _migration_registrar(self, into: dict[str, str]) -> Any:
        def register(directory: str) -> None:
            plugin = registering_plugin() or "unknown"
            if plugin in into and into[plugin] != str(directory):
                raise PluginError(f"plugin {plugin!r} registered two migration directories")
            into[plugin] = str(directory)

        return register

    # -- conveniences -------------------------------------------------------------------

    def all_models(self) -> list[type[peewee.Model]]:
        """Every model registered by every plugin."""
        return [m for models in self.models.values() for m in models]

    def create_kit_tables(self) -> list[str]:
        """Create the kit's own tables that are missing (outbox, deliveries, dead letters,
        apps, tokens, secrets, webhooks) and add the columns a newer kit added to them;
        returns what it did. Outside any transaction only."""
        return upgrade_tables(self.db, KIT_MODELS)

    def create_tables(self) -> dict[str, list[str]]:
        """``czo-kit db init``: create the kit's own tables and every module's missing tables,
        then settle each module's migrations. Outside any transaction only: DDL in a caller's
        transaction would vanish with its rollback."""
        report = {"czo-kit": self.create_kit_tables()}
        report.update(self.migrations.init())
        return report

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Tell plugins (``czo_shutdown``), close services, release database connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.plugins.hook.czo_shutdown(kit=self)
        finally:
            self.services.close()
            self.cache.close()
            self.events.close()
            # One shutdown deadline for both relays (events, webhook deliveries).
            deadline = time.monotonic() + self.settings.events_shutdown_timeout
            if self.deliverer is not None:
                self.deliverer.close()
            self.outbox.close()
            self.webhooks.close(deadline=deadline)
            self.http.close()
            if self.queue is not None:
                storage = self.queue.storage
                storage.close()
                # Huey's Redis storage has no close of its own: drop its pooled connections.
                pool = getattr(storage, "pool", None)
                if pool is not None:
                    pool.disconnect()
            close_all = getattr(self.db, "close_all", None)
            if callable(close_all):
                close_all()
            if not self.db.is_closed():
                self.db.close()

    def __enter__(self) -> Kit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        shown = redact_url(self.settings.database_url)
        return f"<Kit db={shown!r} plugins={len(self.plugins.get_plugins())}>"
