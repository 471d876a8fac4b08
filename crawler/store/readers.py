"""Read-only access for `crawler runs` and `crawler sql`: connections on which writes fail."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from crawler import schema
from crawler.errors import QueryError, StoreError
from crawler.store.database import _FAILURES, _parse_url, _reason, _translated, database_name
from crawler.store.dialects import dialect_for
from crawler.store.summaries import RunSummary


def _readonly_connection(url: str) -> AbstractAsyncContextManager[AsyncConnection]:
    parsed = _parse_url(url)
    return dialect_for(parsed).readonly_connection(parsed)


def _query_error(url: str, database: str, exc: DBAPIError) -> StoreError:
    reason = _reason(exc)
    if dialect_for(_parse_url(url)).is_readonly_violation(exc):
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
            read-only: ...`), or the database rejects it (its message is kept).
    """
    name = database_name(url)
    try:
        async with _readonly_connection(url) as conn:
            # no_parameters: the text goes to the driver as it is (psycopg would read a `%` in
            # `LIKE 'a%'` as a placeholder otherwise).
            result = await conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
            if not result.returns_rows:
                return [], []
            return list(result.keys()), [tuple(row) for row in result.all()]
    except DBAPIError as exc:
        raise _query_error(url, name, exc) from exc
    except _FAILURES as exc:
        raise StoreError(f"cannot query database {name}: {_reason(exc)}") from exc


async def recent_runs(url: str, *, limit: int) -> list[RunSummary]:
    """The newest `limit` runs, newest first, read over a read-only connection.

    Raises:
        StoreError: the database does not exist or has no crawl_runs table (not migrated).
    """
    name = database_name(url)
    runs = schema.crawl_runs
    statement = select(runs).order_by(runs.c.run_id.desc()).limit(limit)
    with _translated(name, "list runs"):
        async with _readonly_connection(url) as conn:
            result = await conn.execute(statement)
            return [RunSummary.from_row(row) for row in result.mappings().all()]
