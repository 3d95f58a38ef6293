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
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from czo_kit import hookspecs
from czo_kit.errors import PluginError

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "backend_for",
    "call_each_plugin",
    "create_plugin_manager",
    "describe_plugins",
    "load_plugins",
    "pm",
    "registering_plugin",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "czo_kit"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "czo_kit.default_plugins.sqlite",
    "czo_kit.default_plugins.postgres",
    "czo_kit.default_plugins.memory_cache",
    "czo_kit.default_plugins.redis_cache",
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

    scheme = urlsplit(url).scheme.lower()
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


def _label(obj: Any) -> str:
    metadata = getattr(obj, "__metadata__", None)
    if metadata:  # Annotated[...] service keys: show their label
        return str(metadata[0])
    if isinstance(obj, type):
        return obj.__name__
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)


def _recorder(hook: str) -> tuple[Any, list[str]] | None:
    """A stand-in collector for a registration hook that writes down what is registered."""
    seen: list[str] = []
    if hook in ("czo_register_database_backends", "czo_register_cache_drivers", "czo_register_queue_backends"):
        return (lambda scheme, factory: seen.append(scheme)), seen
    if hook == "czo_register_models":
        return (lambda *models: seen.extend(_label(m) for m in models)), seen
    if hook == "czo_register_migrations":
        return (lambda directory: seen.append(str(directory))), seen
    if hook == "czo_register_services":

        class _Recorder:
            def register_factory(self, svc_type: Any, factory: Any, **kw: Any) -> None:
                seen.append(_label(svc_type))

            def register_value(self, svc_type: Any, value: Any, **kw: Any) -> None:
                seen.append(_label(svc_type))

        return _Recorder(), seen
    if hook == "czo_register_dashboard":

        class _Dashboard:
            def mount(self, name: str, **kw: Any) -> None:
                seen.append(f"mount {name}")

            def page(self, slug: str, **kw: Any) -> None:
                seen.append(f"page {slug}")

        return _Dashboard(), seen
    if hook == "czo_register_authenticators":
        return (lambda fn, **kw: seen.append(_label(fn))), seen
    if hook == "czo_register_http_routes":

        class _Routes:
            def add_route(self, path: str, resource: Any, **kw: Any) -> None:
                seen.append(path)

        return _Routes(), seen
    if hook == "czo_register_permissions":

        class _Permissions:
            def resource(self, name: str, actions: Any, **kw: Any) -> None:
                seen.append(f"resource {name}")

            def role(self, name: str, grants: Any) -> None:
                seen.append(f"role {name}")

            def event(self, name: str, **kw: Any) -> None:
                seen.append(f"event {name}")

            def service(self, factory: Any, **kw: Any) -> None:
                seen.append("permission service")

        return _Permissions(), seen
    if hook == "czo_register_events":

        class _Events:
            def on(self, event: Any, handler: Any, **kw: Any) -> Callable[[], None]:
                seen.append(f"on {getattr(event, '__event_name__', event)}")
                return lambda: None

            def once(self, event: Any, handler: Any, **kw: Any) -> Callable[[], None]:
                seen.append(f"once {getattr(event, '__event_name__', event)}")
                return lambda: None

        return _Events(), seen
    if hook == "czo_register_hooks":

        class _Hooks:
            def __getattr__(self, kind: str) -> Callable[..., Any]:
                def add(name: Any, fn: Any, **kw: Any) -> Callable[[], None]:
                    seen.append(f"{kind} {name}")
                    return lambda: None

                return add

        return _Hooks(), seen
    if hook == "czo_register_tasks":

        class _Tasks:
            def task(self, fn: Any, **kw: Any) -> None:
                seen.append(f"task {kw.get('name') or _label(fn)}")

            def periodic(self, fn: Any, *, cron: str = "*/5 * * * *", **kw: Any) -> None:
                seen.append(f"periodic {kw.get('name') or _label(fn)} ({cron})")

        return _Tasks(), seen
    if hook == "czo_register_commands":
        import click

        group = click.Group()
        original = group.add_command

        def add_command(cmd: click.Command, name: str | None = None) -> None:
            original(cmd, name)
            seen.append(name or cmd.name or "?")

        group.add_command = add_command  # type: ignore[method-assign]
        return group, seen
    return None


_ARGUMENT = {
    "czo_register_database_backends": "register",
    "czo_register_cache_drivers": "register",
    "czo_register_queue_backends": "register",
    "czo_register_events": "events",
    "czo_register_permissions": "register",
    "czo_register_authenticators": "register",
    "czo_register_http_routes": "api",
    "czo_register_dashboard": "register",
    "czo_register_models": "register",
    "czo_register_migrations": "register",
    "czo_register_services": "registry",
    "czo_register_commands": "cli",
    "czo_register_hooks": "hooks",
    "czo_register_tasks": "register",
}


def describe_plugins(manager: pluggy.PluginManager) -> list[PluginInfo]:
    """Every registered plugin with its hooks and, for registration hooks, what it registers."""
    dists = {name: dist for name, dist in _dist_names(manager)}
    infos: list[PluginInfo] = []
    for name, plugin in sorted(manager.list_name_plugin(), key=lambda item: item[0] or ""):
        if plugin is None or name is None:
            continue
        hooks: list[str] = []
        registers: dict[str, list[str]] = {}
        for caller in manager.get_hookcallers(plugin) or []:
            hooks.append(caller.name)
            recorder = _recorder(caller.name)
            if recorder is None:
                continue
            collector, seen = recorder
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    # Other arguments (the kit, for czo_register_events) are not needed to
                    # record what is registered; handlers that use them only run later.
                    wanted = {_ARGUMENT[caller.name]: collector, "kit": None}
                    impl.function(**{k: v for k, v in wanted.items() if k in impl.argnames})
            registers[caller.name.removeprefix("czo_register_")] = seen
        dist = dists.get(name)
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist[0] if dist else ("czo-kit" if name in DEFAULT_PLUGINS else None),
                version=dist[1] if dist else None,
                hooks=sorted(hooks),
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
