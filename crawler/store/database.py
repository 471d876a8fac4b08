"""Naming a database, translating library failures once, and finding its dialect and lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from crawler.errors import StoreError
from crawler.store.dialects import Dialect, dialect_for

# Library failures that mean "the database is unusable", translated to StoreError once.
# Driver errors reach here wrapped in SQLAlchemy's DBAPIError; dialects translate their own.
_FAILURES = (SQLAlchemyError, OSError)


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


def dialect_of(url: str | URL) -> Dialect:
    """The dialect serving `url`.

    Raises:
        StoreError: `url` is not a database URL, or not one of a supported database.
    """
    return dialect_for(_parse_url(url) if isinstance(url, str) else url)


def crawl_lock(url: str) -> AbstractContextManager[object] | None:
    """The lock that keeps two crawls off the database at `url`, not yet taken; None if the
    database needs none (an in-memory one). Entering it raises `LockHeldError` when held.

    Raises:
        StoreError: `url` is not a database URL, or not one of a supported database.
    """
    parsed = _parse_url(url)
    return dialect_for(parsed).crawl_lock(parsed)
