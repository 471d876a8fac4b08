"""Initial schema: the inventory tables, their indexes and the audit views.

Revision ID: 0001
Revises:
Create Date: 2024-01-01 00:00:00

Everything is spelt out here rather than taken from `crawler.schema`, so this revision keeps
meaning what it meant when later revisions change the tables; a test checks the two agree at head.

Views (SQLite checks a view's SQL when a table it reads is renamed, so a later batch migration
that rebuilds one of these tables must drop the views that read it first and recreate them after):

- `image_summary`: one row per image: region, id, name, OS, platform, source, status, created_at,
  missing_since, last_seen_at, the system disk's category, type and size (the disk row's size,
  else the image's `system_disk_size_gb`), and the number and total GB of its data disks.
- `images_by_region_os`: image counts (and how many are missing) per region, OS type and platform.
- `images_not_ready`: present (not missing) images whose status is not `ready`, or unknown.
- `shared_or_marketplace_images`: images someone else publishes (`imageSource` shared, share,
  community, thirdparty or marketplace; the API uses both vocabularies).
- `missing_images`: images with `missing_since` set (a definitive 404 in some run).
- `newly_missing_images`: the images the newest run found missing for the first time.
- `data_disks_by_type`: data disks counted by disk type and size, with how many images use them.
- `attached_disks`: each cloud-disk attachment with its disk's device, type and size.
- `tag_keys`: the tag keys in use on disks, how often, and with how many distinct values.
- `latest_run`: the newest crawl_runs row.
- `latest_run_failures`: the crawl_results of the newest run whose outcome is `failed`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_DISK_KEY = ["region_id", "image_id", "slot", "position"]
_IMAGE_INDEXES = (
    ("image_id",),
    ("image_source",),
    ("status",),
    ("os_type", "platform"),
    ("missing_since",),
    ("last_run_id",),
)

VIEWS: dict[str, str] = {
    "image_summary": """
        SELECT i.region_id, i.image_id, i.name, i.os_type, i.os_version, i.platform,
               i.architecture, i.image_source, i.status, i.created_at, i.missing_since,
               i.last_seen_at,
               sd.disk_category AS system_disk_category,
               sd.disk_type AS system_disk_type,
               COALESCE(sd.disk_size_gb, i.system_disk_size_gb) AS system_disk_size_gb,
               (SELECT COUNT(*) FROM disks AS d
                 WHERE d.region_id = i.region_id AND d.image_id = i.image_id
                   AND d.slot = 'data') AS data_disk_count,
               (SELECT COALESCE(SUM(d.disk_size_gb), 0) FROM disks AS d
                 WHERE d.region_id = i.region_id AND d.image_id = i.image_id
                   AND d.slot = 'data') AS data_disk_total_gb
          FROM images AS i
          LEFT JOIN disks AS sd
            ON sd.region_id = i.region_id AND sd.image_id = i.image_id
           AND sd.slot = 'system' AND sd.position = 0
    """,
    "images_by_region_os": """
        SELECT region_id, os_type, platform, COUNT(*) AS images,
               COUNT(missing_since) AS missing
          FROM images
         GROUP BY region_id, os_type, platform
    """,
    "images_not_ready": """
        SELECT region_id, image_id, name, image_source, status, progress, created_at,
               last_seen_at
          FROM images
         WHERE missing_since IS NULL AND (status IS NULL OR status <> 'ready')
    """,
    "shared_or_marketplace_images": """
        SELECT region_id, image_id, name, image_source, owner_pin, launch_permission,
               os_type, platform, status, missing_since
          FROM images
         WHERE image_source IN ('shared', 'share', 'community', 'thirdparty', 'marketplace')
    """,
    "missing_images": """
        SELECT region_id, image_id, name, os_type, platform, image_source, status,
               missing_since, last_seen_at, last_run_id
          FROM images
         WHERE missing_since IS NOT NULL
    """,
    "data_disks_by_type": """
        SELECT disk_type, disk_size_gb, COUNT(*) AS disks,
               COUNT(DISTINCT region_id || '/' || image_id) AS images
          FROM disks
         WHERE slot = 'data'
         GROUP BY disk_type, disk_size_gb
    """,
    "attached_disks": """
        SELECT a.region_id, a.image_id, a.slot, a.position, a.seq, d.device_name,
               COALESCE(a.disk_id, d.disk_id) AS disk_id, d.disk_type, d.disk_size_gb,
               a.attachment_id, a.instance_id, a.instance_type, a.status, a.attached_at
          FROM attachments AS a
          JOIN disks AS d
            ON d.region_id = a.region_id AND d.image_id = a.image_id
           AND d.slot = a.slot AND d.position = a.position
    """,
    "tag_keys": """
        SELECT "key", COUNT(*) AS disks, COUNT(DISTINCT value) AS distinct_values
          FROM tags
         GROUP BY "key"
    """,
    "latest_run": """
        SELECT run_id, started_at, finished_at, status, targets_total, fetched, missing,
               failed, requests, retries, strategy, message
          FROM crawl_runs
         ORDER BY run_id DESC
         LIMIT 1
    """,
    "latest_run_failures": """
        SELECT r.run_id, r.region_id, r.image_id, r.http_status, r.error_status,
               r.error_message, r.attempts, r.request_id, r.finished_at
          FROM crawl_results AS r
         WHERE r.run_id = (SELECT MAX(run_id) FROM crawl_runs) AND r.outcome = 'failed'
    """,
    # After the views it reads: missing_images and latest_run.
    "newly_missing_images": """
        SELECT m.region_id, m.image_id, m.name, m.os_type, m.platform, m.image_source,
               m.status, m.missing_since, m.last_seen_at, m.last_run_id
          FROM missing_images AS m
         WHERE m.missing_since >= (SELECT started_at FROM latest_run)
    """,
}


def _text(name: str, *, nullable: bool = True) -> sa.Column[str]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _int(name: str, *, nullable: bool = True) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=nullable)


def _count(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False, server_default=sa.text("0"))


# On PostgreSQL only (SQLite's INTEGER is 64-bit and its TEXT holds JSON already, so the SQLite
# schema is exactly what it was): 64-bit integers where values can pass 2**31, jsonb for JSON.
_BIG = sa.Integer().with_variant(sa.BigInteger(), "postgresql")
_JSON = sa.Text().with_variant(postgresql.JSONB(), "postgresql")


def _big(name: str, *, nullable: bool = True) -> sa.Column[int]:
    return sa.Column(name, _BIG, nullable=nullable)


def _big_count(name: str) -> sa.Column[int]:
    return sa.Column(name, _BIG, nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    """Create the tables, their indexes, then the views."""
    _create_images()
    _create_disks()
    _create_disk_children()
    _create_crawl_tables()
    for name, select in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select.strip()}")


def downgrade() -> None:
    """Drop the views, then the tables children first."""
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_crawl_results_run_id_outcome", table_name="crawl_results")
    for table in ("crawl_results", "crawl_targets", "crawl_runs"):
        op.drop_table(table)
    op.drop_index("ix_tags_key_value", table_name="tags")
    op.drop_table("tags")
    op.drop_index("ix_attachments_instance_id", table_name="attachments")
    op.drop_table("attachments")
    for index in ("ix_disks_disk_id", "ix_disks_disk_type"):
        op.drop_index(index, table_name="disks")
    op.drop_table("disks")
    for column in _IMAGE_INDEXES:
        op.drop_index(f"ix_images_{'_'.join(column)}", table_name="images")
    op.drop_table("images")


def _create_images() -> None:
    op.create_table(
        "images",
        _text("region_id", nullable=False),
        _text("image_id", nullable=False),
        _text("name"),
        _text("description"),
        _text("architecture"),
        _text("os_type"),
        _text("platform"),
        _text("os_version"),
        _text("image_source"),
        _text("status"),
        _int("progress"),
        _text("root_device_type"),
        _big("size_mb"),
        _int("system_disk_size_gb"),
        _text("snapshot_id"),
        _text("created_at"),
        _text("launch_permission"),
        _text("owner_pin"),
        _text("login_name"),
        _int("offline"),
        _int("uefi_support"),
        _int("imported"),
        _text("boot_mode"),
        _text("instance_id"),
        _text("expired_at"),
        _text("first_seen_at"),
        _text("last_seen_at"),
        _int("last_run_id"),
        _text("missing_since"),
        sa.Column("raw", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("region_id", "image_id", name="pk_images"),
    )
    for columns in _IMAGE_INDEXES:
        op.create_index(f"ix_images_{'_'.join(columns)}", "images", list(columns))


def _create_disks() -> None:
    op.create_table(
        "disks",
        _text("region_id", nullable=False),
        _text("image_id", nullable=False),
        _text("slot", nullable=False),
        _int("position", nullable=False),
        _text("device_name"),
        _text("disk_category"),
        _int("auto_delete"),
        _text("mapping_status"),
        _text("disk_type"),
        _int("disk_size_gb"),
        _text("disk_id"),
        _text("az"),
        _text("name"),
        _text("description"),
        _text("status"),
        _text("snapshot_id"),
        _int("multi_attachable"),
        _int("encrypted"),
        _int("enabled"),
        _int("iops"),
        _int("throughput"),
        _text("created_at"),
        _text("charge_mode"),
        _text("charge_status"),
        _text("charge_start_at"),
        _text("charge_expired_at"),
        _text("charge_retire_at"),
        sa.PrimaryKeyConstraint(*_DISK_KEY, name="pk_disks"),
        sa.ForeignKeyConstraint(
            ["region_id", "image_id"],
            ["images.region_id", "images.image_id"],
            name="fk_disks_images",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("slot IN ('system', 'data')", name="ck_disks_slot"),
    )
    op.create_index("ix_disks_disk_type", "disks", ["disk_type"])
    op.create_index("ix_disks_disk_id", "disks", ["disk_id"])


def _disk_reference(name: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        _DISK_KEY, [f"disks.{column}" for column in _DISK_KEY], name=name, ondelete="CASCADE"
    )


def _create_disk_children() -> None:
    op.create_table(
        "attachments",
        _text("region_id", nullable=False),
        _text("image_id", nullable=False),
        _text("slot", nullable=False),
        _int("position", nullable=False),
        _int("seq", nullable=False),
        _text("attachment_id"),
        _text("disk_id"),
        _text("instance_id"),
        _text("instance_type"),
        _text("status"),
        _text("attached_at"),
        sa.PrimaryKeyConstraint(*_DISK_KEY, "seq", name="pk_attachments"),
        _disk_reference("fk_attachments_disks"),
    )
    op.create_index("ix_attachments_instance_id", "attachments", ["instance_id"])
    op.create_table(
        "tags",
        _text("region_id", nullable=False),
        _text("image_id", nullable=False),
        _text("slot", nullable=False),
        _int("position", nullable=False),
        _text("key", nullable=False),
        _text("value"),
        sa.PrimaryKeyConstraint(*_DISK_KEY, "key", name="pk_tags"),
        _disk_reference("fk_tags_disks"),
    )
    op.create_index("ix_tags_key_value", "tags", ["key", "value"])


def _run_reference(name: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["run_id"], ["crawl_runs.run_id"], name=name, ondelete="CASCADE")


def _create_crawl_tables() -> None:
    op.create_table(
        "crawl_runs",
        sa.Column("run_id", sa.Integer(), primary_key=True, autoincrement=True),
        _text("started_at", nullable=False),
        _text("finished_at"),
        _text("status", nullable=False),
        _count("targets_total"),
        _count("fetched"),
        _count("missing"),
        _count("failed"),
        _big_count("requests"),
        _big_count("retries"),
        _text("strategy"),
        _text("message"),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')",
            name="ck_crawl_runs_status",
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "crawl_targets",
        _int("run_id", nullable=False),
        _text("region_id", nullable=False),
        _text("image_id", nullable=False),
        sa.PrimaryKeyConstraint("run_id", "region_id", "image_id", name="pk_crawl_targets"),
        _run_reference("fk_crawl_targets_crawl_runs"),
    )
    op.create_table(
        "crawl_results",
        _int("run_id", nullable=False),
        _text("region_id", nullable=False),
        _text("image_id", nullable=False),
        _text("outcome", nullable=False),
        _int("http_status"),
        _text("error_status"),
        _text("error_message"),
        _int("attempts", nullable=False),
        _text("request_id"),
        _text("finished_at", nullable=False),
        sa.PrimaryKeyConstraint("run_id", "region_id", "image_id", name="pk_crawl_results"),
        _run_reference("fk_crawl_results_crawl_runs"),
        sa.CheckConstraint(
            "outcome IN ('fetched', 'missing', 'failed')", name="ck_crawl_results_outcome"
        ),
    )
    op.create_index("ix_crawl_results_run_id_outcome", "crawl_results", ["run_id", "outcome"])
