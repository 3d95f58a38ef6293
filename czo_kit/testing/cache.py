"""The cache driver contract: what ``CacheManager`` must do on top of any driver.

Subclass ``CacheDriverContract`` and provide a ``driver`` fixture (a fresh ``CacheDriver``);
every test runs through a ``CacheManager`` with a prefix of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from czo_kit.cache.driver import HEADER_MAGIC, CacheDriver
from czo_kit.cache.manager import CacheManager

__all__ = ["CacheDriverContract", "wait_until"]


class _Replaced:
    """A driver with some methods replaced, the rest passed through (tests spy on calls)."""

    def __init__(self, driver: Any, **replaced: Any) -> None:
        self._driver = driver
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


def wait_until(condition: Callable[[], bool], *, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class Widget(msgspec.Struct):
    id: int
    name: str
    price: decimal.Decimal
    created: dt.datetime


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Counter:
    """A factory that counts its calls, optionally slow or failing."""

    def __init__(self, value: Any = "computed", *, delay: float = 0.0, fail: bool = False) -> None:
        self.value = value
        self.delay = delay
        self.fail = fail
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)  # stands for a slow database query
        if self.fail:
            raise RuntimeError("factory failed")
        return self.value


def _nested(depth: int, kind: type) -> Any:
    value: Any = kind()
    for _ in range(depth - 1):
        value = {"x": value} if kind is dict else [value]
    return value


def _itself(kind: type) -> Any:
    if kind is dict:
        mapping: dict[str, Any] = {}
        mapping["self"] = mapping
        return mapping
    items: list[Any] = []
    items.append(items)
    return items


class CacheDriverContract:
    """Behaviour every cache driver must show, through ``CacheManager``."""

    @pytest.fixture
    def driver(self) -> Iterator[CacheDriver]:
        raise NotImplementedError("subclasses provide a driver fixture")

    @pytest.fixture
    def cache(self, driver: CacheDriver) -> Iterator[CacheManager]:
        manager = CacheManager(driver, prefix=f"ct{uuid.uuid4().hex[:10]}:", lock_timeout=2.0)
        yield manager
        manager.clear()

    # -- basics -------------------------------------------------------------------------

    def test_set_get_has_delete(self, cache: CacheManager) -> None:
        assert cache.get("k") is None and cache.get("k", "fallback") == "fallback"
        assert not cache.has("k")
        cache.set("k", {"a": 1, "b": [1, 2, "three"]})
        assert cache.get("k") == {"a": 1, "b": [1, 2, "three"]}
        assert cache.has("k")
        cache.set("k", "replaced")
        assert cache.get("k") == "replaced"
        assert cache.delete("k") is True
        assert cache.delete("k") is False
        assert cache.get("k") is None

    def test_ttl_in_fractions_of_a_second(self, cache: CacheManager) -> None:
        cache.set("short", 1, ttl=0.3)
        cache.set("long", 2, ttl=60)
        assert cache.get("short") == 1
        assert wait_until(lambda: cache.get("short") is None, timeout=5)
        assert cache.get("long") == 2

    def test_values_round_trip_through_msgpack(self, cache: CacheManager) -> None:
        when = dt.datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)
        widget = Widget(1, "Mug", decimal.Decimal("12.50"), when)
        cache.set("widget", widget)
        assert cache.get("widget", type=Widget) == widget
        cache.set("point", Point(1, 2.5))
        assert cache.get("point", type=Point) == Point(1, 2.5)
        cache.set("points", [Point(1, 1.0), Point(2, 2.0)])
        assert cache.get("points", type=list[Point]) == [Point(1, 1.0), Point(2, 2.0)]
        nested = {"when": when, "items": [1, 2.5, None, True, "x"], "raw": b"\x00\x01"}
        cache.set("nested", nested)
        assert cache.get("nested") == nested
        cache.set("price", decimal.Decimal("0.10"))
        assert cache.get("price", type=decimal.Decimal) == decimal.Decimal("0.10")
        cache.set("day", dt.date(2026, 1, 2))
        assert cache.get("day", type=dt.date) == dt.date(2026, 1, 2)

    def test_unencodable_values_are_refused_and_bad_types_are_misses(self, cache: CacheManager) -> None:
        with pytest.raises(TypeError):
            cache.set("k", object())
        with pytest.raises(TypeError):
            cache.set("k", {1, 2}.__iter__())
        cache.set("text", "not a widget")
        before = cache.stats()["decode_errors"]
        assert cache.get("text", type=Widget) is None
        assert cache.stats()["decode_errors"] == before + 1

    @pytest.mark.parametrize(
        ("make", "says"),
        [
            (lambda: _nested(10_000, dict), "nested"),
            (lambda: _nested(10_000, list), "nested"),
            (lambda: _itself(dict), "nested"),
            (lambda: _itself(list), "nested"),
            (lambda: {"big": 2**64}, "integer"),
            (lambda: [-(2**63) - 1], "integer"),
        ],
        ids=["deep-dicts", "deep-lists", "circular-dict", "circular-list", "2**64", "-2**63-1"],
    )
    def test_deep_circular_or_out_of_range_values_raise_type_error(
        self, cache: CacheManager, make: Callable[[], Any], says: str
    ) -> None:
        value = make()
        with pytest.raises(TypeError, match=says):
            cache.set("k", value)
        with pytest.raises(TypeError, match=says):
            cache.set_many({"a": 1, "k": value})
        with pytest.raises(TypeError, match=says):
            cache.get_or_set("k", lambda: value)
        assert cache.get_many(["a", "k"]) == {}

    def test_entries_carry_the_shared_envelope(self, cache: CacheManager, driver: CacheDriver) -> None:
        cache.set("k", [1, 2], ttl=30, tags=["t:1"])
        raw = driver.get_many([cache.key("k")])[0]
        assert raw is not None and raw.startswith(HEADER_MAGIC)
        header = raw.split(b"\n", 1)[0].split(b"|")
        created, fresh, stale = int(header[1]), int(header[2]), int(header[3])
        assert fresh - created == 30_000 and stale == fresh
        assert header[4].startswith(b"t:1=")

    # -- bulk ---------------------------------------------------------------------------

    def test_bulk_operations(self, cache: CacheManager) -> None:
        cache.set_many({"a": 1, "b": 2, "c": 3}, ttl=30, tags=["bulk"])
        assert cache.get_many(["a", "b", "missing", "c", "a"]) == {"a": 1, "b": 2, "c": 3}
        assert cache.get_many([]) == {}
        assert cache.delete_many(["a", "b", "missing"]) == 2
        assert cache.get_many(["a", "b", "c"]) == {"c": 3}
        cache.invalidate_tags(["bulk"])
        assert cache.get_many(["c"]) == {}
        cache.set_many({})
        assert cache.delete_many([]) == 0

    # -- tags ---------------------------------------------------------------------------

    def test_tags_invalidate_every_entry_carrying_them(self, cache: CacheManager) -> None:
        cache.set("p1", 1, tags=["widget:1", "shop:1"])
        cache.set("p2", 2, tags=["widget:2", "shop:1"])
        cache.set("p3", 3, tags=["widget:3", "shop:2"])
        cache.invalidate_tags(["widget:1"])
        assert cache.get("p1") is None and cache.get("p2") == 2
        cache.invalidate_tags(["shop:1"])
        assert cache.get("p2") is None and cache.get("p3") == 3
        cache.invalidate_tags([])
        cache.invalidate_tags(["never-used"])
        assert cache.get("p3") == 3
        cache.set("p1", 10, tags=["widget:1"])  # set again after invalidation: fresh
        assert cache.get("p1") == 10

    def test_a_missing_tag_version_means_invalid(self, cache: CacheManager, driver: CacheDriver) -> None:
        cache.set("k", "v", tags=["evictable"])
        assert cache.get("k") == "v"
        driver.delete_many([cache._shared.tag_prefix + "evictable"])  # as if evicted
        assert cache.get("k") is None
        cache.set("k", "v2", tags=["evictable"])
        assert cache.get("k") == "v2"

    def test_tag_versions_are_snapshotted_before_the_factory_runs(self, cache: CacheManager) -> None:
        def compute_while_data_changes() -> str:
            # The data changes (and is invalidated) while the old value is being computed.
            cache.invalidate_tags(["row:1"])
            return "computed from old data"

        assert cache.get_or_set("row", compute_while_data_changes, tags=["row:1"]) == "computed from old data"
        fresh = Counter("recomputed")
        assert cache.get_or_set("row", fresh, tags=["row:1"]) == "recomputed"
        assert fresh.calls == 1
        assert cache.get_or_set("row", fresh, tags=["row:1"]) == "recomputed"
        assert fresh.calls == 1

    def test_tag_version_keys_expire_once_their_entries_have(self, driver: CacheDriver) -> None:
        # A short lease: a version key is kept for its entries' lifetime plus the lease.
        cache = CacheManager(driver, prefix=f"ct{uuid.uuid4().hex[:10]}:", lock_timeout=0.05)
        tag_keys = [cache._shared.tag_prefix + f"order:{n}" for n in range(50)] + [cache._shared.tag_prefix + "shop:1"]
        try:
            for n in range(50):  # tags used once, as an order's would be
                cache.set(f"order:{n}", n, ttl=0.5, tags=[f"order:{n}", "shop:1"])
                assert None not in driver.get_many(tag_keys[n : n + 1] + tag_keys[-1:])
            assert wait_until(lambda: cache.get_many([f"order:{n}" for n in range(50)]) == {})
            assert wait_until(lambda: driver.get_many(tag_keys) == [None] * len(tag_keys)), (
                "tag version keys outlived every entry recording them"
            )
        finally:
            cache.clear()

    def test_a_tag_version_key_outlives_the_longest_entry_recording_it(self, driver: CacheDriver) -> None:
        cache = CacheManager(driver, prefix=f"ct{uuid.uuid4().hex[:10]}:", lock_timeout=0.05)
        probe = cache._shared.tag_prefix + "probe"
        try:
            cache.set("long", "kept", ttl=60, tags=["shared"])
            cache.set("stale", "kept stale", ttl=0.05, tags=["windowed"], stale_while_revalidate=60)
            # Written later with a short TTL: the shared tag's key must not be shortened.
            cache.set("short", "gone soon", ttl=0.05, tags=["shared"])
            cache.set("yardstick", "gone soon", ttl=0.05, tags=["probe"])
            # Once a key held as long as "short" needs has expired, the others still hold.
            assert wait_until(lambda: driver.get_many([probe]) == [None])
            assert cache.get("short") is None
            assert cache.get("long") == "kept"
            assert cache.get("stale") == "kept stale"  # its stale window counts too
        finally:
            cache.clear()

    def test_an_invalidated_entry_never_comes_back_after_its_version_key_went(
        self, cache: CacheManager, driver: CacheDriver
    ) -> None:
        tag_key = cache._shared.tag_prefix + "row:7"
        driver.delete_many([tag_key])  # as if expired: versions must not restart from a counter
        cache.invalidate_tags(["row:7"])
        cache.set("row", "old", ttl=60, tags=["row:7"])
        assert cache.get_or_set("view", lambda: "old view", ttl=60, tags=["row:7"]) == "old view"
        cache.invalidate_tags(["row:7"])  # the row changed
        for round_ in range(5):
            driver.delete_many([tag_key])  # the version key expired (or was evicted) ...
            cache.invalidate_tags(["row:7"])  # ... and the row changed again
            assert cache.get("row") is None, f"an invalidated entry came back (round {round_})"
            assert cache.get_or_set("view", lambda: "new view", ttl=0.05, tags=["row:7"]) == "new view"
            cache.set("other", round_, ttl=60, tags=["row:7"])  # a new version for new entries
            assert cache.get("row") is None and cache.get("other") == round_

    # -- namespaces and patterns --------------------------------------------------------

    def test_namespaces_isolate_and_clear_in_one_step(self, cache: CacheManager) -> None:
        widgets = cache.namespace("widget")
        variants = widgets.namespace("variant")
        others = cache.namespace("other")
        cache.set("1", "root")
        widgets.set("1", "widget")
        variants.set("1", "variant")
        others.set("1", "other")
        assert [c.get("1") for c in (cache, widgets, variants, others)] == ["root", "widget", "variant", "other"]
        assert widgets.key("1") != variants.key("1") != cache.key("1")
        widgets.clear()  # the namespace and everything nested in it
        assert [c.get("1") for c in (cache, widgets, variants, others)] == ["root", None, None, "other"]
        widgets.set("2", "again")
        assert widgets.get("2") == "again"
        cache.clear()
        assert [c.get(k) for c, k in ((cache, "1"), (others, "1"), (widgets, "2"))] == [None, None, None]
        for bad in ("", "a b", "a*", "a:b", 5):
            with pytest.raises(ValueError):
                cache.namespace(bad)  # type: ignore[arg-type]

    def test_keys_never_reach_the_tag_versions_or_the_locks(self, cache: CacheManager) -> None:
        """Tag versions live at ``<prefix>tag:<tag>`` and locks at ``<prefix>lock:<full key>``.
        A root key ``tag:t`` (from a request, say) overwrote the version of ``t`` with an
        envelope, which every later writer of ``t`` then recorded: its newline split their
        headers, so no entry of ``t`` was ever served again (and the key was extended on each
        write); a root ``lock:...`` key held another key's stampede lock."""
        for key in ("tag:t", "tag:ns:widget", "lock:" + cache.key("k")):
            with pytest.raises(ValueError, match="reserved"):
                cache.set(key, "hostile")
            with pytest.raises(ValueError, match="reserved"):
                cache.get(key)
        for name in ("tag", "lock"):
            with pytest.raises(ValueError, match="reserved"):
                cache.namespace(name)
        nested = cache.namespace("widget")
        nested.set("tag:t", "fine")  # under the namespace: no clash
        assert nested.get("tag:t") == "fine" and nested.namespace("tag").key("t") == nested.key("tag:t")
        factory = Counter("v")
        assert cache.get_or_set("k", factory, tags=["t"]) == "v"
        assert cache.get_or_set("k", factory, tags=["t"]) == "v"
        assert factory.calls == 1

    def test_invalidate_by_glob_pattern(self, cache: CacheManager) -> None:
        for key in ("p:1", "p:2", "p:10", "q:1", "a*b", "aXb"):
            cache.set(key, key)
        assert cache.invalidate("p:?") == 2
        assert cache.get("p:10") == "p:10" and cache.get("p:1") is None
        assert cache.invalidate("a\\*b") == 1
        assert cache.get("aXb") == "aXb" and cache.get("a*b") is None
        ns = cache.namespace("ns")
        ns.set("p:1", "inside")
        assert ns.invalidate("*") == 1
        assert cache.get("q:1") == "q:1"
        for bad in ("", 5, "x" * 1000):
            with pytest.raises(ValueError):
                cache.invalidate(bad)  # type: ignore[arg-type]

    # -- cache-aside --------------------------------------------------------------------

    def test_get_or_set_calls_the_factory_only_on_a_miss(self, cache: CacheManager) -> None:
        factory = Counter({"v": 1})
        assert cache.get_or_set("k", factory, ttl=30) == {"v": 1}
        assert cache.get_or_set("k", factory, ttl=30) == {"v": 1}
        assert factory.calls == 1
        assert cache.get_or_set("typed", lambda: Point(1, 2.0), type=Point) == Point(1, 2.0)
        assert cache.get_or_set("typed", lambda: Point(9, 9.0), type=Point) == Point(1, 2.0)

    def test_a_failing_factory_caches_nothing(self, cache: CacheManager) -> None:
        with pytest.raises(RuntimeError):
            cache.get_or_set("k", Counter(fail=True))
        assert cache.get("k") is None
        assert cache.get_or_set("k", Counter("ok")) == "ok"

    def test_fifty_threads_asking_for_a_cold_key_run_the_factory_once(self, cache: CacheManager) -> None:
        factory = Counter("expensive", delay=0.2)
        start = threading.Barrier(50)
        results: list[Any] = []

        def ask() -> None:
            start.wait(timeout=10)
            results.append(cache.get_or_set("cold", factory, ttl=30))

        threads = [threading.Thread(target=ask) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert results == ["expensive"] * 50
        assert factory.calls == 1

    def test_a_lock_held_elsewhere_is_waited_for(self, cache: CacheManager, driver: CacheDriver) -> None:
        # Another process holds the lock and is computing the value.
        lock_key = cache._shared.lock_prefix + cache.key("shared")
        assert driver.acquire_lock(lock_key, "other-process", 5_000)
        assert not driver.acquire_lock(lock_key, "third", 5_000)
        factory = Counter("mine")

        def other_process_finishes() -> None:
            # It finishes only once this process is waiting for it, whatever the timing.
            assert wait_until(lambda: cache.stats()["lock_waits"] >= 1, timeout=30)
            cache.set("shared", "theirs", ttl=30)
            assert driver.release_lock(lock_key, "other-process")

        worker = threading.Thread(target=other_process_finishes)
        worker.start()
        assert cache.get_or_set("shared", factory, ttl=30) == "theirs"
        worker.join()
        assert factory.calls == 0
        assert cache.stats()["lock_waits"] >= 1

    def test_a_dead_lock_holder_blocks_no_one_past_its_lease(self, cache: CacheManager, driver: CacheDriver) -> None:
        lock_key = cache._shared.lock_prefix + cache.key("orphan")
        assert driver.acquire_lock(lock_key, "crashed-process", 300)  # never released
        taken: list[bool] = []
        real_acquire = driver.acquire_lock

        def acquire_lock(key: str, token: str, ttl_ms: int) -> bool:
            taken.append(real_acquire(key, token, ttl_ms))
            return taken[-1]

        cache._shared.driver = _Replaced(driver, acquire_lock=acquire_lock)
        try:
            assert cache.get_or_set("orphan", Counter("recovered"), ttl=30) == "recovered"
        finally:
            cache._shared.driver = driver
        # It waited, then took the lock: the 0.3 s lease freed it. (A cache that gives up on
        # the holder computes without ever taking the lock.)
        assert taken[0] is False and taken[-1] is True

    def test_locks_release_only_with_their_token(self, driver: CacheDriver) -> None:
        key = f"lock-{uuid.uuid4().hex}"
        assert driver.acquire_lock(key, "a", 5_000)
        assert not driver.release_lock(key, "b")
        assert not driver.acquire_lock(key, "b", 5_000)
        assert driver.release_lock(key, "a")
        assert driver.acquire_lock(key, "b", 5_000)
        assert driver.release_lock(key, "b")

    # -- stale-while-revalidate ---------------------------------------------------------

    def test_stale_values_are_served_while_one_refresh_runs(self, cache: CacheManager) -> None:
        assert cache.get_or_set("swr", Counter("v1"), ttl=0.2, stale_while_revalidate=30) == "v1"
        assert wait_until(lambda: not cache.has("swr"))  # past its fresh time, still stored
        release = threading.Event()

        released: list[bool] = []

        def refresh() -> str:
            refresh.calls += 1  # type: ignore[attr-defined]
            # The refresh cannot finish before the callers below are served: a caller that
            # waited for it would keep it here until the 10 s safety timeout runs out.
            released.append(release.wait(timeout=10))
            return "v2"

        refresh.calls = 0  # type: ignore[attr-defined]
        served = [cache.get_or_set("swr", refresh, ttl=30, stale_while_revalidate=30) for _ in range(20)]
        assert served == ["v1"] * 20
        release.set()
        assert wait_until(lambda: cache.get("swr") == "v2")
        assert refresh.calls == 1  # type: ignore[attr-defined]
        assert released == [True]  # released by this test, not by its timeout: nobody waited
        # The refresh counts itself just after storing the value: poll rather than race it.
        assert wait_until(lambda: cache.stats()["refreshes"] >= 1)
        assert cache.stats()["stale_served"] >= 20

    def test_a_failing_refresh_keeps_serving_stale(
        self, cache: CacheManager, caplog: pytest.LogCaptureFixture
    ) -> None:
        cache.get_or_set("swr", Counter("old"), ttl=0.2, stale_while_revalidate=30)
        assert wait_until(lambda: not cache.has("swr"))
        broken = Counter(fail=True)
        with caplog.at_level(logging.ERROR, logger="czo_kit.cache"):
            assert cache.get_or_set("swr", broken, ttl=30, stale_while_revalidate=30) == "old"
            assert wait_until(lambda: cache.stats()["refresh_errors"] >= 1)
        failures = [r for r in caplog.records if "background refresh" in r.getMessage()]
        assert failures and failures[0].levelno == logging.ERROR and failures[0].exc_info is not None
        assert cache.get_or_set("swr", broken, ttl=30, stale_while_revalidate=30) == "old"
        assert cache.get("swr") == "old"

    def test_a_stale_value_whose_refresh_fails_is_a_miss_once_its_window_ends(self, cache: CacheManager) -> None:
        cache.set("short", "old", ttl=0.1, stale_while_revalidate=0.3)
        broken = Counter(fail=True)

        def window_over() -> bool:
            # Stale (refreshes failing in the background) until the window ends; then a miss,
            # which runs the factory in the caller and raises its error.
            try:
                assert cache.get_or_set("short", broken, ttl=30) == "old"
            except RuntimeError:
                return True
            return False

        assert wait_until(window_over)
        assert cache.get("short") is None

    def test_set_with_stale_while_revalidate_serves_stale_then_refreshes_once(self, cache: CacheManager) -> None:
        cache.set("k", "v1", ttl=0.2, stale_while_revalidate=30)
        cache.set("plain", "p", ttl=0.2)
        assert wait_until(lambda: not cache.has("k") and not cache.has("plain"))
        before = cache.stats()["stale_served"]
        # A plain read returns the stale value and counts it; has() says it is not fresh.
        assert cache.get("k") == "v1" and cache.get_many(["k", "plain"]) == {"k": "v1"}
        assert cache.get("plain") is None
        assert cache.stats()["stale_served"] - before == 2
        release = threading.Event()
        refresh = Counter("v2")

        def slow() -> str:
            release.wait(timeout=10)
            return str(refresh())

        served = [cache.get_or_set("k", slow, ttl=30) for _ in range(10)]
        assert served == ["v1"] * 10  # nobody waits for the refresh
        release.set()
        assert wait_until(lambda: cache.has("k") and cache.get("k") == "v2")
        assert refresh.calls == 1

    def test_a_stale_entry_of_an_invalidated_tag_is_never_served(self, cache: CacheManager) -> None:
        cache.set("row", "old", ttl=0.2, tags=["row:1"], stale_while_revalidate=30)
        assert cache.get_or_set("fresh", lambda: "old", ttl=30, tags=["row:1"], stale_while_revalidate=30) == "old"
        assert wait_until(lambda: not cache.has("row"))
        assert cache.get("row") == "old"
        cache.invalidate_tags(["row:1"])  # a write: invalidation drops, it does not mark stale
        assert cache.get("row") is None and cache.get("fresh") is None
        assert cache.get_or_set("row", lambda: "new", ttl=30, tags=["row:1"], stale_while_revalidate=30) == "new"
        assert cache.get_or_set("fresh", lambda: "new", ttl=30, tags=["row:1"], stale_while_revalidate=30) == "new"

    def test_get_or_set_many_serves_stale_and_refreshes_the_stale_keys_in_one_call(self, cache: CacheManager) -> None:
        keys = {"a": ["t:a"], "b": ["t:b"], "c": ["t:c"]}
        first = cache.get_or_set_many(
            keys, lambda missing: {k: k + "1" for k in missing}, ttl=0.2, stale_while_revalidate=30
        )
        assert first == {"a": "a1", "b": "b1", "c": "c1"}
        cache.set("c", "c-long", ttl=60, tags=["t:c"])
        assert wait_until(lambda: not cache.has("a") and not cache.has("b"))
        release = threading.Event()
        batches: list[list[str]] = []

        def load(missing: list[str]) -> dict[str, str]:
            batches.append(sorted(missing))
            release.wait(timeout=10)
            return {k: k + "2" for k in missing}

        for _ in range(5):
            assert cache.get_or_set_many(keys, load, ttl=30, stale_while_revalidate=30) == {
                "a": "a1", "b": "b1", "c": "c-long"
            }
        release.set()
        assert wait_until(lambda: cache.get_many(["a", "b"]) == {"a": "a2", "b": "b2"} and cache.has("a"))
        assert batches == [["a", "b"]]  # one background call, for the stale keys only

    # -- refresh-ahead --------------------------------------------------------------------

    def test_refresh_ahead_refreshes_a_hot_key_once_before_it_expires(self, cache: CacheManager) -> None:
        cache.set("cold", "c1", ttl=3600)
        untouched = Counter("c2")
        assert cache.get_or_set("cold", untouched, ttl=3600, refresh_ahead=0.5) == "c1"
        cache.set("hot", "v1", ttl=6)
        release = threading.Event()
        refresh = Counter("v2")

        def slow() -> str:
            value = str(refresh())
            release.wait(timeout=10)
            return value

        # Past 20% of its TTL (1.2 s of 6) a read starts the refresh; the readers keep the current value.
        assert wait_until(
            lambda: cache.get_or_set("hot", slow, ttl=60, refresh_ahead=0.2) == "v1" and refresh.calls == 1
        )
        assert [cache.get_or_set("hot", slow, ttl=60, refresh_ahead=0.2) for _ in range(10)] == ["v1"] * 10
        assert cache.has("hot")  # refreshed ahead: it never went stale or missing
        release.set()
        assert wait_until(lambda: cache.get("hot") == "v2")
        assert wait_until(lambda: cache.stats()["refreshes"] >= 1)
        assert refresh.calls == 1 and untouched.calls == 0
        # The new value has a TTL of its own (60 s): reading it does not refresh again.
        assert cache.get_or_set("hot", slow, ttl=60, refresh_ahead=0.2) == "v2"
        assert refresh.calls == 1

    def test_refresh_ahead_runs_once_across_processes(self, cache: CacheManager, driver: CacheDriver) -> None:
        # Two managers over one store with one prefix stand for two processes: they share no
        # memory, only the driver's data and locks.
        gate = threading.Event()
        waiting = threading.Event()
        real_acquire = driver.acquire_lock

        def acquire_lock(key: str, token: str, ttl_ms: int) -> bool:
            waiting.set()
            gate.wait(timeout=10)  # the other process's refresh comes and goes meanwhile
            return real_acquire(key, token, ttl_ms)

        other = CacheManager(
            _Replaced(driver, acquire_lock=acquire_lock), prefix=cache._shared.prefix, lock_timeout=2.0
        )
        try:
            cache.set("hot", "v1", ttl=3, stale_while_revalidate=30)
            factory = Counter("v2")
            # The other process reads the key past 30% of its TTL and starts its refresh, which
            # stops just before taking the lock ...
            assert wait_until(
                lambda: other.get_or_set("hot", factory, ttl=60, refresh_ahead=0.3) == "v1" and waiting.is_set()
            )
            # ... while this one refreshes it from start to end.
            assert cache.get_or_set("hot", factory, ttl=60, refresh_ahead=0.3) == "v1"
            assert wait_until(lambda: cache.stats()["refreshes"] >= 1)
            assert cache.get("hot") == "v2"
            gate.set()
            # The late refresh takes the lock, sees a newer value than the one it set out to
            # refresh, and leaves it.
            assert wait_until(lambda: not other._shared.refreshing)
            assert factory.calls == 1
            assert other.stats()["refreshes"] == 0 and other.stats()["refresh_errors"] == 0
            assert other.get("hot") == "v2"
        finally:
            gate.set()
            other._shared.closed = True
            if other._shared.executor is not None:
                other._shared.executor.shutdown(wait=True)

    # -- input checks -------------------------------------------------------------------

    # "\udc80": a lone surrogate (os.fsdecode of a byte that is not UTF-8) has no UTF-8 form
    # for Redis; the memory driver took it, so a key working in development failed on Redis.
    @pytest.mark.parametrize("key", ["", "x" * 513, "a\nb", "tab\there", "\x00", "a\udc80", 5, None, b"bytes"])
    def test_bad_keys_are_refused(self, cache: CacheManager, key: Any) -> None:
        with pytest.raises(ValueError):
            cache.get(key)
        with pytest.raises(ValueError):
            cache.set(key, 1)

    @pytest.mark.parametrize(
        "tags",
        ["widget:1", ["a,b"], ["a b"], ["a=b"], ["a|b"], [""], ["x" * 257], [5], [None], ["ns:widget"], ["a\udc80"]],
    )
    def test_bad_tags_are_refused(self, cache: CacheManager, tags: Any) -> None:
        with pytest.raises(ValueError):
            cache.set("k", 1, tags=tags)
        with pytest.raises(ValueError):
            cache.invalidate_tags(tags)

    @pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), True, "60", 10**10])
    def test_bad_ttls_are_refused(self, cache: CacheManager, ttl: Any) -> None:
        with pytest.raises(ValueError):
            cache.set("k", 1, ttl=ttl)
        with pytest.raises(ValueError):
            cache.get_or_set("k", lambda: 1, ttl=ttl)
        if ttl != 0:  # no stale window at all is allowed
            with pytest.raises(ValueError, match="stale_while_revalidate"):
                cache.get_or_set("k", lambda: 1, stale_while_revalidate=ttl)
            with pytest.raises(ValueError, match="stale_while_revalidate"):
                cache.set("k", 1, stale_while_revalidate=ttl)

    @pytest.mark.parametrize("ahead", [0, 1, 1.5, -0.2, float("nan"), True, "0.8"])
    def test_bad_refresh_ahead_is_refused_with_the_allowed_range(self, cache: CacheManager, ahead: Any) -> None:
        with pytest.raises(ValueError, match=r"refresh_ahead .*more than 0 and less than 1"):
            cache.get_or_set("k", lambda: 1, refresh_ahead=ahead)
        with pytest.raises(ValueError, match=r"refresh_ahead .*more than 0 and less than 1"):
            cache.get_or_set_many({"k": []}, lambda keys: {}, refresh_ahead=ahead)
        with pytest.raises(ValueError, match=r"stale_while_revalidate .*0 to"):
            cache.get_or_set_many({"k": []}, lambda keys: {}, stale_while_revalidate=-1)
        assert cache.get("k") is None  # nothing was computed or stored

    def test_a_zero_stale_window_means_none(self, cache: CacheManager) -> None:
        cache.set("k", 1, ttl=0.2, stale_while_revalidate=0)
        assert wait_until(lambda: cache.get("k") is None)

    def test_stats_count_hits_and_misses(self, cache: CacheManager) -> None:
        base = cache.stats()
        cache.get("nope")
        cache.set("yes", 1)
        cache.get("yes")
        cache.get_many(["yes", "nope"])
        stats = cache.stats()
        assert stats["hits"] - base["hits"] == 2
        assert stats["misses"] - base["misses"] == 2
        assert stats["sets"] - base["sets"] == 1
        assert cache.ping() is True
