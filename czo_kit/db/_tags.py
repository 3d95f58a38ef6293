"""Names of the cache tags and keys that tie cached reads to the rows they came from."""

from __future__ import annotations

import hashlib
import re
from typing import Any

__all__ = ["id_token", "list_tag", "row_tag"]

_SAFE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


def id_token(id: Any) -> str:
    """A primary key as it appears in cache keys and tags (hashed if it has odd characters)."""
    text = str(id)
    if _SAFE.fullmatch(text):
        return text
    return "h" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def row_tag(table: str, id: Any) -> str:
    """The tag every cached copy of one row carries."""
    return f"db:{table}:{id_token(id)}"


def list_tag(table: str) -> str:
    """The tag every cached multi-row read of a table carries."""
    return f"db:{table}:list"
