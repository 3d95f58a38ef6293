"""Schema migrations per module, run by Peewee's own ``playhouse.migrations`` runner.

Each plugin that registers a migrations directory gets its own history table
(``czo_migrations_<plugin>``), so numbered file names never collide between modules.
``makemigrations`` diffs a module's models against the live database with
``playhouse.schema_diff`` and writes the next numbered script for review.
"""

from __future__ import annotations

import os
import re
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import peewee
from playhouse.migrations import Migration, MigrationError, Runner, template
from playhouse.schema_diff import diff_models

from czo_kit.db._migration_plan import plan
from czo_kit.db._tables import create_missing_tables
from czo_kit.errors import CzoError

__all__ = ["Migrations", "ModuleMigrations"]


def _history_table(module: str) -> str:
    return "czo_migrations_" + re.sub(r"[^a-z0-9_]", "_", module.lower())


@dataclass
class ModuleMigrations:
    """One module's migrations directory and models."""

    module: str
    directory: str | None
    models: Sequence[type[peewee.Model]]


class Migrations:
    """Creates tables, applies pending migrations and writes new ones, module by module."""

    def __init__(self, db: peewee.Database, modules: Mapping[str, ModuleMigrations]) -> None:
        self.db = db
        self.modules = dict(modules)

    def _runner(self, module: str) -> Runner:
        entry = self._entry(module)
        if entry.directory is None:
            raise CzoError(f"module {module!r} registers no migrations directory")
        return Runner(self.db, entry.directory, table_name=_history_table(module))

    def _entry(self, module: str) -> ModuleMigrations:
        entry = self.modules.get(module)
        if entry is None:
            raise CzoError(
                f"unknown module {module!r}; modules with models or migrations: "
                f"{', '.join(sorted(self.modules)) or 'none'}"
            )
        return entry

    def init(self) -> dict[str, list[str]]:
        """Create missing tables. A module whose tables are all new has its migrations marked
        applied (the tables already match the models); any other module gets its pending
        migrations applied. Returns what happened, per module."""
        report: dict[str, list[str]] = {}
        to_apply: list[str] = []
        tables = set(self.db.get_tables())
        for module, entry in sorted(self.modules.items()):
            actions: list[str] = []
            existing = [m for m in entry.models if m._meta.table_name in tables]
            created = [m for m in entry.models if m not in existing]
            if created:
                # Serialised with any other process creating tables, and never inside a
                # caller's transaction (it raises there instead).
                create_missing_tables(self.db, created)
                actions.extend(f"created table {m._meta.table_name}" for m in created)
            if entry.directory is not None:
                runner = self._runner(module)
                # Only tables made here from today's models make the migrations redundant; a
                # module without models has nothing that stands in for its migrations.
                if created and not existing:
                    marked = self._apply(module, runner, fake=True)
                    actions.extend(f"marked applied {name}" for name in marked)
                else:
                    to_apply.append(module)
            report[module] = actions
        # After every module's marks: a migration may depend on a module marked just now.
        for module, names in self._apply_in_order(to_apply).items():
            report[module].extend(f"applied {name}" for name in names)
        return report

    def status(self) -> dict[str, list[Migration]]:
        """Every module's migrations with the time each was applied (``None`` = pending)."""
        return {
            module: self._runner(module).status()
            for module, entry in sorted(self.modules.items())
            if entry.directory is not None
        }

    def pending(self) -> dict[str, list[str]]:
        return {
            module: [m.name for m in rows if m.applied is None and m.path is not None]
            for module, rows in self.status().items()
        }

    def up(self, module: str | None = None) -> dict[str, list[str]]:
        """Apply pending migrations of one module, or of all, in numeric order. Run for all,
        it also creates the missing tables of modules that keep no migrations (the kit's own
        tables among them), so an upgrade that adds such a table needs no ``db init``."""
        if module:
            self._runner(module)  # refuses an unknown module, or one without migrations
            return self._apply_in_order([module])
        report = self._apply_in_order(name for name, entry in self.modules.items() if entry.directory is not None)
        for name, entry in sorted(self.modules.items()):
            if entry.directory is None and entry.models:
                made = create_missing_tables(self.db, entry.models)
                if made:
                    report[name] = [f"created table {table}" for table in made]
        return report

    def _apply_in_order(self, modules: Iterable[str]) -> dict[str, list[str]]:
        """Apply the pending migrations of ``modules``, each after what it depends on (its
        module's earlier files, and its ``depends_on``); what was applied, per module."""
        wanted = sorted(set(modules))
        runners = {name: self._runner(name) for name, entry in self.modules.items() if entry.directory is not None}
        report: dict[str, list[str]] = {name: [] for name in wanted}
        for step in plan(runners, wanted):
            report[step.module].extend(self._apply(step.module, runners[step.module], target=step.name))
        return report

    def _apply(self, module: str, runner: Runner, *, fake: bool = False, target: str | None = None) -> list[str]:
        """Run (or only record) pending migrations, all or up to ``target``; a failure names
        the module and the file."""
        pending = [m.name for m in runner.status() if m.applied is None and m.path is not None]
        try:
            done: list[str] = runner.fake() if fake else runner.up(target)
        except MigrationError as exc:
            raise CzoError(f"migrations of {module}: {exc}") from exc
        except peewee.DatabaseError as exc:
            try:
                applied = runner.applied()
            except peewee.DatabaseError:
                applied = {}
            failed = next((name for name in pending if name not in applied), "?")
            raise CzoError(
                f"migrations of {module}: {failed} failed: {exc}; the migrations before it "
                "are applied, it and those after it are not"
            ) from exc
        return done

    def make(self, module: str, name: str) -> str | None:
        """Write the next migration of ``module`` from the difference between its models and
        the database; returns the new file's path, or ``None`` when nothing changed."""
        entry = self._entry(module)
        runner = self._runner(module)  # refuses a module without a migrations directory
        installed = _installed_under(str(entry.directory))
        if installed is not None:
            raise CzoError(
                f"module {module!r} keeps its migrations in {entry.directory}, inside the installed "
                f"packages of {installed}: a migration written there is lost at the next install; "
                "run makemigrations from a source checkout of the module (pip install -e)"
            )
        tables = set(self.db.get_tables())
        if entry.models and not any(m._meta.table_name in tables for m in entry.models):
            raise CzoError(
                f"the database has none of {module!r}'s tables yet, so there is nothing to migrate "
                "from: run `czo-kit db init`, which creates them from the models and marks the "
                "module's migrations applied"
            )
        diff = diff_models(self.db, list(entry.models))
        if not diff:
            return None
        path: str = runner.create(name, template(diff))
        return path


def _installed_under(directory: str) -> str | None:
    """The site-packages directory holding ``directory``, if it is in one (an editable
    install's directory is the source checkout, so it is not)."""
    target = os.path.realpath(directory)
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        root = os.path.realpath(paths[key])
        if os.path.commonpath([root, target]) == root:
            return root
    return None
