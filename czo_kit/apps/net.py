"""Outbound HTTP for apps: URL checks, addresses pinned after validation, size and time limits.

Every outbound URL (manifest, token target, webhook target) must be ``http(s)`` with a host.
Its host is resolved once and every address it resolves to must be public, unless private
addresses are allowed (``CZO_APPS_ALLOW_PRIVATE_URLS``, for tests and the demo). The request
then connects to the address that was checked, so a DNS answer that changes between the check
and the connection (DNS rebinding) cannot reach an internal service.

A request's deadline holds for its whole exchange, headers included: a read timeout alone
bounds each receive, so a server trickling its status line and headers a byte at a time could
hold a worker thread for hours. One watchdog thread shuts down the socket of any request still
waiting at its deadline.
"""

from __future__ import annotations

import contextvars
import heapq
import importlib.metadata
import ipaddress
import itertools
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import urllib3
import urllib3.connection

from czo_kit.errors import UnsafeURLError

__all__ = ["HTTPResponse", "OutboundHTTP", "Target", "is_public_address", "parse_target", "shown_url"]



def _kit_version() -> str:
    try:
        return importlib.metadata.version("czo-kit")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


USER_AGENT = f"czo-kit/{_kit_version()} (+https://github.com/c-zo)"
"""What every request the kit sends to an app says it is: manifests, hand-offs, webhooks."""


@dataclass(frozen=True)
class Target:
    """A checked outbound URL: where to connect, and what to ask for."""

    url: str
    scheme: str
    host: str
    port: int
    path: str

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        port = "" if self.port == default else f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}{port}"


def shown_url(url: str) -> str:
    """``url`` as errors and logs may show it: its query string, where an app may carry a
    token, masked."""
    base, sep, _ = url.partition("?")
    return base + ("?***" if sep else "")


def parse_target(url: Any, *, what: str = "URL") -> Target:
    """Split and check the shape of an outbound URL (no network access)."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise UnsafeURLError(f"{what} must be a URL string of at most 2000 characters, got {str(url)[:80]!r}")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise UnsafeURLError(f"{what} {url[:80]!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"{what} {url[:80]!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURLError(f"{what} {url[:80]!r} must use http or https")
    if not parts.hostname:
        raise UnsafeURLError(f"{what} {url[:80]!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError(f"{what} must not carry credentials")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        url=url,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        path=path,
    )


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a globally routable unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address are as public as the address they carry.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


@dataclass
class HTTPResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool
    duration: float
    url: str


class _Watchdog:
    """Shuts down the sockets of requests still running at their deadline (one thread for all)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[Any]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, at: float) -> list[Any]:
        """Shut ``sock`` down at monotonic time ``at`` unless ``cancel`` comes first."""
        entry: list[Any] = [sock]
        with self._cond:
            heapq.heappush(self._heap, (at, next(self._seq), entry))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="czo-http-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is entry:
                # Sooner than what the thread sleeps until: wake it. Otherwise let it sleep: a
                # wake-up per request would cost every request a switch to that thread.
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        with self._cond:  # so that a socket handed back to its pool is never shut down
            entry[0] = None  # left in the heap; skipped when its time comes

    def _run(self) -> None:
        while True:
            with self._cond:
                # Requests that finished in time are dropped without waiting for their deadline.
                while self._heap and self._heap[0][2][0] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                at, _, entry = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                sock = entry[0]
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)  # the blocked receive returns at once
                    except OSError:
                        pass  # already closed


_watchdog = _Watchdog()
_deadline: contextvars.ContextVar[tuple[float, list[list[Any]]] | None] = contextvars.ContextVar(
    "czo_http_deadline", default=None
)


_reused: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("czo_http_reused", default=None)


class _DeadlineMixin:
    """Puts the socket under the current request's deadline before the response is awaited,
    and tells the request whether it went out on a kept-alive connection (``_reused``)."""

    sock: socket.socket | None
    _czo_fresh = False  # connected since the last response was awaited

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._czo_fresh = True

    def request(self, *args: Any, **kwargs: Any) -> None:
        sent = _reused.get()
        if sent is not None:
            sent.append(self.sock is not None and not self._czo_fresh)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self) -> Any:
        self._czo_fresh = False
        current = _deadline.get()
        if current is not None and self.sock is not None:
            at, entries = current
            entries.append(_watchdog.watch(self.sock, at))
        return super().getresponse()  # type: ignore[misc]


class _HTTPConnection(_DeadlineMixin, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineMixin, urllib3.connection.HTTPSConnection):
    pass


POOL_IDLE = 60.0
"""Seconds a target's pool may go unused before its kept-alive connections are closed and it
is dropped: a target's addresses change (DNS rotation) and apps come and go, and a pool kept
for ever holds its sockets for ever (open, or half-closed by the server)."""


@dataclass
class _Resolved:
    addresses: list[str]
    expires: float


@dataclass
class OutboundHTTP:
    """A small, careful HTTP client (urllib3 pools, one per checked address, kept alive)."""

    allow_private: bool = False
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    user_agent: str = USER_AGENT
    dns_ttl: float = 60.0
    _pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = field(default_factory=dict)
    _dns: dict[tuple[str, int], _Resolved] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_use: dict[tuple[str, str, int, str], tuple[int, float]] = field(default_factory=dict)
    """Per pool: requests running on it, and when the last one ended (monotonic)."""
    _checked_idle: float = 0.0

    def check(self, url: str, *, what: str = "URL") -> Target:
        """Parse ``url`` and check every address its host resolves to."""
        target = parse_target(url, what=what)
        self.resolve(target, what=what)
        return target

    def resolve(self, target: Target, *, what: str = "URL") -> list[str]:
        key = (target.host, target.port)
        now = time.monotonic()
        cached = self._dns.get(key)
        if cached is not None and cached.expires > now:
            return cached.addresses
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnsafeURLError(f"{what} host {target.host!r} does not resolve: {exc}") from None
        addresses = sorted({str(info[4][0]) for info in infos})
        if not addresses:
            raise UnsafeURLError(f"{what} host {target.host!r} has no address")
        if not self.allow_private:
            blocked = [a for a in addresses if not is_public_address(a)]
            if blocked:
                raise UnsafeURLError(
                    f"{what} {shown_url(target.url)[:80]!r} resolves to a loopback, private or link-local "
                    f"address ({', '.join(blocked)}); set CZO_APPS_ALLOW_PRIVATE_URLS=true only "
                    "for local development and tests"
                )
        self._dns[key] = _Resolved(addresses, now + self.dns_ttl)
        return addresses

    def _take(self, target: Target, address: str) -> tuple[tuple[str, str, int, str], urllib3.HTTPConnectionPool]:
        """The pool of ``target`` at ``address``, counted in use until ``_release``; pools no
        request used for ``POOL_IDLE`` seconds are closed on the way."""
        key = (target.scheme, target.host, target.port, address)
        now = time.monotonic()
        with self._lock:
            if now - self._checked_idle >= min(1.0, POOL_IDLE):
                self._checked_idle = now
                for idle in [k for k, (n, at) in self._in_use.items() if not n and now - at > POOL_IDLE and k != key]:
                    del self._in_use[idle]
                    old = self._pools.pop(idle, None)
                    if old is not None:
                        old.close()
            running, at = self._in_use.get(key, (0, now))
            self._in_use[key] = (running + 1, at)
        return key, self._pool(target, address)

    def _release(self, key: tuple[str, str, int, str]) -> None:
        with self._lock:
            running, _ = self._in_use.get(key, (1, 0.0))
            self._in_use[key] = (max(0, running - 1), time.monotonic())

    def _pool(self, target: Target, address: str) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, target.host, target.port, address)
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    if target.scheme == "https":
                        pool = urllib3.HTTPSConnectionPool(
                            address, target.port, maxsize=10, block=False,
                            server_hostname=target.host, assert_hostname=target.host,
                            cert_reqs="CERT_REQUIRED",
                        )
                        pool.ConnectionCls = _HTTPSConnection
                    else:
                        pool = urllib3.HTTPConnectionPool(address, target.port, maxsize=10, block=False)
                        pool.ConnectionCls = _HTTPConnection
                    self._pools[key] = pool
        return pool

    def request(
        self,
        method: str,
        url: str | Target,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        max_bytes: int = 1024 * 1024,
        deadline: float | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        what: str = "URL",
    ) -> HTTPResponse:
        """One request, no redirects followed. Reads at most ``max_bytes`` of the body and gives
        up after ``deadline`` seconds in total, however slowly the server answers
        (``TimeoutError``; by default the connect timeout plus twice the read timeout)."""
        target = url if isinstance(url, Target) else parse_target(url, what=what)
        address = self.resolve(target, what=what)[0]
        host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
        if ":" in target.host:
            host_header = f"[{target.host}]" + ("" if target.port in (80, 443) else f":{target.port}")
        sent = {"Host": host_header, "User-Agent": self.user_agent}
        sent.update(headers or {})
        started = time.monotonic()
        limit = started + (deadline if deadline is not None else (connect_timeout or self.connect_timeout) + 2 * (read_timeout or self.read_timeout))
        watched: list[list[Any]] = []
        token = _deadline.set((limit, watched))
        response = None
        chunks: list[bytes] = []
        size = 0
        truncated = False
        key, pool = self._take(target, address)
        reused: list[bool] = []
        reused_token = _reused.set(reused)
        try:
            def send() -> Any:
                return pool.urlopen(
                    method,
                    target.path,
                    body=body,
                    headers=sent,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    timeout=urllib3.Timeout(
                        connect=connect_timeout or self.connect_timeout, read=read_timeout or self.read_timeout
                    ),
                )

            try:
                response = send()
            except urllib3.exceptions.ProtocolError as exc:
                # A kept-alive connection the server closed (its idle timeout) as the request
                # went out on it: nothing was answered, and the server is not at fault. Sent
                # once more, on a new connection; any other failure stands.
                closed = any(isinstance(arg, ConnectionError) for arg in exc.args)
                if not (closed and reused and reused[-1]) or time.monotonic() >= limit:
                    raise
                response = send()
            while True:
                if time.monotonic() > limit:
                    raise TimeoutError(f"{what} {shown_url(target.url)[:80]!r} took longer than {limit - started:.1f}s")
                # read1 returns what one receive brought: read(n) would wait for n bytes, so a
                # server trickling its body could hold the request far past the deadline.
                chunk = response.read1(16384)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    truncated = True
                    break
        except Exception as exc:
            if isinstance(exc, TimeoutError) or time.monotonic() < limit:
                raise
            # The watchdog cut the socket: say so, not "connection closed".
            raise TimeoutError(f"{what} {shown_url(target.url)[:80]!r} took longer than {limit - started:.1f}s") from exc
        finally:
            _reused.reset(reused_token)
            _deadline.reset(token)
            for entry in watched:
                _watchdog.cancel(entry)
            if response is not None:
                if truncated or time.monotonic() > limit:
                    response.close()  # do not reuse a connection with unread data
                else:
                    response.release_conn()
            self._release(key)
        data = b"".join(chunks)
        return HTTPResponse(
            status=response.status,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=data[:max_bytes],
            truncated=truncated,
            duration=time.monotonic() - started,
            url=target.url,
        )

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()
            self._in_use.clear()
