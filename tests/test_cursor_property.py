"""Property: paging with cursors while rows are inserted and deleted between pages returns
every surviving row exactly once, in order. Checked on SQLite and on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from czo_kit.db import Model, create_repository
from czo_kit.default_plugins.postgres import create_postgresql_database
from czo_kit.default_plugins.sqlite import create_sqlite_database
from czo_kit.settings import Settings


class PagedRow(Model):
    price = peewee.IntegerField()
    label = peewee.CharField(max_length=20, null=True)

    class Meta:
        table_name = "czo_prop_paged_row"


@pytest.fixture
def paging_db(
    database_url: str, settings_for: Callable[..., Settings]
) -> Iterator[peewee.Database]:
    factory = create_sqlite_database if database_url.startswith("sqlite") else create_postgresql_database
    db = factory(database_url, settings=settings_for(database_url))
    db.bind([PagedRow])
    db.drop_tables([PagedRow], safe=True)
    db.create_tables([PagedRow])
    yield db
    db.drop_tables([PagedRow], safe=True)
    db.close()
    getattr(db, "close_all", lambda: None)()


operation = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 12), st.sampled_from([None, "a", "b"])),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.none()),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    initial=st.lists(st.tuples(st.integers(0, 12), st.sampled_from([None, "a", "b"])), max_size=40),
    page_size=st.integers(1, 6),
    order=st.sampled_from([["price"], ["-price"], ["label", "-price"], ["-label"], ["price", "-label"]]),
    steps=st.lists(st.lists(operation, max_size=4), max_size=15),
)
def test_cursor_paging_survives_concurrent_writes(
    paging_db: peewee.Database,
    initial: list[tuple[int, str | None]],
    page_size: int,
    order: list[str],
    steps: list[list[tuple[str, int, Any]]],
) -> None:
    repo = create_repository(PagedRow, db=paging_db, secret_key=b"p" * 32)
    PagedRow.delete().execute(paging_db)
    created = repo.create_many([{"price": p, "label": label} for p, label in initial])
    live = [row.id for row in created]
    survivors = set(live)
    seen: list[PagedRow] = []
    cursor: str | None = None
    step = 0
    # Each page but the last holds at least one row, so this bounds a correct walk.
    most_pages = len(initial) + sum(kind == "insert" for batch in steps for kind, _, _ in batch) + 1
    while True:
        page = repo.find_many(order_by=order, limit=page_size, cursor=cursor)
        seen.extend(page.items)
        # Writers act between page requests.
        for kind, value, label in steps[step] if step < len(steps) else []:
            if kind == "insert":
                live.append(repo.create({"price": value, "label": label}).id)
            elif live:
                victim = live.pop(value % len(live))
                repo.delete(victim)
                survivors.discard(victim)
        step += 1
        if not page.has_next:
            break
        cursor = page.next_cursor
        assert step <= most_pages, "paging did not terminate: a page repeated"

    ids = [row.id for row in seen]
    assert len(ids) == len(set(ids)), "a row was returned twice"
    assert survivors <= set(ids), "a surviving row was skipped"
    # The concatenated pages are in the requested order, the primary key breaking ties.
    everything = repo.find_many(order_by=order, limit=500, with_deleted=True).items
    rank = {row.id: position for position, row in enumerate(everything)}
    positions = [rank[i] for i in ids]
    assert positions == sorted(positions), "pages are not in order"
