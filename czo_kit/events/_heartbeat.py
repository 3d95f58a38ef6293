"""Worker heartbeats: each worker process (``czo-kit worker``, ``huey_consumer
czo_kit.worker.huey``, an in-process consumer or deliverer) keeps a row saying who it is and
when it was last seen, every few seconds, and removes it when it stops cleanly; so ``czo-kit
status`` can say which workers are alive and with which plugins. A worker that died keeps
its row, ever older, until the retention prunes it."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Sequence

import msgspec
import peewee

from czo_kit.db.model import KitTable, UTCDateTimeField, utcnow

__all__ = ["HEARTBEAT_INTERVAL", "Heartbeat", "WorkerHeartbeat", "WorkerInfo", "workers"]

log = logging.getLogger("czo_kit.events")

HEARTBEAT_INTERVAL = 5.0
"""Seconds between two heartbeats of a worker."""


class WorkerHeartbeat(KitTable):
    """One running worker process."""

    id = peewee.CharField(max_length=32, primary_key=True)
    host = peewee.CharField(max_length=255)
    pid = peewee.IntegerField()
    kind = peewee.CharField(max_length=100)
    """What runs: ``czo-kit worker (4 thread)``, ``huey_consumer``, ``in-process deliverer``..."""
    queue = peewee.CharField(max_length=100)
    """The queue's name (``CZO_QUEUE_NAME``), empty without a queue."""
    plugins = peewee.TextField()
    """The plugins the worker loaded, a JSON list."""
    version = peewee.CharField(max_length=40, null=True)
    started_at = UTCDateTimeField()
    last_seen = UTCDateTimeField()

    class Meta:
        table_name = "czo_worker"


class WorkerInfo(msgspec.Struct, frozen=True):
    """A worker seen recently (``kit.outbox.workers()``)."""

    host: str
    pid: int
    kind: str
    queue: str
    plugins: list[str]
    version: str | None
    started_at: dt.datetime
    last_seen: dt.datetime
    seen_ago: float
    """Seconds since its last heartbeat."""


class Heartbeat:
    """The heartbeat of this process as one worker; ``beat()`` from its sweeper's thread."""

    def __init__(
        self, db: peewee.Database, *, kind: str, queue: str, plugins: Sequence[str],
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        from czo_kit import __version__

        self.db = db
        self.kind = kind
        self.queue = queue
        self.plugins = msgspec.json.encode(sorted(plugins)).decode()
        self.version = __version__
        self.interval = interval
        self.id = uuid.uuid4().hex
        self._started_at = utcnow()
        self._written = False

    def beat(self) -> None:
        now = utcnow()
        if self._written:
            updated = WorkerHeartbeat.update(last_seen=now).where(WorkerHeartbeat.id == self.id).execute(self.db)
            if updated:
                return
            # Pruned (a clock jump, a long pause) or removed by hand: write it again.
        WorkerHeartbeat.insert(
            id=self.id, host=socket.gethostname()[:255], pid=os.getpid(), kind=self.kind[:100],
            queue=self.queue[:100], plugins=self.plugins, version=self.version, started_at=self._started_at,
            last_seen=now,
        ).on_conflict(conflict_target=[WorkerHeartbeat.id], update={WorkerHeartbeat.last_seen: now}).execute(self.db)
        self._written = True

    def stop(self) -> None:
        """Remove this worker's row (a clean shutdown); never raises."""
        if not self._written:
            return
        try:
            WorkerHeartbeat.delete_rows().where(WorkerHeartbeat.id == self.id).execute(self.db)
            self._written = False
        except Exception as exc:  # the database went away first: the row ages out instead
            log.warning("could not remove this worker's heartbeat (%r); it ages out", exc)


def workers(db: peewee.Database, *, seen_within: float) -> list[WorkerInfo]:
    """Workers whose last heartbeat is at most ``seen_within`` seconds old, by host and pid."""
    now = utcnow()
    rows = (
        WorkerHeartbeat.select()
        .where(WorkerHeartbeat.last_seen >= now - dt.timedelta(seconds=seen_within))
        .order_by(WorkerHeartbeat.host, WorkerHeartbeat.pid)
        .execute(db)
    )
    return [
        WorkerInfo(
            host=row.host, pid=int(row.pid), kind=row.kind, queue=row.queue,
            plugins=msgspec.json.decode(row.plugins, type=list[str]), version=row.version,
            started_at=row.started_at, last_seen=row.last_seen,
            seen_ago=round(max(0.0, (now - row.last_seen).total_seconds()), 3),
        )
        for row in rows
    ]
