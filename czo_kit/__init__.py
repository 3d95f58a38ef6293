"""czo-kit: the foundation of c-zo modules.

``from czo_kit import Kit, Settings, hookimpl``. Heavier parts (``czo_kit.db``, the CLI) are
imported only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from czo_kit.hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from czo_kit.errors import (
        ConfigurationError,
        ConflictError,
        CzoError,
        InvalidCursorError,
        InvalidDataError,
        InvalidFilterError,
        NotFoundError,
        OptimisticLockError,
        PluginError,
    )
    from czo_kit.hooks import HookName, HookRegistry
    from czo_kit.kit import Kit
    from czo_kit.settings import Settings

__version__ = "0.1.0"

_EXPORTS = {
    "Kit": "czo_kit.kit",
    "Settings": "czo_kit.settings",
    "HookName": "czo_kit.hooks",
    "HookRegistry": "czo_kit.hooks",
    "CzoError": "czo_kit.errors",
    "ConfigurationError": "czo_kit.errors",
    "ConflictError": "czo_kit.errors",
    "InvalidCursorError": "czo_kit.errors",
    "InvalidDataError": "czo_kit.errors",
    "InvalidFilterError": "czo_kit.errors",
    "NotFoundError": "czo_kit.errors",
    "OptimisticLockError": "czo_kit.errors",
    "PluginError": "czo_kit.errors",
}

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "CzoError",
    "HookName",
    "HookRegistry",
    "InvalidCursorError",
    "InvalidDataError",
    "InvalidFilterError",
    "Kit",
    "NotFoundError",
    "OptimisticLockError",
    "PluginError",
    "Settings",
    "__version__",
    "hookimpl",
    "hookspec",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'czo_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
