"""Workers around a deploy, with real processes: a worker without a subscriber's plugin leaves
that subscriber's deliveries to a worker that has it (nothing lost, nothing dead), an old and a
new worker side by side deliver everything, and the forked children of a ``-k process`` worker
killed outright do not live on with the old code.

Servers, the probe plugin and the process helpers are those of ``tests/test_worker.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from test_worker import (
    PRODUCER_SOURCE,
    Pg,
    Proc,
    Runs,
    czo_kit_command,
    diagnose,
    expected_pairs,
    install_probe_plugin,
    private_pg,  # noqa: F401
    queue_name,  # noqa: F401
    server_env,
    sqlite_env,
    start_consumer,
    wait_for,
    write_scripts,
)

pytestmark = [pytest.mark.slow]
SERVERS = [pytest.mark.redis, pytest.mark.postgres]

PROBE = "czo-worker-probe"  # the entry-point name of the probe plugin
SUBSCRIBERS = ("worker.probe|probe-0", "worker.probe|probe-1")


def with_probe(env: dict[str, str], site: Path, plugins: str) -> dict[str, str]:
    """``env`` where the probe is an installed plugin, and ``CZO_PLUGINS`` is ``plugins``."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "CZO_PLUGINS": plugins}


def cli_worker(env: dict[str, str], cwd: Path, label: str) -> Proc:
    """``czo-kit worker`` (2 threads), once it has said it runs."""
    proc = Proc([*czo_kit_command(), "worker", "-w", "2", "--max-delay", "0.2"], env=env, cwd=cwd, label=label)
    wait_for(lambda: "czo-kit worker:" in proc.err_path.read_text() or not proc.alive(), timeout=60,
             what=f"{label} to start", diag=proc.tail)
    assert proc.alive(), proc.tail()
    return proc


def produce(env: dict[str, str], cwd: Path, count: int) -> list[str]:
    """Emit ``count`` events from a producer process built from ``env``; their ids."""
    script = cwd / "wt_producer.py"
    script.write_text(PRODUCER_SOURCE)
    producer = Proc([sys.executable, str(script)], env={**env, "WT_COUNT": str(count)}, cwd=cwd, label="producer")
    try:
        assert producer.wait(timeout=60) == 0, producer.tail()
    finally:
        producer.kill()
    ids = producer.stdout().split()[:count]
    assert len(ids) == count, producer.stdout()
    return ids


@SERVERS[0]
@SERVERS[1]
def test_a_worker_without_the_subscribers_plugin_leaves_their_deliveries_to_one_that_has_it(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path  # noqa: F811
) -> None:
    db_url, pg = private_pg
    runs = Runs(pg)
    site = tmp_path / "site"
    install_probe_plugin(site)
    base = server_env(db_url, redis_url, queue_name)
    bare_env = with_probe(base, site, "")  # CZO_PLUGINS= : no installed plugin, no subscriber
    full_env = with_probe(base, site, PROBE)

    with ExitStack() as stack:
        bare = cli_worker(bare_env, tmp_path, "bare-worker")
        stack.callback(bare.kill)
        ids = produce(full_env, tmp_path, 20)  # the application has the module: it records both
        wanted = expected_pairs(ids)

        # The bare worker takes every event: a delivery per subscriber, none run, none dead.
        wait_for(lambda: runs.outbox_states() == {"dispatched": 20} or not bare.alive(), timeout=60,
                 what="the bare worker to dispatch the 20 events", diag=diagnose(runs, bare))
        wait_for(lambda: runs.delivery_states() == {"waiting": 40} or not bare.alive(), timeout=60,
                 what="40 deliveries waiting for a worker with their subscriber", diag=diagnose(runs, bare))
        bare.popen.send_signal(signal.SIGINT)  # graceful: what it holds goes back to waiting
        assert bare.wait(timeout=60) == 0, bare.tail()
        assert runs.delivery_states() == {"waiting": 40}
        assert runs.total() == 0
        assert pg.one("SELECT count(*) FROM czo_event_dead_letter") == 0
        assert pg.one("SELECT max(attempts) FROM czo_event_delivery") == 0  # nothing was tried
        # One warning per subscriber, however often their deliveries came back to it; each
        # names the subscriber and the worker's plugins.
        warnings = [line for line in bare.err_path.read_text().splitlines() if "waits for a worker" in line]
        assert len(warnings) == 2, warnings
        # Matched by content: the lines come in whatever order the worker met the subscribers.
        for subscriber in SUBSCRIBERS:
            [line] = [line for line in warnings if repr(subscriber) in line]
            assert "czo_kit.default_plugins.events" in line, line

        # Operators see them: `czo-kit events status` names the state and the subscribers.
        status = subprocess.run([*czo_kit_command(), "events", "status"], env=bare_env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert re.search(r"^  waiting\s+40  oldest ", status.stdout, re.M), status.stdout
        for subscriber in SUBSCRIBERS:
            assert re.search(rf"^\s+{re.escape(subscriber)}\s+20$", status.stdout, re.M), status.stdout

        # A worker with the plugin, started later, next to another bare one: all delivered.
        again = cli_worker(bare_env, tmp_path, "bare-worker-2")
        stack.callback(again.kill)
        full = cli_worker(full_env, tmp_path, "full-worker")
        stack.callback(full.kill)
        wait_for(lambda: runs.delivery_states() == {"done": 40} or not (again.alive() and full.alive()),
                 timeout=120, what="every delivery done", diag=diagnose(runs, again, full), interval=0.2)
        assert again.alive() and full.alive(), diagnose(runs, again, full)()

    assert runs.per_pair() == {pair: 1 for pair in wanted}  # each once, none lost
    assert set(runs.pids()) == {full.pid}
    assert runs.outbox_states() == {"dispatched": 20}
    assert pg.one("SELECT count(*) FROM czo_event_dead_letter") == 0
    for proc in (bare, again, full):
        assert "Traceback" not in proc.err_path.read_text(), proc.tail()


@SERVERS[0]
@SERVERS[1]
def test_an_old_and_a_new_worker_side_by_side_lose_nothing(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path  # noqa: F811
) -> None:
    """A rolling deploy that adds subscriber probe-1: the old worker has only probe-0, the new
    one both; the producers already run the new code."""
    db_url, pg = private_pg
    runs = Runs(pg)
    scripts = write_scripts(tmp_path)
    env = server_env(db_url, redis_url, queue_name, WT_SLEEP_MS="0,2", WT_WORKERS="2")
    producer_env = {**env, "WT_PRODUCER_PLUGIN": "czo_worker_probe"}

    def states_of(subscriber: str) -> dict[str, int]:
        rows = pg.all("SELECT state, count(*) FROM czo_event_delivery WHERE subscriber = %s GROUP BY state",
                      (f"worker.probe|{subscriber}",))
        return {state: int(n) for state, n in rows}

    with ExitStack() as stack:
        old = start_consumer(scripts, {**env, "WT_SUBSCRIBERS": "1"}, "old-worker")
        stack.callback(old.kill)
        # While only the old worker runs, it dispatches: probe-1's deliveries come from what the
        # producer recorded, and wait for a worker that has probe-1.
        first = produce(producer_env, tmp_path, 50)
        wait_for(lambda: states_of("probe-0") == {"done": 50} and states_of("probe-1") == {"waiting": 50}
                 or not old.alive(), timeout=60, what="probe-0 done and probe-1 waiting",
                 diag=diagnose(runs, old))
        new = start_consumer(scripts, {**env, "WT_SUBSCRIBERS": "2"}, "new-worker")
        stack.callback(new.kill)
        second = produce(producer_env, tmp_path, 50)  # now side by side
        wanted = expected_pairs(first + second)
        wait_for(lambda: runs.delivery_states() == {"done": 200} or not (old.alive() and new.alive()), timeout=120,
                 what="all 200 deliveries done", diag=diagnose(runs, old, new), interval=0.2)
        assert old.alive() and new.alive(), diagnose(runs, old, new)()

    per_pair = runs.per_pair()
    assert set(per_pair) == wanted, f"missing {sorted(wanted - set(per_pair))[:3]}"
    assert all(n == 1 for n in per_pair.values()), {p: n for p, n in per_pair.items() if n > 1}
    probe_1_pids = {int(pid) for (pid,) in pg.all("SELECT DISTINCT pid FROM worker_runs WHERE subscriber = 'probe-1'")}
    assert probe_1_pids == {new.pid}  # only the new worker has it
    assert pg.one("SELECT count(*) FROM czo_event_dead_letter") == 0
    assert runs.outbox_states() == {"dispatched": 100}
    assert "Traceback" not in old.err_path.read_text() + new.err_path.read_text()


# -- the children of a -k process worker ---------------------------------------------------


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc; zombies do not count)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            if int(ppid) == pid and state != "Z":
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("command", ["czo-kit worker", "huey_consumer"])
def test_the_children_of_a_process_worker_exit_when_it_is_killed(tmp_path: Path, command: str) -> None:
    env = sqlite_env(tmp_path)
    if command == "czo-kit worker":
        args = [*czo_kit_command(), "worker", "-w", "2", "-k", "process"]
    else:
        args = [str(Path(sys.executable).with_name("huey_consumer")), "czo_kit.worker.huey", "-w", "2", "-k", "process"]
    children: set[int] = set()
    with ExitStack() as stack:
        stack.callback(lambda: kill_all(children))  # whatever happens, no child outlives the test
        parent = Proc(args, env=env, cwd=tmp_path, label="process-worker")
        stack.callback(parent.kill)
        # Two workers and the scheduler, each a forked child.
        wait_for(lambda: len(children_of(parent.pid)) >= 3 or not parent.alive(), timeout=60,
                 what="the worker's children", diag=parent.tail)
        assert parent.alive(), parent.tail()
        children |= children_of(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.kill()  # reap
        wait_for(lambda: not any(alive(pid) for pid in children), timeout=60,
                 what=f"children {sorted(children)} to exit after their parent was killed",
                 diag=lambda: f"still alive: {sorted(p for p in children if alive(p))}\n{parent.tail()}")


def test_the_watchdog_ends_a_child_where_the_kernel_is_not_asked(tmp_path: Path) -> None:
    """The fallback for systems without prctl: a thread that notices the parent is gone."""
    script = tmp_path / "forks.py"
    script.write_text(
        "import os, sys, time\n"
        "from czo_kit._parent import exit_with_parent\n"
        "parent = os.getpid()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    exit_with_parent(parent, kernel=False)\n"
        "    while True:\n"
        "        time.sleep(0.1)\n"
        "print(child, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    parent = Proc([sys.executable, str(script)], env=env, cwd=tmp_path, label="forks")
    child: set[int] = set()
    try:
        wait_for(lambda: parent.stdout().strip() or not parent.alive(), timeout=60, what="the fork", diag=parent.tail)
        child.add(int(parent.stdout().split()[0]))
        assert all(alive(pid) for pid in child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.kill()
        wait_for(lambda: not any(alive(pid) for pid in child), timeout=60,
                 what="the child to notice its parent is gone", diag=parent.tail)
    finally:
        kill_all(child)
        parent.kill()
