"""Typed hook names: a handler with the wrong context or result type is a mypy error."""

from __future__ import annotations

from czo_kit.hooks import HookName, HookRegistry


class OrderContext:
    order_id: int = 0


CREATE_ORDER: HookName[OrderContext, int] = HookName("order.create")
hooks = HookRegistry()


def good_before(ctx: OrderContext) -> OrderContext | None:
    return ctx


def good_after(result: int, ctx: OrderContext) -> int | None:
    return result + 1


def good_error(error: BaseException, ctx: OrderContext) -> int | None:
    return None


def bad_before(ctx: str) -> None:
    return None


def bad_after(result: str, ctx: OrderContext) -> str:
    return result


hooks.before(CREATE_ORDER, good_before)
hooks.after(CREATE_ORDER, good_after)
hooks.on_error(CREATE_ORDER, good_error)
total: int = hooks.run(CREATE_ORDER, OrderContext(), lambda ctx: ctx.order_id)

hooks.before(CREATE_ORDER, bad_before)  # E: arg-type
hooks.after(CREATE_ORDER, bad_after)  # E: arg-type
wrong: str = hooks.run(CREATE_ORDER, OrderContext(), lambda ctx: ctx.order_id)  # E: assignment
hooks.run(CREATE_ORDER, "not a context", lambda ctx: 1)  # E: misc
