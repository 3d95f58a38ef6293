"""The contract between ``CacheManager`` and a storage driver (memory, Redis, a plugin's own).

Drivers store opaque envelopes (bytes whose first line is a header the manager writes) and
know nothing of encoding, TTL semantics, tags or namespaces: the manager checks an entry's
recorded tag versions against the current ones, which it reads with the entry. Each method
is one round trip.
A driver that cannot reach its server raises ``CacheUnavailable``; the manager then degrades.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from czo_kit.errors import CzoError

__all__ = ["HEADER_MAGIC", "CacheDriver", "CacheUnavailable", "parse_tag_spec"]

HEADER_MAGIC = b"CZ1|"


class CacheUnavailable(CzoError):
    """The cache server could not be reached in time (connection refused, timeout, ...)."""


def parse_tag_spec(value: bytes) -> list[tuple[str, bytes]]:
    """The ``(tag, version)`` pairs recorded in an envelope's header (empty if none)."""
    newline = value.find(b"\n")
    if newline < 0 or not value.startswith(HEADER_MAGIC):
        return []
    parts = value[:newline].split(b"|", 4)
    if len(parts) != 5 or not parts[4]:
        return []
    pairs = []
    for item in parts[4].split(b","):
        tag, _, version = item.partition(b"=")
        pairs.append((tag.decode(), version))
    return pairs


@runtime_checkable
class CacheDriver(Protocol):
    """What a cache backend implements. ``tag_prefix`` + tag name is the tag's version key."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order (``None`` where missing), read atomically in one round
        trip where the server can (a cluster reads per slot, in one pipelined pass). Tag
        version keys are read through it too, next to the entries they guard."""
        ...

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """Store ``(key, value, ttl_ms)`` triples, each expiring after its TTL."""
        ...

    def delete_many(self, keys: Sequence[str]) -> int:
        """Remove keys; returns how many existed."""
        ...

    def tag_versions(self, tags: Sequence[str], tag_prefix: str, ttl_ms: int) -> list[bytes]:
        """Current version of each tag, creating a never-before-used version where missing.

        Each version key then expires no sooner than ``ttl_ms`` from now: an expiry that is
        sooner (or none at all) is pushed out, a later one is kept. Version keys must expire,
        or every tag ever used stays in the server."""
        ...

    def bump_tags(self, tags: Sequence[str], tag_prefix: str) -> None:
        """Invalidate every entry recording a tag's current version, in one round trip: remove
        the version key (the next ``tag_versions`` creates a new one) or replace it.

        A version must never come back, even after its key expired or was removed: an entry
        still recording it would be valid again. Hence random versions, never a counter
        that restarts where the key is missing."""
        ...

    def delete_matching(self, pattern: str, *, batch: int = 1000) -> int:
        """Remove keys matching a glob ``pattern`` in batches, never blocking the server."""
        ...

    def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        """Take a lease on ``key`` unless someone holds it."""
        ...

    def release_lock(self, key: str, token: str) -> bool:
        """Drop the lease if ``token`` still holds it (compare-and-delete)."""
        ...

    def ping(self) -> bool:
        """Whether the backend answers."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
