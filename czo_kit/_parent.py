"""Forked queue workers that end with the process that forked them.

A ``-k process`` consumer forks its workers (and its scheduler); if the parent is killed
outright, nothing tells them, and they would go on taking tasks, with the code of before a
deploy. ``tie_forked_workers(consumer)`` has each child killed when its parent dies: on Linux
by the kernel (``prctl(PR_SET_PDEATHSIG)``), elsewhere by a thread that watches the parent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["exit_with_parent", "tie_forked_workers"]

log = logging.getLogger("czo_kit.worker")

_PR_SET_PDEATHSIG = 1
WATCH_INTERVAL = 1.0
"""Seconds between two looks at the parent, where the kernel cannot be asked."""


def tie_forked_workers(consumer: Any) -> None:
    """Make every process ``consumer`` (a Huey consumer) forks exit when this process dies."""
    environment = consumer.environment
    if not getattr(environment, "forks", False):
        return  # threads and greenlets die with the process anyway
    parent = os.getpid()
    init_child = environment.init_child

    def init_child_tied(process: Any) -> None:
        init_child(process)
        exit_with_parent(parent)

    environment.init_child = init_child_tied


def exit_with_parent(parent: int, *, kernel: bool = True) -> None:
    """Have this (forked) process killed once ``parent`` is no longer its parent.

    SIGKILL, as the parent got: a delivery a child had running is run again once its lease
    runs out, as after any crash. ``kernel=False`` skips ``prctl`` (to test the fallback).
    """
    if not (kernel and _pdeathsig(signal.SIGKILL)):
        thread = threading.Thread(target=_watch, args=(parent,), name="czo-parent-watch", daemon=True)
        thread.start()
    # The parent may have died before the kernel was told: then nobody will signal us.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _pdeathsig(signum: int) -> bool:
    """Ask Linux to send ``signum`` when our parent dies; whether it agreed.

    The kernel ties this to the parent *thread* that forked us: Huey forks from the thread
    that starts the consumer, which lives as long as the consumer does.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    stop = threading.Event()
    while not stop.wait(WATCH_INTERVAL):
        if os.getppid() != parent:  # re-parented: the parent is gone
            log.warning("worker %d: its parent %d is gone; exiting", os.getpid(), parent)
            os.kill(os.getpid(), signal.SIGKILL)
