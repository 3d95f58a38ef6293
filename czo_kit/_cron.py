"""Five-field cron expressions (``*/5 * * * *``) for periodic tasks: parsed once at
registration, so a typo stops the kit at startup with the field and what is allowed, instead
of a task that silently never runs."""

from __future__ import annotations

import datetime as dt

__all__ = ["Cron", "CronError"]

# (name, lowest, highest) of each field, in the order cron writes them.
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))

ALLOWED = (
    "five fields 'minute hour day-of-month month day-of-week' separated by spaces; each field is "
    "'*', a number, a range 'a-b', a step '*/n' or 'a-b/n', or a comma list of those "
    "(minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-7 with 0 and 7 Sunday); "
    "for example '*/5 * * * *' or '0 3 * * 1-5'"
)


class CronError(ValueError):
    """A cron expression that cannot be read; the message names the expression, the field and
    what is allowed."""


class Cron:
    """A parsed cron expression; ``matches(when)`` is true for the minutes it names (UTC)."""

    __slots__ = ("_days_of_month", "_days_of_week", "_either_day", "_hours", "_minutes", "_months", "expression")

    def __init__(self, expression: object) -> None:
        if not isinstance(expression, str):
            raise CronError(f"cron expression must be a string, got {expression!r}; allowed: {ALLOWED}")
        parts = expression.split()
        if len(parts) != 5:
            raise CronError(
                f"cron expression {expression!r} has {len(parts)} field(s), not 5; allowed: {ALLOWED}"
            )
        sets = [_parse_field(expression, part, *spec) for part, spec in zip(parts, _FIELDS)]
        self.expression = " ".join(parts)
        self._minutes, self._hours, self._days_of_month, self._months, days_of_week = sets
        self._days_of_week = frozenset(d % 7 for d in days_of_week)  # 7 is Sunday too
        # As cron does: when both day fields are restricted, either one matching is enough.
        self._either_day = parts[2] != "*" and parts[4] != "*"

    def matches(self, when: dt.datetime) -> bool:
        """Whether the minute of ``when`` (aware datetimes are taken in UTC) is one it names."""
        if when.tzinfo is not None:
            when = when.astimezone(dt.timezone.utc)
        if when.minute not in self._minutes or when.hour not in self._hours or when.month not in self._months:
            return False
        day_of_month = when.day in self._days_of_month
        day_of_week = (when.isoweekday() % 7) in self._days_of_week
        return (day_of_month or day_of_week) if self._either_day else (day_of_month and day_of_week)

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})"


def _parse_field(expression: str, text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(expression, item, name, low, high))
    return frozenset(values)


def _parse_item(expression: str, item: str, name: str, low: int, high: int) -> range:
    def fail(why: str) -> CronError:
        return CronError(f"cron expression {expression!r}: {name} field {item!r} {why}; allowed: {ALLOWED}")

    span, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) < 1:
            raise fail("has a step that is not a whole number from 1")
        step = int(step_text)
    if span == "*":
        return range(low, high + 1, step)
    first_text, dash, last_text = span.partition("-")
    if not first_text.isdigit() or (dash and not last_text.isdigit()):
        raise fail("is not '*', a number or a range 'a-b'")
    first = int(first_text)
    last = int(last_text) if dash else (high if slash else first)
    if not low <= first <= high or not low <= last <= high:
        raise fail(f"is out of range {low}-{high}")
    if last < first:
        raise fail("is a range whose end comes before its start")
    return range(first, last + 1, step)
