"""Prometheus metrics, scraped over HTTP from real processes: ``czo-kit serve``, ``czo-kit
worker --metrics-port`` (threads, and ``-k process`` whose forked workers' numbers are summed),
and ``huey_consumer czo_kit.worker.huey`` with ``CZO_METRICS_PORT``. Each test does a known
amount of work and checks the counts it reads against it.

The processes load ``czo_metrics_probe``, a plugin written to ``tmp_path`` as an installed
distribution: routes that read the cache and emit events inside ``serve``, and subscribers
(one failing on purpose) inside the workers.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from apps_support import OWNER, Receiver, manifest
from czo_kit.kit import Kit
from czo_kit.settings import Settings
from test_cli_failures import free_port
from test_worker import (
    SECRET,
    Proc,
    child_env,
    czo_kit_command,
    private_pg,  # noqa: F401
    queue_name,  # noqa: F401
    wait_for,
)

pytestmark = [pytest.mark.slow]

PROBE_SOURCE = '''\
"""Routes and subscribers for the metrics tests."""

import os
import pathlib
import time

from czo_kit.hookspecs import hookimpl


def ok(payload, ctx):
    pass


def boom(payload, ctx):
    if payload["n"] == 0:
        raise RuntimeError("probe failure, on purpose")


def pair(payload, ctx):
    # Hold this worker until another process has run this handler too, so that two forked
    # workers each run some deliveries whatever order the queue hands them out in.
    meeting = pathlib.Path(os.environ["MP_MEETING"])
    (meeting / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(meeting.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)


@hookimpl
def czo_register_events(events, kit):
    for name in ("probe.sync", "probe.async"):
        events.on(name, ok, id="ok")
        events.on(name, boom, id="boom")
    events.on("probe.pair", pair, id="pair")


@hookimpl
def czo_register_http_routes(api, kit):
    class Cache:
        def on_get(self, req, resp, key):
            resp.media = {"hit": kit.cache.get(key) is not None}

        def on_put(self, req, resp, key):
            kit.cache.set(key, 1)
            resp.media = {}

    class Emit:
        def on_post(self, req, resp, name):
            count = int(req.get_param("count"))
            emit = kit.events.emit_async if name == "probe.async" else kit.events.emit
            for n in range(count):
                emit(name, {"n": n})
            resp.media = {}

    api.add_route("/api/probe/cache/{key}", Cache())
    api.add_route("/api/probe/emit/{name}", Emit())
'''

PROBE = "czo-metrics-probe"


def install_probe(site: Path) -> None:
    """``czo_metrics_probe`` as an installed plugin for processes with ``site`` on PYTHONPATH."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "czo_metrics_probe.py").write_text(PROBE_SOURCE)
    info = site / "czo_metrics_probe-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: czo-metrics-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[czo_kit]\n{PROBE} = czo_metrics_probe\n")


METRIC_NAMES = (
    "czo_cache_get_seconds", "czo_cache_operations", "czo_event_emit_seconds", "czo_event_handler_seconds",
    "czo_event_handler_failures", "czo_outbox_lag_seconds", "czo_webhook_dispatch_seconds",
    "czo_webhook_deliveries", "czo_outbox_pending", "czo_outbox_oldest_pending_seconds", "czo_dead_letters",
    "czo_metrics_database_up",
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of a ``/metrics`` page, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def czo_samples(url: str) -> str:
    """The non-zero czo_* samples other than buckets, for a failure's message."""
    return ", ".join(
        f"{name}{dict(labels)}={v:g}" for (name, labels), v in sorted(scrape(url).items())
        if v and not name.endswith("_bucket")
    )


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def request(method: str, url: str) -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method in ("POST", "PUT") else None)
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read() or b"null")


def banner_url(proc: Proc) -> str | None:
    found = re.search(r"metrics on (http://\S+/metrics)", proc.err_path.read_text())
    return found.group(1) if found else None


# -- backends ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.redis])])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The settings of the processes: SQLite files and the memory cache, or a private
    PostgreSQL schema with the queue and the cache on Redis."""
    site = tmp_path / "site"
    install_probe(site)
    common = {
        "CZO_SECRET_KEY": SECRET,
        "CZO_PLUGINS": PROBE,
        "CZO_METRICS_SAMPLE": "1",  # every call timed: histogram counts are exact
        "CZO_EVENTS_RETRIES": "0",  # a failing delivery is dead at once
        "CZO_EVENTS_SWEEP_INTERVAL": "1",
        "CZO_APPS_ALLOW_PRIVATE_URLS": "true",
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
    }
    if request.param == "sqlite":
        yield {
            **common,
            "CZO_DATABASE_URL": f"sqlite:///{tmp_path / 'data.sqlite3'}",
            "CZO_QUEUE_URL": f"sqlite:///{tmp_path / 'queue.sqlite3'}",
            "CZO_QUEUE_NAME": "czo_metrics_test",
            "CZO_CACHE_URL": "memory://",
        }
        return
    db_url, _ = request.getfixturevalue("private_pg")
    redis_url = request.getfixturevalue("redis_url")
    name = request.getfixturevalue("queue_name")
    yield {
        **common,
        "CZO_DATABASE_URL": db_url,
        "CZO_QUEUE_URL": redis_url,
        "CZO_QUEUE_NAME": name,
        "CZO_CACHE_URL": redis_url,
        "CZO_CACHE_PREFIX": f"{name}:",
    }


def cache_driver(env: dict[str, str]) -> str:
    return env["CZO_CACHE_URL"].partition(":")[0]


def producer_kit(env: dict[str, str]) -> Kit:
    """A kit in this process on the processes' database and queue, without their plugin."""
    return Kit(Settings(
        database_url=env["CZO_DATABASE_URL"], queue_url=env["CZO_QUEUE_URL"], queue_name=env["CZO_QUEUE_NAME"],
        secret_key=SECRET, plugins=(), apps_allow_private_urls=True,
        events_retries=int(env.get("CZO_EVENTS_RETRIES", "5")),  # the producer sets an event's retries
    ))


def start_serve(env: dict[str, str], cwd: Path, stack: ExitStack) -> str:
    port = free_port()
    proc = Proc([*czo_kit_command(), "serve", "--port", str(port), "--threads", "2"], env=child_env(**env),
                cwd=cwd, label="serve")
    stack.callback(proc.kill)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not proc.alive():
            return True
        try:
            with urllib.request.urlopen(base + "/api/health", timeout=2):
                return True
        except OSError:
            return False

    wait_for(up, timeout=60, what="czo-kit serve to answer", diag=proc.tail)
    assert proc.alive(), proc.tail()
    return base


def start_worker(args: list[str], env: dict[str, str], cwd: Path, stack: ExitStack, label: str) -> tuple[Proc, str]:
    proc = Proc(args, env=child_env(**env), cwd=cwd, label=label)
    stack.callback(proc.kill)
    url = wait_for(lambda: banner_url(proc) or (not proc.alive() and "dead"), timeout=60,
                   what=f"{label} to announce its metrics endpoint", diag=proc.tail)
    assert proc.alive() and url != "dead", proc.tail()
    return proc, str(url)


# -- czo-kit serve ----------------------------------------------------------------------


def test_serve_exports_what_its_requests_did(backend: dict[str, str], tmp_path: Path) -> None:
    driver = cache_driver(backend)
    with ExitStack() as stack:
        base = start_serve(backend, tmp_path, stack)
        # Every metric is listed from the start, with or without samples.
        assert set(METRIC_NAMES) <= scrape_families(base)

        request("PUT", base + "/api/probe/cache/present")
        hits = [request("GET", base + "/api/probe/cache/present")["hit"] for _ in range(3)]
        misses = [request("GET", base + "/api/probe/cache/absent")["hit"] for _ in range(2)]
        assert hits == [True] * 3 and misses == [False] * 2
        request("POST", base + "/api/probe/emit/probe.sync?count=4")
        request("POST", base + "/api/probe/emit/probe.async?count=3")

        def settled() -> Samples:
            samples = scrape(base + "/metrics")
            # The relay hands the async events to the queue on its own thread, then marks them.
            done = value(samples, "czo_outbox_lag_seconds_count") == 3 and value(
                samples, "czo_outbox_pending", state="queued") == 3
            return samples if done else {}

        samples = wait_for(settled, timeout=30, what="the 3 async events to be queued", diag=lambda: "")

    cache = {"driver": driver, "op": "get"}
    assert value(samples, "czo_cache_operations_total", driver=driver, operation="hit") == 3
    assert value(samples, "czo_cache_operations_total", driver=driver, operation="miss") == 2
    assert value(samples, "czo_cache_get_seconds_count", **cache, result="hit") == 3
    assert value(samples, "czo_cache_get_seconds_count", **cache, result="miss") == 2
    assert value(samples, "czo_cache_get_seconds_bucket", **cache, result="hit", le="+Inf") == 3
    assert value(samples, "czo_event_emit_seconds_count", event="probe.sync", mode="sync") == 4
    assert value(samples, "czo_event_emit_seconds_count", event="probe.async", mode="async") == 3
    # emit runs the sync handlers in the request: "boom" fails once, on n == 0.
    assert value(samples, "czo_event_handler_failures_total", event="probe.sync", subscriber="boom") == 1
    assert value(samples, "czo_event_handler_failures_total", event="probe.sync", subscriber="ok") == 0
    assert value(samples, "czo_outbox_pending", state="pending") == 0
    assert value(samples, "czo_dead_letters", kind="event") == 0
    assert value(samples, "czo_dead_letters", kind="webhook") == 0


def scrape_families(base: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        return {family.name for family in text_string_to_metric_families(response.read().decode())}


def test_serve_without_metrics_has_no_metrics_endpoint(tmp_path: Path) -> None:
    env = {"CZO_DATABASE_URL": f"sqlite:///{tmp_path / 'data.sqlite3'}", "CZO_SECRET_KEY": SECRET,
           "CZO_PLUGINS": "", "CZO_METRICS": "false"}
    with ExitStack() as stack:
        base = start_serve(env, tmp_path, stack)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/metrics", timeout=10)
        refused.value.close()
        assert refused.value.code == 404


# -- workers ----------------------------------------------------------------------------


def huey_consumer_command() -> list[str]:
    script = Path(sys.executable).with_name("huey_consumer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "huey.bin.huey_consumer"]


@pytest.mark.parametrize("runner", ["czo-kit worker", "huey_consumer"])
def test_worker_exports_handlers_dead_letters_and_webhooks(
    backend: dict[str, str], runner: str, tmp_path: Path
) -> None:
    events = 5
    with ExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        kit = stack.enter_context(producer_kit(backend))
        kit.create_kit_tables()
        kit.permissions.resource("order", ["read", "write"])
        kit.permission_service.grant(OWNER, 1, "owner")
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url, app_id="acme"))

        if runner == "huey_consumer":
            args = [*huey_consumer_command(), "czo_kit.worker.huey", "-w", "2", "-d", "0.2"]
            env = {**backend, "CZO_METRICS_PORT": "0"}
        else:
            args = [*czo_kit_command(), "worker", "-w", "2", "--max-delay", "0.2", "--metrics-port", "0"]
            env = backend
        _, url = start_worker(args, env, tmp_path, stack, runner.replace(" ", "-"))

        for n in range(events):
            kit.events.emit_async("probe.async", {"n": n})
        kit.events.emit_async("order.created", {"shop_id": 1, "id": 7, "total": 1999})

        def settled() -> Samples:
            samples = scrape(url)
            done = (
                value(samples, "czo_event_handler_seconds_count", event="probe.async", subscriber="ok") == events
                and value(samples, "czo_event_handler_seconds_count", event="probe.async", subscriber="boom") == events
                and value(samples, "czo_webhook_dispatch_seconds_count", app="acme") == 1
                and value(samples, "czo_dead_letters", kind="event") == 1
            )
            return samples if done else {}

        samples = wait_for(settled, timeout=60, what="every delivery to be recorded",
                           diag=lambda: f"{len(receiver.posts())} webhook(s) received; {czo_samples(url)}")

    assert len(receiver.posts("/hook")) == 1
    assert value(samples, "czo_event_handler_failures_total", event="probe.async", subscriber="boom") == 1
    assert value(samples, "czo_event_handler_failures_total", event="probe.async", subscriber="ok") == 0
    assert value(samples, "czo_webhook_deliveries_total", app="acme", result="delivered") == 1
    assert value(samples, "czo_webhook_deliveries_total", app="acme", result="retry") == 0
    assert value(samples, "czo_webhook_dispatch_seconds_bucket", app="acme", le="+Inf") == 1
    assert value(samples, "czo_dead_letters", kind="webhook") == 0
    assert value(samples, "czo_metrics_database_up") == 1


def test_a_process_workers_children_are_summed_on_its_endpoint(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_probe(site)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    env = {
        "CZO_DATABASE_URL": f"sqlite:///{tmp_path / 'data.sqlite3'}",
        "CZO_QUEUE_URL": f"sqlite:///{tmp_path / 'queue.sqlite3'}",
        "CZO_SECRET_KEY": SECRET,
        "CZO_PLUGINS": PROBE,
        "CZO_QUEUE_NAME": "czo_metrics_mp",
        "MP_MEETING": str(meeting),
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
    }
    events = 6
    with ExitStack() as stack:
        kit = stack.enter_context(producer_kit(env))
        worker, url = start_worker(
            [*czo_kit_command(), "worker", "-w", "2", "-k", "process", "--max-delay", "0.2", "--metrics-port", "0"],
            env, tmp_path, stack, "process-worker",
        )
        for n in range(events):
            kit.events.emit_async("probe.pair", {"n": n})

        def counted() -> float:
            return value(scrape(url), "czo_event_handler_seconds_count", event="probe.pair", subscriber="pair")

        wait_for(lambda: counted() == events, timeout=60, what=f"{events} handler runs on the endpoint",
                 diag=lambda: f"counted {counted()}\n{worker.tail()}")
        assert counted() == events
    runners = {int(p.name) for p in meeting.iterdir()}
    # The handlers ran in two forked children, neither of them the process serving /metrics.
    assert len(runners) == 2 and worker.pid not in runners, runners


# -- in this process --------------------------------------------------------------------


Scraper = Callable[[], Samples]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[Kit, Scraper]]:
    """A kit in this process and a scrape of its collector (no HTTP), for what needs none."""
    from czo_kit.metrics import metrics_app

    kit = Kit(Settings(database_url=f"sqlite:///{tmp_path / 'local.sqlite3'}", queue_url="", secret_key=SECRET,
                       plugins=(), metrics_sample=4))
    app = metrics_app(kit)

    def scrape_local() -> Samples:
        from prometheus_client.parser import text_string_to_metric_families

        body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda status, headers: None))
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    try:
        yield kit, scrape_local
    finally:
        kit.close()


def test_fast_paths_time_one_call_in_metrics_sample(local: tuple[Kit, Scraper]) -> None:
    kit, scrape_local = local
    key = {"driver": "memory", "op": "get", "result": "hit"}
    before = scrape_local()
    kit.cache.set("k", 1)
    for _ in range(8):
        kit.cache.get("k")
    after = scrape_local()
    hits = ("czo_cache_operations_total", {"driver": "memory", "operation": "hit"})
    assert value(after, hits[0], **hits[1]) - value(before, hits[0], **hits[1]) == 8  # every call counted
    assert value(after, "czo_cache_get_seconds_count", **key) - value(before, "czo_cache_get_seconds_count", **key) == 2


def test_a_stale_cache_read_is_reported_as_stale(local: tuple[Kit, Scraper]) -> None:
    from czo_kit.testing.cache import wait_until

    kit, scrape_local = local
    kit.cache.set("old", 1, ttl=0.1, stale_while_revalidate=60)
    assert wait_until(lambda: not kit.cache.has("old"))  # has() is not a timed read
    before = scrape_local()
    for _ in range(8):
        assert kit.cache.get("old") == 1  # get() returns a value in its stale window
    after = scrape_local()
    stale = {"driver": "memory", "op": "get", "result": "stale"}
    hit = {"driver": "memory", "op": "get", "result": "hit"}
    assert value(after, "czo_cache_get_seconds_count", **stale) - value(before, "czo_cache_get_seconds_count", **stale) == 2
    assert value(after, "czo_cache_get_seconds_count", **hit) == value(before, "czo_cache_get_seconds_count", **hit)
    served = ("czo_cache_operations_total", {"driver": "memory", "operation": "stale"})
    assert value(after, served[0], **served[1]) - value(before, served[0], **served[1]) == 8


def test_a_cache_read_during_an_outage_is_an_error(local: tuple[Kit, Scraper]) -> None:
    from czo_kit.cache.driver import CacheUnavailable

    kit, scrape_local = local

    class Down:
        def get_many(self, keys: Any) -> Any:
            raise CacheUnavailable("down for the test")

    shared = kit.cache._shared
    real, shared.driver = shared.driver, Down()
    key = {"driver": "memory", "op": "get", "result": "error"}
    before = value(scrape_local(), "czo_cache_get_seconds_count", **key)
    try:
        for _ in range(4):
            assert kit.cache.get("k") is None
    finally:
        shared.driver = real
    assert value(scrape_local(), "czo_cache_get_seconds_count", **key) - before == 1


def test_metrics_off_records_nothing_and_serves_nothing(tmp_path: Path) -> None:
    from czo_kit.metrics import STORE, with_metrics

    with Kit(Settings(database_url=f"sqlite:///{tmp_path / 'off.sqlite3'}", queue_url="", secret_key=SECRET,
                      plugins=(), metrics=False, metrics_sample=1)) as kit:
        kit.cache.set("k", 1)
        before = STORE.snapshot()
        kit.cache.get("k")
        kit.events.on("off.event", lambda payload, ctx: None)
        kit.events.emit("off.event", {})
        assert STORE.snapshot().histograms == before.histograms

        def api(environ: Any, start_response: Any) -> list[bytes]:
            return [b"api"]

        assert with_metrics(api, kit) is api


def test_label_values_past_the_cap_are_other() -> None:
    from czo_kit._metrics_store import Store

    store = Store({})
    assert [store.label("event", f"e{n}", 3) for n in range(5)] == ["e0", "e1", "e2", "other", "other"]
    assert store.label("event", "e1", 3) == "e1"  # admitted values stay themselves


def test_a_missing_metrics_directory_names_its_setting(tmp_path: Path) -> None:
    from czo_kit.errors import ConfigurationError

    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigurationError, match="CZO_METRICS_DIR") as raised:
        Kit(Settings(database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}", queue_url="", secret_key=SECRET, plugins=(),
                     metrics_dir=str(missing)))
    assert raised.value.variable == "CZO_METRICS_DIR"
    assert str(missing) in str(raised.value)


def test_a_closed_and_collected_kits_cache_counts_are_kept(local: tuple[Kit, Scraper], tmp_path: Path) -> None:
    import gc

    _, scrape_local = local
    hits = {"driver": "memory", "operation": "hit"}
    before = value(scrape_local(), "czo_cache_operations_total", **hits)
    other = Kit(Settings(database_url=f"sqlite:///{tmp_path / 'gone.sqlite3'}", queue_url="", secret_key=SECRET,
                         plugins=()))
    other.cache.set("k", 1)
    for _ in range(3):
        other.cache.get("k")
    other.close()
    del other
    gc.collect()
    # Counters never go back: what a cache counted outlives it.
    assert value(scrape_local(), "czo_cache_operations_total", **hits) - before == 3


def test_every_metric_is_in_the_operators_list() -> None:
    from czo_kit.metrics import METRICS

    text = (Path(__file__).resolve().parent.parent / "docs" / "operations-metrics.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(czo_[a-z_]+)` \| (\w+) \|", text, re.M))
    exported = {name: metric.kind for name, metric in METRICS.items()}
    exported.update(dict.fromkeys(
        ("czo_outbox_pending", "czo_outbox_oldest_pending_seconds", "czo_dead_letters", "czo_metrics_database_up"),
        "gauge",
    ))
    assert rows == exported
    assert set(METRIC_NAMES) == {name.removesuffix("_total") for name in exported}


def test_a_metrics_directory_adds_the_other_processes_once(local: tuple[Kit, Scraper], tmp_path: Path) -> None:
    import msgspec

    from czo_kit._metrics_store import FILE_PREFIX, FILE_SUFFIX, Snapshot
    from czo_kit.metrics import FAST_BUCKETS, STORE

    _, scrape_local = local
    hits = {"driver": "memory", "operation": "hit"}
    timed = {"driver": "memory", "op": "get", "result": "hit"}
    before = scrape_local()
    counts = [0] * (len(FAST_BUCKETS) + 1)
    counts[3] = 2  # another process: two reads of 25-50 µs (the bucket up to FAST_BUCKETS[3])
    other = Snapshot(pid=2**22 + 1, histograms=[("czo_cache_get_seconds", ("memory", "get", "hit"), counts, 0.00004)],
                     counters=[("czo_cache_operations_total", ("memory", "hit"), 5)])
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / f"{FILE_PREFIX}{other.pid}{FILE_SUFFIX}").write_bytes(msgspec.msgpack.encode(other))
    (directory / f"{FILE_PREFIX}{2**22 + 2}{FILE_SUFFIX}").write_bytes(b"not a snapshot")  # skipped, logged
    STORE.use_directory(directory)
    try:
        STORE.publish()  # this process's own file: read live, never twice
        assert (directory / f"{FILE_PREFIX}{os.getpid()}{FILE_SUFFIX}").exists()
        after = scrape_local()
    finally:
        STORE.stop_publishing()
    assert value(after, "czo_cache_operations_total", **hits) - value(before, "czo_cache_operations_total", **hits) == 5
    assert value(after, "czo_cache_get_seconds_count", **timed) - value(before, "czo_cache_get_seconds_count", **timed) == 2
    for bound, more in (("2.5e-05", 0), ("5e-05", 2), ("+Inf", 2)):  # cumulative buckets
        le = {**timed, "le": bound}
        assert value(after, "czo_cache_get_seconds_bucket", **le) - value(before, "czo_cache_get_seconds_bucket", **le) == more
