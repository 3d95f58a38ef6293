"""Background refreshes beyond the driver contract: refresh-ahead once across two real
processes on Redis, the refresh pool stopped by ``close()``, and stale reads in the metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from czo_kit.cache import CacheManager, create_cache
from czo_kit.default_plugins.memory_cache import MemoryDriver
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until

READER = textwrap.dedent(
    """
    import json, sys, time
    import redis
    from czo_kit.cache import create_cache
    from czo_kit.settings import Settings

    url, prefix = sys.argv[1], sys.argv[2]
    client = redis.Redis.from_url(url)
    cache = create_cache(url, settings=Settings(cache_url=url), prefix=prefix)

    def factory():
        client.incr(prefix + "factory-calls")
        return "v2"

    seen = []
    try:
        client.incr(prefix + "ready")
        deadline = time.monotonic() + 60
        while not client.exists(prefix + "go"):
            if time.monotonic() > deadline:
                sys.exit("gave up waiting for go")
            time.sleep(0.002)
        # Read the hot key until this process has seen the refreshed value and has no refresh
        # of its own left running.
        while time.monotonic() < deadline:
            value = cache.get_or_set("hot", factory, ttl=60, stale_while_revalidate=30, refresh_ahead=0.3)
            if not seen or seen[-1] != value:
                seen.append(value)
            if value == "v2" and not cache._shared.refreshing:
                break
            time.sleep(0.003)
        print(json.dumps({"seen": seen, "stats": cache.stats()}))
    finally:
        cache.close()
        client.close()
    """
)


@pytest.mark.redis
def test_two_processes_reading_a_hot_key_refresh_it_once(redis_url: str, scratch_prefix: str, tmp_path: Path) -> None:
    import redis

    script = tmp_path / "reader.py"
    script.write_text(READER)
    client = redis.Redis.from_url(redis_url)
    cache = create_cache(redis_url, settings=Settings(cache_url=redis_url), prefix=scratch_prefix)
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), redis_url, scratch_prefix],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    try:
        assert wait_until(lambda: int(client.get(scratch_prefix + "ready") or 0) == 2, timeout=60)
        # Both start reading a value whose refresh-ahead point (30% of 2 s) comes while they do.
        cache.set("hot", "v1", ttl=2, stale_while_revalidate=30)
        client.set(scratch_prefix + "go", 1)
        outputs = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            outputs.append(json.loads(out))
        calls = int(client.get(scratch_prefix + "factory-calls") or 0)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
        cache.close()
        client.close()
    assert calls == 1
    for output in outputs:
        assert output["seen"] == ["v1", "v2"]  # the current value, then the new one: no wait, no miss
        assert output["stats"]["misses"] == 0
    assert sum(output["stats"]["refreshes"] for output in outputs) == 1


def test_close_stops_the_refresh_threads_and_schedules_no_more() -> None:
    cache = CacheManager(MemoryDriver(), prefix="rc:")
    cache.set("k", "v1", ttl=0.1, stale_while_revalidate=60)
    assert wait_until(lambda: not cache.has("k"))
    assert cache.get_or_set("k", lambda: "v2", ttl=60) == "v1"
    assert wait_until(lambda: cache.get("k") == "v2")
    executor = cache._shared.executor
    assert executor is not None
    threads = list(executor._threads)
    assert threads and all(t.name.startswith("czo-cache-refresh") for t in threads)
    cache.close()
    assert not any(t.is_alive() for t in threads)
    # A stale read after close still answers, and starts nothing.
    cache._shared.driver = MemoryDriver()
    cache.set("late", "old", ttl=0.1, stale_while_revalidate=60)
    assert wait_until(lambda: not cache.has("late"))
    started = threading.active_count()
    assert cache.get_or_set("late", lambda: "new", ttl=60) == "old"
    assert threading.active_count() == started and not cache._shared.refreshing


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_runs_refreshes_on_threads_of_its_own(tmp_path: Path) -> None:
    cache = CacheManager(MemoryDriver(), prefix="rf:")
    try:
        # The parent has a refresh pool with live threads when it forks.
        cache.set("k", "v1", ttl=0.1, stale_while_revalidate=60)
        assert wait_until(lambda: not cache.has("k"))
        assert cache.get_or_set("k", lambda: "v2", ttl=60) == "v1"
        assert wait_until(lambda: cache.get("k") == "v2")
        result = tmp_path / "child"
        pid = os.fork()
        if pid == 0:  # the child: a stale read must still get refreshed
            code = 1
            try:
                cache.set("c", "c1", ttl=0.1, stale_while_revalidate=60)
                if wait_until(lambda: not cache.has("c")) and cache.get_or_set("c", lambda: "c2", ttl=60) == "c1":
                    if wait_until(lambda: cache.get("c") == "c2"):
                        result.write_text("refreshed")
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and result.read_text() == "refreshed"
    finally:
        cache.close()
