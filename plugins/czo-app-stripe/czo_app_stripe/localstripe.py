"""localstripe (a stateful Stripe emulator) run as a child process, for tests and the demo:
nothing leaves the machine, and stripe-python talks to it as to Stripe (``STRIPE_API_BASE``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import Any

import urllib3

__all__ = ["LocalStripe"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalStripe:
    """``with LocalStripe() as server: server.url``: localstripe on a free port, from scratch."""

    api_key = "sk_test_czo_localstripe"

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log: Any = None
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=10), retries=False)

    def start(self) -> LocalStripe:
        # Its log goes to a file, not a pipe: a pipe nobody reads would fill and stall it.
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localstripe", "--port", str(self.port), "--from-scratch"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                self.log.seek(0)
                error = self.log.read().decode(errors="replace")
                raise RuntimeError(f"localstripe exited with {self.process.returncode}: {error[-2000:]}")
            try:
                if self.get("/v1/balance").status == 200:
                    return self
            except urllib3.exceptions.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"localstripe did not answer on port {self.port} within {self.startup_timeout}s")
            time.sleep(0.1)

    def get(self, path: str) -> urllib3.BaseHTTPResponse:
        return self.http.request("GET", self.url + path, headers=urllib3.make_headers(basic_auth=f"{self.api_key}:"))

    def add_webhook(self, name: str, url: str, secret: str, events: list[str] | None = None) -> None:
        """Have localstripe post its events to ``url``, signed with ``secret`` as Stripe does."""
        fields: list[tuple[str, str]] = [("url", url), ("secret", secret)]
        fields += [("events[]", event) for event in events or []]
        response = self.http.request(
            "POST", f"{self.url}/_config/webhooks/{name}", fields=fields, encode_multipart=False,
        )
        if response.status != 200:
            raise RuntimeError(f"localstripe refused the webhook {name!r}: HTTP {response.status} {response.data[:200]!r}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            self.log = None
        self.http.clear()

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
