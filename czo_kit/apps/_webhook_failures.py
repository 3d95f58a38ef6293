"""What a failed webhook attempt leaves behind: a one-line error and a bounded traceback, both
free of the target's query string (where an app may carry a token) and of signing secrets,
whether they are stored with the attempt or written to the log."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable

from czo_kit.apps.net import shown_url

__all__ = ["DETAIL_LIMIT", "ERROR_LIMIT", "Failure", "TracebackScrubber", "bounded", "failure", "shown_url"]

MASK = "***"

ERROR_LIMIT = 2000
"""Characters of the one-line error kept with an attempt and its delivery."""

DETAIL_LIMIT = 8000
"""Characters of a traceback kept with an attempt and its delivery: its first and last lines
(where the call and the final error are), the middle cut."""


def bounded(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and its tail."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head - 60
    return f"{text[:head]}\n... ({len(text) - head - tail} characters cut) ...\n{text[-tail:]}"


def scrub(text: str, *, target_url: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the target's query string and without any of ``secrets``."""
    base, sep, query = target_url.partition("?")
    if sep:
        # Wherever the URL (or its path) appears, even cut short, nothing after its '?'.
        path = "/" + base.split("://", 1)[-1].partition("/")[2]
        for prefix in {base, path}:
            if len(prefix) > 1:
                text = re.sub(re.escape(prefix) + r"\?[^\s'\"<>)]*", prefix + "?" + MASK, text)
        if len(query) >= 4:
            text = text.replace(query, MASK)
    for secret in secrets:
        for form in {secret, secret.removeprefix("whsec_")}:
            if len(form) >= 8:
                text = text.replace(form, MASK)
    return text


class Failure:
    """A failed attempt's exception, as it is stored and logged."""

    __slots__ = ("detail", "error", "exc")

    def __init__(self, exc: BaseException, error: str, detail: str) -> None:
        self.exc = exc
        self.error = error
        self.detail = detail


def failure(exc: BaseException, *, target_url: str, secrets: Iterable[str] = ()) -> Failure:
    """The error line and the traceback of ``exc``, scrubbed and bounded."""
    secrets = tuple(secrets)
    error = scrub(f"{type(exc).__name__}: {exc}", target_url=target_url, secrets=secrets)
    detail = scrub("".join(traceback.format_exception(exc)), target_url=target_url, secrets=secrets)
    return Failure(exc, bounded(error, ERROR_LIMIT), bounded(detail.rstrip(), DETAIL_LIMIT))


class TracebackScrubber(logging.Filter):
    """Hands formatters the scrubbed traceback of a failed attempt instead of formatting the
    exception afresh: a record logged with ``extra={"czo_traceback": failure.detail}`` gets it
    as its ``exc_text``, which ``logging.Formatter`` prints as is."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = getattr(record, "czo_traceback", None)
        if record.exc_info and isinstance(text, str):
            record.exc_text = text
        return True
