"""Hostile event payloads: each one is refused (``InvalidEventError``, naming what is wrong) or
accepted at emit, the same way by ``emit`` and ``emit_async``, whether or not an app hears the
event. (The cache's own refusals are in the cache contract, ``czo_kit.testing.cache``.)"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apps_support import OWNER, Receiver, app_kit, app_settings, manifest
from czo_kit import Kit
from czo_kit.events import Event, EventContext, InvalidEventError
from czo_kit.events.outbox import EventOutbox
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
HEARD, UNHEARD = 1, 2  # shop 1 has an app subscribed to order.created, shop 2 has none


class Blob(Event, name="test.payload.blob"):
    id: int
    data: dict[str, Any]


def nested(depth: int, *, kind: type = dict) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"x": value} if kind is dict else [value]
    return value


def self_referencing_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


def self_referencing_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


# (label, extra payload fields, what the refusal says)
REFUSED: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    ("depth 10,000 (dicts)", lambda: {"deep": nested(10_000)}, "nested"),
    ("depth 10,000 (lists)", lambda: {"deep": nested(10_000, kind=list)}, "nested"),
    ("just past the depth limit", lambda: {"deep": nested(128)}, "nested"),
    ("self-referencing dict", lambda: {"loop": self_referencing_dict()}, "nested"),
    ("self-referencing list", lambda: {"loop": self_referencing_list()}, "nested"),
    ("None as a key", lambda: {"data": {None: 1}}, "key"),
    ("a tuple as a key", lambda: {"data": {(1, 2): 1}}, "key"),
    ("a bool as a key", lambda: {"data": {True: 1}}, "key"),
    ("2**64", lambda: {"big": 2**64}, "integer"),
    ("-2**63 - 1", lambda: {"big": -(2**63) - 1}, "integer"),
    ("10**100 in a list", lambda: {"big": [1, 10**100]}, "integer"),
    ("an object", lambda: {"thing": object()}, "object"),
    ("a function", lambda: {"thing": nested}, "function"),
]

# (label, extra payload fields): accepted everywhere.
ACCEPTED: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("at the depth limit", lambda: {"deep": nested(127)}),
    ("NaN and infinities", lambda: {"nan": math.nan, "inf": math.inf, "ninf": -math.inf}),
    ("bytes", lambda: {"raw": b"\x00\xff"}),
    ("the largest integers", lambda: {"big": 2**64 - 1, "small": -(2**63)}),
    ("number keys", lambda: {"data": {1: "one", 2.5: "two and a half"}}),
    ("a shared, not circular, value", lambda: (lambda shared: {"a": shared, "b": shared})({"k": [1, 2]})),
]


@pytest.fixture
def kit(sqlite_url: str, settings_for: SettingsFor, tmp_path: Path) -> Iterator[Kit]:
    """A kit with a queue, and a remote app on shop 1 that subscribes to ``order.created``."""
    with Receiver() as receiver, app_kit(app_settings(settings_for, sqlite_url, str(tmp_path))) as kit:
        kit.apps.install(shop_id=HEARD, installer_id=OWNER, manifest=manifest(receiver.url))
        assert kit.outbox is not None
        kit.outbox.ensure_tables()
        yield kit


def order(shop_id: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"shop_id": shop_id, "id": 7, **extra}


def webhook_count(kit: Kit) -> int:
    return len(kit.webhooks.deliveries())


@pytest.mark.parametrize("mode", ["emit", "emit_async"])
@pytest.mark.parametrize("shop_id", [HEARD, UNHEARD], ids=["app-subscribed", "no-app"])
@pytest.mark.parametrize(("label", "make", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_hostile_payloads_are_refused_whoever_listens(
    kit: Kit, mode: str, shop_id: int, label: str, make: Callable[[], dict[str, Any]], says: str
) -> None:
    ran: list[Any] = []
    kit.events.on("order.created", lambda payload, ctx: ran.append(payload), id="in-process")
    with pytest.raises(InvalidEventError) as caught:
        getattr(kit.events, mode)("order.created", order(shop_id, make()))
    message = str(caught.value)
    assert "'order.created'" in message and says in message, message
    assert ran == []  # refused before any handler, tap or write
    assert webhook_count(kit) == 0
    assert list(EventOutbox.select().execute(kit.db)) == []


@pytest.mark.parametrize("mode", ["emit", "emit_async"])
@pytest.mark.parametrize("shop_id", [HEARD, UNHEARD], ids=["app-subscribed", "no-app"])
@pytest.mark.parametrize(("label", "make"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_unusual_but_carried_payloads_are_accepted_whoever_listens(
    kit: Kit, mode: str, shop_id: int, label: str, make: Callable[[], dict[str, Any]]
) -> None:
    ran: list[Any] = []
    kit.events.on("order.created", lambda payload, ctx: ran.append(payload), id="in-process")
    payload = order(shop_id, make())
    getattr(kit.events, mode)("order.created", payload)
    if mode == "emit":
        assert len(ran) == 1  # in-process handlers ran, with or without the app
    else:
        assert EventOutbox.select().count(kit.db) == 1
    assert webhook_count(kit) == (1 if shop_id == HEARD else 0)


def test_a_key_json_cannot_write_no_longer_stops_in_process_handlers(kit: Kit) -> None:
    """The reported case: accepted until an app subscribed, then ``TypeError`` from the tap."""
    ran: list[int] = []
    kit.events.on("order.created", lambda payload, ctx: ran.append(payload["shop_id"]), id="in-process")
    for shop_id in (UNHEARD, HEARD):
        with pytest.raises(InvalidEventError, match="key"):
            kit.events.emit("order.created", order(shop_id, {"lines": {None: 1}}))
    kit.events.emit("order.created", order(HEARD, {"lines": {"a": 1}}))
    assert ran == [HEARD]
    assert webhook_count(kit) == 1


@pytest.mark.parametrize("mode", ["emit", "emit_async"])
@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"loop": self_referencing_dict()}, "nested"),
        ({"deep": nested(10_000)}, "nested"),
        ({"k": {None: 1}}, "key"),
        ({"big": 2**70}, "integer"),
    ],
    ids=["circular", "deep", "none-key", "huge-int"],
)
def test_typed_events_are_checked_the_same_way(kit: Kit, mode: str, data: dict[str, Any], says: str) -> None:
    ran: list[EventContext] = []
    kit.events.on(Blob, lambda payload, ctx: ran.append(ctx))
    with pytest.raises(InvalidEventError, match=says):
        getattr(kit.events, mode)(Blob(id=1, data=data))
    with pytest.raises(InvalidEventError, match=says):
        getattr(kit.events, mode)("test.payload.blob", {"id": 1, "data": data})
    with pytest.raises(InvalidEventError, match="integer"):
        getattr(kit.events, mode)(Blob(id=2**70, data={}))
    assert ran == []


def test_a_nan_reaches_in_process_handlers_and_webhooks_get_null(kit: Kit) -> None:
    seen: list[float] = []
    kit.events.on("order.created", lambda payload, ctx: seen.append(payload["total"]), id="in-process")
    kit.events.emit("order.created", order(HEARD, {"total": math.nan}))
    assert len(seen) == 1 and math.isnan(seen[0])
    (delivery,) = kit.webhooks.deliveries()
    import json

    from czo_kit.apps.webhooks import WebhookDelivery

    body = WebhookDelivery.select(WebhookDelivery.body).where(WebhookDelivery.id == delivery.id).scalar(kit.db)
    assert json.loads(bytes(body))["data"]["total"] is None  # JSON has no NaN
