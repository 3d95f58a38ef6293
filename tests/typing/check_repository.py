"""mypy must accept the typed uses and flag each line marked with `# E: <code>`."""

from __future__ import annotations

import peewee

from czo_kit.db import Model, PaginatedResult, create_mutations, create_queries, create_repository


class Widget(Model):
    name = peewee.CharField()


db = peewee.SqliteDatabase(":memory:")
queries = create_queries(Widget, db=db)
mutations = create_mutations(Widget, db=db)
repo = create_repository(Widget, db=db)

found: Widget | None = queries.find_by_id(1)
got: Widget = queries.get_by_id(1)
page: PaginatedResult[Widget] = queries.find_many({"name": "x"}, limit=10)
items: list[Widget] = page.items
made: Widget = mutations.create({"name": "x"})
counted: int = repo.count()

wrong_find: Widget = queries.find_by_id(1)  # E: assignment
wrong_count: str = repo.count()  # E: assignment
queries.create({"name": "x"})  # E: attr-defined
mutations.find_by_id(1)  # E: attr-defined
queries.find_many(limit="10")  # E: arg-type
