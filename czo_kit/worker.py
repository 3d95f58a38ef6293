"""The kit's Huey instance for ``huey_consumer czo_kit.worker.huey``.

Importing this module builds a kit from the environment (``CZO_*``), with every plugin's
event subscriptions, so the consumer can deliver async events. ``czo-kit worker`` is the same
consumer plus the sweep; under ``huey_consumer`` the sweep starts with the first worker.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from typing import Any

from huey import Huey

from czo_kit._cli_errors import NoRandomKeyWarning
from czo_kit._parent import tie_forked_workers
from czo_kit.errors import ConfigurationError
from czo_kit.events.queue import Sweeper
from czo_kit.kit import Kit
from czo_kit.metrics import prepare_worker, print_to_stderr

__all__ = ["huey", "kit"]

_quiet = NoRandomKeyWarning()  # said below where it applies; a refusal is the one line
logging.getLogger("czo_kit.kit").addFilter(_quiet)
try:
    kit = Kit.from_env()
finally:
    logging.getLogger("czo_kit.kit").removeFilter(_quiet)
try:
    kit.require_shared_secret_key("`huey_consumer czo_kit.worker.huey`")
except ConfigurationError as exc:
    kit.close()
    # One line and exit status 1, as the czo-kit commands report it: huey_consumer would
    # otherwise print a traceback of this import.
    sys.exit(f"Error: {exc}")
if kit.settings.secret_key is None:  # embedded SQLite: allowed, but nothing it signs lasts
    logging.getLogger("czo_kit.worker").warning(
        "CZO_SECRET_KEY is not set: this consumer signs with a random key of its own, which no "
        "other process accepts and a restart forgets"
    )
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
