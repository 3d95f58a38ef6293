"""Every error the kit raises on purpose, under one base class, ``CzoError``.

Each error says what input was wrong, why, and what is allowed, so that the message alone is
enough to fix the call.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "ConflictError",
    "CzoError",
    "InvalidCursorError",
    "InvalidDataError",
    "InvalidFilterError",
    "ManifestError",
    "NotFoundError",
    "OptimisticLockError",
    "PermissionDeniedError",
    "PluginError",
    "UnsafeURLError",
    "WebhookSignatureError",
]


class CzoError(Exception):
    """Base class of every error raised by czo-kit on purpose."""


class ConfigurationError(CzoError, ValueError):
    """A setting is missing or malformed; the message names the environment variable."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class PluginError(CzoError):
    """A plugin could not be loaded, or registered something invalid."""


class NotFoundError(CzoError, LookupError):
    """No live row has this primary key (soft-deleted rows count as gone)."""

    def __init__(self, model: str, id: Any) -> None:
        super().__init__(f"{model} with id={id!r} not found")
        self.model = model
        self.id = id


class OptimisticLockError(CzoError):
    """The row changed since the caller read it: its version is not the expected one."""

    def __init__(self, model: str, id: Any, *, expected: int, actual: int | None) -> None:
        super().__init__(
            f"{model} id={id!r} was modified concurrently: expected version {expected}, "
            f"found {actual}; reload the row and retry"
        )
        self.model = model
        self.id = id
        self.expected = expected
        self.actual = actual


class ConflictError(CzoError):
    """A write would break a uniqueness rule (for example restoring a row whose key is taken)."""

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class InvalidFilterError(CzoError, ValueError):
    """A ``where`` filter, ``order_by`` or pagination argument is not allowed."""


class InvalidCursorError(CzoError, ValueError):
    """A pagination cursor is malformed, tampered with, or made for another sort order."""


class InvalidDataError(CzoError, ValueError):
    """Data given to a mutation names an unknown field or holds a value of the wrong type."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ManifestError(CzoError, ValueError):
    """An app manifest is malformed or could not be fetched; ``path`` names the field."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class UnsafeURLError(CzoError, ValueError):
    """An outbound URL is malformed, or points at a loopback, private or link-local address."""


class PermissionDeniedError(CzoError):
    """The caller lacks permissions; ``missing`` lists ``resource:action`` pairs."""

    def __init__(self, message: str, *, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


class AuthenticationError(CzoError):
    """Credentials are missing, malformed, unknown, revoked or expired."""


class WebhookSignatureError(CzoError, ValueError):
    """A webhook signature header is missing, malformed, stale, or does not match."""
