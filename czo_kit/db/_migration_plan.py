"""The order pending migrations of several modules run in: each module's files in numeric
order, and a file after every migration it names in ``depends_on``, such as
``depends_on = [("czo_items", "0001_initial")]`` for a module whose table refers to another
module's items. A missing dependency or a cycle is refused before anything runs."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from playhouse.migrations import Migration, Runner

from czo_kit.errors import CzoError

__all__ = ["Step", "plan"]


@dataclass(frozen=True, order=True)
class Step:
    """One pending migration file of one module."""

    module: str
    index: int
    name: str

    def __str__(self) -> str:
        return f"{self.module} {self.name}"


def _depends_on(step: Step, migration: Migration) -> list[tuple[str, str]]:
    declared: Any = getattr(migration.load(), "depends_on", ())
    pairs = list(declared) if isinstance(declared, (list, tuple)) else None
    if pairs is None or not all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
        for pair in pairs
    ):
        raise CzoError(
            f"migration {step}: depends_on must be a list of (module, migration name) pairs, "
            f"such as [('czo_items', '0001_initial')]; got {declared!r}"[:400]
        )
    return [(module, name) for module, name in pairs]


def plan(runners: Mapping[str, Runner], modules: Iterable[str]) -> list[Step]:
    """The pending migrations of ``modules``, in an order that runs every file after the
    earlier files of its module and after what it depends on. A dependency that is pending
    in a module not being migrated here is refused (migrate every module instead)."""
    status = {module: runner.status() for module, runner in runners.items()}
    files = {module: {m.name for m in rows if m.path is not None} for module, rows in status.items()}
    applied = {module: {m.name for m in rows if m.applied is not None} for module, rows in status.items()}
    graph: dict[Step, set[Step]] = {}
    for module in sorted(set(modules)):
        previous: Step | None = None
        for migration in status[module]:
            if migration.applied is not None or migration.path is None:
                continue
            step = Step(module, migration.idx, migration.name)
            needs = {previous} if previous is not None else set()
            for other, name in _depends_on(step, migration):
                if other not in files:
                    raise CzoError(
                        f"migration {step} depends on {other} {name}, but no loaded module is called "
                        f"{other!r} (modules with migrations: {', '.join(sorted(files))})"
                    )
                if name in applied[other]:
                    continue
                if name not in files[other]:
                    raise CzoError(f"migration {step} depends on {other} {name}, which {other} does not have")
                needs.add(Step(other, _index(status[other], name), name))
            graph[step] = needs
            previous = step
    for step, needs in graph.items():
        outside = sorted(n for n in needs if n not in graph)
        if outside:
            raise CzoError(
                f"migration {step} depends on {outside[0]}, which is not applied yet: migrate "
                f"{outside[0].module} first, or every module at once (czo-kit db migrate)"
            )
    sorter = graphlib.TopologicalSorter(graph)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(str(step) for step in exc.args[1])
        raise CzoError(f"migrations depend on each other in a cycle: {cycle}; remove one depends_on") from None
    order: list[Step] = []
    ready: set[Step] = set()
    while sorter.is_active():
        ready.update(sorter.get_ready())
        step = min(ready)  # the same order on every run: by module name, then file number
        ready.remove(step)
        order.append(step)
        sorter.done(step)
    return order


def _index(rows: list[Migration], name: str) -> int:
    return int(next(m.idx for m in rows if m.name == name))
