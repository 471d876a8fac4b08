"""What the store needs from a database that SQL and SQLAlchemy do not already make portable.

The store's logic (ledger, writer, history, readers, migrations) is written once against
SQLAlchemy Core; whatever is one database's own — connection settings, how a write transaction
begins, the lock that keeps two crawls apart, read-only connections, the backup before a
migration, upserts — sits behind `Dialect`, one module per database in this package.
`dialect_for` picks the module by the URL's backend name, so adding a database means adding a
module here and a line to `_MODULES`, and touches no logic.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Table
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from crawler.errors import StoreError

# Backend name (`URL.get_backend_name()`) to the module whose `DIALECT` serves it.
_MODULES = {
    "sqlite": "crawler.store.dialects.sqlite",
    "postgresql": "crawler.store.dialects.postgresql",
}


class CrawlLock(ABC):
    """The lock that keeps two crawls off one database; each dialect says how it is held."""

    @abstractmethod
    def acquire(self) -> None:
        """Take the lock or raise `LockHeldError` naming the holder."""

    @abstractmethod
    def release(self) -> None:
        """Drop the lock, if held."""

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class Dialect(ABC):
    """One database's own behaviour, as the store uses it."""

    #: The SQLAlchemy backend name, as in `URL.get_backend_name()`.
    name: str

    # --- connections

    @abstractmethod
    def create_engine(self, url: URL) -> AsyncEngine:
        """The store's engine, with the connection settings this database needs."""

    @abstractmethod
    def writer(self, engine: AsyncEngine) -> AsyncEngine:
        """`engine` as the store's write transactions use it (e.g. taking the write lock early)."""

    @abstractmethod
    async def settings(self, conn: AsyncConnection) -> dict[str, Any]:
        """The connection settings in force, by name: for diagnostics and the dialect's tests."""

    @abstractmethod
    def readonly_connection(self, url: URL) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection on which every write fails; the database must already exist."""

    @abstractmethod
    async def vacuum(self, engine: AsyncEngine) -> None:
        """Give space freed by deletes back to the file system (outside any transaction)."""

    @abstractmethod
    def is_readonly_violation(self, exc: DBAPIError) -> bool:
        """Whether a failed statement failed because the connection is read-only."""

    @abstractmethod
    def crawl_lock(self, url: URL) -> CrawlLock | None:
        """The lock that keeps two crawls off one database, not yet taken; None if none is needed.

        Entering it raises `LockHeldError` naming the holder when another crawl has it.
        """

    # --- statements

    @abstractmethod
    def upsert(self, table: Table, key: Sequence[str], kept: Sequence[str] = ()) -> Insert:
        """An insert that, for a row whose `key` exists, updates every column but `key`, `kept`."""

    @abstractmethod
    def insert_or_ignore(self, table: Table, key: Sequence[str]) -> Insert:
        """An insert that skips a row whose `key` already exists."""

    async def execute_many(
        self, conn: AsyncConnection, sql: str, params: list[tuple[Any, ...]]
    ) -> None:
        """Run `sql`, a compiled write statement, once per tuple of `params` in `conn`'s
        transaction; a failure raises SQLAlchemy's `DBAPIError`, as `exec_driver_sql` does."""
        await conn.exec_driver_sql(sql, params)

    def bulk_sql(self, sql: str, types: Sequence[str] = ()) -> str | None:
        """`sql`, a compiled write statement with one positional parameter per value (`types`:
        each parameter's SQL type, in order), rewritten to take one array per parameter and run
        once for a whole batch of rows; None to run it with executemany, one row after the other
        (the default)."""
        return None

    # --- migrations

    @abstractmethod
    def sync_url(self, url: URL) -> URL:
        """The URL migrations run on: the async driver swapped for its sync sibling."""

    @abstractmethod
    def prepare_migration_engine(self, engine: Engine) -> None:
        """Make `engine`'s upgrades transactional and safe (hooks on the sync engine)."""

    @abstractmethod
    def database_file(self, url: URL) -> Path | None:
        """The file holding the database, for a file database that can be backed up."""

    @abstractmethod
    def backup(self, path: Path, target: Path) -> None:
        """Copy the database file `path` to `target`, consistently."""


def dialect_for(url: URL) -> Dialect:
    """The dialect for a database URL.

    Raises:
        StoreError: the URL names a database the crawler does not support.
    """
    backend = url.get_backend_name()
    module = _MODULES.get(backend)
    if module is None:
        supported = ", ".join(sorted(_MODULES))
        raise StoreError(f"database {backend!r} is not supported (supported: {supported})")
    dialect = importlib.import_module(module).DIALECT
    assert isinstance(dialect, Dialect)
    return dialect
