"""``HookRegistry``: before / after / on_error around named operations."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from czo_kit.hooks import HookName, HookRegistry


@dataclass
class Ctx:
    value: int = 0
    trail: list[str] = field(default_factory=list)


def identity(ctx: Any) -> Any:
    return ctx


# -- before ---------------------------------------------------------------------------------------


def test_without_hooks_runs_operation() -> None:
    hooks = HookRegistry()
    assert hooks.run("thing.create", 2, lambda ctx: ctx * 10) == 20


def test_before_can_replace_ctx() -> None:
    hooks = HookRegistry()
    hooks.before("thing.create", lambda ctx: ctx + 1)
    hooks.before("thing.create", lambda ctx: ctx * 3)
    assert hooks.run("thing.create", 2, identity) == 9  # (2 + 1) * 3, in registration order


def test_before_can_mutate_ctx_and_return_none() -> None:
    hooks = HookRegistry()
    ctx = Ctx()

    def mutate(c: Ctx) -> None:
        c.value = 42

    hooks.before("thing.create", mutate)
    seen = hooks.run("thing.create", ctx, lambda c: c)
    assert seen is ctx
    assert ctx.value == 42


def test_operation_receives_replaced_ctx() -> None:
    hooks = HookRegistry()
    replacement = Ctx(value=7)
    hooks.before("thing.create", lambda ctx: replacement)
    assert hooks.run("thing.create", Ctx(), lambda c: c) is replacement


# -- after and onion order ---------------------------------------------------------------------------


def test_after_can_replace_result_and_sees_ctx() -> None:
    hooks = HookRegistry()
    hooks.after("thing.create", lambda result, ctx: result + ctx)
    assert hooks.run("thing.create", 5, lambda ctx: ctx * 2) == 15


def test_after_returning_none_keeps_result() -> None:
    hooks = HookRegistry()
    hooks.after("thing.create", lambda result, ctx: None)
    assert hooks.run("thing.create", 1, lambda ctx: "made") == "made"


def test_onion_order() -> None:
    hooks = HookRegistry()
    calls: list[str] = []
    for name in ("outer", "inner"):
        hooks.before("op", lambda ctx, n=name: calls.append(f"before {n}"))
        hooks.after("op", lambda result, ctx, n=name: calls.append(f"after {n}"))
    hooks.run("op", None, lambda ctx: calls.append("operation"))
    assert calls == ["before outer", "before inner", "operation", "after inner", "after outer"]


def test_after_hooks_chain_results_in_reverse_order() -> None:
    hooks = HookRegistry()
    hooks.after("op", lambda result, ctx: result + "a")
    hooks.after("op", lambda result, ctx: result + "b")
    assert hooks.run("op", None, lambda ctx: "") == "ba"


# -- priority --------------------------------------------------------------------------------------------


def test_priority_orders_before_and_after() -> None:
    hooks = HookRegistry()
    calls: list[str] = []
    for name, priority in (("low", -5), ("default", 0), ("high", 10), ("default2", 0)):
        hooks.before("op", lambda ctx, n=name: calls.append(f"b:{n}"), priority=priority)
        hooks.after("op", lambda r, ctx, n=name: calls.append(f"a:{n}"), priority=priority)
    hooks.run("op", None, lambda ctx: calls.append("op"))
    assert calls == [
        "b:high", "b:default", "b:default2", "b:low",
        "op",
        "a:low", "a:default2", "a:default", "a:high",
    ]


def test_priority_ties_keep_registration_order_deterministically() -> None:
    orders = set()
    for _ in range(20):
        hooks = HookRegistry()
        calls: list[int] = []
        for i in range(10):
            hooks.before("op", lambda ctx, i=i: calls.append(i), priority=i % 3)
        hooks.run("op", None, identity)
        orders.add(tuple(calls))
    assert orders == {(2, 5, 8, 1, 4, 7, 0, 3, 6, 9)}


# -- on_error ---------------------------------------------------------------------------------------------


class Boom(Exception):
    pass


def fail(ctx: Any) -> Any:
    raise Boom("operation failed")


def test_error_hook_recovers() -> None:
    hooks = HookRegistry()
    seen: list[tuple[BaseException, Any]] = []

    def recover(error: BaseException, ctx: Any) -> str:
        seen.append((error, ctx))
        return "fallback"

    hooks.on_error("op", recover)
    assert hooks.run("op", "ctx", fail) == "fallback"
    assert isinstance(seen[0][0], Boom)
    assert seen[0][1] == "ctx"


def test_error_hook_returning_none_reraises_original_unchanged() -> None:
    hooks = HookRegistry()
    original = Boom("original")
    original.note = "kept"  # type: ignore[attr-defined]

    def operation(ctx: Any) -> Any:
        raise original

    hooks.on_error("op", lambda error, ctx: None)
    with pytest.raises(Boom) as caught:
        hooks.run("op", None, operation)
    assert caught.value is original
    assert caught.value.args == ("original",)
    assert caught.value.note == "kept"  # type: ignore[attr-defined]
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_without_error_hooks_the_error_propagates() -> None:
    hooks = HookRegistry()
    hooks.before("op", identity)
    with pytest.raises(Boom, match="operation failed"):
        hooks.run("op", None, fail)


def test_error_hooks_run_in_reverse_order_until_one_recovers() -> None:
    hooks = HookRegistry()
    calls: list[str] = []
    hooks.on_error("op", lambda e, c: calls.append("first") or "from first")
    hooks.on_error("op", lambda e, c: calls.append("second") or None)
    hooks.on_error("op", lambda e, c: calls.append("third") or None, priority=-1)
    assert hooks.run("op", None, fail) == "from first"
    assert calls == ["third", "second", "first"]


def test_error_in_before_and_after_hooks_reaches_error_hooks() -> None:
    hooks = HookRegistry()
    hooks.before("before.fails", fail)
    hooks.on_error("before.fails", lambda e, c: f"recovered {type(e).__name__}")
    operation_ran: list[bool] = []
    assert hooks.run("before.fails", None, lambda c: operation_ran.append(True)) == "recovered Boom"
    assert operation_ran == []

    hooks.after("after.fails", lambda result, ctx: fail(ctx))
    hooks.on_error("after.fails", lambda e, c: "recovered after")
    assert hooks.run("after.fails", None, lambda c: "result") == "recovered after"


def test_error_in_error_hook_is_logged_and_next_runs(caplog: pytest.LogCaptureFixture) -> None:
    hooks = HookRegistry()
    calls: list[str] = []

    def good(error: BaseException, ctx: Any) -> str:
        calls.append("good")
        return "saved"

    def broken(error: BaseException, ctx: Any) -> Any:
        calls.append("broken")
        raise ValueError("error hook bug")

    hooks.on_error("op", good)
    hooks.on_error("op", broken)  # runs first (reverse order)
    with caplog.at_level(logging.ERROR, logger="czo_kit.hooks"):
        assert hooks.run("op", None, fail) == "saved"
    assert calls == ["broken", "good"]
    records = [r for r in caplog.records if r.name == "czo_kit.hooks"]
    assert len(records) == 1
    assert "error hook" in records[0].getMessage()
    assert "'op'" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)


def test_error_in_error_hook_then_original_error(caplog: pytest.LogCaptureFixture) -> None:
    hooks = HookRegistry()
    original = Boom("the real problem")

    def operation(ctx: Any) -> Any:
        raise original

    def broken(error: BaseException, ctx: Any) -> Any:
        raise ValueError("error hook bug")

    hooks.on_error("op", broken)
    with caplog.at_level(logging.ERROR, logger="czo_kit.hooks"), pytest.raises(Boom) as caught:
        hooks.run("op", None, operation)
    assert caught.value is original
    assert "error hook" in caplog.text


def test_base_exceptions_are_not_intercepted() -> None:
    hooks = HookRegistry()
    recovered: list[bool] = []
    hooks.on_error("op", lambda e, c: recovered.append(True) or "no")

    def interrupt(ctx: Any) -> Any:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hooks.run("op", None, interrupt)
    assert recovered == []


# -- unsubscribe, has, names, clear ---------------------------------------------------------------------------


def test_unsubscribe_removes_only_that_handler_and_is_idempotent() -> None:
    hooks = HookRegistry()
    off_a = hooks.before("op", lambda ctx: ctx + "a")
    hooks.before("op", lambda ctx: ctx + "b")
    off_c = hooks.after("op", lambda result, ctx: result + "c")
    assert hooks.run("op", "", identity) == "abc"
    off_a()
    off_a()  # a second call does nothing
    assert hooks.run("op", "", identity) == "bc"
    off_c()
    assert hooks.run("op", "", identity) == "b"


def test_same_function_twice_is_two_registrations() -> None:
    hooks = HookRegistry()

    def add(ctx: int) -> int:
        return ctx + 1

    off_first = hooks.before("op", add)
    hooks.before("op", add)
    assert hooks.run("op", 0, identity) == 2
    off_first()
    assert hooks.run("op", 0, identity) == 1


def test_has_and_names() -> None:
    hooks = HookRegistry()
    assert hooks.names() == []
    assert not hooks.has("b.op")
    off_b = hooks.on_error("b.op", lambda e, c: None)
    off_a = hooks.after("a.op", lambda r, c: None)
    assert hooks.has("b.op")
    assert hooks.has(HookName("a.op"))
    assert hooks.names() == ["a.op", "b.op"]  # sorted
    off_b()
    assert not hooks.has("b.op")  # the last handler gone: the name is gone
    assert hooks.names() == ["a.op"]
    off_a()
    assert hooks.names() == []


def test_clear_one_name_or_all() -> None:
    hooks = HookRegistry()
    off = hooks.before("a.op", lambda ctx: "changed")
    hooks.before("b.op", lambda ctx: "changed")
    hooks.clear("a.op")
    assert hooks.names() == ["b.op"]
    assert hooks.run("a.op", "same", identity) == "same"
    off()  # unsubscribing after clear is harmless
    hooks.clear("missing")  # clearing an unknown name is harmless
    hooks.clear()
    assert hooks.names() == []
    assert hooks.run("b.op", "same", identity) == "same"


def test_unsubscribe_after_clear_does_not_touch_new_handlers() -> None:
    hooks = HookRegistry()
    off_old = hooks.before("op", lambda ctx: ctx + "old")
    hooks.clear()
    hooks.before("op", lambda ctx: ctx + "new")
    off_old()
    assert hooks.run("op", "", identity) == "new"


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", None, 3, b"op", ["op"]])
@pytest.mark.parametrize("kind", ["before", "after", "on_error"])
def test_bad_names_raise(kind: str, name: Any) -> None:
    hooks = HookRegistry()
    with pytest.raises(ValueError, match="hook name must be a non-empty string"):
        getattr(hooks, kind)(name, lambda *args: None)
    assert hooks.names() == []


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_names_raise_on_has(name: Any) -> None:
    with pytest.raises(ValueError, match="hook name must be a non-empty string"):
        HookRegistry().has(name)


@pytest.mark.parametrize("name", ["", 3])  # clear(None) means "clear every name"
def test_bad_names_raise_on_clear(name: Any) -> None:
    hooks = HookRegistry()
    hooks.before("op", identity)
    with pytest.raises(ValueError, match="hook name must be a non-empty string"):
        hooks.clear(name)
    assert hooks.names() == ["op"]


@pytest.mark.parametrize("handler", [None, "not callable", 3])
@pytest.mark.parametrize("kind", ["before", "after", "on_error"])
def test_bad_handlers_raise(kind: str, handler: Any) -> None:
    hooks = HookRegistry()
    with pytest.raises(TypeError, match="hook handler for 'op' must be callable"):
        getattr(hooks, kind)("op", handler)
    assert hooks.names() == []


@pytest.mark.parametrize("priority", [1.5, "1", None, True])
def test_bad_priorities_raise(priority: Any) -> None:
    hooks = HookRegistry()
    with pytest.raises(TypeError, match="priority must be an int"):
        hooks.before("op", identity, priority=priority)
    assert hooks.names() == []


# -- HookName ---------------------------------------------------------------------------------------------------------


PRODUCT_CREATE: HookName[Ctx, str] = HookName("product.create")


def test_hook_name_is_interchangeable_with_its_string() -> None:
    hooks = HookRegistry()
    hooks.before(PRODUCT_CREATE, lambda ctx: Ctx(ctx.value + 1))
    hooks.after("product.create", lambda result, ctx: f"{result}!")
    assert hooks.run(PRODUCT_CREATE, Ctx(1), lambda c: str(c.value)) == "2!"
    assert hooks.run("product.create", Ctx(1), lambda c: str(c.value)) == "2!"
    assert hooks.names() == ["product.create"]


def test_hook_name_value_semantics() -> None:
    assert HookName("a") == HookName("a")
    assert HookName("a") != HookName("b")
    assert HookName("a") != "a"  # a name is not a string
    assert hash(HookName("a")) == hash(HookName("a"))
    assert len({HookName("a"), HookName("a"), HookName("b")}) == 2
    assert str(PRODUCT_CREATE) == "product.create"
    assert repr(PRODUCT_CREATE) == "HookName('product.create')"


@pytest.mark.parametrize("bad", ["", None, 1])
def test_hook_name_must_be_non_empty_string(bad: Any) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        HookName(bad)


# -- threads ----------------------------------------------------------------------------------------------------------


def test_registration_while_running_is_safe_and_deterministic() -> None:
    """Churning threads add and remove no-op handlers on the running name; the permanent
    handlers keep giving the same answer, and nothing raises."""
    hooks = HookRegistry()
    hooks.before("op", lambda ctx: ctx + 1, priority=100)
    hooks.before("op", lambda ctx: ctx * 2, priority=-100)
    hooks.after("op", lambda result, ctx: result + 1000, priority=100)  # runs last
    hooks.on_error("other", lambda e, c: "unused")

    stop = threading.Event()
    errors: list[BaseException] = []
    churned = [0] * 4
    seen_churn = [0]  # runs that met a churned handler: proof the two really overlapped
    runs = 0

    def noop_before(ctx: Any) -> None:
        seen_churn[0] += 1

    def churn(worker: int) -> None:
        try:
            while not stop.is_set():
                offs = [
                    hooks.before("op", noop_before, priority=worker),
                    hooks.after("op", lambda result, ctx: None, priority=-worker),
                    hooks.on_error("op", lambda e, c: None),
                    hooks.before(f"scratch.{worker}", identity),
                ]
                for off in reversed(offs):
                    off()
                churned[worker] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # (3 + 1) * 2 = 8, operation + 10 = 18, after hook + 1000 = 1018: always.
            assert hooks.run("op", 3, lambda ctx: ctx + 10) == 1018
            runs += 1
            if runs >= 500 and min(churned) >= 20 and seen_churn[0] > 0:
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert errors == []
    assert not any(thread.is_alive() for thread in threads)
    assert min(churned) >= 20, churned  # every churner made progress alongside the runs
    assert seen_churn[0] > 0
    assert runs >= 500
    # Every churned handler is gone again; the permanent ones are intact.
    assert hooks.names() == ["op", "other"]
    assert hooks.run("op", 3, lambda ctx: ctx + 10) == 1018


def test_concurrent_registration_keeps_every_handler() -> None:
    hooks = HookRegistry()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def register(worker: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(100):
                hooks.before("op", lambda ctx, tag=(worker, i): ctx.append(tag))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    tags: list[tuple[int, int]] = hooks.run("op", [], identity)
    assert len(tags) == 800
    assert set(tags) == {(w, i) for w in range(8) for i in range(100)}
    # Each thread's own registrations keep their order (ties break by registration order).
    for worker in range(8):
        assert [i for w, i in tags if w == worker] == list(range(100))
    # And the resulting order is stable from run to run.
    assert hooks.run("op", [], identity) == tags


def test_run_refuses_an_empty_name_like_registration_does() -> None:
    with pytest.raises(ValueError):
        HookRegistry().run("", 1, lambda ctx: ctx)
