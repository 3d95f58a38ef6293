"""Serving the API with waitress (a production WSGI server written in Python)."""

from __future__ import annotations

import threading
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """A waitress server on a thread of this process (tests, the demo, an app in-process).

    ``port=0`` picks a free port; ``url`` says which.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, threads: int = 8) -> None:
        self._server = create_server(
            app, host=host, port=port, threads=threads, ident="czo-kit", clear_untrusted_proxy_headers=True
        )
        self.host = host
        # One listening socket here (a single host), whose bound port answers port=0.
        self.port = int(getattr(self._server, "effective_port"))
        self._thread = threading.Thread(target=self._server.run, name=f"czo-http-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close every open connection (kept-alive ones too), wait for the loop."""
        server: Any = self._server
        server.task_dispatcher.shutdown(timeout=5)
        # close() alone leaves kept-alive client connections in the socket map, and the
        # server loop runs until that map is empty. The sockets are closed by the loop's own
        # thread (through its trigger): closed from here, the loop could still be polling
        # them and fail with EBADF.
        if self._thread.is_alive():
            try:
                server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
            except OSError:
                pass  # the trigger is closed already: the loop closed its map and is ending
            self._thread.join(timeout=10)
        if server._map:
            wasyncore.close_all(server._map)  # never started, or a loop that did not stop

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
