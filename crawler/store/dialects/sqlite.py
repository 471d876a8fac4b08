"""Everything that is SQLite's own, behind `crawler.store.dialects.Dialect`.

Connection PRAGMAs and `BEGIN IMMEDIATE` for the store's engine; read-only connections through
`mode=ro` URIs with an authorizer; the online backup taken before a migration; `INSERT ... ON
CONFLICT` upserts; and the crawl lock, an `fcntl.flock` on a file beside the database:
`flock` is released by the kernel when its holder dies (even by SIGKILL), so a lock left by a dead
process is simply taken over; the file's text only names the holder for the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import Table, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.dml import Insert

from crawler.errors import LockHeldError, StoreError
from crawler.store.dialects import CrawlLock, Dialect

# A writer waits this long for another connection's write lock before giving up with SQLITE_BUSY.
BUSY_TIMEOUT_MS = 10_000

_PRAGMAS = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
# WAL pages before a commit checkpoints them into the database file (SQLite's default: 1,000).
# A first crawl's batch of 500 images dirties ~600 pages, so the default checkpoints every other
# commit, copying the same index pages and syncing each time; 10,000 (a WAL of up to ~40 MB,
# given back when the crawl's last connection closes) cut the first write's SQLite CPU by ~4 us
# an image (benchmarks/store_paired.py).
WAL_AUTOCHECKPOINT_PAGES = 10_000
# An execution option marking the store's write transactions (see `_begin`).
_WRITE_OPTION = "crawler_write"
_READONLY_ERRORS = ("SQLITE_READONLY", "SQLITE_AUTH")
# Async drivers and the sync driver that migrates the same database.
_SYNC_DRIVERS = {"sqlite+aiosqlite": "sqlite"}


class SQLiteDialect(Dialect):
    """SQLite through aiosqlite (the store) and the sqlite3 module (migrations)."""

    name = "sqlite"

    def create_engine(self, url: URL) -> AsyncEngine:
        return _create_engine(url)

    def writer(self, engine: AsyncEngine) -> AsyncEngine:
        return engine.execution_options(**{_WRITE_OPTION: True})

    async def settings(self, conn: AsyncConnection) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in _PRAGMAS:
            values[name] = (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
        return values

    def readonly_connection(
        self, url: URL
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        return _readonly_connection(url)

    async def vacuum(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, aiosqlite.Connection)
            # On the driver's connection: SQLAlchemy would BEGIN first, and VACUUM cannot run
            # in a transaction. The checkpoint then shrinks the WAL file the VACUUM filled.
            await raw.execute("VACUUM")
            await raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def is_readonly_violation(self, exc: DBAPIError) -> bool:
        return getattr(exc.orig, "sqlite_errorname", "") in _READONLY_ERRORS

    def crawl_lock(self, url: URL) -> DatabaseLock | None:
        path = _sqlite_file(url)
        return None if path is None else DatabaseLock(path)

    def upsert(self, table: Table, key: Sequence[str], kept: Sequence[str] = ()) -> Insert:
        statement = sqlite_insert(table)
        refreshed = {
            column.name: statement.excluded[column.name]
            for column in table.columns
            if column.name not in {*key, *kept} and column.computed is None  # generated: not set
        }
        return statement.on_conflict_do_update(index_elements=list(key), set_=refreshed)

    async def execute_many(
        self, conn: AsyncConnection, sql: str, params: list[tuple[Any, ...]]
    ) -> None:
        # Straight to aiosqlite's connection, in the transaction SQLAlchemy began on it: the
        # write path's executemany through `exec_driver_sql` cost ~70 us more a statement
        # (its execution context, events and cursor wrappers), ~7 statements a batch.
        driver = (await conn.get_raw_connection()).driver_connection
        assert isinstance(driver, aiosqlite.Connection)
        try:
            await driver.executemany(sql, params)
        except sqlite3.Error as exc:  # wrapped as SQLAlchemy wraps it: callers translate that
            raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc

    def insert_or_ignore(self, table: Table, key: Sequence[str]) -> Insert:
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(key))

    def sync_url(self, url: URL) -> URL:
        driver = _SYNC_DRIVERS.get(url.drivername)
        return url if driver is None else url.set(drivername=driver)

    def prepare_migration_engine(self, engine: Engine) -> None:
        event.listen(engine, "connect", _own_sqlite_begin)
        event.listen(engine, "begin", _begin_immediate)

    def database_file(self, url: URL) -> Path | None:
        return _sqlite_file(url)

    def backup(self, path: Path, target: Path) -> None:
        try:
            _backup(path, target)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot back up database {path} to {target}: {exc}") from exc


# The sqlite3 module binds None through its adapter protocol, the slow path (a tuple built, a
# registry miss, two attribute lookups): ~210 ns a parameter against ~30 for an int, and a first
# write binds ~30 NULLs an image (~5 us of SQLite's CPU). An adapter registered for None is found
# at the first step and still binds NULL. It is the sqlite3 module's process-wide registry, and
# changes nothing but that cost for any other user of the module in this process. The adapter is
# an empty dict's `get` (None for None), a C call: a Python function returning None cost ~2.5 us
# more of a first write's image (benchmarks/store_paired.py, replayed statements).
_NULL_ADAPTER: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NULL_ADAPTER.get)


# --- the store's connections --------------------------------------------------------------------


def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's legacy transaction handling BEGINs lazily, before the first write only;
    # `_begin` sends BEGIN itself, so a batch's reads and writes share one real transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # Wait for a concurrent writer (`crawler migrate`, a checkpoint) instead of failing at once.
    # First: switching a new file to WAL needs an exclusive lock, and a reader may hold it a
    # while; before this the driver's default (5 s) would apply to that switch.
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # WAL: `crawler sql` and other readers keep reading while the crawl writes, and vice versa.
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across an application crash in WAL mode and skips an fsync per commit;
    # a power cut can lose the last batches (the run is resumable) but never corrupts the file.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    # Off by default on every new SQLite connection; replacing an image's disks relies on the
    # cascade to drop their attachments and tags, and run rows must exist for their results.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN, where busy_timeout applies; a deferred transaction
    # that upgrades from read to write can fail with SQLITE_BUSY without waiting at all.
    immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _create_engine(url: URL) -> AsyncEngine:
    engine = create_async_engine(url)
    event.listen(engine.sync_engine, "connect", _set_pragmas)
    event.listen(engine.sync_engine, "begin", _begin)
    return engine


# --- read-only connections ----------------------------------------------------------------------


def _readonly_uri(url: URL) -> str:
    path = _sqlite_file(url)
    if path is None:
        shown = url.render_as_string(hide_password=True)
        raise StoreError(f"read-only queries need an SQLite database file, not {shown}")
    if not path.is_file():
        raise StoreError(f"database {path} does not exist")
    # mode=ro: SQLite refuses every write and never creates the file.
    return f"{path.resolve().as_uri()}?mode=ro"


def _deny_attach(action: int, *_args: object) -> int:
    # ATTACH of a new file would create it: a write that mode=ro and query_only do not stop.
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


async def _connect_readonly(uri: str) -> aiosqlite.Connection:
    connection = await aiosqlite.connect(uri, uri=True)
    try:
        await connection.set_authorizer(_deny_attach)
        await connection.execute("PRAGMA query_only=ON")  # belt and braces with mode=ro
        await connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except BaseException:
        await connection.close()
        raise
    return connection


@contextlib.asynccontextmanager
async def _readonly_connection(url: URL) -> AsyncIterator[AsyncConnection]:
    uri = _readonly_uri(url)
    engine = create_async_engine(
        "sqlite+aiosqlite://", async_creator=lambda: _connect_readonly(uri), poolclass=NullPool
    )
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


# --- migrations ---------------------------------------------------------------------------------


def _own_sqlite_begin(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's legacy mode never BEGINs before DDL, so each CREATE would commit on
    # its own; taking BEGIN over (see `_begin_immediate`) makes a whole upgrade one transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # Foreign keys stay off while migrating: a batch table rebuild drops the old table, which
    # with them on would cascade-delete every child row.
    cursor.execute("PRAGMA foreign_keys=OFF")
    # An upgrade's commit waits for readers of a file not yet in WAL mode as long as a crawl's
    # writes would, not the driver's default 5 s.
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def _begin_immediate(connection: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so two migrators queue instead of deadlocking.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if url.query.get("uri") == "true" or database.startswith("file:"):
        return None  # a URI filename (mode=memory, ...): not a plain file to back up
    return Path(database)


def _backup(path: Path, target: Path) -> None:
    # SQLite's online backup, not a file copy: it is consistent even with a WAL file beside it.
    source_uri = f"{path.resolve().as_uri()}?mode=ro"
    with (
        closing(sqlite3.connect(source_uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)) as source,
        closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)


# --- the crawl lock -----------------------------------------------------------------------------


class DatabaseLock(CrawlLock):
    """An exclusive, non-blocking lock on `<database>.lock`."""

    def __init__(self, database_path: Path) -> None:
        self.path = database_path.with_name(database_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `LockHeldError` naming the holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeldError(
                f"another crawl holds the lock on this database ({self.path}): {holder}"
            ) from exc
        _write_holder(fd)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock; the file stays (removing it would race with a waiting locker)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _write_holder(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "holder unknown"


DIALECT = SQLiteDialect()
