"""Keeps secrets out of the logs of the libraries the kit drives, at every level: Peewee logs
each query's parameters at DEBUG (webhook secrets, token hashes, payloads), urllib3 logs each
request's URL with its query string. Filters on those loggers mask the values before any
handler sees them, whoever configured logging."""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["MASK", "install_log_redaction"]

MASK = "***"

_installed = False
_lock = threading.Lock()


def _mask_parameter(value: Any) -> Any:
    # Numbers, booleans, None and dates say which row; text and bytes may be a secret.
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return MASK
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_parameter(item) for item in value)
    if isinstance(value, dict):
        return {key: _mask_parameter(item) for key, item in value.items()}
    return value


class SQLParameterFilter(logging.Filter):
    """Peewee logs ``(sql, params)`` as the record's message: keep the SQL (it holds
    placeholders only, never values), mask the text and bytes among the parameters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if isinstance(message, tuple) and len(message) == 2 and isinstance(message[0], str):
            record.msg = (message[0], _mask_parameter(message[1]))
        return True


class URLQueryFilter(logging.Filter):
    """urllib3 logs request lines with their target: drop the query string, where an app's
    URL may carry a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "?" in a for a in args):
            record.args = tuple(
                a.split("?", 1)[0] + "?" + MASK if isinstance(a, str) and "?" in a else a for a in args
            )
        return True


def install_log_redaction() -> None:
    """Attach the filters once per process (a logger's filters apply to every record logged
    through it, before handlers, whatever levels and handlers the application set)."""
    global _installed
    with _lock:
        if _installed:
            return
        logging.getLogger("peewee").addFilter(SQLParameterFilter())
        logging.getLogger("urllib3.connectionpool").addFilter(URLQueryFilter())
        _installed = True
