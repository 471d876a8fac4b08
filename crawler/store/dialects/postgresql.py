"""Everything that is PostgreSQL's own, behind `crawler.store.dialects.Dialect` (psycopg 3).

- **The crawl lock** is a session advisory lock (`pg_try_advisory_lock`) held on a connection of
  its own for the whole crawl. Advisory locks live inside one database, so the key is the same
  for every inventory and two inventories on one server do not collide. The connection's
  `application_name` names the holder (host and pid), which the refused crawl reads back from
  `pg_stat_activity`. The server drops the lock when the holder's session ends: moments after the
  process dies (its socket closes), and within about 25 s when its host dies, through the TCP
  keepalives this session asks the server for. A holder that is a process of this host which no
  longer exists is waited for (up to `DEAD_HOLDER_WAIT_S`), not reported: its session is ending.
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
import logging
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

log = logging.getLogger(__name__)

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
# A crawl that finds the lock held by a process of this host that is gone waits this long for the
# server to end that session. The server ends it when it next runs the session's backend, which
# sees the closed socket: moments after the process died, longer on a loaded machine. A crawl
# started right after one was killed (cron after the OOM killer, `--resume` after kill -9) exited
# 75 naming a dead pid.
DEAD_HOLDER_WAIT_S = 30.0
# pg_try_advisory_lock failed but no holder was found: the lock was freed in between; try again.
_UNKNOWN_HOLDER_TRIES = 3
# SQLSTATE lock_not_available: lock_timeout ran out.
_LOCK_NOT_AVAILABLE = "55P03"
# The holder's application_name, as `_application_name("crawler crawl")` writes it.
_HOLDER_NAME = re.compile(r"crawler crawl pid (\d+) on (.*)")


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


def _application_name(role: str, *, pid: int | None = None) -> str:
    # PostgreSQL keeps 63 bytes of it; host names are the part that can be long.
    return f"{role} pid {os.getpid() if pid is None else pid} on {socket.gethostname()}"[:63]


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
                holder = self._take(connection)
            except BaseException:
                connection.close()
                raise
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot take the crawl lock on database {name}: {exc}") from exc
        if holder is not None:
            connection.close()
            engine.dispose()
            raise LockHeldError(f"another crawl holds the lock on database {name}: {holder}")
        self._engine, self._connection = engine, connection

    def _take(self, connection: Connection) -> str | None:
        """Take the lock; None once taken, else who holds it. A holder whose process on this
        host is gone is waited for in the server's queue (its session is ending), up to
        `DEAD_HOLDER_WAIT_S`."""
        self._configure(connection)
        for _ in range(_UNKNOWN_HOLDER_TRIES):
            if self._try(connection):
                return None
            row = _holder_row(connection)
            if row is not None:
                break
        else:  # released each time between the two statements
            return "holder unknown (it may just have finished)"
        holder = _describe_holder(row)
        if not _gone_from_this_host(row[0]):
            return holder
        log.info(
            "the crawl lock is held by %s, a process that is gone: waiting for the server to"
            " end its session", row[0],
        )  # fmt: skip
        if self._wait(connection):
            return None
        gone = f"that process is gone, its session did not end in {DEAD_HOLDER_WAIT_S:g} s"
        return f"{holder}; {gone}"

    @staticmethod
    def _wait(connection: Connection) -> bool:
        """Queue for the lock for up to DEAD_HOLDER_WAIT_S; whether it was taken."""
        # SET LOCAL: the timeout ends with this transaction, whichever way it ends.
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {int(DEAD_HOLDER_WAIT_S * 1000)}")
        try:
            connection.exec_driver_sql(
                "SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, COORDINATOR_LOCK)
            )
        except DBAPIError as exc:
            connection.rollback()
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            return False
        connection.commit()
        return True

    @staticmethod
    def _configure(connection: Connection) -> None:
        # Session settings: let the server notice a dead host's silent socket and end the session.
        for setting in (*_KEEPALIVE_SETTINGS, _KEEPALIVE_COUNT):
            connection.exec_driver_sql(f"SET {setting}")
        connection.commit()

    @staticmethod
    def _try(connection: Connection) -> bool:
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


def _holder_row(connection: Connection) -> Any:
    """The lock holder's application_name, client address and session start; None if none."""
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
        connection.rollback()
        return ("holder unknown", None, None)
    connection.commit()
    return row


def _describe_holder(row: Any) -> str:
    name, address, since = row
    if since is None:
        return str(name)
    where = f" from {address}" if address is not None else ""
    return f"{name}{where}, since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip()


def _gone_from_this_host(application_name: str | None) -> bool:
    """Whether the lock's holder names a process of this host that no longer exists.

    Only this host's processes can be looked at; a holder elsewhere (or a pid that another
    process has taken since) counts as alive, so the answer errs towards exit 75, never towards
    two coordinators: waiting for the lock is all that is done with it.
    """
    match = _HOLDER_NAME.fullmatch(application_name or "")
    if match is None:
        return False
    pid = int(match[1])
    if _application_name("crawler crawl", pid=pid) != application_name:
        return False  # another host (or a name cut at 63 bytes that is not this host's)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


DIALECT = PostgreSQLDialect()
