"""Everything that is PostgreSQL's own, behind `crawler.store.dialects.Dialect` (psycopg 3).

- **The crawl lock** is a session advisory lock (`pg_try_advisory_lock`) held on a connection of
  its own for the whole crawl. Advisory locks live inside one database, so the key is the same
  for every inventory and two inventories on one server do not collide. The connection's
  `application_name` names the holder (host and pid), which the refused crawl reads back from
  `pg_stat_activity`. The server drops the lock when the holder's session ends: at once when the
  process dies (its socket closes), and within about 25 s when its host dies, through the TCP
  keepalives this session asks the server for.
- **Migrations** take a transaction advisory lock (`pg_advisory_xact_lock`, a different key) as
  the first statement of the upgrade's transaction, so two hosts starting at once queue and the
  second finds the schema at head; PostgreSQL's DDL is transactional, so a failed upgrade leaves
  nothing behind.
- **Read-only connections** (`crawler sql`, `crawler runs`) set `default_transaction_read_only`
  and a `statement_timeout` at connect, and prepare every statement (`prepare_threshold=0`),
  which makes PostgreSQL refuse a string of several statements, so `COMMIT; DELETE ...` cannot
  step out of the read-only transaction.
- **The write path** compiles with the positional `format` paramstyle, so the store's compiled
  statements and their executemany tuples work unchanged; each of its statements also gets a
  batch form (`bulk_sql`) that takes one binary array per column and reads its rows from
  `unnest`, so a batch costs one statement per table instead of one Bind/Execute per row.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.dml import Insert

from crawler.errors import LockHeldError, StoreError
from crawler.store.dialects import CrawlLock, Dialect

# Advisory lock keys (two int4s): the crawler's namespace, then which lock.
LOCK_NAMESPACE = 0x6A64_6331  # "jdc1"
COORDINATOR_LOCK = 1
MIGRATION_LOCK = 2
# The store's transactions are short; a session idle inside one for this long belongs to a paused
# or wedged process, and the server ends it, so its row locks cannot stall the other workers (a
# worker stopped by SIGSTOP mid-transaction would otherwise hold its claimed rows forever).
IDLE_IN_TRANSACTION_MS = 5_000
# `crawler sql` stops a query after this long.
READONLY_STATEMENT_TIMEOUT_MS = 60_000
# SQLSTATE read_only_sql_transaction.
_READ_ONLY_SQLSTATE = "25006"
_SETTINGS = ("server_version", "transaction_isolation", "statement_timeout", "application_name")
# The holder's session: the server probes an idle peer after 10 s, then every 5 s, 3 times.
_KEEPALIVE_SETTINGS = ("tcp_keepalives_idle = 10", "tcp_keepalives_interval = 5")
_KEEPALIVE_COUNT = "tcp_keepalives_count = 3"


class PostgreSQLDialect(Dialect):
    """PostgreSQL through psycopg 3, async for the store and sync for migrations and the lock."""

    name = "postgresql"

    def create_engine(self, url: URL) -> AsyncEngine:
        return create_async_engine(
            url,
            paramstyle="format",
            pool_pre_ping=True,
            connect_args={
                "application_name": _application_name("crawler"),
                "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
            },
        )

    def writer(self, engine: AsyncEngine) -> AsyncEngine:
        return engine  # READ COMMITTED; row locks and the fenced completion do the rest

    async def settings(self, conn: AsyncConnection) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in _SETTINGS:
            values[name] = (await conn.exec_driver_sql(f"SHOW {name}")).scalar()
        return values

    def readonly_connection(
        self, url: URL
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        return _readonly_connection(url)

    async def vacuum(self, engine: AsyncEngine) -> None:
        # VACUUM cannot run inside a transaction block: on an autocommit connection.
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("VACUUM (ANALYZE)")

    def is_readonly_violation(self, exc: DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) == _READ_ONLY_SQLSTATE

    def crawl_lock(self, url: URL) -> AdvisoryLock:
        return AdvisoryLock(url)

    def upsert(self, table: Table, key: Sequence[str], kept: Sequence[str] = ()) -> Insert:
        statement = pg_insert(table)
        refreshed = {
            column.name: statement.excluded[column.name]
            for column in table.columns
            if column.name not in {*key, *kept}
        }
        return statement.on_conflict_do_update(index_elements=list(key), set_=refreshed)

    def insert_or_ignore(self, table: Table, key: Sequence[str]) -> Insert:
        return pg_insert(table).on_conflict_do_nothing(index_elements=list(key))

    def bulk_sql(self, sql: str, types: Sequence[str] = ()) -> str | None:
        return _bulk_sql(_with_casts(sql, types))

    def sync_url(self, url: URL) -> URL:
        return url  # psycopg 3 is both the async and the sync driver

    def prepare_migration_engine(self, engine: Engine) -> None:
        event.listen(engine, "begin", _take_migration_lock)

    def database_file(self, url: URL) -> Path | None:
        return None  # a server: back it up with pg_dump, not by copying a file

    def backup(self, path: Path, target: Path) -> None:
        raise StoreError("PostgreSQL databases are not files; back them up with pg_dump")


# --- the write path: one statement per batch --------------------------------------------------

# A parameter as SQLAlchemy's psycopg compiler writes it: `%s::VARCHAR`, `%s::JSONB`, ...
_PARAMETER = re.compile(
    r"%s::([A-Z][A-Z0-9_]*(?: PRECISION| VARYING| WITH(?:OUT)? TIME ZONE)?(?:\(\d+(?:, *\d+)?\))?)"
)
_INSERT = re.compile(r"(INSERT INTO \S+ \([^()]*\)) VALUES \(([^()]*)\)(.*)", re.DOTALL)
_UPDATE = re.compile(r"(UPDATE \S+ SET .*?)( WHERE .*)", re.DOTALL)
_DELETE = re.compile(r"(DELETE FROM \S+)( WHERE .*)", re.DOTALL)
_ROWS = "_bulk"
_VALUE = re.compile(rf"{_ROWS}\.p\d+(?:::[A-Z]+)?")
# Types whose values are parsed from their text: sent as text[] and cast row by row (see below).
_PARSED_TYPES = frozenset({"JSONB", "JSON"})


def _bulk_sql(sql: str) -> str | None:
    """The batch form of a compiled INSERT, UPDATE or DELETE: each parameter becomes an array
    and the statement reads its rows from `unnest` of them, in one execution.

    psycopg's executemany sends one Bind/Execute per row, and the server plans and runs each on
    its own: for the write path's ~8 rows per image that was most of the client's store time and
    of the server's. With arrays the rows go as one parameter per column and the server runs one
    statement per table per batch. INSERT ... VALUES (...) [ON CONFLICT ...] becomes INSERT ...
    SELECT ... FROM unnest(...) [ON CONFLICT ...]; UPDATE and DELETE join the same unnest (FROM,
    USING) and refer to its columns where the parameters were. The write path gives each key
    once per batch (an upsert may not touch one row twice in a statement). A statement of any
    other shape, or with a parameter without a type cast, gives None: executemany then.

    A JSON column's array goes as text[] and each row's value is cast where it is used: a
    `$1::JSONB[]` parameter is folded into a constant when the statement is planned for its
    values, and the JSON was then parsed twice, at planning and again when run (pg_stat_statements:
    4.6 ms of planning per batch of ~170 images, half the images upsert's server time).
    """
    if sql.count("%s") != len(_PARAMETER.findall(sql)):
        return None
    types = _PARAMETER.findall(sql)
    numbers = iter(range(1, len(types) + 1))
    # Each parameter becomes the unnest column of its position.
    statement = _PARAMETER.sub(lambda match: _column(next(numbers), match[1]), sql)
    original, insert = _INSERT.fullmatch(sql), _INSERT.fullmatch(statement)
    if original is not None and insert is not None:
        head, values, rest = insert.groups()
        if _PARAMETER.search(original[3]):
            return None  # ON CONFLICT holds a parameter of its own
        if not all(_VALUE.fullmatch(value) for value in values.split(", ")):
            return None  # VALUES holds something besides the parameters
        return f"{head} SELECT {values} FROM {_unnest(types)}{rest}"
    for pattern, joining in ((_UPDATE, "FROM"), (_DELETE, "USING")):
        match = pattern.fullmatch(statement) if pattern.fullmatch(sql) else None
        if match is not None:
            head, where = match.groups()
            return f"{head} {joining} {_unnest(types)}{where}"
    return None


def _with_casts(sql: str, types: Sequence[str]) -> str:
    """`sql` with a cast to its type on every parameter SQLAlchemy wrote without one (`bytea`
    parameters are written bare): the batch form needs each array's type."""
    pieces = sql.split("%s")
    if len(types) != len(pieces) - 1:
        return sql
    out = [pieces[0]]
    for kind, piece in zip(types, pieces[1:], strict=True):
        out.append("%s" if piece.startswith("::") else f"%s::{kind.upper()}")
        out.append(piece)
    return "".join(out)


def _column(number: int, kind: str) -> str:
    """How the statement refers to the `number`th parameter's row value."""
    return f"{_ROWS}.p{number}::{kind}" if kind in _PARSED_TYPES else f"{_ROWS}.p{number}"


def _unnest(types: Sequence[str]) -> str:
    kinds = ("TEXT" if kind in _PARSED_TYPES else kind for kind in types)
    arrays = ", ".join(f"%b::{kind}[]" for kind in kinds)
    columns = ", ".join(f"p{number}" for number in range(1, len(types) + 1))
    return f"unnest({arrays}) AS {_ROWS}({columns})"


def _application_name(role: str) -> str:
    # PostgreSQL keeps 63 bytes of it; host names are the part that can be long.
    return f"{role} pid {os.getpid()} on {socket.gethostname()}"[:63]


def _take_migration_lock(connection: Connection) -> None:
    # The first statement of the upgrade's transaction: released at its COMMIT or ROLLBACK.
    connection.exec_driver_sql(
        "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, MIGRATION_LOCK)
    )


# --- read-only connections ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _readonly_connection(url: URL) -> AsyncIterator[AsyncConnection]:
    options = (
        f"-c default_transaction_read_only=on -c statement_timeout={READONLY_STATEMENT_TIMEOUT_MS}"
    )
    engine = create_async_engine(
        url,
        poolclass=NullPool,
        connect_args={
            "options": options,
            "prepare_threshold": 0,  # prepared statements: one statement per query, no `;` chains
            "application_name": _application_name("crawler sql"),
        },
    )
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


# --- the crawl lock -----------------------------------------------------------------------------


class AdvisoryLock(CrawlLock):
    """The coordinator's lock on one PostgreSQL database: a session advisory lock."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._connection: Connection | None = None

    def acquire(self) -> None:
        """Take the lock or raise `LockHeldError` naming the holder's host and pid."""
        name = self.url.render_as_string(hide_password=True)
        engine = create_engine(
            self.url,
            poolclass=NullPool,
            connect_args={"application_name": _application_name("crawler crawl")},
        )
        try:
            connection = engine.connect()
            try:
                taken = self._try(connection)
            except BaseException:
                connection.close()
                raise
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot take the crawl lock on database {name}: {exc}") from exc
        if not taken:
            holder = _holder(connection)
            connection.close()
            engine.dispose()
            raise LockHeldError(f"another crawl holds the lock on database {name}: {holder}")
        self._engine, self._connection = engine, connection

    @staticmethod
    def _try(connection: Connection) -> bool:
        # Session settings: let the server notice a dead host's silent socket and end the session.
        for setting in (*_KEEPALIVE_SETTINGS, _KEEPALIVE_COUNT):
            connection.exec_driver_sql(f"SET {setting}")
        taken = connection.exec_driver_sql(
            "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, COORDINATOR_LOCK)
        ).scalar()
        connection.commit()  # the lock is the session's; no transaction stays open for hours
        return bool(taken)

    def release(self) -> None:
        """Unlock, then end the session. Unlocking first matters: the server ends a closed
        session's backend a moment later, and a crawl starting right after would still find
        the lock held."""
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._connection.exec_driver_sql(
                    "SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, COORDINATOR_LOCK)
                )
                self._connection.commit()
            with contextlib.suppress(SQLAlchemyError):
                self._connection.close()
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _holder(connection: Connection) -> str:
    try:
        row = connection.exec_driver_sql(
            "SELECT a.application_name, a.client_addr, a.backend_start"
            "  FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.database ="
            "       (SELECT oid FROM pg_database WHERE datname = current_database())"
            "   AND l.classid = %s AND l.objid = %s AND l.objsubid = 2",
            (LOCK_NAMESPACE, COORDINATOR_LOCK),
        ).first()
    except SQLAlchemyError:
        return "holder unknown"
    if row is None:
        return "holder unknown (it may just have finished)"
    name, address, since = row
    where = f" from {address}" if address is not None else ""
    return f"{name}{where}, since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip()


DIALECT = PostgreSQLDialect()
