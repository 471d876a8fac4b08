"""The inventory writer: one batch of outcomes turned into rows and written in one transaction.

A reader sees an image either with all of its old children or all of its new ones. An image
whose content is unchanged keeps its rows (only `last_seen_at` and `last_run_id` move); the
others are rewritten and open a version (`crawler.store.versions`). A `missing` outcome is only
recorded here: the marks are applied at the end of the run, for the whole run at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from crawler.models import ImageRows, Outcome, TargetResult
from crawler.store.statements import _Statement, _WriteStatements
from crawler.store.timestamps import format_utc
from crawler.store.versions import current_versions, plan_versions


@dataclass(slots=True)
class _Batch:
    """One `write_results` call turned into parameter tuples, table by table."""

    statements: _WriteStatements
    run_id: int
    # Fetched images by their rows' own key, so that the children deleted are exactly those
    # of the images row upserted, and an image given twice is written once.
    fetched: dict[tuple[str, str], tuple[ImageRows, str]] = field(default_factory=dict)
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
        await self.record_versions(conn)
        await statements.image_upsert.run_many(conn, self.image_params())
        await statements.image_children_delete.run_many(conn, list(self.fetched))
        for statement, kind in (
            (statements.disk_insert, "disks"),
            (statements.attachment_insert, "attachments"),
            (statements.tag_insert, "tags"),
        ):
            await statement.run_many(conn, self.children(statement, kind))
        await statements.result_upsert.run_many(conn, self.results)

    async def record_versions(self, conn: AsyncConnection) -> None:
        """Open the fetched images' new versions; touch the unchanged ones and drop them from
        `fetched`, so that their rows are not rewritten."""
        statements, run_id = self.statements, self.run_id
        current = await current_versions(conn, list(self.fetched))
        plan = plan_versions(statements, run_id, self.fetched, current)
        touched = []
        for key in plan.unchanged:
            _, seen_at = self.fetched.pop(key)
            touched.append((seen_at, run_id, *key))
        await statements.image_touch.run_many(conn, touched)
        await statements.version_delete.run_many(conn, plan.deletes)
        await statements.version_close.run_many(conn, plan.closes)
        await statements.version_insert.run_many(conn, plan.inserts)


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
