"""Contract test suites for plugin authors, and small test doubles.

A backend passes when a subclass of its contract that provides the named fixture runs green::

    from czo_kit.testing import DatabaseBackendContract

    class TestMyBackend(DatabaseBackendContract):
        @pytest.fixture
        def db(self):
            database = create_my_database("mydb://...", settings=Settings())
            yield database
            database.close()

- ``DatabaseBackendContract``: fixture ``db``, a fresh database using
  ``TransactionalDatabaseMixin``.
- ``RepositoryContract``: fixtures ``db`` and ``make_repository``, a factory of the
  repository under test (a module's own, built with the kit or by hand); ``MODEL``, ``TABLES``
  and ``SPARSE`` describe its model.
- ``CacheDriverContract``: fixture ``driver``, a fresh, empty ``CacheDriver``.

Needs pytest (``pip install 'czo-kit[dev]'``).
"""

from __future__ import annotations

from czo_kit.testing.cache import CacheDriverContract
from czo_kit.testing.repository import RepositoryContract, RepositoryFactory, walk_every_order
from czo_kit.testing.database import (
    CONTRACT_MODELS,
    ContractItem,
    ContractPlain,
    ContractSoft,
    ContractVersioned,
    DatabaseBackendContract,
    RecordingEvents,
    StatementCounter,
)

__all__ = [
    "CONTRACT_MODELS",
    "CacheDriverContract",
    "ContractItem",
    "ContractPlain",
    "ContractSoft",
    "ContractVersioned",
    "DatabaseBackendContract",
    "RecordingEvents",
    "RepositoryContract",
    "RepositoryFactory",
    "StatementCounter",
    "walk_every_order",
]
