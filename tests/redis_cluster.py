"""A local Redis Cluster for tests: three primaries (no replicas) on free ports in a temporary
directory, created with ``redis-cli --cluster create`` and ready once every node reports
``cluster_state:ok`` and the same slot map. A test may kill a node (``kill -9``) and start it
again on the same port with the same node file, so it rejoins as itself.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["LocalCluster", "cluster_binaries", "free_ports"]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports whose ``port + 10000`` (the cluster bus) is free too."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            held.append(sock)
            if port + 10000 > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def cluster_binaries() -> tuple[str, str] | None:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


class LocalCluster:
    """Three cluster-enabled ``redis-server`` processes joined into one cluster."""

    def __init__(self, server: str, cli: str, directory: Path, *, node_timeout_ms: int = 2000) -> None:
        self.server = server
        self.cli = cli
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.ports = free_ports(3)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The kit's URL for this cluster, naming every node (one would do)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        with open(node_dir / "redis.log", "ab") as log:  # the process keeps its own copy of the fd
            self.processes[port] = subprocess.Popen(
                [
                    self.server, "--port", str(port), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(node_dir),
                    "--loglevel", "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait(lambda: self._answers(port), f"redis-server on port {port} never answered")

    def start(self) -> None:
        try:
            for port in self.ports:
                self.start_node(port)
            created = subprocess.run(
                [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                timeout=60,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout!r} {created.stderr!r}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` and all agree on the slot map."""

        def ready() -> bool:
            maps = set()
            for port in self.processes:
                info = self.command(port, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
                maps.add(self.command(port, "CLUSTER", "SLOTS"))
            return len(maps) == 1

        self._wait(ready, f"cluster on ports {self.ports} never reached cluster_state:ok", timeout)

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)

    def command(self, port: int, *args: str) -> str:
        done = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, timeout=10
        )
        return done.stdout.decode(errors="replace")

    def primary_of(self, key: str) -> int:
        """The port of the primary that serves ``key``'s slot."""
        slot = int(self.command(self.ports[0], "CLUSTER", "KEYSLOT", key).strip())
        for port in self.ports:
            if port in self.processes and self.owns(port, slot):
                return port
        raise LookupError(f"no running primary serves slot {slot}")

    def owns(self, port: int, slot: int) -> bool:
        lines = self.command(port, "CLUSTER", "NODES").splitlines()
        for line in lines:
            fields = line.split()
            if "myself" not in fields[2]:
                continue
            for item in fields[8:]:
                low, _, high = item.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return True
        return False

    def keys_on(self, port: int, pattern: str) -> list[str]:
        return [line for line in self.command(port, "--scan", "--pattern", pattern).splitlines() if line]

    def _answers(self, port: int) -> bool:
        process = self.processes[port]
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {process.returncode}")
        return self.command(port, "PING").strip() == "PONG"

    @staticmethod
    def _wait(condition: Any, message: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.05)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
