"""Redis glob patterns (``*``, ``?``, ``[abc]``, ``[^a]``, ``\\`` escapes): escaping and matching."""

from __future__ import annotations

import functools
import re

__all__ = ["escape_glob", "glob_to_regex"]

_SPECIAL = frozenset("*?[]\\")


def escape_glob(text: str) -> str:
    """``text`` with glob metacharacters escaped, so it matches only itself."""
    return "".join("\\" + ch if ch in _SPECIAL else ch for ch in text)


def _class(pattern: str, i: int) -> tuple[str, int]:
    """The regex of the ``[...]`` starting at ``pattern[i]`` and the index after it, read as
    Redis's ``stringmatchlen`` reads it: ``^`` negates, ``\\`` escapes, ``a-z`` is a range
    (``z-a`` too: Redis swaps the ends), ``[]`` matches nothing, and a class that is never
    closed runs to the end of the pattern."""
    n = len(pattern)
    i += 1
    negate = i < n and pattern[i] == "^"
    if negate:
        i += 1
    members: list[str] = []
    while i < n and pattern[i] != "]":
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            members.append(re.escape(pattern[i + 1]))
            i += 2
        elif i + 2 < n and pattern[i + 1] == "-":
            low, high = sorted((ch, pattern[i + 2]))
            members.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            members.append(re.escape(ch))
            i += 1
    if not members:
        return ("." if negate else "(?!)"), i + 1
    return ("[^" if negate else "[") + "".join(members) + "]", i + 1


@functools.lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A compiled regex whose ``fullmatch`` matches what Redis's ``MATCH pattern`` matches.

    Each ``*`` after the first takes the earliest place where the text up to the next ``*``
    matches, in an atomic group: no backtracking into it, so the time is linear in the key
    times the pattern whatever the pattern (``*a*a*a*a*a*b`` as a plain regex, ``.*a.*a...``,
    backtracks for years on a long key). The earliest place is always right: what follows a
    ``*`` can also match anything a later place could.
    """
    segments: list[list[str]] = [[]]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            segments.append([])
            i += 1
        elif ch == "?":
            segments[-1].append(".")
            i += 1
        elif ch == "[":
            part, i = _class(pattern, i)
            segments[-1].append(part)
        elif ch == "\\" and i + 1 < n:
            segments[-1].append(re.escape(pattern[i + 1]))
            i += 2
        else:
            segments[-1].append(re.escape(ch))
            i += 1
    parts = ["".join(segment) for segment in segments]
    if len(parts) == 1:
        regex = parts[0]
    else:
        middle = "".join(f"(?>.*?{part})" for part in parts[1:-1] if part)
        regex = f"{parts[0]}{middle}.*{parts[-1]}"
    return re.compile(regex, re.DOTALL)
