"""Prometheus metrics of a kit: what its cache, events, outbox and webhooks record, served at
``/metrics`` by ``czo-kit serve`` and by the worker (``--metrics-port``).

The hot paths (a memory cache ``get``, an ``emit``) cost a few microseconds, so they time only
one call in ``CZO_METRICS_SAMPLE`` (a countdown on the cache or emitter; an untimed call pays a
decrement and a comparison); slower operations (handlers, deliveries, the relay) are timed
every time. Numbers are kept in plain Python (``czo_kit._metrics_store``) and turned into
metric families when Prometheus scrapes. Gauges (outbox backlog, dead letters) are counted in
the database at scrape time, through indexes, never per event. docs/operations-metrics.md lists
every metric.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from time import perf_counter_ns as clock
from typing import TYPE_CHECKING, Any

from czo_kit._metrics_store import NEVER, Store, merge, read_snapshots

if TYPE_CHECKING:
    import datetime as dt

    from czo_kit.events.emitter import EventEmitter, Subscription
    from czo_kit.events.types import EventContext
    from czo_kit.http.server import BackgroundServer
    from czo_kit.kit import Kit

__all__ = [
    "METRICS",
    "NEVER",
    "KitCollector",
    "attach",
    "clock",
    "metrics_app",
    "prepare_worker",
    "serve_metrics",
    "with_metrics",
]

log = logging.getLogger("czo_kit.metrics")

# Bucket bounds, in seconds. Each of the PRD's budgets (cache read 50 ms, emit 10 ms, webhook
# dispatch 100 ms) is a bound, so "share of calls over budget" is exact, not interpolated.
FAST_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
SLOW_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 3600.0, 14400.0, 86400.0,
)

# Label values that come from code (event names, subscriber ids, app ids) are still capped per
# process: past the cap a new value is reported as "other", so a module that makes event
# names up at run time cannot grow the series without bound.
EVENT_LABELS = 200
SUBSCRIBER_LABELS = 500
APP_LABELS = 200
OTHER = "other"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "histogram" or "counter"
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("czo_cache_get_seconds", "histogram", ("driver", "op", "result"),
               "Cache reads (get, get_many, the read of get_or_set), sampled: one in CZO_METRICS_SAMPLE is timed; "
               "result is hit, miss, stale or error", FAST_BUCKETS),
        Metric("czo_cache_operations_total", "counter", ("driver", "operation"),
               "Cache operations by outcome, every call counted (the cache's stats())"),
        Metric("czo_event_emit_seconds", "histogram", ("event", "mode"),
               "emit (mode sync: every handler run) and emit_async (mode async: the outbox write), "
               "sampled: one in CZO_METRICS_SAMPLE is timed", FAST_BUCKETS),
        Metric("czo_event_handler_seconds", "histogram", ("event", "subscriber"),
               "Async handler runs in the worker, every one timed", FAST_BUCKETS),
        Metric("czo_event_handler_failures_total", "counter", ("event", "subscriber"),
               "Handler runs that raised: async attempts (each retry counts) and sync handlers of emit"),
        Metric("czo_outbox_lag_seconds", "histogram", (),
               "From the commit of an async event to its hand-off to the queue by the relay", SLOW_BUCKETS),
        Metric("czo_webhook_dispatch_seconds", "histogram", ("app",),
               "From a webhook delivery's record (written with the event, at its emit) to the 2xx answer, "
               "retries included", SLOW_BUCKETS),
        Metric("czo_webhook_deliveries_total", "counter", ("app", "result"),
               "Webhook delivery attempts by result: delivered, retry, dead, or paused (the target's circuit is open)"),
    )
}

STORE = Store(
    {
        "hits": "hit", "misses": "miss", "stale_served": "stale", "refreshes": "refresh",
        "refresh_errors": "refresh_error", "errors": "error", "sets": "set", "deletes": "delete",
        "invalidations": "invalidation", "lock_waits": "lock_wait", "decode_errors": "decode_error",
    }
)


# -- wiring ---------------------------------------------------------------------------------


class _Meter:
    """What an instrumented object needs: how often to time, and its fixed labels."""

    __slots__ = ("apps", "driver", "every")

    def __init__(self, every: int, driver: str = "") -> None:
        self.every = every
        self.driver = driver
        self.apps: dict[int, str] = {}


def attach(kit: Kit) -> None:
    """Instrument the kit's cache, emitter, outbox relay and webhook dispatcher, unless
    ``CZO_METRICS`` is false; join the multiprocess directory if one is set."""
    settings = kit.settings
    if not settings.metrics:
        return
    variable = "CZO_METRICS_DIR" if settings.metrics_dir else "PROMETHEUS_MULTIPROC_DIR"
    directory = settings.metrics_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory:
        if not os.path.isdir(directory):
            from czo_kit.errors import ConfigurationError

            raise ConfigurationError(
                f"invalid setting {variable}={directory!r}: the metrics directory does not exist; create "
                "it (one per service, shared by its processes, emptied when the service starts) or leave "
                f"{variable} empty",
                variable=variable,
            )
        STORE.use_directory(directory)
    every = settings.metrics_sample
    shared = kit.cache._shared
    driver = settings.cache_url.partition(":")[0].lower() or "unknown"
    shared.meter = _Meter(every, driver)
    shared.tick = every - 1
    STORE.add_cache(driver, shared.counts, shared.count_lock, shared)
    kit.events.meter = _Meter(every)
    kit.events.tick = every - 1
    kit.outbox._relayer.meter = _Meter(every)
    kit.webhooks.meter = _Meter(every)


# -- recording (called from the instrumented code) ------------------------------------------


def cache_read(shared: Any, started: int, op: str, result: str) -> None:
    """A timed cache read ended with ``result``; the next one is timed ``every`` calls on."""
    elapsed = (clock() - started) / 1e9
    meter: _Meter | None = shared.meter
    if meter is None:
        shared.tick = NEVER
        return
    shared.tick = meter.every - 1  # untimed calls before the next timed one
    if result == "miss" and shared.outage:
        result = "error"  # the backend is down: the read degraded to a miss
    STORE.observe(("czo_cache_get_seconds", (meter.driver, op, result)), FAST_BUCKETS, elapsed)


_ABSENT: Any = object()


def timed_get(cache: Any, key: str, default: Any, kind: Any, tags: Any) -> Any:
    """A ``CacheManager.get`` that its countdown picked: the same call, timed. (The untimed
    path of ``get`` then pays only the countdown: timing it inline cost more.)"""
    shared = cache._shared
    meter: _Meter | None = shared.meter
    shared.tick = meter.every - 1 if meter is not None else NEVER  # untimed calls before the next timed one
    started = clock()
    value, result = cache._get(key, _ABSENT, kind, tags)
    elapsed = (clock() - started) / 1e9
    if meter is not None:
        if result == "miss" and shared.outage:
            result = "error"  # the backend is down: the read degraded to a miss
        STORE.observe(("czo_cache_get_seconds", (meter.driver, "get", result)), FAST_BUCKETS, elapsed)
    return default if value is _ABSENT else value


def timed_emit(emitter: EventEmitter, event: Any, payload: Any, actor: str | None) -> EventContext:
    """An ``EventEmitter.emit`` that its countdown picked: the same call, timed."""
    meter: _Meter | None = emitter.meter
    emitter.tick = meter.every if meter is not None else NEVER  # the call below counts one down
    started = clock()
    ctx = emitter.emit(event, payload, actor=actor)
    if meter is not None:
        emitted(emitter, ctx.name, started, "sync")
    return ctx


def emitted(emitter: EventEmitter, name: str, started: int, mode: str) -> None:
    """A timed ``emit`` (``mode="sync"``) or ``emit_async`` (``"async"``) of ``name`` returned."""
    elapsed = (clock() - started) / 1e9
    meter: _Meter | None = emitter.meter
    if meter is None:
        emitter.tick = NEVER
        return
    emitter.tick = meter.every - 1
    event = STORE.label("event", name, EVENT_LABELS)
    STORE.observe(("czo_event_emit_seconds", (event, mode)), FAST_BUCKETS, elapsed)


def _handler_labels(sub: Subscription) -> tuple[str, str]:
    return (
        STORE.label("event", sub.name, EVENT_LABELS),
        STORE.label("subscriber", sub.id.partition("|")[2] or sub.id, SUBSCRIBER_LABELS),
    )


def handler_ran(emitter: EventEmitter, sub: Subscription, started: int, failed: bool) -> None:
    """An async delivery ran ``sub``'s handler (it raised if ``failed``)."""
    if emitter.meter is None:
        return
    labels = _handler_labels(sub)
    STORE.observe(("czo_event_handler_seconds", labels), FAST_BUCKETS, (clock() - started) / 1e9)
    if failed:
        STORE.inc(("czo_event_handler_failures_total", labels))


def handler_failed(emitter: EventEmitter, sub: Subscription) -> None:
    """A sync handler of ``emit`` raised."""
    if emitter.meter is not None:
        STORE.inc(("czo_event_handler_failures_total", _handler_labels(sub)))


def outbox_relayed(relay: Any, committed: float) -> None:
    """The relay handed to the queue an event committed at ``committed`` (monotonic)."""
    if relay.meter is not None:
        STORE.observe(("czo_outbox_lag_seconds", ()), SLOW_BUCKETS, time.monotonic() - committed)


def webhook_result(dispatcher: Any, delivery: Any, result: str, now: dt.datetime) -> None:
    """A delivery attempt of ``delivery`` ended in ``result`` at ``now``."""
    meter: _Meter | None = dispatcher.meter
    if meter is None:
        return
    app = _app_of(meter, dispatcher.db, int(delivery.__data__["installation"]))
    STORE.inc(("czo_webhook_deliveries_total", (app, result)))
    if result == "delivered":
        waited = (now - delivery.created_at).total_seconds()
        STORE.observe(("czo_webhook_dispatch_seconds", (app,)), SLOW_BUCKETS, max(0.0, waited))


def _app_of(meter: _Meter, db: Any, installation_id: int) -> str:
    """The app id of an installation: read once per installation (ids never change hands)."""
    app = meter.apps.get(installation_id)
    if app is None:
        from czo_kit.apps.registry import AppInstallation

        found = AppInstallation.select(AppInstallation.app_id).where(AppInstallation.id == installation_id).scalar(db)
        app = STORE.label("app", str(found) if found else "unknown", APP_LABELS)
        if len(meter.apps) >= 10_000:
            meter.apps.clear()
        meter.apps[installation_id] = app
    return app


# -- exposition -----------------------------------------------------------------------------


class KitCollector:
    """A ``prometheus_client`` collector: this process's numbers, those the other processes
    of the service published (multiprocess mode), and the gauges read from the database."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration; collect() says everything at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        snapshots = [STORE.snapshot(), *read_snapshots(STORE.directory, skip_pid=os.getpid())]
        histograms, counters = merge(snapshots)
        families: dict[str, Any] = {}
        for metric in METRICS.values():
            if metric.kind == "histogram":
                families[metric.name] = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
            else:
                families[metric.name] = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
        for (name, labels), (counts, total) in sorted(histograms.items()):
            spec = METRICS.get(name)
            if spec is None or len(labels) != len(spec.labels) or len(counts) != len(spec.buckets) + 1:
                continue  # written by another version of the kit
            running, buckets = 0, []
            for bound, count in zip(spec.buckets, counts):
                running += count
                buckets.append((repr(bound), running))
            buckets.append(("+Inf", running + counts[-1]))
            families[name].add_metric(list(labels), buckets, total)
        for (name, labels), value in sorted(counters.items()):
            spec = METRICS.get(name)
            if spec is not None and len(labels) == len(spec.labels):
                families[name].add_metric(list(labels), value)
        yield from families.values()
        yield from database_gauges(self.kit)


def database_gauges(kit: Kit) -> Iterator[Any]:
    """Backlog and dead letters, counted now through the ``(state, updated_at)`` indexes."""
    from prometheus_client.core import GaugeMetricFamily

    db = kit.db
    up = GaugeMetricFamily("czo_metrics_database_up", "Whether this scrape could read the gauges below from the database")
    pending = GaugeMetricFamily(
        "czo_outbox_pending", "Async events committed and not yet dispatched: pending (not handed to the "
        "queue yet) and queued (waiting for a worker)", labels=["state"])
    oldest = GaugeMetricFamily("czo_outbox_oldest_pending_seconds", "Age of the oldest event not yet handed to the queue")
    dead = GaugeMetricFamily("czo_dead_letters", "Deliveries that exhausted their retries, not replayed or "
                             "discarded, by kind: event (async handlers) or webhook", labels=["kind"])
    try:
        # The numbers `czo-kit status` shows, read the same way (live rows, partial indexes).
        status = kit.outbox.status()
        for state in ("pending", "queued"):
            pending.add_metric([state], status.outbox[state].count)
        oldest.add_metric([], status.outbox["pending"].oldest_age or 0.0)
        dead.add_metric(["event"], status.dead_letters)
        dead.add_metric(["webhook"], kit.webhooks.stats().get("dead", 0))
    except Exception as exc:
        log.warning("metrics: could not read the outbox and dead-letter gauges: %s", exc)
        up.add_metric([], 0)
        yield up
        return
    finally:
        if not db.is_closed() and not db.in_transaction():
            db.close()  # the scrape thread keeps no pooled connection between scrapes
    up.add_metric([], 1)
    yield from (up, pending, oldest, dead)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def metrics_app(kit: Kit) -> WSGIApp:
    """A WSGI application answering ``GET /metrics`` in the Prometheus text format (or
    OpenMetrics, when the scraper asks for it)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(KitCollector(kit))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        body = encoder(registry)
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


def with_metrics(app: WSGIApp, kit: Kit) -> WSGIApp:
    """``app`` with ``/metrics`` in front of it (unchanged where ``CZO_METRICS`` is false).
    The endpoint asks for no token, as Prometheus expects: expose it to the scraper only."""
    if not kit.settings.metrics:
        return app
    metrics = metrics_app(kit)

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            return metrics(environ, start_response)
        return app(environ, start_response)

    return dispatch


def serve_metrics(kit: Kit, *, host: str, port: int) -> BackgroundServer:
    """``/metrics`` on its own small server thread (the worker's endpoint); ``port=0`` picks one."""
    from czo_kit.http.server import BackgroundServer

    def not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = b"only /metrics is served here\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return BackgroundServer(with_metrics(not_found, kit), host=host, port=port, threads=2).start()


def prepare_worker(
    kit: Kit,
    consumer: Any,
    *,
    process_workers: bool,
    host: str,
    port: int | None,
    announce: Callable[[str], None],
) -> Callable[[], None]:
    """Get a Huey consumer's metrics served: with forked workers, a private multiprocess
    directory unless one is set (their numbers are summed on this process's endpoint); the
    endpoint starts once the consumer has forked its workers, so none inherits its socket.
    Returns the clean-up to run when the consumer has stopped."""
    if not kit.settings.metrics or port is None:
        return lambda: None
    private: str | None = None
    if process_workers and STORE.directory is None:
        private = tempfile.mkdtemp(prefix="czo-metrics-")
        STORE.use_directory(private)
    server: list[BackgroundServer] = []
    start = consumer.start

    def start_then_serve() -> None:
        start()
        server.append(serve_metrics(kit, host=host, port=port))
        announce(f"czo-kit worker: metrics on http://{host}:{server[0].port}/metrics")

    consumer.start = start_then_serve

    def clean_up() -> None:
        for running in server:
            running.stop()
        if private is not None:
            STORE.stop_publishing()
            shutil.rmtree(private, ignore_errors=True)

    return clean_up


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
