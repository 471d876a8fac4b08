"""The inventory database's tables, as SQLAlchemy Core definitions.

The migrations under `migrations/` own the real schema; these definitions are what the store
writes through and what a test compares the migrations against (they must agree exactly).

Conventions (CONTRACT.md §6): timestamps are TEXT in UTC, `YYYY-MM-DD HH:MM:SS` for API times
and `YYYY-MM-DD HH:MM:SS.ffffff` for the crawler's own clock, so SQLite's `datetime(col)` gives the
instant; booleans are INTEGER 0/1; anything unknown or unconvertible is NULL. One exception in
storage, not in what is read: SQLite keeps `crawl_results.finished_at` as integer microseconds
(`finished_us`) and generates the text from them (`sqlite_crawl_results`, migration 0006).

Tables:
    images         one row per (region_id, image_id) ever fetched; `raw` keeps the API object.
    disks          the image's disk mappings: slot `system` (position 0) or `data` (array index).
    attachments    a cloud disk's `attachments[seq]`.
    tags           a cloud disk's tags, one row per key.
    crawl_runs     one row per crawl.
    crawl_targets  the targets of a run, so it can be resumed and audited.
    crawl_results  the outcome of each target of a run.
    rate_budgets   the shared per-access-key rate budget of multi-host crawls (PostgreSQL).
    image_versions one row per change of an image's whole aggregate, valid from one run to
                   another (see `crawler.store.content` for the canonical content).

Children cascade: deleting an images row deletes its disks, and a disks row its attachments and
tags (with `PRAGMA foreign_keys=ON`); deleting a crawl_runs row deletes its targets and results.
The views the migrations add for audit queries are listed in `VIEW_NAMES`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from crawler.models import Outcome, RunStatus, VersionStatus

metadata = MetaData()

# Audit views created by the migrations (documented in migrations/versions/0001_initial.py).
VIEW_NAMES: tuple[str, ...] = (
    "image_summary",
    "images_by_region_os",
    "images_not_ready",
    "shared_or_marketplace_images",
    "missing_images",
    "newly_missing_images",
    "data_disks_by_type",
    "attached_disks",
    "tag_keys",
    "latest_run",
    "latest_run_failures",
    "image_changes",
    "versioned_images",
    "versioned_disks",
    "versioned_attachments",
)


def _text(name: str, *, nullable: bool = True) -> Column[str]:
    return Column(name, Text, nullable=nullable)


def _int(name: str, *, nullable: bool = True) -> Column[int]:
    return Column(name, Integer, nullable=nullable)


def _count(name: str) -> Column[int]:
    return Column(name, Integer, nullable=False, server_default=text("0"))


class _JsonbOnPostgreSQL(TypeDecorator[Any]):
    """`impl` everywhere but on PostgreSQL, where it is `jsonb`. As `impl.with_variant(JSONB(),
    "postgresql")`, but without importing `sqlalchemy.dialects.postgresql` (its psycopg,
    asyncpg and psycopg2 modules: ~20 ms of every SQLite crawl's start-up) until a PostgreSQL
    dialect asks for the type."""

    impl: Any = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(self.impl_instance)


class _JsonbOrJson(_JsonbOnPostgreSQL):
    """SQLAlchemy's JSON (SQLite's `JSON` column, values encoded by it) elsewhere."""

    impl = JSON
    cache_ok = True


# PostgreSQL's own types (the SQLite schema is unchanged by them): 64-bit integers where values
# can pass 2**31, and jsonb for JSON so that `raw->>'name'` works in psql.
BIG_INTEGER = Integer().with_variant(BigInteger(), "postgresql")
JSON_TEXT = _JsonbOnPostgreSQL()
# An instant the database compares itself (a lease's expiry): timestamptz on PostgreSQL (the
# generic DateTime(timezone=True) is PostgreSQL's TIMESTAMP WITH TIME ZONE, without its import).
INSTANT = Text().with_variant(DateTime(timezone=True), "postgresql")


def _big(name: str, *, nullable: bool = True) -> Column[int]:
    return Column(name, BIG_INTEGER, nullable=nullable)


def _big_count(name: str) -> Column[int]:
    return Column(name, BIG_INTEGER, nullable=False, server_default=text("0"))


def _one_of(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    listed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})", name=name)


images = Table(
    "images",
    metadata,
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
    Column("raw", JSON_TEXT, nullable=False),
    # What the rows were made from (`crawler.normalise.raw_digest`): the re-crawl's fast path.
    Column("raw_digest", LargeBinary),
    # The describeImage answer they were made from, its requestId cut out
    # (`crawler.client.answer_digest`): an unchanged re-crawl's answer is then not even parsed.
    Column("answer_digest", LargeBinary),
    PrimaryKeyConstraint("region_id", "image_id", name="pk_images"),
)
Index("ix_images_image_id", images.c.image_id)
Index("ix_images_image_source", images.c.image_source)
Index("ix_images_status", images.c.status)
Index("ix_images_os_type_platform", images.c.os_type, images.c.platform)
Index("ix_images_missing_since", images.c.missing_since)
Index("ix_images_last_run_id", images.c.last_run_id)

disks = Table(
    "disks",
    metadata,
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
    PrimaryKeyConstraint("region_id", "image_id", "slot", "position", name="pk_disks"),
    ForeignKeyConstraint(
        ["region_id", "image_id"],
        ["images.region_id", "images.image_id"],
        name="fk_disks_images",
        ondelete="CASCADE",
    ),
    _one_of("slot", ("system", "data"), "ck_disks_slot"),
)
Index("ix_disks_disk_type", disks.c.disk_type)
Index("ix_disks_disk_id", disks.c.disk_id)

_DISK_KEY = ("region_id", "image_id", "slot", "position")
_DISK_REFERENCE = [f"disks.{column}" for column in _DISK_KEY]

attachments = Table(
    "attachments",
    metadata,
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
    PrimaryKeyConstraint(*_DISK_KEY, "seq", name="pk_attachments"),
    ForeignKeyConstraint(
        list(_DISK_KEY), _DISK_REFERENCE, name="fk_attachments_disks", ondelete="CASCADE"
    ),
)
Index("ix_attachments_instance_id", attachments.c.instance_id)

tags = Table(
    "tags",
    metadata,
    _text("region_id", nullable=False),
    _text("image_id", nullable=False),
    _text("slot", nullable=False),
    _int("position", nullable=False),
    _text("key", nullable=False),
    _text("value"),
    PrimaryKeyConstraint(*_DISK_KEY, "key", name="pk_tags"),
    ForeignKeyConstraint(
        list(_DISK_KEY), _DISK_REFERENCE, name="fk_tags_disks", ondelete="CASCADE"
    ),
)
Index("ix_tags_key_value", tags.c.key, tags.c.value)

crawl_runs = Table(
    "crawl_runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
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
    _one_of("status", tuple(RunStatus), "ck_crawl_runs_status"),
    # AUTOINCREMENT: run ids only ever increase, even after the newest run is deleted.
    sqlite_autoincrement=True,
)

crawl_targets = Table(
    "crawl_targets",
    metadata,
    _int("run_id", nullable=False),
    _text("region_id", nullable=False),
    _text("image_id", nullable=False),
    # The lease of a claim when several workers crawl one run (PostgreSQL; see crawler.claims).
    Column("claims", Integer, nullable=False, server_default=text("0")),
    _text("lease_owner"),
    Column("lease_expires_at", INSTANT),
    PrimaryKeyConstraint("run_id", "region_id", "image_id", name="pk_crawl_targets"),
    ForeignKeyConstraint(
        ["run_id"], ["crawl_runs.run_id"], name="fk_crawl_targets_crawl_runs", ondelete="CASCADE"
    ),
    # A row per target per run: the key is the whole row, so no rowid beside it (SQLite only).
    sqlite_with_rowid=False,
)

# The token bucket that every host crawling with one access key draws from (crawler.budget).
rate_budgets = Table(
    "rate_budgets",
    metadata,
    _text("key_id", nullable=False),
    Column("next_free_s", Float, nullable=False, server_default=text("0")),
    Column("held_until_s", Float, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("key_id", name="pk_rate_budgets"),
)


def _crawl_results(into: MetaData, *finished: Column[Any]) -> Table:
    return Table(
        "crawl_results",
        into,
        _int("run_id", nullable=False),
        _text("region_id", nullable=False),
        _text("image_id", nullable=False),
        _text("outcome", nullable=False),
        _int("http_status"),
        _text("error_status"),
        _text("error_message"),
        _int("attempts", nullable=False),
        _text("request_id"),
        *finished,
        PrimaryKeyConstraint("run_id", "region_id", "image_id", name="pk_crawl_results"),
        ForeignKeyConstraint(
            ["run_id"],
            ["crawl_runs.run_id"],
            name="fk_crawl_results_crawl_runs",
            ondelete="CASCADE",
        ),
        _one_of("outcome", tuple(Outcome), "ck_crawl_results_outcome"),
        sqlite_with_rowid=False,  # a row per target per run: the key is stored once, as the table
    )


crawl_results = _crawl_results(metadata, _text("finished_at", nullable=False))

image_versions = Table(
    "image_versions",
    metadata,
    _text("region_id", nullable=False),
    _text("image_id", nullable=False),
    _int("version", nullable=False),
    _int("valid_from_run", nullable=False),
    _int("valid_to_run"),
    _text("status", nullable=False),
    _text("content_hash", nullable=False),
    # JSON text on SQLite, jsonb on PostgreSQL; the store writes the canonical text itself.
    Column("content", _JsonbOrJson(), nullable=False),
    _text("recorded_at", nullable=False),
    PrimaryKeyConstraint("region_id", "image_id", "version", name="pk_image_versions"),
    _one_of("status", tuple(VersionStatus), "ck_image_versions_status"),
)
Index("ix_image_versions_valid_from_run", image_versions.c.valid_from_run)


# SQLite's own layout of `crawl_results` (migration 0006), the only table whose storage differs:
# a row per target per run is most of what a database grows by, and the finish time as text was
# 26 of its ~107 bytes. SQLite stores it as integer microseconds since the Unix epoch
# (`finished_us`, 8 bytes), and `finished_at` is a VIRTUAL generated column giving the same
# `YYYY-MM-DD HH:MM:SS.ffffff` text as before, to the microsecond, so that readers, views,
# `datetime(finished_at)` and `SELECT *` see no difference. PostgreSQL keeps the text column.
# `metadata_for("sqlite")` holds every table with this one in place of `crawl_results`. SQLite
# computes a generated column on every insert (for its constraints), so the expression is the
# cheapest found: ~0.25 µs a row more than inserting the text (strftime() instead: ~0.45 µs).
# Times before 1970 would read wrongly (integer division truncates towards zero): the crawler's
# own clock writes none.
FINISHED_AT_FROM_US = (
    "datetime(finished_us / 1000000, 'unixepoch') || printf('.%06d', finished_us % 1000000)"
)
sqlite_metadata = MetaData()
for _table in metadata.sorted_tables:
    if _table is not crawl_results:
        _table.to_metadata(sqlite_metadata)
sqlite_crawl_results = _crawl_results(
    sqlite_metadata,
    Column("finished_at", Text, Computed(FINISHED_AT_FROM_US, persisted=False), nullable=False),
    Column("finished_us", Integer, nullable=False),
)


def metadata_for(dialect_name: str) -> MetaData:
    """The tables as stored by the database `dialect_name` names (SQLAlchemy's dialect name)."""
    return sqlite_metadata if dialect_name == "sqlite" else metadata


def results_table(dialect_name: str) -> Table:
    """`crawl_results` as the database `dialect_name` stores it (what the writer writes to)."""
    return sqlite_crawl_results if dialect_name == "sqlite" else crawl_results
