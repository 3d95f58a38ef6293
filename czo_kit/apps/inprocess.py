"""In-process apps: an app shipped as a pip-installed plugin (``czo_register_apps``) instead of
a remote service.

It is installed per shop like a remote app (``kit.apps.install(shop_id, installer_id,
app_id=...)``: the same permission checks, token and uninstall), and its webhooks go through
the same delivery rows, retries, dead letters and redelivery. Only the transport differs: the
worker that claims a delivery calls the app's handler with the delivery's permission-filtered
payload, instead of POSTing it. Its subscriptions point at ``czo-app://<app id>/<webhook>``,
a scheme no remote manifest can give (their URLs must be http(s)).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from czo_kit.apps.manifest import AppManifest, check_manifest, parse_manifest
from czo_kit.apps.permissions import Pair, PermissionRegistry, allows, format_pairs
from czo_kit.errors import ManifestError, PluginError
from czo_kit.events.types import EventContext
from czo_kit.plugins import registering_plugin

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = [
    "IN_PROCESS_SCHEME",
    "AppHandler",
    "InProcessApp",
    "InProcessApps",
    "InstalledApp",
    "in_process_target",
    "is_in_process_target",
]

IN_PROCESS_SCHEME = "czo-app"
"""The scheme of an in-process app's subscription targets (``czo-app://<app id>/<webhook name>``)."""

_ROUTE = re.compile(r"^(/[A-Za-z0-9._~{}:-]+)*/?\Z")


def in_process_target(app_id: str, webhook: str) -> str:
    """The target recorded for an in-process app's subscription and its deliveries."""
    return f"{IN_PROCESS_SCHEME}://{app_id}/{webhook}"


def is_in_process_target(target: str) -> bool:
    return target.startswith(IN_PROCESS_SCHEME + "://")


def app_of_target(target: str) -> str:
    """The app id of an in-process target."""
    return target[len(IN_PROCESS_SCHEME) + 3:].split("/", 1)[0]


@dataclass(frozen=True)
class InstalledApp:
    """What an in-process app's handler gets as ``app``: the installation it runs for.

    ``permissions`` are the ones granted at install (the payload was filtered by them
    already); ``message_id`` and ``attempt`` name this delivery (``message_id`` is the same
    on every attempt: dedupe on it, or on an id of the payload, since delivery is at least
    once); ``kit`` is the worker's kit, to reach repositories and services."""

    installation_id: int
    shop_id: int
    app_id: str
    permissions: frozenset[Pair]
    kit: Kit
    message_id: str = ""
    attempt: int = 1

    def has(self, resource: str, action: str) -> bool:
        """Whether the installation was granted ``action`` on ``resource``."""
        return allows(self.permissions, resource, action)


class AppHandler(Protocol):
    """``fn(payload, ctx, app)``: ``payload`` is the event's data as a remote app would get it
    (only the fields its permissions let through), ``ctx`` the event's context. Raising makes
    the attempt fail: it is retried on the webhook schedule, then dead."""

    def __call__(self, payload: Mapping[str, Any], ctx: EventContext, app: InstalledApp) -> Any: ...


@dataclass(frozen=True)
class InProcessApp:
    """An app a plugin registered: its manifest, handlers by event name, and HTTP routes by
    path (under ``/apps/<app id>``)."""

    manifest: AppManifest
    handlers: Mapping[str, AppHandler]
    routes: Mapping[str, object] = field(default_factory=dict)
    plugin: str | None = None

    @property
    def id(self) -> str:
        return self.manifest.id


class InProcessApps:
    """The in-process apps the plugins registered: what ``czo_register_apps`` receives as
    ``register``. Each registration is checked at once, so a wrong app stops the kit at
    startup, naming the plugin, the app and what is wrong."""

    def __init__(self, permissions: PermissionRegistry) -> None:
        self.permissions = permissions
        self.apps: dict[str, InProcessApp] = {}
        self.kit: Kit | None = None
        """Set by the kit once built: handlers get it as ``app.kit``."""

    def __call__(
        self,
        manifest: AppManifest | Mapping[str, Any],
        *,
        handlers: Mapping[str, AppHandler],
        routes: Mapping[str, object] | None = None,
    ) -> None:
        plugin = registering_plugin()
        who = f"plugin {plugin!r}" if plugin else "an in-process app registered outside a plugin"
        try:
            if isinstance(manifest, AppManifest):
                checked = check_manifest(manifest, in_process=True)
            elif isinstance(manifest, Mapping):
                checked = parse_manifest(manifest, in_process=True)
            else:
                raise PluginError(
                    f"{who}: czo_register_apps takes an AppManifest (or a mapping of one), got {type(manifest).__name__}"
                )
        except ManifestError as exc:
            app = manifest.id if isinstance(manifest, AppManifest) else str(manifest.get("id", "?"))[:64]
            raise PluginError(f"{who}: the manifest of in-process app {app!r} is refused: {exc}") from None
        where = f"{who}, in-process app {checked.id!r}"
        existing = self.apps.get(checked.id)
        if existing is not None:
            raise PluginError(
                f"{where}: app id {checked.id!r} is already registered by "
                f"{f'plugin {existing.plugin!r}' if existing.plugin else 'code outside a plugin'}; "
                "each app id belongs to one plugin"
            )
        self.apps[checked.id] = InProcessApp(
            manifest=checked,
            handlers=self._check_handlers(checked, handlers, where),
            routes=self._check_routes(routes, where),
            plugin=plugin,
        )

    def _check_handlers(self, manifest: AppManifest, handlers: Any, where: str) -> dict[str, AppHandler]:
        if not isinstance(handlers, Mapping):
            raise PluginError(f"{where}: handlers must map event names to functions, got {type(handlers).__name__}")
        subscribed = {event for webhook in manifest.webhooks for event in webhook.events}
        asked = manifest.permission_pairs()
        for event, handler in handlers.items():
            if not isinstance(event, str) or event not in subscribed:
                raise PluginError(
                    f"{where}: a handler for {event!r}, an event no webhook of the manifest subscribes to; "
                    f"subscribed: {', '.join(sorted(subscribed)) or 'none'}"
                )
            if not callable(handler):
                raise PluginError(f"{where}: the handler for {event!r} is {handler!r}, not a function")
            rule = self.permissions.rule_for(event)
            if not allows(asked, rule.resource, rule.action):
                raise PluginError(
                    f"{where}: a handler for {event!r}, which needs {rule.resource}:{rule.action}, but the "
                    f"manifest asks only for {', '.join(format_pairs(asked)) or 'nothing'}; add it to its permissions"
                )
        missing = sorted(subscribed - set(handlers))
        if missing:
            raise PluginError(
                f"{where}: the manifest subscribes to {', '.join(missing)} but handlers has none for "
                f"{'it' if len(missing) == 1 else 'them'}; every subscribed event needs a handler"
            )
        return dict(handlers)

    @staticmethod
    def _check_routes(routes: Any, where: str) -> dict[str, object]:
        if routes is None:
            return {}
        if not isinstance(routes, Mapping):
            raise PluginError(f"{where}: routes must map paths to Falcon resources, got {type(routes).__name__}")
        for path, resource in routes.items():
            if not isinstance(path, str) or len(path) > 200 or not _ROUTE.fullmatch(path) or ".." in path:
                raise PluginError(
                    f"{where}: route {str(path)[:60]!r} must be a path such as '/things' or "
                    "'/things/{thing_id}' (mounted under /apps/<app id>), or '' for /apps/<app id> itself"
                )
            if resource is None or isinstance(resource, (str, bytes, int, float)):
                raise PluginError(f"{where}: route {path!r} needs a Falcon resource (an object with on_get...), got {resource!r}")
        return dict(routes)

    # -- questions ----------------------------------------------------------------------

    def get(self, app_id: str) -> InProcessApp | None:
        return self.apps.get(app_id)

    def ids(self) -> list[str]:
        return sorted(self.apps)

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> ``app <id>`` of each app it registered (apps registered outside a
        hook are not listed)."""
        found: dict[str, list[str]] = {}
        for app in self.apps.values():
            if app.plugin is not None:
                found.setdefault(app.plugin, []).append(f"app {app.id}")
        return found

    # -- delivering ---------------------------------------------------------------------

    def call(
        self,
        *,
        target: str,
        body: bytes,
        installation_id: int,
        shop_id: int,
        permissions: frozenset[Pair],
        message_id: str,
        attempt: int,
        correlation_id: str | None,
    ) -> None:
        """Run the handler a delivery is for, with the delivery's own body: the same
        permission-filtered payload a remote app is POSTed. Raises what the handler raises,
        or ``LookupError`` when this process does not have the app."""
        app_id = app_of_target(target)
        app = self.apps.get(app_id)
        if app is None:
            raise LookupError(
                f"in-process app {app_id!r} is not registered in this process (is its package installed, and "
                f"its plugin enabled, where the worker runs?); registered: {', '.join(self.ids()) or 'none'}"
            )
        message = msgspec.json.decode(body)
        event = str(message["event"])
        handler = app.handlers.get(event)
        if handler is None:
            raise LookupError(f"in-process app {app_id!r} has no handler for {event!r} in this process")
        if self.kit is None:
            raise RuntimeError("the in-process apps are not attached to a kit")
        ctx = EventContext(
            name=event,
            event_id=str(message["event_id"]),
            timestamp=_timestamp(message.get("occurred_at")),
            correlation_id=correlation_id,
            attempt=attempt,
        )
        installed = InstalledApp(
            installation_id=installation_id, shop_id=shop_id, app_id=app_id, permissions=permissions,
            kit=self.kit, message_id=message_id, attempt=attempt,
        )
        handler(message["data"], ctx, installed)


def _timestamp(value: Any) -> dt.datetime | None:
    """The event's time from a delivery body (RFC 3339, as the dispatcher wrote it)."""
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else None
