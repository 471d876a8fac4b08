"""The crawler's own timestamps: always UTC, stored as text that sorts as it reads.

`YYYY-MM-DD HH:MM:SS.ffffff`, without a zone: SQLite has no timestamp type, and the same text in
every backend keeps `crawl_runs` and `images` comparable by hand in any SQL shell.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


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


def utc_micros(at: datetime) -> int:
    """`at` as integer microseconds since the Unix epoch, exactly (SQLite's `crawl_results`
    stores its finish time so: `crawler.schema.sqlite_crawl_results`). Naive is taken as UTC."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // _MICROSECOND


def parse_utc(text: str | None) -> datetime | None:
    """The inverse of `format_utc` (also reads second-precision API times); None stays None."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)
