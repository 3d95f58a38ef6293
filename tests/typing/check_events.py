"""Typed events: a handler subscribed by class must take that event's payload and a context."""

from __future__ import annotations

from czo_kit.events import Event, EventContext, EventEmitter


class OrderPlaced(Event, name="typing.order.placed"):
    id: int
    total: int


class OrderCancelled(Event, name="typing.order.cancelled"):
    id: int
    reason: str = ""


events = EventEmitter()


def on_placed(event: OrderPlaced, ctx: EventContext) -> None:
    print(event.total + 1, ctx.event_id, ctx.attempt)


def on_any_event(event: Event, ctx: EventContext) -> None:
    print(type(event).__event_name__)


def on_cancelled(event: OrderCancelled, ctx: EventContext) -> None:
    print(event.reason)


def on_placed_without_context(event: OrderPlaced) -> None:
    print(event.id)


def on_placed_with_a_bad_context(event: OrderPlaced, ctx: str) -> None:
    print(ctx)


off = events.on(OrderPlaced, on_placed)
off()
events.once(OrderPlaced, on_placed)
events.on(OrderPlaced, on_any_event)  # a handler for any event also fits
events.on(OrderPlaced, lambda event, ctx: print(event.total, ctx.name))
events.on("typing.order.placed", on_placed)  # by name the payload is not known statically
removed: bool = events.off(OrderPlaced, on_placed)
ctx: EventContext = events.emit(OrderPlaced(id=1, total=100), actor="user:7")
later: EventContext = events.emit_async(OrderPlaced(id=1, total=100), delay=5, retries=3, priority=80)

events.on(OrderPlaced, on_cancelled)  # E: arg-type
events.once(OrderPlaced, on_cancelled)  # E: arg-type
events.on(OrderPlaced, on_placed_without_context)  # E: arg-type
events.on(OrderPlaced, on_placed_with_a_bad_context)  # E: arg-type
events.on(OrderPlaced, lambda event, ctx: print(event.reason))  # E: attr-defined
OrderPlaced(id="1", total=100)  # E: arg-type
OrderPlaced(id=1)  # E: call-arg
wrong: str = ctx.attempt  # E: assignment
