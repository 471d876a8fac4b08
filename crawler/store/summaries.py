"""`RunSummary`: one `crawl_runs` row as the rest of the crawler sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crawler.models import RunStatus
from crawler.store.timestamps import parse_utc


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
