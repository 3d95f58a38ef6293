"""The whole extension surface of czo-kit: every hookspec, and the markers plugins use.

A plugin is any module or object with functions decorated by ``@hookimpl`` whose names match a
spec below. Registration hooks pass a *collector* (``register``) instead of asking for a return
value, so one implementation can register any number of things.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import click
    import msgspec
    import peewee

    import huey

    from czo_kit.apps.extensions import DashboardRegistry
    from czo_kit.apps.inprocess import AppHandler
    from czo_kit.apps.manifest import AppManifest
    from czo_kit.apps.permissions import PermissionRegistry
    from czo_kit.http.api import ApiRoutes
    from czo_kit.http.auth import UserIdentity
    from czo_kit.cache.driver import CacheDriver
    from czo_kit.events.emitter import EventEmitter
    from czo_kit.hooks import HookRegistry
    from czo_kit.kit import Kit
    from czo_kit.services import ServiceRegistry
    from czo_kit.settings import Settings
    from czo_kit.tasks import TaskRegistry

__all__ = [
    "PROJECT_NAME",
    "CacheDriverFactory",
    "DatabaseFactory",
    "QueueFactory",
    "RegisterApp",
    "RegisterAuthenticator",
    "RegisterCacheDriver",
    "RegisterQueueBackend",
    "RegisterDatabaseBackend",
    "RegisterMigrations",
    "RegisterModel",
    "RegisterSettings",
    "hookimpl",
    "hookspec",
]

PROJECT_NAME = "czo_kit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class DatabaseFactory(Protocol):
    """Builds a Peewee database for a URL; ``settings`` carries pool sizes and timeouts."""

    def __call__(self, url: str, *, settings: Settings) -> peewee.Database: ...


class RegisterDatabaseBackend(Protocol):
    def __call__(self, scheme: str, factory: DatabaseFactory) -> None: ...


class CacheDriverFactory(Protocol):
    """Builds a cache driver for a URL such as ``redis://host:6379/0``."""

    def __call__(self, url: str, *, settings: Settings) -> CacheDriver: ...


class RegisterCacheDriver(Protocol):
    def __call__(self, scheme: str, factory: CacheDriverFactory) -> None: ...


class QueueFactory(Protocol):
    """Builds the kit's Huey instance for a URL; ``name`` is the queue's name."""

    def __call__(self, url: str, *, settings: Settings, name: str) -> huey.Huey: ...


class RegisterQueueBackend(Protocol):
    def __call__(self, scheme: str, factory: QueueFactory) -> None: ...


class RegisterAuthenticator(Protocol):
    def __call__(self, fn: Callable[[str, Kit], UserIdentity | None], *, priority: int = 0) -> None: ...


class RegisterModel(Protocol):
    def __call__(self, *models: type[peewee.Model]) -> None: ...


class RegisterMigrations(Protocol):
    def __call__(self, directory: str) -> None: ...


@hookspec
def czo_register_database_backends(register: RegisterDatabaseBackend) -> None:
    """Register database backends: ``register("sqlite", factory)``.

    The scheme of ``CZO_DATABASE_URL`` picks the factory. A later registration of the same
    scheme replaces an earlier one, so mark a replacement ``@hookimpl(trylast=True)``.
    """


@hookspec
def czo_register_cache_drivers(register: RegisterCacheDriver) -> None:
    """Register cache drivers: ``register("redis", factory)``.

    The scheme of ``CZO_CACHE_URL`` picks the factory; the driver implements
    ``czo_kit.cache.CacheDriver`` and should pass ``czo_kit.testing.CacheDriverContract``.
    """


@hookspec
def czo_register_queue_backends(register: RegisterQueueBackend) -> None:
    """Register queue backends for async events: ``register("redis", factory)``.

    The scheme of ``CZO_QUEUE_URL`` picks the factory, which returns a ``huey.Huey`` whose
    storage honours priority (an empty ``CZO_QUEUE_URL`` means no queue at all).
    """


@hookspec
def czo_register_models(register: RegisterModel) -> None:
    """Declare a module's models: ``register(Item, Variant)``.

    The kit binds them to ``kit.db``; ``czo-kit db init`` creates their tables.
    """


@hookspec
def czo_register_migrations(register: RegisterMigrations) -> None:
    """Declare the plugin's directory of schema migrations: ``register(path)``.

    It holds numbered ``playhouse.migrations`` scripts (``0002_add_sku.py`` defining
    ``up(migrator, db)``), applied in order by ``czo-kit db migrate`` and recorded in a
    history table of the plugin's own; ``czo-kit db makemigrations`` writes new ones.
    """


class RegisterSettings(Protocol):
    def __call__(self, kind: type[msgspec.Struct], *, prefix: str) -> None: ...


@hookspec
def czo_register_settings(register: RegisterSettings) -> None:
    """Declare the plugin's own settings: ``register(WidgetSettings, prefix="CZO_WIDGET_")``.

    ``WidgetSettings`` is a ``msgspec.Struct`` whose fields have defaults; each is read from
    ``<prefix><FIELD>`` when the kit starts, validated like the kit's own (a bad value stops
    the kit, naming the variable and what is allowed), and read with
    ``kit.settings_for(WidgetSettings)``. ``czo-kit settings`` lists them, secrets masked
    (fields in the Struct's ``SECRET_FIELDS`` ClassVar, and names with secret, password or
    token in them).
    """


@hookspec
def czo_register_hooks(hooks: HookRegistry) -> None:
    """Add before / after / on_error hooks: ``hooks.before("item.create", fn)``."""


@hookspec
def czo_register_events(events: EventEmitter, kit: Kit) -> None:
    """Subscribe to events: ``events.on(ItemDeleted, handler)``.

    Called in every process that builds a kit (web and worker alike), so whoever emits never
    decides who listens, and async deliveries find their handler in the worker. ``kit`` is
    the kit being built (its services are ready once it has started), for handlers that need
    them; implementations may leave the argument out.
    """


@hookspec
def czo_register_tasks(register: TaskRegistry) -> None:
    """Declare background tasks: ``digest = register.task(send_digest, retries=3,
    retry_delay=10)`` and ``register.periodic(prune_sessions, cron="*/5 * * * *")``.

    ``digest.enqueue(*args, **kwargs)`` runs ``send_digest`` on the kit's consumer (the
    in-process deliverer without a queue) once the caller's transaction commits, with
    arguments encoded by msgspec; a periodic task runs once per matching minute (UTC) however
    many workers run. A task whose function has a ``kit`` parameter is given the kit. Called in
    every process that builds a kit, so the worker finds the tasks the web process enqueues.
    """


@hookspec
def czo_register_permissions(register: PermissionRegistry) -> None:
    """Declare resources, roles and event rules, or provide the permission service.

    ``register.resource("widget", ["read", "write"])``, ``register.role("staff", {"widget":
    ["read"]})``, ``register.event("widget.made", resource="widget", fields={"id": None,
    "maker_email": ("contact", "read")})``: apps receive only the declared fields, each if
    granted its permission. An auth module replaces the built-in ``PermissionService``
    (``shop_members``) with ``register.service(factory, priority=0)``.
    """


@hookspec
def czo_register_services(registry: ServiceRegistry) -> None:
    """Register singletons other modules look up by type.

    ``registry.register_factory(ItemRepository, make_repo)``; a factory may take the
    ``svcs.Container`` and fetch the ``Kit`` (or anything else) from it.
    """


@hookspec
def czo_register_authenticators(register: RegisterAuthenticator) -> None:
    """Tell the HTTP API who a bearer token belongs to: ``register(fn, priority=0)``.

    ``fn(token, kit)`` returns a ``czo_kit.http.UserIdentity``, ``None`` if the token is not
    its kind, or raises ``AuthenticationError``. Higher priority is asked first; the built-in
    signed user tokens have priority -100. App tokens (``czo_app_...``) are the kit's own.
    """


@hookspec
def czo_register_http_routes(api: ApiRoutes, kit: Kit) -> None:
    """Add routes to the HTTP API: ``api.add_route("/api/shops/{shop_id:shop}/...", resource)``.

    Resources are Falcon resources; ``czo_kit.http.require_app(req, "item", "write",
    shop_id=...)`` and ``require_user(req)`` check who is calling.
    """


@hookspec
def czo_register_dashboard(register: DashboardRegistry, kit: Kit) -> None:
    """Add mounts and pages to the dashboard, called once per kit on first use.

    ``register.mount(name, *, resource, context)``: a place app extensions can target;
    ``context(kit, shop_id, object_id)`` returns what they are given (an ``ExtensionContext``,
    a mapping, or ``None``). ``register.page(slug, *, title, resource, render)``: a page at
    ``/dashboard/shops/<id>/<slug>`` (and ``/<slug>/<object id>``) listed for people holding
    ``<resource>:read``; ``render(kit, shop_id, object_id)`` returns a ``Page`` or ``None``
    (404).
    """


class RegisterApp(Protocol):
    def __call__(
        self,
        manifest: AppManifest | Mapping[str, Any],
        *,
        handlers: Mapping[str, AppHandler],
        routes: Mapping[str, object] | None = None,
    ) -> None: ...


@hookspec
def czo_register_apps(register: RegisterApp) -> None:
    """Ship an app as a plugin: ``register(manifest, handlers={"note.created": on_note})``.

    ``manifest`` is an ``AppManifest`` without URLs (no ``app_url``, ``token_target_url`` or
    webhook ``target_url``); ``handlers`` maps each event its webhooks subscribe to to
    ``fn(payload, ctx, app)``, run by the worker with the permission-filtered payload a remote
    app would be POSTed, with the same retries and dead letters; ``app`` is an
    ``InstalledApp`` (installation, shop, granted permissions, the kit). ``routes`` maps paths
    to Falcon resources served under ``/apps/<app id>``, for callers with that app's token.
    Installed per shop with ``kit.apps.install(shop_id=..., installer_id=..., app_id=...)``.
    """


@hookspec
def czo_register_commands(cli: click.Group) -> None:
    """Add commands to the ``czo-kit`` command line: ``@cli.command()`` or ``cli.add_command``."""


@hookspec
def czo_startup(kit: Kit) -> None:
    """Called once the kit is wired (database bound, services registered)."""


@hookspec
def czo_shutdown(kit: Kit) -> None:
    """Called when the kit closes, before its connections are released."""

