"""``czo_kit.cache``: one cache API over pluggable drivers (memory for development, Redis in
production): TTLs, tags, namespaces, bulk operations, stampede protection, stale-while-
revalidate, and misses instead of exceptions when the backend is down."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from czo_kit.cache._refresh import in_background_refresh
from czo_kit.cache.driver import CacheDriver, CacheUnavailable
from czo_kit.cache.manager import CacheManager

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pluggy

    from czo_kit.plugins import Backends

    from czo_kit.settings import Settings

__all__ = [
    "CacheDriver",
    "CacheManager",
    "CacheUnavailable",
    "cache_drivers",
    "create_cache",
    "in_background_refresh",
]


def cache_drivers(manager: pluggy.PluginManager | None = None) -> Backends:
    """Scheme -> driver factory, from every plugin's ``czo_register_cache_drivers``, with
    which plugin registered which scheme (``contributions()``)."""
    from czo_kit.plugins import Backends, call_each_plugin, load_plugins

    found = Backends()
    pm = manager if manager is not None else load_plugins()

    def register(scheme: str, factory: Any) -> None:
        if not isinstance(scheme, str) or not scheme:
            raise ValueError(f"cache driver scheme must be a non-empty string, got {scheme!r}")
        if not callable(factory):
            raise TypeError(f"cache driver {scheme!r}: factory {factory!r} is not callable")
        found.add(scheme, factory)

    call_each_plugin(pm.hook.czo_register_cache_drivers, register=register)
    return found


def create_cache(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    plugins: pluggy.PluginManager | None = None,
    drivers: Mapping[str, Any] | None = None,
    **options: Any,
) -> CacheManager:
    """A ``CacheManager`` for ``url`` (``memory://``, ``redis://host:6379/0``, or a scheme a
    plugin registers). ``drivers`` are the factories to choose from (default: those the
    plugins of ``plugins`` register). ``options`` override settings: ``prefix``,
    ``default_ttl``, ``strict``, ``lock_timeout``, ``retry_after``."""
    import msgspec

    from czo_kit.plugins import backend_for
    from czo_kit.settings import Settings

    base = settings if settings is not None else Settings.from_env()
    target = url or base.cache_url
    factory = backend_for(target, dict(drivers if drivers is not None else cache_drivers(plugins)), variable="CZO_CACHE_URL", kind="cache driver")
    prefix = options.pop("prefix", base.cache_prefix)
    if prefix != base.cache_prefix:  # the driver sees the prefix the manager writes under
        base = msgspec.structs.replace(base, cache_prefix=prefix)
    driver = factory(target, settings=base)
    return CacheManager(
        driver,
        prefix=prefix,
        default_ttl=options.pop("default_ttl", base.cache_default_ttl),
        strict=options.pop("strict", base.cache_strict),
        lock_timeout=options.pop("lock_timeout", base.cache_lock_timeout),
        **options,
    )
