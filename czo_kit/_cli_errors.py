"""How the CLI reports a failure an operator can fix (a bad setting, a server that does not
answer, a missing table): one line naming the setting and the cause, and a non-zero exit.
``--traceback`` (or ``CZO_LOG_LEVEL=DEBUG``, which logs it) shows the rest. Anything else is
a bug and keeps its traceback."""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import urlsplit

import click
import peewee

from czo_kit.errors import CzoError

__all__ = ["FailureReportingGroup", "NoRandomKeyWarning", "describe_failure"]

log = logging.getLogger("czo_kit.cli")

_MORE = " (--traceback shows where)"
_ENDPOINT = re.compile(r"connecting to ([^\s:]+):(\d+)")


class NoRandomKeyWarning(logging.Filter):
    """Holds back the kit's random-key warning. A one-shot command signs nothing that must
    outlive it, so the warning is noise there; `serve` and the workers say it themselves
    where it applies (embedded SQLite), and refuse to start where it would break things."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("CZO_SECRET_KEY is not set")


def _setting(variable: str) -> str:
    """The value a setting has for this process: the environment's, else the default."""
    value = os.environ.get(variable)
    if value is None:
        from czo_kit.settings import Settings

        value = str(getattr(Settings(), variable.removeprefix("CZO_").lower()) or "")
    return value


def _shown(variable: str) -> str:
    from czo_kit.settings import redact_url

    return f"{variable}={redact_url(_setting(variable))}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _redis_setting(exc: BaseException) -> str:
    """Which Redis setting the failure is about, from the address in its message."""
    candidates = [v for v in ("CZO_QUEUE_URL", "CZO_CACHE_URL") if _setting(v).startswith(("redis", "rediss"))]
    found = _ENDPOINT.search(str(exc))
    if found:
        host, port = found.group(1), int(found.group(2))
        for variable in candidates:
            parts = urlsplit(_setting(variable))
            if parts.hostname == host and (parts.port or 6379) == port:
                return _shown(variable)
    return " or ".join(_shown(v) for v in candidates) or "the Redis URL"


def describe_failure(exc: BaseException) -> str | None:
    """One line for a failure an operator can fix, or None for one that is a bug."""
    if isinstance(exc, CzoError):
        message = str(exc)
        variable = getattr(exc, "variable", None)  # a ConfigurationError names its setting
        if variable and variable not in message:
            message = f"{variable}: {message}"
        return message
    if isinstance(exc, peewee.DatabaseError | peewee.InterfaceError):
        return f"database error ({_shown('CZO_DATABASE_URL')}): {_first_line(exc)}{_MORE}"
    try:
        import redis
    except ImportError:  # pragma: no cover - the redis extra is not installed
        return None
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return f"Redis does not answer ({_redis_setting(exc)}): {_first_line(exc)}{_MORE}"
    return None


class FailureReportingGroup(click.Group):
    """A group whose commands, the kit's and every plugin's alike, fail in one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException:
            raise
        except Exception as exc:
            message = describe_failure(exc)
            if message is None or ctx.params.get("traceback"):
                raise
            log.debug("the full story of the failure below", exc_info=True)
            raise click.ClickException(message) from exc
