"""The inventory database: one async engine, one writer, one transaction per batch.

`Store` is what a crawl writes through: it migrates the database on open, records runs and their
targets, hands out pending targets page by page, and writes each batch of outcomes in a single
transaction, so a reader sees an image either with all of its old children or all of its new ones.
`recent_runs` and `query_readonly` serve `crawler runs` and `crawler sql` over a read-only
connection.

The write path is the crawler's hot loop (tens of thousands of rows a second). Its statements are
built with SQLAlchemy Core from `crawler.schema`, compiled once per store, and executed with
`executemany` over plain tuples: SQLAlchemy's per-row parameter processing would otherwise cost
more than SQLite's own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import ClauseElement, bindparam, delete, event, insert, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.compiler import SQLCompiler

from crawler import schema
from crawler.errors import QueryError, RunNotFoundError, StoreError
from crawler.migrate import upgrade
from crawler.models import ImageRows, Outcome, Row, RunStatus, Target, TargetResult

# Targets inserted per executemany by create_run: bounded memory for any number of targets.
TARGETS_CHUNK = 10_000
# A writer waits this long for another connection's write lock before giving up with SQLITE_BUSY.
BUSY_TIMEOUT_MS = 10_000

_IMAGE_KEY = ("region_id", "image_id")
_RESULT_COLUMNS = tuple(column.name for column in schema.crawl_results.columns)
_RUN_COLUMNS = tuple(column.name for column in schema.crawl_runs.columns)
_PRAGMAS = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
# An execution option marking the store's write transactions (see `_begin`).
_WRITE_OPTION = "crawler_write"


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def format_utc(at: datetime) -> str:
    """`at` as the crawler's own timestamps are stored: `YYYY-MM-DD HH:MM:SS.ffffff` in UTC.

    A naive datetime is taken to be UTC already.
    """
    if at.tzinfo is UTC:  # the usual case, and the hot path: once per result written
        return at.isoformat(" ", "microseconds")[:26]  # without the "+00:00"
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(" ", "microseconds")


def parse_utc(text: str | None) -> datetime | None:
    """The inverse of `format_utc` (also reads second-precision API times); None stays None."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One `crawl_runs` row.

    Attributes:
        run_id: the run's id, increasing with every run.
        status: running, succeeded, partial, failed or interrupted.
        started_at: when the run was created (UTC).
        finished_at: when it last finished, None while running.
        targets_total: distinct targets of the run.
        fetched: targets whose outcome is `fetched` (as of the last finish).
        missing: targets whose outcome is `missing`.
        failed: targets whose outcome is `failed`.
        requests: HTTP requests sent, over every attempt of the run (resumes add up).
        retries: retried attempts, likewise.
        strategy: `single` or `batch`.
        message: why the run failed or stopped, if it did.
    """

    run_id: int
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    targets_total: int
    fetched: int
    missing: int
    failed: int
    requests: int
    retries: int
    strategy: str | None
    message: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RunSummary:
        """Build from a `crawl_runs` row keyed by column name."""
        started_at = parse_utc(row["started_at"])
        assert started_at is not None  # NOT NULL in the schema
        return cls(
            run_id=row["run_id"],
            status=RunStatus(row["status"]),
            started_at=started_at,
            finished_at=parse_utc(row["finished_at"]),
            targets_total=row["targets_total"],
            fetched=row["fetched"],
            missing=row["missing"],
            failed=row["failed"],
            requests=row["requests"],
            retries=row["retries"],
            strategy=row["strategy"],
            message=row["message"],
        )


# --- errors and URLs ----------------------------------------------------------------------------

# Library failures that mean "the database is unusable", translated to StoreError once.
_FAILURES = (SQLAlchemyError, sqlite3.Error, OSError)


def _reason(exc: BaseException) -> str:
    # DBAPIError's own text appends the SQL and every parameter: far too long for a message.
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    return str(exc)


@contextlib.contextmanager
def _translated(database: str, doing: str) -> Iterator[None]:
    try:
        yield
    except _FAILURES as exc:
        raise StoreError(f"cannot {doing} in database {database}: {_reason(exc)}") from exc


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!r}") from exc


def database_name(url: str | URL) -> str:
    """How messages name a database: its file path, else the URL without a password."""
    parsed = _parse_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return parsed.database
    return parsed.render_as_string(hide_password=True)


# --- connections --------------------------------------------------------------------------------


def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's legacy transaction handling BEGINs lazily, before the first write only;
    # `_begin` sends BEGIN itself, so a batch's reads and writes share one real transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: `crawler sql` and other readers keep reading while the crawl writes, and vice versa.
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across an application crash in WAL mode and skips an fsync per commit;
    # a power cut can lose the last batches (the run is resumable) but never corrupts the file.
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Off by default on every new SQLite connection; replacing an image's disks relies on the
    # cascade to drop their attachments and tags, and run rows must exist for their results.
    cursor.execute("PRAGMA foreign_keys=ON")
    # Wait for a concurrent writer (`crawler migrate`, a checkpoint) instead of failing at once.
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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


# --- the write path's statements ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Statement:
    """A Core statement compiled once: its SQL and the column behind each `?`, in order."""

    sql: str
    names: tuple[str, ...]
    values: Callable[[Mapping[str, Any]], tuple[Any, ...]]

    @classmethod
    def compile(cls, statement: ClauseElement, dialect: Dialect) -> _Statement:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ())
        assert len(names) > 1  # itemgetter of one name would give a bare value, not a tuple
        # itemgetter builds a row's tuple in C: this runs for every row the crawler writes.
        return cls(compiled.string, names, operator.itemgetter(*names))

    def rows(self, rows: Sequence[Row]) -> list[tuple[Any, ...]]:
        """Each row's values in parameter order; a column a row lacks is NULL."""
        try:
            return list(map(self.values, rows))
        except KeyError:  # rows from elsewhere than `normalise_image`, which fills every column
            return [tuple(map(row.get, self.names)) for row in rows]

    def row(self, row: Row) -> tuple[Any, ...]:
        """One row's values in parameter order; a column it lacks is NULL."""
        try:
            return self.values(row)
        except KeyError:
            return tuple(map(row.get, self.names))

    async def run_many(self, conn: AsyncConnection, params: list[tuple[Any, ...]]) -> None:
        """One executemany; nothing at all for no rows."""
        if params:
            await conn.exec_driver_sql(self.sql, params)


def _key_match(table: Any, names: Sequence[str]) -> Any:
    # Bind names differ from column names: UPDATE reserves a column's own name for its SET value.
    return [table.c[name] == bindparam(f"k_{name}") for name in names]


def _image_upsert() -> ClauseElement:
    statement = sqlite_insert(schema.images)
    kept = {*_IMAGE_KEY, "first_seen_at"}  # first_seen_at keeps the first fetch's time
    refreshed = {
        column.name: statement.excluded[column.name]
        for column in schema.images.columns
        if column.name not in kept
    }
    return statement.on_conflict_do_update(index_elements=list(_IMAGE_KEY), set_=refreshed)


def _result_upsert() -> ClauseElement:
    statement = sqlite_insert(schema.crawl_results)
    key = ("run_id", "region_id", "image_id")
    refreshed = {name: statement.excluded[name] for name in _RESULT_COLUMNS if name not in key}
    return statement.on_conflict_do_update(index_elements=list(key), set_=refreshed)


def _mark_missing() -> ClauseElement:
    images = schema.images
    return (
        update(images)
        .where(*_key_match(images, _IMAGE_KEY), images.c.missing_since.is_(None))
        .values(missing_since=bindparam("k_at"))
    )


@dataclass(frozen=True, slots=True)
class _WriteStatements:
    """The statements `write_results` runs, compiled for one dialect."""

    image_upsert: _Statement
    image_children_delete: _Statement
    disk_insert: _Statement
    attachment_insert: _Statement
    tag_insert: _Statement
    mark_missing: _Statement
    result_upsert: _Statement
    target_insert: _Statement

    @classmethod
    def compile(cls, dialect: Dialect) -> _WriteStatements:
        def build(statement: ClauseElement) -> _Statement:
            return _Statement.compile(statement, dialect)

        disks = schema.disks
        statements = cls(
            image_upsert=build(_image_upsert()),
            # Deleting the disks cascades to their attachments and tags (foreign_keys=ON).
            image_children_delete=build(delete(disks).where(*_key_match(disks, _IMAGE_KEY))),
            disk_insert=build(insert(disks)),
            attachment_insert=build(insert(schema.attachments)),
            tag_insert=build(insert(schema.tags)),
            mark_missing=build(_mark_missing()),
            result_upsert=build(_result_upsert()),
            target_insert=build(insert(schema.crawl_targets).prefix_with("OR IGNORE")),
        )
        # These two take plain key tuples rather than rows: the order must be as written here.
        assert statements.image_children_delete.names == ("k_region_id", "k_image_id")
        assert statements.target_insert.names == ("run_id", "region_id", "image_id")
        return statements


@dataclass(slots=True)
class _Batch:
    """One `write_results` call turned into parameter tuples, table by table."""

    statements: _WriteStatements
    run_id: int
    # Fetched images by their rows' own key, so that the children deleted are exactly those
    # of the images row upserted, and an image given twice is written once.
    fetched: dict[tuple[str, str], tuple[ImageRows, str]] = field(default_factory=dict)
    missing: list[tuple[Any, ...]] = field(default_factory=list)
    results: list[tuple[Any, ...]] = field(default_factory=list)

    @classmethod
    def build(
        cls, statements: _WriteStatements, run_id: int, results: Sequence[TargetResult]
    ) -> _Batch:
        batch = cls(statements, run_id)
        # A target twice in one batch: the later result wins, as a later batch would.
        for result in {result.target: result for result in results}.values():
            batch.add(result)
        return batch

    def add(self, result: TargetResult) -> None:
        """Queue one result's rows."""
        at = format_utc(result.finished_at)
        if result.outcome is Outcome.FETCHED:
            rows = _rows_of(result)
            self.fetched[(rows.image["region_id"], rows.image["image_id"])] = (rows, at)
        elif result.outcome is Outcome.MISSING:
            target = result.target
            missing = {"k_region_id": target.region_id, "k_image_id": target.image_id, "k_at": at}
            self.missing.append(self.statements.mark_missing.values(missing))
        values = _result_values(self.run_id, result, at)
        self.results.append(self.statements.result_upsert.values(values))

    def image_params(self) -> list[tuple[Any, ...]]:
        """The images rows, with the store's bookkeeping columns."""
        statement, run_id = self.statements.image_upsert, self.run_id
        params = []
        for rows, seen_at in self.fetched.values():
            # first_seen_at is written only by an insert: the upsert keeps an existing value.
            bookkeeping = {
                "first_seen_at": seen_at,
                "last_seen_at": seen_at,
                "last_run_id": run_id,
                "missing_since": None,
            }
            params.append(statement.row(rows.image | bookkeeping))
        return params

    def children(self, statement: _Statement, kind: str) -> list[tuple[Any, ...]]:
        """The `disks`, `attachments` or `tags` rows of every fetched image."""
        return statement.rows(
            [row for rows, _ in self.fetched.values() for row in getattr(rows, kind)]
        )

    async def write(self, conn: AsyncConnection) -> None:
        """Parents before children; an image's old children go before its new ones arrive."""
        statements = self.statements
        await statements.image_upsert.run_many(conn, self.image_params())
        await statements.image_children_delete.run_many(conn, list(self.fetched))
        for statement, kind in (
            (statements.disk_insert, "disks"),
            (statements.attachment_insert, "attachments"),
            (statements.tag_insert, "tags"),
        ):
            await statement.run_many(conn, self.children(statement, kind))
        await statements.mark_missing.run_many(conn, self.missing)
        await statements.result_upsert.run_many(conn, self.results)


def _rows_of(result: TargetResult) -> ImageRows:
    if result.rows is None:
        target = result.target
        raise ValueError(f"{target.region_id}/{target.image_id}: fetched without rows")
    return result.rows


def _result_values(run_id: int, result: TargetResult, finished_at: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "region_id": result.target.region_id,
        "image_id": result.target.image_id,
        "outcome": str(result.outcome),
        "http_status": result.http_status,
        "error_status": result.error_status,
        "error_message": result.error_message,
        "attempts": result.attempts,
        "request_id": result.request_id,
        "finished_at": finished_at,
    }


# --- the store ----------------------------------------------------------------------------------


class Store:
    """The inventory database of one crawl: open with `Store.open`, end with `close`."""

    def __init__(self, engine: AsyncEngine, name: str, clock: Callable[[], datetime]) -> None:
        """Use `Store.open`, which migrates the database first."""
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE_OPTION: True})
        self._name = name
        self._clock = clock
        self._statements = _WriteStatements.compile(engine.dialect)

    def __repr__(self) -> str:
        return f"Store({self._name!r})"

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], datetime] = utc_now) -> Store:
        """Migrate the database at `url` to the newest schema, then open it.

        Args:
            url: an SQLAlchemy URL such as `sqlite+aiosqlite:///inventory.db`.
            clock: the UTC time for the run bookkeeping columns.

        Raises:
            StoreError: the database cannot be migrated or opened.
        """
        parsed = _parse_url(url)
        name = database_name(parsed)
        await asyncio.to_thread(upgrade, url)
        with _translated(name, "open the store"):
            engine = _create_engine(parsed)
            try:
                async with engine.connect() as conn:  # fail here, not in the first batch
                    await conn.exec_driver_sql("SELECT 1")
            except BaseException:
                await engine.dispose()
                raise
        return cls(engine, name, clock)

    async def close(self) -> None:
        """Close every connection; the WAL is checkpointed as the last one closes."""
        with _translated(self._name, "close the store"):
            await self._engine.dispose()

    async def create_run(self, targets: Iterable[Target], *, strategy: str) -> int:
        """Record a new run and its targets, streamed in chunks, in one transaction.

        A pair given twice is stored once. If iterating `targets` raises (a bad targets file),
        nothing of the run is left in the database and the error propagates unchanged.

        Returns:
            The new run's id.
        """
        with _translated(self._name, "create a run"):
            async with self._writer.begin() as conn:
                run_id = await self._insert_run(conn, strategy)
                await self._insert_targets(conn, run_id, targets)
                await conn.exec_driver_sql(
                    "UPDATE crawl_runs SET targets_total ="
                    " (SELECT COUNT(*) FROM crawl_targets WHERE run_id = ?) WHERE run_id = ?",
                    (run_id, run_id),
                )
        return run_id

    async def _insert_run(self, conn: AsyncConnection, strategy: str) -> int:
        values = {
            "started_at": format_utc(self._clock()),
            "status": str(RunStatus.RUNNING),
            "strategy": strategy,
        }
        result = await conn.execute(insert(schema.crawl_runs).values(values))
        run_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        assert isinstance(run_id, int)
        return run_id

    async def _insert_targets(
        self, conn: AsyncConnection, run_id: int, targets: Iterable[Target]
    ) -> None:
        statement = self._statements.target_insert
        iterator = iter(targets)
        while chunk := [
            (run_id, target.region_id, target.image_id)
            for target in itertools.islice(iterator, TARGETS_CHUNK)
        ]:
            await statement.run_many(conn, chunk)

    async def latest_unfinished_run(self) -> int | None:
        """The newest run whose status is `running` or `interrupted`, if any."""
        with _translated(self._name, "find an unfinished run"):
            async with self._engine.connect() as conn:
                result = await conn.exec_driver_sql(
                    "SELECT MAX(run_id) FROM crawl_runs WHERE status IN (?, ?)",
                    (str(RunStatus.RUNNING), str(RunStatus.INTERRUPTED)),
                )
                run_id = result.scalar()
        return None if run_id is None else int(run_id)

    async def reopen_run(self, run_id: int) -> None:
        """Set a run back to `running` for `--resume`, clearing its finish time and message.

        Raises:
            StoreError: there is no such run.
        """
        values = {"status": str(RunStatus.RUNNING), "finished_at": None, "message": None}
        runs = schema.crawl_runs
        with _translated(self._name, f"reopen run {run_id}"):
            async with self._writer.begin() as conn:
                result = await conn.execute(
                    update(runs).where(runs.c.run_id == run_id).values(values)
                )
        if result.rowcount == 0:
            raise RunNotFoundError(f"database {self._name} has no run {run_id} to resume")

    async def pending_counts(self, run_id: int) -> dict[str, int]:
        """Region id to the number of the run's targets that have no result yet."""
        sql = (
            "SELECT t.region_id, COUNT(*) FROM crawl_targets AS t"
            f" WHERE t.run_id = ? AND {_NO_RESULT} GROUP BY t.region_id"
        )
        with _translated(self._name, f"count pending targets of run {run_id}"):
            async with self._engine.connect() as conn:
                rows = await _fetch(conn, sql, (run_id,))
        return {str(region): int(count) for region, count in rows}

    async def pending_targets(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> list[Target]:
        """The next page of the run's targets in `region_id` without a result, by image id.

        Args:
            run_id: the run.
            region_id: the region.
            after_image_id: the last image id of the previous page, None for the first page.
            limit: the page size.
        """
        sql = (
            "SELECT t.image_id FROM crawl_targets AS t"
            f" WHERE t.run_id = ? AND t.region_id = ? AND t.image_id > ? AND {_NO_RESULT}"
            " ORDER BY t.image_id LIMIT ?"
        )
        params = (run_id, region_id, after_image_id or "", limit)
        with _translated(self._name, f"read pending targets of run {run_id}"):
            async with self._engine.connect() as conn:
                rows = await _fetch(conn, sql, params)
        return [Target(region_id, str(image_id)) for (image_id,) in rows]

    async def write_results(self, run_id: int, results: Sequence[TargetResult]) -> None:
        """Write a batch of outcomes in one transaction.

        `fetched`: the image row is upserted (first_seen_at kept, last_seen_at and last_run_id
        set, missing_since cleared) and its disks, attachments and tags replaced. `missing`:
        missing_since is set where it is not yet; nothing is deleted. `failed`: the image's rows
        are left alone. Every outcome is upserted into crawl_results.

        Raises:
            StoreError: the batch could not be written; none of it was.
        """
        if not results:
            return
        batch = _Batch.build(self._statements, run_id, results)
        with _translated(self._name, f"write {len(results)} results of run {run_id}"):
            async with self._writer.begin() as conn:
                await batch.write(conn)

    async def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        requests: int,
        retries: int,
        message: str | None = None,
    ) -> RunSummary:
        """Close a run: its status, finish time, outcome counts and request totals.

        Args:
            run_id: the run.
            status: the final status.
            requests: requests sent in this session, added to the run's earlier sessions.
            retries: retries in this session, likewise added.
            message: why the run failed or stopped; never a secret.

        Raises:
            StoreError: there is no such run, or it cannot be written.
        """
        runs = schema.crawl_runs
        with _translated(self._name, f"finish run {run_id}"):
            async with self._writer.begin() as conn:
                counts = await _outcome_counts(conn, run_id)
                values = {
                    "status": str(status),
                    "finished_at": format_utc(self._clock()),
                    **{str(outcome): counts.get(outcome, 0) for outcome in Outcome},
                    # A resumed run adds this session's work to the earlier sessions'.
                    "requests": runs.c.requests + requests,
                    "retries": runs.c.retries + retries,
                    "message": message,
                }
                statement = update(runs).where(runs.c.run_id == run_id).values(values)
                result = await conn.execute(statement)
                if result.rowcount == 0:
                    raise StoreError(f"database {self._name} has no run {run_id} to finish")
                return await _read_run(conn, self._name, run_id)

    async def pragmas(self) -> dict[str, Any]:
        """The connection settings in force (journal_mode, synchronous, foreign_keys,
        busy_timeout), as a store connection sees them: for diagnostics and tests."""
        values: dict[str, Any] = {}
        with _translated(self._name, "read the connection settings"):
            async with self._engine.connect() as conn:
                for name in _PRAGMAS:
                    values[name] = (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
        return values

    async def run_summary(self, run_id: int) -> RunSummary:
        """The run's `crawl_runs` row.

        Raises:
            StoreError: there is no such run.
        """
        with _translated(self._name, f"read run {run_id}"):
            async with self._engine.connect() as conn:
                return await _read_run(conn, self._name, run_id)


_NO_RESULT = (
    "NOT EXISTS (SELECT 1 FROM crawl_results AS r WHERE r.run_id = t.run_id"
    " AND r.region_id = t.region_id AND r.image_id = t.image_id)"
)


async def _fetch(conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    result = await conn.exec_driver_sql(sql, params)
    return [tuple(row) for row in result]


async def _outcome_counts(conn: AsyncConnection, run_id: int) -> dict[str, int]:
    sql = "SELECT outcome, COUNT(*) FROM crawl_results WHERE run_id = ? GROUP BY outcome"
    return {str(outcome): int(count) for outcome, count in await _fetch(conn, sql, (run_id,))}


async def _read_run(conn: AsyncConnection, database: str, run_id: int) -> RunSummary:
    runs = schema.crawl_runs
    result = await conn.execute(runs.select().where(runs.c.run_id == run_id))
    row = result.mappings().first()
    if row is None:
        raise RunNotFoundError(f"database {database} has no run {run_id}")
    return RunSummary.from_row(row)


# --- read-only access for `crawler runs` and `crawler sql` --------------------------------------

_READONLY_ERRORS = ("SQLITE_READONLY", "SQLITE_AUTH")


def _readonly_uri(url: str) -> str:
    parsed = _parse_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        raise StoreError(
            f"read-only queries need an SQLite database file, not {database_name(url)}"
        )
    path = Path(database)
    if not path.is_file():
        raise StoreError(f"database {database} does not exist")
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
async def _readonly_connection(url: str) -> AsyncIterator[AsyncConnection]:
    uri = _readonly_uri(url)
    engine = create_async_engine(
        "sqlite+aiosqlite://", async_creator=lambda: _connect_readonly(uri), poolclass=NullPool
    )
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


def _query_error(database: str, exc: DBAPIError) -> StoreError:
    reason = _reason(exc)
    if getattr(exc.orig, "sqlite_errorname", "") in _READONLY_ERRORS:
        return QueryError(
            f"crawler sql is read-only: the statement would change {database} ({reason});"
            " only SELECT and other reads are allowed"
        )
    return QueryError(f"query failed on database {database}: {reason}")


async def query_readonly(url: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one SQL statement over a read-only connection.

    Returns:
        The column names and the rows (both empty for a statement that returns no rows).

    Raises:
        StoreError: the database does not exist, the statement would write (`crawler sql is
            read-only: ...`), or SQLite rejects it (its message is kept).
    """
    name = database_name(url)
    try:
        async with _readonly_connection(url) as conn:
            result = await conn.exec_driver_sql(sql)
            if not result.returns_rows:
                return [], []
            return list(result.keys()), [tuple(row) for row in result.all()]
    except DBAPIError as exc:
        raise _query_error(name, exc) from exc
    except _FAILURES as exc:
        raise StoreError(f"cannot query database {name}: {_reason(exc)}") from exc


async def recent_runs(url: str, *, limit: int) -> list[RunSummary]:
    """The newest `limit` runs, newest first, read over a read-only connection.

    Raises:
        StoreError: the database does not exist or has no crawl_runs table (not migrated).
    """
    name = database_name(url)
    sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM crawl_runs ORDER BY run_id DESC LIMIT ?"
    with _translated(name, "list runs"):
        async with _readonly_connection(url) as conn:
            result = await conn.exec_driver_sql(sql, (limit,))
            return [RunSummary.from_row(row) for row in result.mappings().all()]


# --- read-only queries for planning and monitoring (`--resume --dry-run`, metrics, check, tables)
# Kept together so they move as one block when the store becomes a package.

_UNFINISHED = (str(RunStatus.RUNNING), str(RunStatus.INTERRUPTED))


def _database_file_exists(url: str) -> bool:
    parsed = _parse_url(url)
    return parsed.get_backend_name() == "sqlite" and Path(parsed.database or "").is_file()


async def unfinished_run_pending(url: str, run_id: int | None) -> tuple[int, dict[str, int]] | None:
    """The run `--resume` would finish (RUN_ID if running, interrupted or failed, else the latest
    running or interrupted run) and its pending targets per region; None when there is no such
    run (or no database yet)."""
    if not _database_file_exists(url):
        return None
    name = database_name(url)
    params: tuple[Any, ...]
    if run_id is None:
        sql, params = "SELECT MAX(run_id) FROM crawl_runs WHERE status IN (?, ?)", _UNFINISHED
    else:
        sql = "SELECT run_id FROM crawl_runs WHERE run_id = ? AND status IN (?, ?, ?)"
        params = (run_id, *_UNFINISHED, str(RunStatus.FAILED))
    pending_sql = (
        "SELECT t.region_id, COUNT(*) FROM crawl_targets AS t"
        f" WHERE t.run_id = ? AND {_NO_RESULT} GROUP BY t.region_id"
    )
    with _translated(name, "find an unfinished run"):
        async with _readonly_connection(url) as conn:
            found = (await conn.exec_driver_sql(sql, params)).scalar()
            if found is None:
                return None
            rows = await _fetch(conn, pending_sql, (found,))
    return int(found), {str(region): int(count) for region, count in rows}


@dataclass(frozen=True, slots=True)
class MonitoringFacts:
    """What the metrics file and `crawler check` read from the database."""

    last_success_run_id: int | None  # the latest `succeeded` run
    last_success_at: datetime | None  # its finished_at
    images_present: int
    images_missing: int


async def monitoring_facts(url: str) -> MonitoringFacts:
    """The latest success and the inventory's size, over a read-only connection.

    Raises:
        StoreError: the database does not exist or is not migrated.
    """
    name = database_name(url)
    with _translated(name, "read the latest success"):
        async with _readonly_connection(url) as conn:
            successes = await _fetch(
                conn,
                "SELECT run_id, finished_at FROM crawl_runs WHERE status = ?"
                " ORDER BY run_id DESC LIMIT 1",
                (str(RunStatus.SUCCEEDED),),
            )
            counts = await _fetch(
                conn, "SELECT COUNT(*) - COUNT(missing_since), COUNT(missing_since) FROM images", ()
            )
    present, missing = counts[0]
    run_id = int(successes[0][0]) if successes else None
    finished = parse_utc(str(successes[0][1])) if successes else None
    return MonitoringFacts(run_id, finished, int(present or 0), int(missing or 0))


async def table_counts(url: str) -> list[tuple[str, str, int]]:
    """(name, `table` or `view`, rows) of every table and view but SQLite's own, by name."""
    name = database_name(url)
    listing = (
        "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')"
        " AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    counted: list[tuple[str, str, int]] = []
    with _translated(name, "count the rows of each table"):
        async with _readonly_connection(url) as conn:
            for table, kind in await _fetch(conn, listing, ()):
                quoted = '"' + str(table).replace('"', '""') + '"'
                rows = (await conn.exec_driver_sql(f"SELECT COUNT(*) FROM {quoted}")).scalar()
                counted.append((str(table), str(kind), int(rows or 0)))
    return counted
