"""History: `image_versions`, the `image_changes` view, and the run status `held`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00

`image_versions` holds one row per change of an image's whole aggregate (CONTRACT.md §6, §7).
Every image already in the database gets a version from its current rows, so a database made by
the first release keeps working: the image is `present` with what its rows say now from the
first run that fetched it (of those whose results are kept; else its `last_run_id`). A missing
image is that up to the first run after its last fetch that found it missing, and `missing` from
then on. Changes before the upgrade were overwritten, so the history cannot show them. The
canonical content and its hash come from `crawler.store.content`, the code the store writes
versions with, so an unchanged image re-crawled after the upgrade writes no new version.

`crawl_runs.status` also allows `held` (the mass-deletion guard). SQLite cannot alter a CHECK
constraint, so the table is rebuilt; the views that read it are dropped first and recreated
after (see 0001). Only portable types are used: `content` is JSON, jsonb on PostgreSQL.

Every run adds a row per target to `crawl_targets` and `crawl_results`, so their size is what
retention keeps in check: on SQLite both become WITHOUT ROWID tables (the primary key is the
table, not a second copy of the key beside it), and the (run_id, outcome) index goes (the key
starts with run_id; a run's outcomes are counted once, when it finishes). That is 244 bytes a
target a run before, about 156 after.

- `image_changes`: one row per version, with its run and the run's times, and the change it
  records: `added` (an image's first version), `removed` (went missing), `restored` (present
  again after missing) or `changed` (present before and after, different content).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crawler.store.content import canonical, content_of

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_STATUSES_0001 = ("running", "succeeded", "partial", "failed", "interrupted")
_STATUSES = (*_STATUSES_0001, "held")
# The views of 0001 that read crawl_runs or crawl_results, in the order they can be created.
_RUN_VIEWS = ("latest_run", "latest_run_failures", "newly_missing_images")
# Images read per step of the backfill: bounded memory for any inventory.
_BACKFILL_CHUNK = 2_000

VIEWS: dict[str, str] = {
    "image_changes": """
        SELECT v.region_id, v.image_id, v.version, v.valid_from_run AS run_id,
               r.started_at AS run_started_at, r.finished_at AS run_finished_at,
               CASE WHEN p.version IS NULL THEN 'added'
                    WHEN v.status = 'missing' THEN 'removed'
                    WHEN p.status = 'missing' THEN 'restored'
                    ELSE 'changed' END AS change,
               v.status, v.content_hash, p.content_hash AS previous_content_hash,
               v.valid_to_run, v.recorded_at
          FROM image_versions AS v
          LEFT JOIN image_versions AS p
            ON p.region_id = v.region_id AND p.image_id = v.image_id
           AND p.version = v.version - 1
          LEFT JOIN crawl_runs AS r ON r.run_id = v.valid_from_run
    """,
}


def _views_0001() -> dict[str, str]:
    module = importlib.import_module("crawler.migrations.versions.0001_initial")
    views: dict[str, str] = module.VIEWS
    return views


def _one_of(values: Sequence[str]) -> str:
    return "status IN ({})".format(", ".join(f"'{value}'" for value in values))


def _set_run_statuses(values: Sequence[str]) -> None:
    # On SQLite a rebuild (the constraint is read back from the table's SQL); elsewhere ALTERs.
    with op.batch_alter_table(
        "crawl_runs", recreate="auto", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_constraint("ck_crawl_runs_status", type_="check")
        batch.create_check_constraint("ck_crawl_runs_status", _one_of(values))


def _set_run_rows_rowid(with_rowid: bool) -> None:
    """The per-target tables of runs as WITHOUT ROWID tables on SQLite, or back."""
    if op.get_context().dialect.name != "sqlite":
        return  # a storage option of SQLite's alone
    for table in ("crawl_targets", "crawl_results"):
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_with_rowid": with_rowid}
        ):
            pass


def _rebuild_run_tables(statuses: Sequence[str], *, with_rowid: bool) -> None:
    views = _views_0001()
    for name in reversed(_RUN_VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    _set_run_statuses(statuses)
    _set_run_rows_rowid(with_rowid)
    for name in _RUN_VIEWS:
        op.execute(f"CREATE VIEW {name} AS {views[name].strip()}")


def upgrade() -> None:
    op.drop_index("ix_crawl_results_run_id_outcome", table_name="crawl_results")
    _rebuild_run_tables(_STATUSES, with_rowid=False)
    op.create_table(
        "image_versions",
        sa.Column("region_id", sa.Text(), nullable=False),
        sa.Column("image_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("valid_from_run", sa.Integer(), nullable=False),
        sa.Column("valid_to_run", sa.Integer(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("content", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("recorded_at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("region_id", "image_id", "version", name="pk_image_versions"),
        sa.CheckConstraint("status IN ('present', 'missing')", name="ck_image_versions_status"),
    )
    op.create_index("ix_image_versions_valid_from_run", "image_versions", ["valid_from_run"])
    _backfill(op.get_bind())
    for name, select in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select.strip()}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_image_versions_valid_from_run", table_name="image_versions")
    op.drop_table("image_versions")
    # 0001 knows no `held`: such a run finished, with its missing marks never applied.
    op.execute("UPDATE crawl_runs SET status = 'partial' WHERE status = 'held'")
    _rebuild_run_tables(_STATUSES_0001, with_rowid=True)
    op.create_index("ix_crawl_results_run_id_outcome", "crawl_results", ["run_id", "outcome"])


# --- the backfill -------------------------------------------------------------------------------

_IMAGE_KEY = ("region_id", "image_id")
# As the tables were at 0001: lightweight, so this revision does not move with crawler.schema.
_BOOKKEEPING = ("first_seen_at", "last_seen_at", "last_run_id", "missing_since")
_VERSIONS = sa.table(
    "image_versions",
    *(
        sa.column(name)
        for name in (
            "region_id", "image_id", "version", "valid_from_run", "valid_to_run", "status",
            "content_hash", "content", "recorded_at",
        )
    ),
)  # fmt: skip


def _recorded_at() -> str:
    return datetime.now(UTC).isoformat(" ", "microseconds")[:26]


def _image_chunks(bind: sa.Connection) -> Iterator[list[dict[str, Any]]]:
    """Every images row, in key order, a chunk at a time (keyset paging)."""
    images = sa.table("images", sa.column("region_id"), sa.column("image_id"))
    key = sa.tuple_(images.c.region_id, images.c.image_id)
    after: tuple[str, str] | None = None
    while True:
        query = sa.select(sa.text("*")).select_from(images)
        if after is not None:
            query = query.where(key > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
        query = query.order_by(images.c.region_id, images.c.image_id).limit(_BACKFILL_CHUNK)
        rows = [dict(row._mapping) for row in bind.execute(query)]
        if not rows:
            return
        yield rows
        after = (rows[-1]["region_id"], rows[-1]["image_id"])


def _children(
    bind: sa.Connection, table: str, first: dict[str, Any], last: dict[str, Any]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The rows of `table` for the images from `first` to `last` (key order), by image."""
    children = sa.table(table, sa.column("region_id"), sa.column("image_id"))
    key = sa.tuple_(children.c.region_id, children.c.image_id)
    query = (
        sa.select(sa.text("*"))
        .select_from(children)
        .where(
            key >= sa.tuple_(sa.literal(first["region_id"]), sa.literal(first["image_id"])),
            key <= sa.tuple_(sa.literal(last["region_id"]), sa.literal(last["image_id"])),
        )
    )
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in bind.execute(query):
        mapping = dict(row._mapping)
        grouped.setdefault((mapping["region_id"], mapping["image_id"]), []).append(mapping)
    return grouped


def _first_fetch(bind: sa.Connection) -> dict[tuple[str, str], int]:
    """For each image, the first run whose kept results fetched it."""
    rows = bind.execute(
        sa.text(
            "SELECT region_id, image_id, MIN(run_id) FROM crawl_results"
            " WHERE outcome = 'fetched' GROUP BY region_id, image_id"
        )
    )
    return {(region, image): int(run) for region, image, run in rows}


def _missing_from(bind: sa.Connection) -> dict[tuple[str, str], int]:
    """For each missing image, the first run after its last fetch that found it missing."""
    rows = bind.execute(
        sa.text(
            "SELECT r.region_id, r.image_id, MIN(r.run_id) FROM crawl_results AS r"
            " JOIN images AS i ON i.region_id = r.region_id AND i.image_id = r.image_id"
            " WHERE r.outcome = 'missing' AND i.missing_since IS NOT NULL"
            " AND r.run_id > COALESCE(i.last_run_id, 0)"
            " GROUP BY r.region_id, r.image_id"
        )
    )
    return {(region, image): int(run) for region, image, run in rows}


def _versions(
    image: dict[str, Any], content: Any, first_fetch: int | None, missing_from: int | None
) -> list[dict[str, Any]]:
    """The backfilled versions of one image: `present`, then `missing` if it went."""
    valid_from = first_fetch or image["last_run_id"]
    spans: list[tuple[int, int | None, str]] = []
    if image["missing_since"] is None:
        spans.append((valid_from, None, "present"))
    else:
        gone = missing_from or image["last_run_id"]
        if valid_from < gone:
            spans.append((valid_from, gone, "present"))
        spans.append((gone, None, "missing"))
    return [
        {
            "region_id": image["region_id"],
            "image_id": image["image_id"],
            "version": version,
            "valid_from_run": start,
            "valid_to_run": end,
            "status": status,
            "content_hash": content.hash,
            "content": content.text,
        }
        for version, (start, end, status) in enumerate(spans, 1)
    ]


def _backfill(bind: sa.Connection) -> None:
    recorded_at = _recorded_at()
    first_run = bind.execute(sa.text("SELECT MIN(run_id) FROM crawl_runs")).scalar()
    first_fetch, missing_from = _first_fetch(bind), _missing_from(bind)
    for images in _image_chunks(bind):
        first, last = images[0], images[-1]
        disks = _children(bind, "disks", first, last)
        attachments = _children(bind, "attachments", first, last)
        tags = _children(bind, "tags", first, last)
        versions = []
        for image in images:
            key = (image["region_id"], image["image_id"])
            image["last_run_id"] = image["last_run_id"] or first_run
            if image["last_run_id"] is None:
                continue  # rows written by hand, with no run at all: history starts at a fetch
            columns = {name: value for name, value in image.items() if name not in _BOOKKEEPING}
            content = canonical(
                content_of(columns, disks.get(key, []), attachments.get(key, []), tags.get(key, []))
            )
            for version in _versions(image, content, first_fetch.get(key), missing_from.get(key)):
                versions.append({**version, "recorded_at": recorded_at})
        if versions:
            bind.execute(sa.insert(_VERSIONS), versions)
