"""A near cache for the Redis driver: process-local copies of keys, dropped when Redis says so.

Redis's server-assisted client-side caching does the bookkeeping: one connection per process,
speaking RESP3, runs ``CLIENT TRACKING ON BCAST PREFIX <cache prefix>``, and from then on
Redis pushes to it the name of every key under the prefix that is written, deleted, expired or
evicted, by any client. A read served from here first drains those pushes (a non-blocking poll
of that connection), so a value changed before the read started is never returned: a write
another process made has had its invalidation written to our socket by the time that process
got its reply.

Reads that miss race with writes; a placeholder closes the gap. Before a key is fetched from
Redis it gets a placeholder here; an invalidation that arrives while the fetch is on the wire
removes it, and the fetched value is kept only where its placeholder survived. The tracking
connection failing (Redis restarted, network gone) empties the near cache at once, and it
stays off, reads going to Redis, until tracking is re-established. A connection that goes
silent without failing (a cut network) is caught by a PING every ``drain_interval``: no answer
within ``ping_timeout`` counts as lost.

Only keys under the prefix are kept: what Redis does not report on is never cached here. It
needs Redis 6 or later (RESP3); a server that refuses HELLO 3 or CLIENT TRACKING turns the
near cache off for good (logged once), while one that cannot be reached is retried every
``retry_after`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from czo_kit._fork import reset_in_children

__all__ = ["NearCache"]

log = logging.getLogger("czo_kit.cache")

_ABSENT: Any = object()


class _Fetch:
    """A placeholder: a fetch of the key is on the wire; an invalidation meanwhile removes it."""

    __slots__ = ()


class NearCache:
    """Process-local copies of Redis values under ``prefix``, kept exact by key tracking.

    ``connect`` returns a new, unconnected ``redis.Connection`` speaking RESP3 (``protocol=3``)
    to the same server; it is used for the tracking connection only.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        prefix: str,
        *,
        max_entries: int = 10_000,
        retry_after: float = 1.0,
        drain_interval: float = 0.5,
        ping_timeout: float = 0.25,
    ) -> None:
        if not prefix:
            raise ValueError("a near cache needs a key prefix to track")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.prefix = prefix
        self.max_entries = max_entries
        self.retry_after = retry_after
        self.drain_interval = drain_interval
        self.ping_timeout = ping_timeout
        self.refused: str | None = None  # why the server refused tracking, if it did
        self._failing = False  # the last attempt to turn tracking on failed (logged already)
        self._connect = connect
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._conn: Any = None
        self._down_until = 0.0
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"hits": 0, "misses": 0, "invalidations": 0, "resets": 0}
        reset_in_children(self)

    # -- tracking connection ------------------------------------------------------------

    def _ensure(self) -> bool:
        """Whether tracking is on (called with the lock held); tries to turn it on if off."""
        if self._conn is not None:
            return True
        if self._closed or self.refused is not None or time.monotonic() < self._down_until:
            return False
        conn = None
        try:
            conn = self._connect()
            conn.connect()
            # redis-py's own client-side cache sets its handler the same way.
            conn._parser.set_invalidation_push_handler(self._on_invalidate)
            conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self.prefix)
            reply = conn.read_response()
            if reply not in (b"OK", "OK"):
                raise RuntimeError(f"CLIENT TRACKING answered {reply!r}")
        except Exception as exc:
            self._down_until = time.monotonic() + self.retry_after
            if conn is not None:
                _disconnect(conn)
            if _is_refusal(exc):
                self.refused = str(exc)
                log.warning("near cache off: the server refuses key tracking (%s); it needs Redis 6 or later", exc)
            elif not self._failing:
                self._failing = True
                log.info("near cache off: key tracking unavailable (%s); retrying every %.1f s", exc, self.retry_after)
            return False
        self._failing = False
        self._conn = conn
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._drain_forever, name="czo-near-cache", daemon=True)
            self._thread.start()
        return True

    def _on_invalidate(self, message: list[Any]) -> None:
        # Runs inside read_response, so with the lock held. redis-py logs and swallows what
        # this raises, so nothing may: a failure part-way through a push would leave the
        # keys after it held. A key that is not UTF-8 (another program's) is never held here;
        # anything else unexpected empties the near cache.
        self.counts["invalidations"] += 1
        try:
            keys = message[1] if len(message) > 1 else None
            if keys is None:  # FLUSHDB / FLUSHALL
                self._entries.clear()
                return
            for key in keys:
                self._entries.pop(key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key, None)
        except Exception:
            self._entries.clear()
            raise

    def _drain(self) -> bool:
        """Apply every invalidation waiting on the socket (lock held); False if tracking broke."""
        conn = self._conn
        try:
            while conn.can_read(timeout=0):
                # Something has arrived; the rest of its frame may still be on the way.
                conn.read_response(push_request=True, timeout=self.ping_timeout)
        except Exception as exc:
            self._reset(f"tracking connection lost ({exc})")
            return False
        return True

    def _reset(self, why: str) -> None:
        """Forget every copy and turn tracking off until the retry delay passes (lock held)."""
        self._entries.clear()
        self.counts["resets"] += 1
        if self._conn is not None:
            _disconnect(self._conn)
            self._conn = None
            log.warning("near cache emptied: %s; reads go to Redis until tracking is back", why)
        self._down_until = time.monotonic() + self.retry_after

    def _drain_forever(self) -> None:
        # Keeps an idle process from letting invalidations pile up in Redis's output buffer,
        # and checks that the connection still answers: a silent one hears no invalidation.
        while not self._stop.wait(self.drain_interval):
            with self._lock:
                conn = self._conn
                if conn is None or not self._drain():
                    # Tracking is off; the read that turns it back on starts a new thread
                    # (it sees None, under the same lock).
                    self._thread = None
                    return
                try:
                    conn.send_command("PING")
                    # Pushes that come first are applied on the way (the handler).
                    conn.read_response(timeout=self.ping_timeout)
                except Exception as exc:
                    self._reset(f"tracking connection did not answer PING ({exc!r})")
                    self._thread = None
                    return

    # -- reads and writes ---------------------------------------------------------------

    def lookup(self, keys: Sequence[str]) -> tuple[list[bytes | None] | None, _Fetch | None]:
        """``(values, None)`` if every key is held here; else ``(None, token)``, having left
        placeholders (the token) for the keys to fetch: pass the fetched values and the token
        to ``store``. ``(None, None)`` when tracking is off."""
        entries = self._entries
        with self._lock:
            if not self._ensure() or not self._drain():
                return None, None
            found: list[bytes | None] = []
            token: _Fetch | None = None
            for key in keys:
                value = entries.get(key, _ABSENT)
                if value is _ABSENT or type(value) is _Fetch:
                    # Absent, or another fetch's placeholder: this read fetches it too, and the
                    # newer placeholder wins (it was set after every invalidation seen so far).
                    if token is None:
                        token = _Fetch()
                    if key.startswith(self.prefix):
                        entries[key] = token
                        entries.move_to_end(key)
                    continue
                entries.move_to_end(key)
                found.append(value)
            if token is None:
                self.counts["hits"] += 1
                return found, None
            self.counts["misses"] += 1
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
            return None, token

    def store(self, keys: Sequence[str], values: Sequence[bytes | None], token: _Fetch) -> None:
        """Keep what a fetch returned, for each key still holding this fetch's placeholder.

        An invalidation not yet drained is harmless here: the next lookup drains it first.
        """
        entries = self._entries
        with self._lock:
            if self._conn is None:
                return
            for key, value in zip(keys, values):
                if entries.get(key) is token:
                    entries[key] = value

    def forget(self, keys: Sequence[str]) -> None:
        """Drop ``keys`` now (this process wrote them; Redis's push will follow)."""
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def forget_unless_held(self, keys: Sequence[str], values: Sequence[bytes | None]) -> None:
        """Drop each key whose copy here is not ``value`` (what this process just read or wrote
        there): a copy that already matches stays, and a later change comes with its push."""
        with self._lock:
            entries = self._entries
            for key, value in zip(keys, values):
                held = entries.get(key, _ABSENT)
                if held is not _ABSENT and (type(held) is _Fetch or held != value):
                    del entries[key]

    def forget_all(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for value in self._entries.values() if type(value) is not _Fetch)

    @property
    def tracking(self) -> bool:
        """Whether key tracking is on (a near cache without it serves nothing)."""
        return self._conn is not None

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        with self._lock:
            self._entries.clear()
            if self._conn is not None:
                _disconnect(self._conn)
                self._conn = None
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _after_fork(self) -> None:
        # The tracking socket belongs to the parent: the child opens its own on first read.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._entries = OrderedDict()
        self._conn, self._thread, self._down_until = None, None, 0.0


def _is_refusal(exc: BaseException) -> bool:
    """The server answered, and said no (an unknown command, say), as opposed to not answering."""
    try:
        from redis.exceptions import ResponseError
    except ImportError:  # pragma: no cover - the near cache is only built with redis-py
        return False
    return isinstance(exc, ResponseError)


def _disconnect(conn: Any) -> None:
    try:
        conn.disconnect()
    except Exception:  # pragma: no cover - closing a broken socket
        pass

