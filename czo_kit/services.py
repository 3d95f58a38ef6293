"""The kit's service registry: singletons that modules register and look up by type.

A thin layer over hynek's ``svcs``: one ``svcs.Registry`` per kit, plus one long-lived
``svcs.Container`` so that ``kit.services.get(T)`` returns the same instance every time.
``container()`` gives a short-lived container for per-request services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import svcs

from czo_kit.plugins import Contributions, label_of

__all__ = ["ServiceNotFoundError", "ServiceRegistry"]

T = TypeVar("T")
T1 = TypeVar("T1")
T2 = TypeVar("T2")

ServiceNotFoundError = svcs.exceptions.ServiceNotFoundError


class ServiceRegistry:
    """Register with ``register_value`` / ``register_factory``; look up with ``get``."""

    def __init__(self) -> None:
        self._registry = svcs.Registry()
        self._container = svcs.Container(self._registry)
        self._types: list[Any] = []
        self._contributions = Contributions()

    @property
    def registry(self) -> svcs.Registry:
        """The underlying ``svcs.Registry``, for integrations (Flask, Falcon, ...)."""
        return self._registry

    def register_value(self, svc_type: Any, value: object, **options: Any) -> None:
        """Register a ready-made instance under ``svc_type``."""
        self._registry.register_value(svc_type, value, **options)
        self._types.append(svc_type)
        self._contributions.record(label_of(svc_type))

    def register_factory(self, svc_type: Any, factory: Callable[..., Any], **options: Any) -> None:
        """Register a factory, called once on first ``get``. It may take a ``svcs.Container``."""
        self._registry.register_factory(svc_type, factory, **options)
        self._types.append(svc_type)
        self._contributions.record(label_of(svc_type))

    @overload
    def get(self, svc_type: type[T], /) -> T: ...

    @overload
    def get(self, svc_type: type[T1], svc_type2: type[T2], /) -> tuple[T1, T2]: ...

    def get(self, *svc_types: Any) -> Any:
        """The singleton for each type; ``ServiceNotFoundError`` names a missing one."""
        try:
            found = self._container.get(*svc_types)
        except svcs.exceptions.ServiceNotFoundError as exc:
            known = ", ".join(sorted(_name(t) for t in self._types)) or "none"
            raise ServiceNotFoundError(
                f"no service registered for {_name(exc.args[0]) if exc.args else svc_types}; "
                f"registered: {known}"
            ) from None
        # svcs returns a list for several types; the signature (and svcs's own) promises a tuple.
        return tuple(found) if len(svc_types) > 1 else found

    def get_abstract(self, svc_type: Any) -> Any:
        """Like ``get`` for a key that is not a class (``Annotated``, ``NewType``, Protocols)."""
        return self.get(svc_type)

    def __contains__(self, svc_type: object) -> bool:
        return _safe(self._registry, svc_type)

    def types(self) -> list[Any]:
        """Every registered key, in registration order."""
        return list(self._types)

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> the service keys it registered in ``czo_register_services``."""
        return self._contributions.contributions()

    def container(self) -> svcs.Container:
        """A new short-lived container (close it, or use it as a context manager)."""
        return svcs.Container(self._registry)

    def close(self) -> None:
        """Close the long-lived container, then the registry (runs cleanup callbacks)."""
        self._container.close()
        self._registry.close()


def _safe(registry: svcs.Registry, svc_type: Any) -> bool:
    try:
        registry.get_registered_service_for(svc_type)
    except svcs.exceptions.ServiceNotFoundError:
        return False
    return True


def _name(svc_type: Any) -> str:
    metadata = getattr(svc_type, "__metadata__", None)
    if metadata:  # Annotated[...] keys all share the qualname "Annotated": show their label
        return str(metadata[0])
    return getattr(svc_type, "__qualname__", None) or repr(svc_type)
