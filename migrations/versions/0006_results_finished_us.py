"""SQLite: `crawl_results` keeps its finish time as integer microseconds, `finished_at` generated.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:00:00

A row per target per run is most of what a database grows by under `[retention] keep_runs`, and
`finished_at` as `YYYY-MM-DD HH:MM:SS.ffffff` text was 26 of a row's ~107 bytes. On SQLite the
table is rebuilt with `finished_us` (integer microseconds since the Unix epoch, UTC: 8 bytes) and
`finished_at` as a VIRTUAL generated column over it, the same text to the microsecond, so that
`SELECT finished_at`, `datetime(finished_at)`, `SELECT *` and the views read as before. Every
row is copied and then compared with the old text; a row that would read back differently stops
the upgrade (nothing is lost: the old table is still there, in the rolled-back transaction).

PostgreSQL keeps `finished_at` as text: it has no virtual generated columns (15 has only STORED
ones, which would store both), so this revision does nothing there.

The views are dropped and created again from their own SQL around the rebuild (SQLite checks
views when a table is renamed).
"""

from __future__ import annotations

from alembic import op
from alembic.util import CommandError

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# As `crawler.schema.FINISHED_AT_FROM_US` was when this revision was written.
_FINISHED_AT = (
    "datetime(finished_us / 1000000, 'unixepoch') || printf('.%06d', finished_us % 1000000)"
)
# The old text (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC) as microseconds: the whole seconds by
# SQLite from the first 19 characters, the fraction's digits (padded to six) by hand. SQLite's own
# clock keeps milliseconds, so given the fraction it would round `.999999` up to the next second.
_US_FROM_TEXT = (
    "unixepoch(substr(finished_at, 1, 19)) * 1000000"
    " + CAST(substr(substr(finished_at, 21) || '000000', 1, 6) AS INTEGER)"
)
_COLUMNS = (
    "run_id", "region_id", "image_id", "outcome", "http_status", "error_status",
    "error_message", "attempts", "request_id",
)  # fmt: skip


def _table(finished: str) -> str:
    return f"""
        CREATE TABLE crawl_results_0006 (
            run_id INTEGER NOT NULL,
            region_id TEXT NOT NULL,
            image_id TEXT NOT NULL,
            outcome TEXT NOT NULL,
            http_status INTEGER,
            error_status TEXT,
            error_message TEXT,
            attempts INTEGER NOT NULL,
            request_id TEXT,
            {finished},
            CONSTRAINT pk_crawl_results PRIMARY KEY (run_id, region_id, image_id),
            CONSTRAINT fk_crawl_results_crawl_runs FOREIGN KEY(run_id)
                REFERENCES crawl_runs (run_id) ON DELETE CASCADE,
            CONSTRAINT ck_crawl_results_outcome CHECK (outcome IN ('fetched', 'missing', 'failed'))
        ) WITHOUT ROWID
    """


def _rebuild(finished: str, copied: str, stored: str) -> None:
    """crawl_results rebuilt with `finished` as its finish-time column(s): `copied` is the
    SELECT expression of the old table giving the new stored column `stored`."""
    bind = op.get_bind()
    views = bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'view' ORDER BY rowid"
    ).fetchall()
    for name, _ in reversed(views):
        op.execute(f'DROP VIEW "{name}"')
    op.execute(_table(finished))
    columns = ", ".join(_COLUMNS)
    op.execute(
        f"INSERT INTO crawl_results_0006 ({columns}, {stored})"
        f" SELECT {columns}, {copied} FROM crawl_results"
    )
    wrong = bind.exec_driver_sql(
        "SELECT o.run_id, o.region_id, o.image_id, o.finished_at, n.finished_at"
        " FROM crawl_results AS o JOIN crawl_results_0006 AS n USING (run_id, region_id, image_id)"
        " WHERE n.finished_at IS NOT o.finished_at LIMIT 1"
    ).fetchone()
    if wrong is not None:
        raise CommandError(  # the store reports it as a StoreError naming the database
            f"crawl_results run {wrong[0]} {wrong[1]}/{wrong[2]}: finished_at {wrong[3]!r} would"
            f" read back as {wrong[4]!r}; the table is left as it was"
        )
    op.execute("DROP TABLE crawl_results")
    op.execute("ALTER TABLE crawl_results_0006 RENAME TO crawl_results")
    for _, sql in views:
        op.execute(sql)


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return  # a storage choice of SQLite's alone
    _rebuild(
        f"finished_at TEXT NOT NULL GENERATED ALWAYS AS ({_FINISHED_AT}) VIRTUAL,"
        " finished_us INTEGER NOT NULL",
        _US_FROM_TEXT,
        "finished_us",
    )


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    _rebuild("finished_at TEXT NOT NULL", "finished_at", "finished_at")
