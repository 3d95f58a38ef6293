"""mypy must accept the typed uses and flag each line marked with `# E: <code>`."""

from __future__ import annotations

from typing import TypedDict

import msgspec
import peewee

from czo_kit.cache import CacheManager
from czo_kit.db import (
    Model,
    PaginatedResult,
    Repository,
    create_mutations,
    create_queries,
    create_repository,
)
from czo_kit.events import Event


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


# -- typed input: create and update take the model's declared input ---------------------------


class WidgetInput(TypedDict, total=False):
    name: str


class WidgetStruct(msgspec.Struct, kw_only=True):
    name: str | msgspec.UnsetType = msgspec.UNSET


typed = create_repository(Widget, db=db, input_type=WidgetInput)
typed.create({"name": "x"})
typed.update(1, {"name": "y"}, expected_version=1)
typed.create_many([{"name": "a"}, {"name": "b"}])
typed_made: Widget = typed.create(WidgetInput(name="x"))
structured = create_mutations(Widget, db=db, input_type=WidgetStruct)
structured.create(WidgetStruct(name="x"))
structured.update(1, WidgetStruct())
untyped: Repository[Widget] = repo  # without input_type: any mapping, as before
repo.create({"nmae": "x"})  # not checked without a declared input

typed.create({"nmae": "x"})  # E: typeddict-unknown-key
typed.update(1, {"name": 3})  # E: typeddict-item
typed.create_many([{"name": "a"}, {"nmae": "b"}])  # E: typeddict-unknown-key
structured.create(WidgetStruct(nmae="x"))  # E: call-arg
structured.create({"name": "x"})  # E: arg-type
also_untyped: Repository[Widget] = typed  # E: assignment

# -- the cache and its tags, for extra functions ------------------------------------------------

shared_cache: CacheManager = repo.cache
tag: str = repo.list_tag
row: str = repo.row_tag(1)
wrong_tag: int = repo.list_tag  # E: assignment


# -- an event declares the model whose rows it carries ------------------------------------------


class WidgetSaved(Event, name="typing.widget.saved", model=Widget, omit=["created_at"]):
    id: int
    name: str

