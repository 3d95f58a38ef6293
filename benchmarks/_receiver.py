"""A webhook receiver for the benchmarks: a real HTTP/1.1 server on loopback, in a process of
its own, so that it never competes with the sender for the sender's GIL.

``http.server.ThreadingHTTPServer`` with keep-alive (``protocol_version = "HTTP/1.1"``) and
Nagle off (``disable_nagle_algorithm = True``): without the latter every kept-alive request
stalls ~40 ms on delayed ACKs (see BASELINES.md), and latency figures would be meaningless.

Every POST is answered ``200 {"ok":true}`` at once. When the JSON body's ``data`` has
``"notify": true``, the receiver writes ``<path> <data["seq"]> <arrival>`` as a line on its
stdout, ``arrival`` being ``time.monotonic_ns()`` taken as soon as the body has been read:
CLOCK_MONOTONIC is one clock for every process on the machine, so the parent can subtract
its own start time from it. ``GET /stats`` answers the POST counts per path as JSON;
``GET /duplicates`` the POSTs per path whose ``webhook-id`` header (the delivery's message id,
one per delivery) had already arrived on that path: a delivery POSTed more than once. The
child runs this file as a script (standard library only) and stops when its stdin closes.
"""

from __future__ import annotations

import http.server
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["ReceiverProcess"]

REPLY = b'{"ok":true}'


def serve() -> None:
    """The child process: serve until stdin reaches EOF (the parent closed it, or died)."""
    clock = time.monotonic_ns
    lock = threading.Lock()
    counts: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    duplicates: dict[str, int] = {}
    out = sys.stdout.buffer

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            at = clock()
            path = self.path
            line = b""
            try:
                data = json.loads(body).get("data") or {}
                if data.get("notify"):
                    line = f"{path} {int(data['seq'])} {at}\n".encode()
            except (ValueError, AttributeError, KeyError, TypeError):
                pass
            message_id = self.headers.get("webhook-id")
            with lock:
                counts[path] = counts.get(path, 0) + 1
                if message_id is not None:
                    ids = seen.setdefault(path, set())
                    if message_id in ids:
                        duplicates[path] = duplicates.get(path, 0) + 1
                    else:
                        ids.add(message_id)
                if line:
                    out.write(line)
                    out.flush()
            self._reply(200, REPLY)

        def do_GET(self) -> None:  # noqa: N802
            if self.path in ("/stats", "/duplicates"):
                with lock:
                    body = json.dumps(counts if self.path == "/stats" else duplicates).encode()
                self._reply(200, body)
            else:
                self._reply(404, b"{}")

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a sender closing its kept-alive connection is not an error here

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    with lock:
        out.write(f"ready {server.server_address[1]} 0\n".encode())
        out.flush()
    sys.stdin.buffer.read()  # until EOF
    server.shutdown()
    server.server_close()


class ReceiverProcess:
    """Runs this file as a child process; ``url``, ``wait(path, seq)``, ``stats()``,
    ``duplicates()``."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._buffer = b""
        self._early: dict[tuple[str, int], int] = {}

    def _line(self, timeout: float) -> tuple[str, int, int] | None:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the benchmark's receiver process exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        path, seq, at = line.decode().split()
        return path, int(seq), int(at)

    def start(self) -> ReceiverProcess:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        first = self._line(30)
        if first is None or first[0] != "ready":
            self.stop()
            raise RuntimeError(f"the benchmark's receiver process did not start ({first!r})")
        self.port = first[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, path: str, seq: int, *, timeout: float = 30.0) -> int:
        """The arrival time (``monotonic_ns``) of the notifying POST ``seq`` to ``path``."""
        key = (path, seq)
        if key in self._early:
            return self._early.pop(key)
        deadline = time.monotonic() + timeout
        while True:
            got = self._line(max(0.0, deadline - time.monotonic()))
            if got is None:
                raise RuntimeError(f"POST {seq} to {path} never reached the receiver within {timeout:.0f} s")
            if got[:2] == key:
                return got[2]
            self._early[got[:2]] = got[2]  # a duplicate or an earlier one: keep it

    def _get(self, path: str) -> dict[str, int]:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            counts: dict[str, int] = json.loads(response.read())
        return counts

    def stats(self) -> dict[str, int]:
        """POSTs received so far, per path."""
        return self._get("/stats")

    def duplicates(self) -> dict[str, int]:
        """POSTs so far, per path, repeating a ``webhook-id`` that path had already received."""
        return self._get("/duplicates")

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    serve()
