"""Redis glob patterns (``*``, ``?``, ``[abc]``, ``[^a]``, ``\\`` escapes): escaping and matching."""

from __future__ import annotations

import functools
import re

__all__ = ["escape_glob", "glob_to_regex"]

_SPECIAL = frozenset("*?[]\\")


def escape_glob(text: str) -> str:
    """``text`` with glob metacharacters escaped, so it matches only itself."""
    return "".join("\\" + ch if ch in _SPECIAL else ch for ch in text)


@functools.lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A compiled regex that matches what Redis's ``MATCH pattern`` matches."""
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = i + 1
            if end < n and pattern[end] == "^":
                end += 1
            if end < n and pattern[end] == "]":
                end += 1
            while end < n and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            if end >= n:
                out.append(re.escape(ch))  # unterminated: a literal "["
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                if negate:
                    body = body[1:]
                chars = []
                j = 0
                while j < len(body):
                    if body[j] == "\\" and j + 1 < len(body):
                        chars.append(re.escape(body[j + 1]))
                        j += 2
                    elif j + 2 < len(body) and body[j + 1] == "-":
                        chars.append(f"{re.escape(body[j])}-{re.escape(body[j + 2])}")
                        j += 3
                    else:
                        chars.append(re.escape(body[j]))
                        j += 1
                out.append(("[^" if negate else "[") + "".join(chars) + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)
