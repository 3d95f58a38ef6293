"""The plugin host: one pluggy ``PluginManager`` per kit, built-ins first, then entry points.

Built-in plugins (``DEFAULT_PLUGINS``) are registered exactly like installed ones, so any of
them can be blocked and replaced. Installed plugins come from the setuptools entry-point group
``czo_kit``; ``CZO_PLUGINS`` narrows them to an allow-list and ``CZO_DISABLE_PLUGINS`` blocks
any plugin by name.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from czo_kit import hookspecs
from czo_kit.errors import PluginError

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "Backends",
    "Contributions",
    "PluginInfo",
    "PluginManager",
    "backend_for",
    "call_each_plugin",
    "create_plugin_manager",
    "describe_plugins",
    "label_of",
    "load_plugins",
    "pm",
    "registering_plugin",
    "registries",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "czo_kit"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "czo_kit.default_plugins.sqlite",
    "czo_kit.default_plugins.postgres",
    "czo_kit.default_plugins.memory_cache",
    "czo_kit.default_plugins.redis_cache",
    "czo_kit.default_plugins.redis_cluster_cache",
    "czo_kit.default_plugins.huey_queue",
    "czo_kit.default_plugins.events",
    "czo_kit.default_plugins.permissions",
    "czo_kit.default_plugins.http_auth",
)

PluginManager = pluggy.PluginManager

_registering: ContextVar[str | None] = ContextVar("czo_registering_plugin", default=None)


def registering_plugin() -> str | None:
    """The name of the plugin whose registration hook is running now (``None`` outside one).

    A registry calls this when it receives an item and keeps the name beside it: that is how
    ``czo-kit plugins`` learns what each plugin registered, from the registry itself."""
    return _registering.get()


def call_each_plugin(caller: Any, **kwargs: Any) -> list[Any]:
    """Call the hook ``caller`` (``manager.hook.czo_register_x``) one implementation at a time,
    in pluggy's own order (``tryfirst`` first, later registrations first), with
    ``registering_plugin()`` naming the plugin whose implementation is running.

    Returns the implementations' results that are not ``None``, as a plain hook call would.
    """
    results: list[Any] = []
    for impl in reversed(caller.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            raise PluginError(
                f"plugin {impl.plugin_name!r}: {caller.name} is a registration hook; "
                "it cannot be a wrapper (drop hookwrapper=True / wrapper=True)"
            )
        token = _registering.set(impl.plugin_name)
        try:
            result = impl.function(*[kwargs[name] for name in impl.argnames])
        finally:
            _registering.reset(token)
        if result is not None:
            results.append(result)
    return results


def backend_for(url: str, factories: dict[str, Any], *, variable: str, kind: str, none: str = "none",
                hint: str = "") -> Any:
    """The factory that plugins registered for ``url``'s scheme, or a ``ConfigurationError``
    naming ``variable``, the scheme and the schemes that are registered (never the URL, which
    may hold a password)."""
    from urllib.parse import urlsplit

    from czo_kit.errors import ConfigurationError

    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # a malformed host ('[::1:7000'): the driver's own parser says what is wrong
        scheme = url.partition(":")[0].lower()
    factory = factories.get(scheme)
    if factory is None:
        raise ConfigurationError(
            f"invalid setting {variable}: no {kind} for scheme {scheme!r}; "
            f"allowed: {', '.join(sorted(factories)) or none}{hint}",
            variable=variable,
        )
    return factory


def create_plugin_manager() -> pluggy.PluginManager:
    """A new manager that knows every czo-kit hookspec and has no plugin registered yet."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


pm = create_plugin_manager()
"""The process-wide manager that ``load_plugins()`` fills when called without a manager."""

_global_lock = threading.Lock()
_global_loaded = False


def _split_env(name: str) -> tuple[str, ...] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _matches(name: str, wanted: Iterable[str]) -> bool:
    # A built-in may be named in full (czo_kit.default_plugins.sqlite) or by its last part.
    short = name.rsplit(".", 1)[-1]
    return any(item in (name, short) for item in wanted)


# Names in CZO_PLUGINS / CZO_DISABLE_PLUGINS already warned about as not installed.
_warned: set[tuple[str, str]] = set()


def load_plugins(
    manager: pluggy.PluginManager | None = None,
    *,
    allow: Iterable[str] | None = None,
    block: Iterable[str] = (),
    extra: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Register the built-in plugins, then every installed ``czo_kit`` entry point.

    Without ``manager`` this fills the process-wide ``pm`` once (later calls return it at
    once) and reads ``CZO_PLUGINS`` / ``CZO_DISABLE_PLUGINS``. ``allow`` limits installed
    plugins to those names (``None`` = all, empty = none); ``block`` skips any plugin by name.
    ``extra`` are plugin objects registered by hand (tests, embedding). Ends with
    ``check_pending()``: a hookimpl that matches no hookspec is an error.
    """
    global _global_loaded
    if manager is None:
        with _global_lock:
            if _global_loaded:
                return pm
            env_allow = _split_env("CZO_PLUGINS")
            env_block = _split_env("CZO_DISABLE_PLUGINS") or ()
            _load_into(pm, allow=env_allow if allow is None else allow,
                       block=tuple(block) or env_block, extra=extra)
            _global_loaded = True
            return pm
    _load_into(manager, allow=allow, block=block, extra=extra)
    return manager


def _load_into(
    manager: pluggy.PluginManager,
    *,
    allow: Iterable[str] | None,
    block: Iterable[str],
    extra: Iterable[object],
) -> None:
    allow_list = None if allow is None else tuple(allow)
    block_list = tuple(block)
    seen: set[str] = set()

    for module_name in DEFAULT_PLUGINS:
        seen.add(module_name)
        if _matches(module_name, block_list) or manager.has_plugin(module_name):
            continue
        module = importlib.import_module(module_name)
        manager.register(module, name=module_name)

    for ep in _entry_points():
        seen.add(ep.name)
        if manager.has_plugin(ep.name):
            continue
        if allow_list is not None and ep.name not in allow_list:
            continue
        if ep.name in block_list:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}, from {dist}) failed to import: {exc!r}; "
                f"fix or uninstall it, or skip it with CZO_DISABLE_PLUGINS={ep.name}"
            ) from exc
        manager.register(plugin, name=ep.name)

    for plugin in extra:
        if manager.is_registered(plugin):
            continue
        manager.register(plugin)

    for wanted, label in ((allow_list or (), "CZO_PLUGINS"), (block_list, "CZO_DISABLE_PLUGINS")):
        for name in wanted:
            if not any(_matches(candidate, (name,)) for candidate in seen) and (label, name) not in _warned:
                _warned.add((label, name))  # once per process: the CLI loads plugins twice
                log.warning(
                    "%s names %r, but no plugin of that name is installed (installed: %s)",
                    label, name, ", ".join(sorted(seen)) or "none",
                )

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"{exc}; every @hookimpl must match a hookspec in czo_kit/hookspecs.py "
            "(check the spelling of the function name)"
        ) from exc


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


@dataclass
class PluginInfo:
    """What one registered plugin is and what it contributes."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    registers: dict[str, list[str]] = field(default_factory=dict)


def label_of(obj: Any) -> str:
    """How ``czo-kit plugins`` names a registered class, function or service key."""
    metadata = getattr(obj, "__metadata__", None)
    if metadata:  # Annotated[...] service keys: show their label
        return str(metadata[0])
    if isinstance(obj, type):
        return obj.__name__
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)


class Contributions:
    """What each plugin gave one registry: the registry calls ``record(label)`` as an item
    arrives, and answers ``contributions()`` from it. Items that arrive outside a
    registration hook (the kit's own, or a call at run time) have no plugin and are left out.
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []

    def record(self, label: str) -> None:
        plugin = registering_plugin()
        if plugin is not None:
            self._items.append((plugin, label))

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> labels of what it registered, in registration order."""
        found: dict[str, list[str]] = {}
        for plugin, label in self._items:
            found.setdefault(plugin, []).append(label)
        return found


class Backends(dict[str, Any]):
    """Scheme -> factory, as plugins registered them (a later scheme replaces an earlier one),
    remembering which plugin registered which scheme."""

    def __init__(self) -> None:
        super().__init__()
        self._contributions = Contributions()

    def add(self, scheme: str, factory: Any) -> None:
        self[scheme.lower()] = factory
        self._contributions.record(scheme)

    def contributions(self) -> dict[str, list[str]]:
        return self._contributions.contributions()


class _ByPlugin:
    """The contributions of a registry the kit keeps as plugin -> items already."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._contributions: dict[str, list[str]] = {}
        for plugin, label in items:
            self._contributions.setdefault(plugin, []).append(label)

    def contributions(self) -> dict[str, list[str]]:
        return self._contributions


def registries(kit: Kit, *, cli: Any = None) -> list[tuple[str, Any]]:
    """Each registration hook (short name) with the registry of ``kit`` that received what
    plugins registered through it; each answers ``contributions()``. ``describe_plugins``
    reads these and nothing else: a new registry is one more line here. ``cli`` is the
    command line whose commands to report (default: one built for the kit's plugins)."""
    from czo_kit.cli import build_cli
    from czo_kit.http.api import routes_of

    return [
        ("database_backends", kit.database_backends),
        ("cache_drivers", kit.cache_drivers),
        ("queue_backends", kit.queue_backends),
        ("settings", _ByPlugin((plugin, label_of(type(values))) for plugin, _, values in kit.plugin_settings())),
        ("models", _ByPlugin((plugin, label_of(m)) for plugin, models in kit.models.items() for m in models)),
        ("migrations", _ByPlugin((name, entry.directory) for name, entry in kit.migrations.modules.items()
                                 if entry.directory is not None)),
        ("hooks", kit.hooks),
        ("events", kit.events),
        ("tasks", kit.tasks),
        ("permissions", kit.permissions),
        ("services", kit.services),
        ("authenticators", kit.authenticators),
        ("http_routes", routes_of(kit)),
        ("dashboard", kit.dashboard),
        ("apps", kit.apps.in_process),
        ("commands", cli if cli is not None else build_cli(kit.plugins)),
    ]


def describe_plugins(kit: Kit, *, cli: Any = None) -> list[PluginInfo]:
    """Every plugin of ``kit`` with its hooks and, for registration hooks, what it registered,
    as the kit's registries recorded it (``registries``)."""
    manager = kit.plugins
    recorded = {what: registry.contributions() for what, registry in registries(kit, cli=cli)}
    dists = {name: dist for name, dist in _dist_names(manager)}
    infos: list[PluginInfo] = []
    for name, plugin in sorted(manager.list_name_plugin(), key=lambda item: item[0] or ""):
        if plugin is None or name is None:
            continue
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        registers = {
            what: recorded[what].get(name, [])
            for hook in hooks
            if (what := hook.removeprefix("czo_register_")) in recorded
        }
        dist = dists.get(name)
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist[0] if dist else ("czo-kit" if name in DEFAULT_PLUGINS else None),
                version=dist[1] if dist else None,
                hooks=hooks,
                registers=registers,
            )
        )
    return infos


def _dist_names(manager: pluggy.PluginManager) -> list[tuple[str, tuple[str, str]]]:
    found: list[tuple[str, tuple[str, str]]] = []
    for ep in _entry_points():
        if ep.dist is not None and manager.has_plugin(ep.name):
            found.append((ep.name, (ep.dist.name, ep.dist.version)))
    return found
