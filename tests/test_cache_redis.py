"""The Redis cache driver beyond the shared contract, on real servers: outages and slow
servers, stampedes across processes, invalidating 100,000 keys without blocking Redis, one
round trip per bulk operation, tag invalidation that costs one UNLINK, and version keys
that expire with the entries recording them.

Tests that kill, pause or count the commands of a server start a private ``redis-server``
on a free port, so they never disturb (or get disturbed by) anything else using Redis.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import service_unavailable
from czo_kit.cache import CacheManager, CacheUnavailable, create_cache
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until

try:
    import redis
except ImportError:  # pragma: no cover - the dev extra installs it; the redis_url fixture reports it
    redis = None

pytestmark = pytest.mark.redis

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A throwaway ``redis-server`` (no persistence) that a test may kill and restart."""

    def __init__(self, binary: str, *, extra_args: list[str] | None = None) -> None:
        self.binary = binary
        self.extra_args = extra_args or []
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = self.client(timeout=0.2)
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {process.returncode}")
            try:
                return bool(probe.ping())
            except redis.RedisError:
                return False

        try:
            assert wait_until(answers, timeout=10), f"redis-server on port {self.port} never answered"
        except BaseException:
            self.kill()
            raise
        finally:
            probe.close()

    def pause(self) -> None:
        """Stop the server process (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            self.resume()  # a stopped process takes SIGKILL too, but its pipes do not drain
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def client(self, *, timeout: float = 5.0) -> Any:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def command_calls(self, client: Any) -> dict[str, int]:
        """How many times each command ran on this server: ``{"incr": 3, ...}``."""
        stats = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


class SpyDriver:
    """Stands in for a cache's driver and records each call it passes on: ``calls`` the
    names, ``results`` what each call that returned gave back."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.calls: list[str] = []
        self.results: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.driver, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            result = method(*args, **kwargs)
            self.results.append((name, result))
            return result

        return call


@pytest.fixture(scope="session")
def redis_server_binary(redis_url: str) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        service_unavailable("redis-server", "not installed; needed to start private servers")
    assert binary is not None
    return binary


@pytest.fixture
def private_redis(redis_server_binary: str) -> Iterator[PrivateRedis]:
    """A server of this test's own, which it may kill and restart."""
    with PrivateRedis(redis_server_binary) as server:
        yield server


@pytest.fixture(scope="module")
def quiet_redis(redis_server_binary: str) -> Iterator[PrivateRedis]:
    """A server of this module's own, so command statistics count only what tests do."""
    with PrivateRedis(redis_server_binary) as server:
        yield server


@pytest.fixture
def make_cache() -> Iterator[Callable[..., CacheManager]]:
    made: list[CacheManager] = []

    def make(url: str, *, timeout: float = 1.0, near: int = 10_000, **options: Any) -> CacheManager:
        options.setdefault("prefix", f"rt{uuid.uuid4().hex[:10]}:")
        settings = Settings(cache_url=url, cache_timeout=timeout, cache_near_entries=near)
        manager = create_cache(url, settings=settings, **options)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


def unavailable_records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "czo_kit.cache" and text in r.getMessage()]


# -- a server that goes away ------------------------------------------------------------------


def test_an_outage_degrades_to_misses_is_logged_once_and_recovers(
    private_redis: PrivateRedis, make_cache: Callable[..., CacheManager], caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"out{uuid.uuid4().hex[:8]}:"
    cache = make_cache(private_redis.url, timeout=0.1, retry_after=0.05, prefix=prefix)
    strict = make_cache(private_redis.url, timeout=0.1, retry_after=0.05, strict=True, prefix=prefix)
    cache.set("k", "before", tags=["t"])
    assert cache.get("k") == "before" and strict.get("k") == "before"
    caplog.set_level(logging.WARNING, logger="czo_kit.cache")

    private_redis.kill()
    errors_before = cache.stats()["errors"]
    computed: list[int] = []
    rounds = 0
    stop = time.monotonic() + 0.5  # ten retry windows: the driver is really tried again and again
    while time.monotonic() < stop or rounds < 10:
        rounds += 1
        assert cache.get("k") is None
        assert cache.get("k", "default") == "default"
        assert cache.get_or_set("k", lambda: computed.append(1) or "computed", tags=["t"]) == "computed"
        assert cache.get_many(["k", "other"]) == {}
        assert cache.has("k") is False
        cache.set("k", "written while down", tags=["t"])
        cache.set_many({"a": 1, "b": 2})
        assert cache.delete("k") is False
        assert cache.delete_many(["a", "b"]) == 0
        assert cache.invalidate("*") == 0
        cache.invalidate_tags(["t"])
        cache.clear()
        assert cache.ping() is False
        time.sleep(0.01)  # spread the calls over several retry windows
    assert len(computed) == rounds  # the factory's value was served every time
    assert cache.stats()["errors"] >= errors_before + 10 * rounds
    assert len(unavailable_records(caplog, "cache unavailable")) == 1
    assert unavailable_records(caplog, "reachable again") == []

    with pytest.raises(CacheUnavailable):
        strict.get("k")
    with pytest.raises(CacheUnavailable):
        strict.set("k", "v")
    with pytest.raises(CacheUnavailable):
        strict.get_or_set("k", lambda: "never stored")

    private_redis.start()  # same port, empty

    def recovered(manager: CacheManager) -> Callable[[], bool]:
        def check() -> bool:
            try:
                manager.set("back", "yes")
                return manager.get("back") == "yes"
            except CacheUnavailable:
                return False

        return check

    assert wait_until(recovered(cache), timeout=10)
    assert wait_until(recovered(strict), timeout=10)
    assert len(unavailable_records(caplog, "reachable again")) == 2  # once per cache
    assert cache.get_or_set("k", lambda: "fresh", tags=["t"]) == "fresh"
    assert cache.get("k") == "fresh"


def test_a_failed_ping_during_an_outage_is_not_taken_for_recovery(
    private_redis: PrivateRedis, make_cache: Callable[..., CacheManager], caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(private_redis.url, timeout=0.1, retry_after=0.05)
    cache.set("k", 1)
    caplog.set_level(logging.WARNING, logger="czo_kit.cache")
    private_redis.kill()
    assert cache.get("k") is None  # the outage starts
    for _ in range(3):
        # Past the retry window, so that ping() really asks the (dead) server.
        assert wait_until(lambda: time.monotonic() > cache._shared.down_until)
        assert cache.ping() is False
        assert cache.get("k") is None
    assert len(unavailable_records(caplog, "cache unavailable")) == 1
    assert unavailable_records(caplog, "reachable again") == []
    private_redis.start()
    assert wait_until(cache.ping, timeout=10)
    assert len(unavailable_records(caplog, "reachable again")) == 1


def test_a_slow_server_costs_a_short_timeout_not_a_hang(
    private_redis: PrivateRedis, make_cache: Callable[..., CacheManager]
) -> None:
    # Without a near cache: every read below must go to the server (tests/test_cache_near.py
    # shows what a near cache serves while the server is paused). The server is stopped for
    # as long as the test needs, so no answer can arrive by luck: a call that returns while
    # it is stopped did not wait for it.
    cache = make_cache(private_redis.url, timeout=0.1, near=0)  # skips the backend for 1 s after an error
    eager = make_cache(private_redis.url, timeout=0.1, near=0, retry_after=1e-6)  # tries it on every call
    for manager in (cache, eager):
        manager.set("k", "v")
        assert manager.get("k") == "v"
    spy = cache._shared.driver = SpyDriver(cache._shared.driver)
    private_redis.pause()
    try:
        assert cache.get("k", "default") == "default"  # "v" only if it had waited for the server
        assert spy.calls == ["get_many"] and cache.stats()["errors"] == 1
        # Within retry_after the server is not even tried.
        assert cache.get_or_set("k", lambda: "computed") == "computed"
        assert spy.calls == ["get_many"] and cache.stats()["errors"] > 1

        errors_before = eager.stats()["errors"]
        calls: list[tuple[str, Callable[[], Any], Any]] = [
            ("get", lambda: eager.get("k", "default"), "default"),
            ("get_many", lambda: eager.get_many(["k"]), {}),
            ("set", lambda: eager.set("k", "new", tags=["t"]), None),
            ("delete", lambda: eager.delete("k"), False),
            ("get_or_set", lambda: eager.get_or_set("k", lambda: "computed"), "computed"),  # read, lock, tags
        ]
        for name, call, expected in calls:
            assert call() == expected, name
        # Each one went to the stopped server and gave up after its timeout.
        assert eager.stats()["errors"] >= errors_before + len(calls)
    finally:
        private_redis.resume()

    # Once the server answers again, so does the cache (a key of its own: whether Redis still
    # ran the commands that timed out is not this test's business).
    assert wait_until(lambda: cache.get_or_set("after", lambda: "again") == "again" and cache.has("after"))


# -- stampedes across processes ---------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import redis
    from czo_kit.cache import create_cache
    from czo_kit.settings import Settings

    url, prefix, mode, lock_timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = redis.Redis.from_url(url)
    cache = create_cache(url, settings=Settings(cache_url=url), prefix=prefix, lock_timeout=lock_timeout)

    def wait_for(key):
        deadline = time.monotonic() + 30
        while not client.exists(key):
            if time.monotonic() > deadline:
                sys.exit("gave up waiting for " + key)
            time.sleep(0.002)

    try:
        if mode == "stampede":
            def factory():
                client.incr(prefix + "factory-calls")
                time.sleep(0.2)  # a slow query
                return {"computed_by": os.getpid()}

            results = []
            start = threading.Barrier(50)

            def ask():
                start.wait(timeout=30)
                results.append(cache.get_or_set("cold", factory, ttl=30))

            client.incr(prefix + "ready")
            wait_for(prefix + "go")
            threads = [threading.Thread(target=ask) for _ in range(50)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            print(json.dumps({"results": results, "lock_waits": cache.stats()["lock_waits"]}))
        else:
            def hang():
                client.set(prefix + "in-factory", os.getpid())
                time.sleep(60)  # killed in here, holding the lock
                return "never"

            cache.get_or_set("orphan", hang, ttl=30)
    finally:
        cache.close()
        client.close()
    """
)


@pytest.fixture
def worker_script(tmp_path: Path) -> Path:
    path = tmp_path / "cache_worker.py"
    path.write_text(WORKER)
    return path


def spawn(script: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def reap(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_two_processes_of_fifty_threads_run_the_factory_once(
    redis_url: str, scratch_prefix: str, worker_script: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    processes = [spawn(worker_script, redis_url, scratch_prefix, "stampede", "10") for _ in range(2)]
    try:
        assert wait_until(lambda: int(client.get(scratch_prefix + "ready") or 0) == 2, timeout=30)
        client.set(scratch_prefix + "go", 1)  # both processes start asking at once
        outputs = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            outputs.append(json.loads(out))
        calls = int(client.get(scratch_prefix + "factory-calls") or 0)
    finally:
        reap(processes)
        client.close()
    assert calls == 1
    values = [value for output in outputs for value in output["results"]]
    assert len(values) == 100
    assert len({value["computed_by"] for value in values}) == 1  # everyone got the one value
    assert sum(output["lock_waits"] for output in outputs) >= 1  # the other process waited for it


def test_a_lock_holder_killed_mid_factory_blocks_no_one_past_its_lease(
    redis_url: str, scratch_prefix: str, worker_script: Path, make_cache: Callable[..., CacheManager]
) -> None:
    client = redis.Redis.from_url(redis_url)
    holder = spawn(worker_script, redis_url, scratch_prefix, "hold", "1.0")  # a 1 s lease
    try:
        assert wait_until(lambda: bool(client.exists(scratch_prefix + "in-factory")), timeout=30)
        lock_key = scratch_prefix + "lock:" + scratch_prefix + "orphan"
        assert 0 < client.pttl(lock_key) <= 1000  # it holds the lock, with the short lease
        holder.kill()  # kill -9 while it holds the lock
        holder.wait(timeout=10)
        # This process gives up on a holder only after 20 s (twice its lock_timeout) and then
        # computes unlocked; taking the lock instead shows the dead holder's lease freed it.
        cache = make_cache(redis_url, prefix=scratch_prefix, lock_timeout=10.0)
        spy = cache._shared.driver = SpyDriver(cache._shared.driver)
        assert cache.get_or_set("orphan", lambda: "recovered", ttl=30) == "recovered"
    finally:
        reap([holder])
        client.close()
    acquired = [result for name, result in spy.results if name == "acquire_lock"]
    assert acquired[0] is False and acquired[-1] is True  # waited for the holder, then got the lock
    assert cache.stats()["lock_waits"] == 1
    assert cache.get("orphan") == "recovered"


# -- invalidating many keys -------------------------------------------------------------------


def count_keys(client: Any, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=10_000))


PROBE = textwrap.dedent(
    """
    import select, sys
    import redis

    client = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), socket_timeout=10)
    client.ping()
    print("ready", flush=True)
    pings = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        client.ping()
        pings += 1
    client.close()
    print(pings, flush=True)
    """
)


def test_invalidating_100000_keys_scans_in_batches_and_never_blocks(
    quiet_redis: PrivateRedis, make_cache: Callable[..., CacheManager]
) -> None:
    """What makes it non-blocking is checked in what the server ran, not in how long it
    took: no command touches more than one batch of keys, and another client's commands
    are served between the batches (Redis runs one command at a time, so a short command
    is a short wait for everyone else)."""
    client = quiet_redis.client()
    cache = make_cache(quiet_redis.url, timeout=5.0, prefix="inv:")
    pipe = client.pipeline(transaction=False)
    for start in range(0, 100_000, 1000):
        pipe.mset({f"inv:product:{n}": b"x" for n in range(start, start + 1000)})
    pipe.mset({f"inv:order:{n}": b"kept" for n in range(500)})
    pipe.mset({f"other:product:{n}": b"kept" for n in range(500)})  # another cache, same pattern
    pipe.execute()
    assert count_keys(client, "inv:product:*") == 100_000

    # Every command the server runs from here on, in the order it runs them.
    seen: list[str] = []
    watcher = quiet_redis.client(timeout=60)
    monitor = watcher.monitor()
    monitor.__enter__()  # returns once the server has accepted MONITOR

    def watch() -> None:
        for entry in monitor.listen():
            seen.append(entry["command"])
            if entry["command"] == "ECHO invalidation-done":
                return

    watching = threading.Thread(target=watch, daemon=True)
    watching.start()
    # Another process pinging all along, so its GIL and this one's are not the same.
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(quiet_redis.port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert probe.stdout is not None and probe.stdout.readline().strip() == "ready"
        removed = cache.invalidate("product:*")
        out, err = probe.communicate("stop\n", timeout=60)
        assert probe.returncode == 0, err
        client.echo("invalidation-done")
        watching.join(timeout=60)
        assert not watching.is_alive()

        assert removed == 100_000
        assert count_keys(client, "inv:product:*") == 0
        assert client.mget([f"inv:order:{n}" for n in range(500)]) == [b"kept"] * 500
        assert client.mget([f"other:product:{n}" for n in range(500)]) == [b"kept"] * 500
        assert not any(command.startswith("KEYS ") for command in seen)  # never KEYS
        scans = [command.split() for command in seen if command.startswith("SCAN ")]
        unlinks = [i for i, command in enumerate(seen) if command.startswith("UNLINK ")]
        assert len(scans) >= 100 and all(scan[-2] == "COUNT" and int(scan[-1]) <= 1000 for scan in scans)
        assert len(unlinks) >= 100  # freed in batches ...
        assert max(len(seen[i].split()) - 1 for i in unlinks) <= 1000  # ... of at most 1,000 keys
        # Redis kept serving the other client between the batches, not only after them.
        assert "PING" in seen[unlinks[0]:unlinks[-1]]
        assert int(out) > 0
    finally:
        if probe.poll() is None:
            probe.kill()
        probe.communicate(timeout=30)
        monitor.__exit__()
        watcher.close()
        client.flushdb()
        client.close()


def test_invalidating_by_pattern_is_one_round_trip_per_scan_step(
    quiet_redis: PrivateRedis, make_cache: Callable[..., CacheManager], round_trips: RoundTrips
) -> None:
    """The keys a SCAN step finds are unlinked on the server, not sent here and back in an
    UNLINK of their own: clearing a million keys costs a thousand round trips, not two."""
    client = quiet_redis.client()
    cache = make_cache(quiet_redis.url, timeout=5.0, near=0, prefix="steps:")
    try:
        client.mset({f"steps:item:{n}": b"x" for n in range(10_000)})
        client.mset({f"steps:kept:{n}": b"kept" for n in range(100)})
        cache.invalidate("none:*")  # warm up: connect, and let redis-py load its script once
        before = quiet_redis.command_calls(client)
        removed, requests = round_trips(lambda: cache.invalidate("item:*"))
        after = quiet_redis.command_calls(client)
        scans = after["scan"] - before.get("scan", 0)
        unlinks = after["unlink"] - before.get("unlink", 0)

        assert removed == 10_000
        assert count_keys(client, "steps:item:*") == 0
        assert count_keys(client, "steps:kept:*") == 100
        assert scans >= 10 and unlinks >= 10  # still SCAN COUNT 1000 and UNLINK in batches ...
        assert requests == scans  # ... one request per SCAN step, the UNLINKs riding along
    finally:
        client.flushdb()
        client.close()


# -- round trips ------------------------------------------------------------------------------


class RoundTrips:
    """Counts requests sent to Redis (a pipeline or a script is one)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        before = self.count
        result = fn()
        return result, self.count - before


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    counter = RoundTrips()
    original = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> Any:
        counter.count += 1
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    return counter


def test_bulk_operations_are_one_round_trip_each(
    quiet_redis: PrivateRedis, make_cache: Callable[..., CacheManager], round_trips: RoundTrips
) -> None:
    # Round trips when the data is not held in this process (the near cache serves repeated
    # reads with none: tests/test_cache_near.py).
    cache = make_cache(quiet_redis.url, near=0)
    # Warm up: connect, and let redis-py load its Lua script (tag versions) once.
    cache.set("warm", 1, tags=["w"])
    cache.get("warm")
    cache.invalidate_tags(["w"])
    cache.delete_many(["warm"])

    keys = [f"k{n}" for n in range(20)]
    values = {key: {"n": n} for n, key in enumerate(keys)}
    assert round_trips(lambda: cache.set_many(values, ttl=60)) == (None, 1)
    assert round_trips(lambda: cache.get_many(keys)) == (values, 1)
    assert round_trips(lambda: cache.delete_many(keys)) == (20, 1)

    tags = ["product:1", "product:2", "shop:1"]
    assert round_trips(lambda: cache.set_many(values, ttl=60, tags=tags)) == (None, 2)  # versions + values
    # Naming the tags reads their versions in the same MGET as the values: one round trip.
    assert round_trips(lambda: cache.get_many(keys, tags=tags)) == (values, 1)
    assert round_trips(lambda: cache.get("k3", tags=tags)) == ({"n": 3}, 1)
    assert round_trips(lambda: cache.get_or_set("k3", lambda: "unused", tags=tags)) == ({"n": 3}, 1)
    # Without the names, the versions the entries record are read in a second one.
    assert round_trips(lambda: cache.get_many(keys)) == (values, 2)
    assert round_trips(lambda: cache.get("k3")) == ({"n": 3}, 2)
    five = ["product:1", "product:2", "product:3", "shop:1", "shop:2"]
    assert round_trips(lambda: cache.invalidate_tags(five)) == (None, 1)
    assert round_trips(lambda: cache.get("k3", tags=tags)) == (None, 1)
    assert round_trips(lambda: cache.get_many(keys, tags=tags)) == ({}, 1)
    assert round_trips(lambda: cache.get_many(keys)) == ({}, 2)

    # Batch cache-aside: one read, then one tag-version read and one pipelined write for the misses.
    cache.delete_many(keys)
    cache.set_many({key: values[key] for key in keys[:10]}, tags=["row"])
    wanted = {key: ["row"] for key in keys}
    compute = lambda missing: {key: values[key] for key in missing}  # noqa: E731
    assert round_trips(lambda: cache.get_or_set_many(wanted, compute)) == (values, 3)
    assert round_trips(lambda: cache.get_or_set_many(wanted, compute)) == (values, 1)


def test_invalidating_a_tag_is_one_unlink_however_many_keys_carry_it(
    quiet_redis: PrivateRedis, make_cache: Callable[..., CacheManager]
) -> None:
    client = quiet_redis.client()
    cache = make_cache(quiet_redis.url, timeout=5.0)
    try:
        cache.set("lonely", 1, tags=["few"])
        crowd = {f"k{n}": n for n in range(10_000)}
        cache.set_many(crowd, tags=["many"])
        assert len(cache.get_many(crowd)) == 10_000

        costs = []
        for tag in ("few", "many"):
            before = quiet_redis.command_calls(client)
            cache.invalidate_tags([tag])
            after = quiet_redis.command_calls(client)
            costs.append({name: after[name] - before.get(name, 0) for name in after if name != "info"})
        for cost in costs:
            # The version key goes; no entry is deleted, scanned or rewritten.
            assert {name: n for name, n in cost.items() if n} == {"unlink": 1}
        assert cache.get("lonely") is None
        assert cache.get_many(crowd) == {}
    finally:
        client.close()


# -- tag version keys expire -----------------------------------------------------------------


def test_version_keys_get_a_ttl_covering_the_entry_and_never_shortened(
    redis_url: str, make_cache: Callable[..., CacheManager]
) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = make_cache(redis_url, lock_timeout=2.0)
    key = cache._shared.tag_prefix + "product:1"
    try:
        # A key written before version keys expired has no TTL: the next write gives it one.
        client.set(key, b"12345")
        cache.set("p", 1, ttl=30, tags=["product:1"], stale_while_revalidate=10)
        assert cache.get("p") == 1  # the old version was kept, so are its entries
        lifetime = (30 + 10 + 2.0) * 1000  # the TTL, the stale window, the lock's lease
        assert lifetime - 1000 < client.pttl(key) <= 2 * lifetime
        cache.set("q", 2, ttl=1000, tags=["product:1"])
        assert client.pttl(key) > 1000_000
        cache.set("r", 3, ttl=1, tags=["product:1"])  # a shorter entry never shortens it
        assert client.pttl(key) > 1000_000
        cache.invalidate_tags(["product:1"])
        assert client.exists(key) == 0
        assert cache.get_many(["p", "q", "r"]) == {}
    finally:
        client.close()


def test_a_thousand_short_entries_with_their_own_tags_leave_no_key_behind(
    redis_url: str, make_cache: Callable[..., CacheManager]
) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = make_cache(redis_url, lock_timeout=0.05, near=0)
    prefix = cache._shared.prefix
    try:
        for n in range(1000):  # each tag version is kept about 2 s (twice the TTL and the lease)
            cache.set(f"order:{n}", n, ttl=0.95, tags=[f"order:{n}"])
        # However long the writes took (the first ones may be gone already on a busy machine),
        # the last ones are there, and no tag version key is kept without an expiry.
        tag_keys = list(client.scan_iter(prefix + "tag:*", count=1000))
        assert tag_keys, "no tag version key was written"
        assert -1 not in [client.pttl(key) for key in tag_keys], "a tag version key never expires"
        assert wait_until(lambda: count_keys(client, prefix + "*") == 0, timeout=15), (
            f"{count_keys(client, prefix + 'tag:*')} tag version keys outlived their entries"
        )
    finally:
        cache.clear()
        client.close()


def test_a_foreign_value_whose_header_is_not_utf8_is_a_miss(
    redis_url: str, make_cache: Callable[..., CacheManager]
) -> None:
    """A value under the prefix that looks like the kit's envelope but names a tag in bytes
    that are not UTF-8 (another program's, or a corrupted one) raised UnicodeDecodeError from
    every read of it, get_or_set included; like any envelope the kit cannot open, it is a miss."""
    cache = make_cache(redis_url)
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.set(cache.key("k"), b"CZ1|0|99999999999999|99999999999999|\xff=1\n\xa3abc")
        assert cache.get("k", "missing") == "missing"
        assert cache.get_many(["k"]) == {}
        assert cache.get_or_set("k", lambda: "computed") == "computed"
        assert cache.get("k") == "computed"
    finally:
        raw.delete(cache.key("k"))
        raw.close()
