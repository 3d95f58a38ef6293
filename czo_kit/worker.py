"""The kit's Huey instance for ``huey_consumer czo_kit.worker.huey``.

Importing this module builds a kit from the environment (``CZO_*``), with every plugin's
event subscriptions, so the consumer can deliver async events. ``czo-kit worker`` is the same
consumer plus the sweep; under ``huey_consumer`` the sweep starts with the first worker.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from huey import Huey

from czo_kit._parent import tie_forked_workers
from czo_kit.events.queue import Sweeper
from czo_kit.kit import Kit
from czo_kit.metrics import prepare_worker, print_to_stderr

__all__ = ["huey", "kit"]

kit = Kit.from_env()
if kit.queue is None:
    raise RuntimeError("CZO_QUEUE_URL is empty: there is no queue for a consumer to run")

huey: Huey = kit.queue
_sweeper = Sweeper(
    kit.outbox, kit.settings.events_sweep_interval, kit.webhooks, heartbeat=kit.outbox.heartbeat("huey_consumer")
)
_started = threading.Lock()


def _start_sweeper() -> None:
    # Every worker runs start-up hooks; only the first starts the sweeper of this process.
    if _started.acquire(blocking=False):
        _sweeper.start()


def _stop_sweeper() -> None:
    # The first worker to stop stops it (removing this worker's heartbeat); stop is idempotent.
    _sweeper.stop()


huey.on_startup()(_start_sweeper)
huey.on_shutdown()(_stop_sweeper)


_create_consumer = huey.create_consumer


def _create_tied_consumer(**options: Any) -> Any:
    # huey_consumer builds the consumer itself: with -k process, its children (workers and
    # scheduler) must still go when it goes.
    consumer = _create_consumer(**options)
    tie_forked_workers(consumer)
    # CZO_METRICS_PORT serves /metrics, as `czo-kit worker --metrics-port` does.
    atexit.register(prepare_worker(
        kit, consumer, process_workers=options.get("worker_type") == "process", host=kit.settings.metrics_host,
        port=kit.settings.metrics_port, announce=print_to_stderr,
    ))
    return consumer


setattr(huey, "create_consumer", _create_tied_consumer)
