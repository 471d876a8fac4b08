"""The table definitions, checked against a real SQLite file built by the migrations."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from crawler import schema
from crawler.models import ImageRows, Outcome, RunStatus
from crawler.normalise import normalise_image
from crawler.store import migrate

DOCS_EXAMPLE = Path(__file__).parent / "data" / "docs_describeImages_example.json"
BEIJING = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def db(db_path: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(db_path, isolation_level=None)) as connection:
        connection.execute("PRAGMA foreign_keys=ON")
        yield connection


def insert(db: sqlite3.Connection, table: str, **row: Any) -> None:
    columns = ", ".join(f'"{column}"' for column in row)
    values = ", ".join(f":{column}" for column in row)
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", row)


def insert_rows(db: sqlite3.Connection, rows: ImageRows, **bookkeeping: Any) -> None:
    insert(db, "images", **rows.image, **bookkeeping)
    for table, children in (("disks", rows.disks), ("attachments", rows.attachments)):
        for child in children:
            insert(db, table, **child)
    for tag in rows.tags:
        insert(db, "tags", **tag)


def count(db: sqlite3.Connection, table: str) -> int:
    value: int = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return value


def cloud_image(image_id: str, **fields: Any) -> dict[str, Any]:
    disk = {
        "diskCategory": "cloud",
        "deviceName": "vdb",
        "cloudDisk": {
            "diskId": f"vol-{image_id}",
            "diskType": "ssd.io1",
            "diskSizeGB": 100,
            "attachments": [{"attachmentId": "att-1", "instanceId": "i-1", "status": "attached"}],
            "tags": [{"key": "env", "value": "prod"}, {"key": "team", "value": "infra"}],
        },
    }
    image = {
        "imageId": image_id,
        "osType": "linux",
        "platform": "Ubuntu",
        "imageSource": "private",
        "status": "ready",
        "systemDiskSizeGB": 40,
        "systemDisk": {"diskCategory": "local", "localDisk": {"diskType": "ssd", "diskSizeGB": 40}},
        "dataDisks": [disk, disk | {"deviceName": "vdc"}],
    }
    return image | fields


def test_migrations_and_table_definitions_agree(db_path: Path) -> None:
    engine = create_engine(f"sqlite:///{db_path}", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, schema.metadata_for("sqlite")) == []
    finally:
        engine.dispose()


def test_view_names_are_the_migrated_views(db: sqlite3.Connection) -> None:
    views = db.execute("SELECT name FROM sqlite_master WHERE type = 'view'").fetchall()
    assert sorted(name for (name,) in views) == sorted(schema.VIEW_NAMES)


def image_with_children(db: sqlite3.Connection) -> None:
    rows = normalise_image("cn-north-1", cloud_image("img-a"), naive_tz=BEIJING)
    assert (len(rows.disks), len(rows.attachments), len(rows.tags)) == (3, 2, 4)
    insert_rows(db, rows)


def test_deleting_an_image_cascades_to_disks_attachments_and_tags(db: sqlite3.Connection) -> None:
    image_with_children(db)
    db.execute("DELETE FROM images WHERE image_id = 'img-a'")
    assert [count(db, table) for table in ("disks", "attachments", "tags")] == [0, 0, 0]


def test_deleting_a_disk_cascades_to_its_attachments_and_tags(db: sqlite3.Connection) -> None:
    image_with_children(db)
    db.execute("DELETE FROM disks WHERE slot = 'data' AND position = 0")
    assert [count(db, table) for table in ("disks", "attachments", "tags")] == [2, 1, 2]


def test_children_need_a_parent(db: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        insert(db, "disks", region_id="cn-north-1", image_id="img-none", slot="system", position=0)


def test_disk_slot_is_system_or_data(db: sqlite3.Connection) -> None:
    insert(db, "images", region_id="r", image_id="img-a", raw="{}")
    with pytest.raises(sqlite3.IntegrityError, match="ck_disks_slot"):
        insert(db, "disks", region_id="r", image_id="img-a", slot="boot", position=0)


def new_run(db: sqlite3.Connection, status: str = "running", started_at: str = "") -> int:
    cursor = db.execute(
        "INSERT INTO crawl_runs (started_at, status) VALUES (?, ?)",
        (started_at or "2024-01-02 03:04:05.000000", status),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def result(db: sqlite3.Connection, run_id: int, image_id: str, outcome: str) -> None:
    insert(
        db,
        "crawl_results",
        run_id=run_id,
        region_id="cn-north-1",
        image_id=image_id,
        outcome=outcome,
        attempts=1,
        finished_us=1704164646000000,  # 2024-01-02 03:04:06 UTC (SQLite stores microseconds)
    )


def test_every_run_status_and_outcome_is_accepted(db: sqlite3.Connection) -> None:
    run_ids = [new_run(db, status) for status in RunStatus]
    for outcome in Outcome:
        result(db, run_ids[0], f"img-{outcome}", outcome)
    with pytest.raises(sqlite3.IntegrityError, match="ck_crawl_runs_status"):
        new_run(db, "done")
    with pytest.raises(sqlite3.IntegrityError, match="ck_crawl_results_outcome"):
        result(db, run_ids[0], "img-x", "skipped")


def test_run_counters_default_to_zero_and_ids_never_repeat(db: sqlite3.Connection) -> None:
    first, second = new_run(db), new_run(db)
    db.execute("DELETE FROM crawl_runs WHERE run_id = ?", (second,))
    assert new_run(db) == second + 1 == first + 2
    counters = db.execute(
        "SELECT targets_total, fetched, missing, failed, requests, retries "
        "FROM crawl_runs WHERE run_id = ?",
        (first,),
    ).fetchone()
    assert counters == (0, 0, 0, 0, 0, 0)


def test_deleting_a_run_cascades_to_its_targets_and_results(db: sqlite3.Connection) -> None:
    run_id = new_run(db)
    insert(db, "crawl_targets", run_id=run_id, region_id="cn-north-1", image_id="img-a")
    result(db, run_id, "img-a", "fetched")
    db.execute("DELETE FROM crawl_runs")
    assert (count(db, "crawl_targets"), count(db, "crawl_results")) == (0, 0)


def test_duplicate_targets_fold(db: sqlite3.Connection) -> None:
    run_id = new_run(db)
    for _ in range(2):
        db.execute(
            "INSERT OR IGNORE INTO crawl_targets (run_id, region_id, image_id)"
            " VALUES (?, 'cn-north-1', 'img-a')",
            (run_id,),
        )
    assert count(db, "crawl_targets") == 1


# --- views ------------------------------------------------------------------------------------


def rows_of(db: sqlite3.Connection, query: str, *args: Any) -> list[tuple[Any, ...]]:
    return db.execute(query, args).fetchall()


def docs_rows() -> list[ImageRows]:
    images = json.loads(DOCS_EXAMPLE.read_text("utf-8"))["result"]["images"]
    return [normalise_image("cn-north-1", image, naive_tz=BEIJING) for image in images]


@pytest.fixture
def inventory(db: sqlite3.Connection) -> sqlite3.Connection:
    """Two runs: the docs' images and a private image, of which one went missing in run 2."""
    first = new_run(db, "succeeded", "2024-01-01 00:00:00.000000")
    second = new_run(db, "partial", "2024-01-02 00:00:00.000000")
    for rows in docs_rows():
        insert_rows(db, rows, last_run_id=second, last_seen_at="2024-01-02 00:00:01.000000")
    rows = normalise_image("cn-east-2", cloud_image("img-gone", status="error"), naive_tz=BEIJING)
    insert_rows(db, rows, last_run_id=first, missing_since="2024-01-02 00:00:02.000000")
    rows = normalise_image(
        "cn-east-2", cloud_image("img-old", imageSource="shared"), naive_tz=BEIJING
    )
    insert_rows(db, rows, last_run_id=first, missing_since="2024-01-01 00:00:02.000000")
    result(db, first, "img-m5s0****29", "failed")
    result(db, second, "img-m5s0****29", "fetched")
    result(db, second, "img-m5s0****30", "failed")
    result(db, second, "img-gone", "missing")
    return db


def test_image_summary(inventory: sqlite3.Connection) -> None:
    summary = rows_of(
        inventory,
        "SELECT image_id, os_type, platform, image_source, status, created_at,"
        " system_disk_category, system_disk_type, system_disk_size_gb,"
        " data_disk_count, data_disk_total_gb FROM image_summary ORDER BY image_id",
    )
    assert summary == [
        ("img-gone", "linux", "Ubuntu", "private", "error", None, "local", "ssd", 40, 2, 200),
        ("img-m5s0****29", "linux", "CentOS", "public", "ready", "2021-01-28 08:49:05",
         "cloud", "ssd.gp1", 40, 0, 0),
        ("img-m5s0****30", "linux", "CentOS", "public", "ready", "2019-12-30 03:05:02",
         "cloud", "ssd.gp1", 40, 0, 0),
        ("img-old", "linux", "Ubuntu", "shared", "ready", None, "local", "ssd", 40, 2, 200),
    ]  # fmt: skip


def test_image_summary_falls_back_to_the_images_system_disk_size(db: sqlite3.Connection) -> None:
    insert(db, "images", region_id="r", image_id="img-a", system_disk_size_gb=20, raw="{}")
    assert rows_of(db, "SELECT system_disk_size_gb, data_disk_count FROM image_summary") == [
        (20, 0)
    ]


def test_latest_run_and_its_failures(inventory: sqlite3.Connection) -> None:
    assert rows_of(inventory, "SELECT run_id, status FROM latest_run") == [(2, "partial")]
    assert rows_of(inventory, "SELECT run_id, image_id FROM latest_run_failures") == [
        (2, "img-m5s0****30")
    ]


def test_missing_images(inventory: sqlite3.Connection) -> None:
    assert rows_of(inventory, "SELECT image_id FROM missing_images ORDER BY image_id") == [
        ("img-gone",),
        ("img-old",),
    ]
    assert rows_of(inventory, "SELECT image_id FROM newly_missing_images") == [("img-gone",)]


def test_audit_views(inventory: sqlite3.Connection) -> None:
    assert rows_of(inventory, "SELECT * FROM images_by_region_os ORDER BY region_id") == [
        ("cn-east-2", "linux", "Ubuntu", 2, 2),
        ("cn-north-1", "linux", "CentOS", 2, 0),
    ]
    assert rows_of(inventory, "SELECT image_id FROM images_not_ready") == []
    assert rows_of(inventory, "SELECT image_id FROM shared_or_marketplace_images") == [("img-old",)]
    assert rows_of(inventory, "SELECT * FROM data_disks_by_type") == [("ssd.io1", 100, 4, 2)]
    assert rows_of(inventory, "SELECT * FROM tag_keys ORDER BY key") == [
        ("env", 4, 1),
        ("team", 4, 1),
    ]
    attached = rows_of(
        inventory, "SELECT image_id, device_name, disk_id, instance_id FROM attached_disks"
    )
    assert sorted(attached) == [
        ("img-gone", "vdb", "vol-img-gone", "i-1"),
        ("img-gone", "vdc", "vol-img-gone", "i-1"),
        ("img-old", "vdb", "vol-img-old", "i-1"),
        ("img-old", "vdc", "vol-img-old", "i-1"),
    ]


def test_images_not_ready_leaves_out_missing_images(db: sqlite3.Connection) -> None:
    for image_id, status, missing_since in (
        ("img-a", "pending", None),
        ("img-b", None, None),
        ("img-c", "error", "2024-01-01 00:00:00.000000"),
        ("img-d", "ready", None),
    ):
        row = {"image_id": image_id, "status": status, "missing_since": missing_since}
        insert(db, "images", region_id="r", raw="{}", **row)
    assert rows_of(db, "SELECT image_id FROM images_not_ready ORDER BY image_id") == [
        ("img-a",),
        ("img-b",),
    ]


def test_sqlite_generates_finished_at_as_the_table_definition_says(db: sqlite3.Connection) -> None:
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'crawl_results'").fetchone()
    assert f"GENERATED ALWAYS AS ({schema.FINISHED_AT_FROM_US}) VIRTUAL" in sql
