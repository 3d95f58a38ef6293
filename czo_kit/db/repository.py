"""``create_repository``: queries and mutations of one model in one object."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, TypeVar

import peewee

from czo_kit.db._base import register_composition
from czo_kit.db.mutations import EventSink, HookRunner, In, Mutations
from czo_kit.db.queries import DEFAULT_LIMIT, MAX_LIMIT, Queries

if TYPE_CHECKING:
    from czo_kit.cache.manager import CacheManager

__all__ = ["Repository", "create_repository"]

M = TypeVar("M", bound=peewee.Model)


class Repository(Queries[M], Mutations[M, In]):
    """Every query and mutation of one model (what ``queries | mutations`` gives)."""

    PARTS: ClassVar[frozenset[str]] = Queries.PARTS | Mutations.PARTS


register_composition(Repository.PARTS, Repository)


def create_repository(
    model: type[M],
    *,
    db: peewee.Database,
    cache: CacheManager | None = None,
    ttl: float | None = None,
    hooks: HookRunner | None = None,
    events: EventSink | None = None,
    async_events: bool = False,
    secret_key: str | bytes | None = None,
    default_limit: int = DEFAULT_LIMIT,
    max_limit: int = MAX_LIMIT,
    event_prefix: str | None = None,
    input_type: type[In] | None = None,
    stale_while_revalidate: float | None = None,
    refresh_ahead: float | None = None,
) -> Repository[M, In]:
    """Queries and mutations of ``model``; the same as ``create_queries(...) | create_mutations(...)``.

    With ``cache``, reads are ``create_cached_queries`` (for ``ttl`` seconds, with its
    ``stale_while_revalidate`` and ``refresh_ahead``) and writes invalidate them after commit.
    ``event_prefix`` and ``input_type`` are those of ``create_mutations``.
    """
    if not 1 <= default_limit <= max_limit:
        raise ValueError(f"default_limit must be between 1 and max_limit ({max_limit})")
    if cache is None:
        for name, value in (("stale_while_revalidate", stale_while_revalidate), ("refresh_ahead", refresh_ahead)):
            if value is not None:
                raise ValueError(f"{name}={value!r} needs cache=: without a cache, reads go to the database")
    options = {
        "secret_key": secret_key,
        "default_limit": default_limit,
        "max_limit": max_limit,
        "hooks": hooks,
        "events": events,
        "async_events": async_events,
        "cache": cache,
        "ttl": ttl,
        "event_prefix": event_prefix,
        "input_type": input_type,
        "stale_while_revalidate": stale_while_revalidate,
        "refresh_ahead": refresh_ahead,
    }
    if cache is not None:
        from czo_kit.db.cached import CachedRepository

        return CachedRepository(model, db=db, options=options)
    return Repository(model, db=db, options=options)
