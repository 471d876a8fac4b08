"""The store against real, migrated databases, filled with real normalised images.

Each test that reads back through the store's readers or SQLAlchemy runs twice (the `db_url`
fixture): on a new SQLite file under tmp_path and on a new PostgreSQL database. The few that test
something of SQLite's own say why they take `sqlite_url` instead.

Images come from `crawler.simulator.inventory` (the simulator's generator) through
`normalise_image`; the tests read the database back through SQLAlchemy, independently of the
store, and without anything SQLite's own (that is tests/test_dialect_sqlite.py's).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from crawler.errors import CrawlerError, StoreError, TargetsError
from crawler.models import ImageRows, JsonObject, Outcome, RunStatus, Target, TargetResult
from crawler.normalise import normalise_image, prepare_image
from crawler.simulator.inventory import Inventory, build_inventory
from crawler.store import (
    MissingGuard,
    RunSummary,
    Store,
    format_utc,
    parse_utc,
    query_readonly,
    recent_runs,
)
from crawler.store.database import database_name
from crawler.store.migrate import head_revision, sync_url

NAIVE_TZ = ZoneInfo("Asia/Shanghai")
REGIONS = ("cn-north-1", "cn-east-2")
START = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
COOKBOOK = Path(__file__).resolve().parent.parent / "README.md"
CHILD_TABLES = ("disks", "attachments", "tags")
IMAGE_TABLES = ("images", *CHILD_TABLES)


class Clock:
    """A UTC clock that moves one second per reading."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def url_of(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return url_of(tmp_path / "inventory.db")


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(db_url, clock=Clock())
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return build_inventory(REGIONS, 30, seed=11, missing_rate=0.1)


# --- building results ---------------------------------------------------------------------------


def at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


def normalised(region_id: str, image: JsonObject) -> ImageRows:
    return normalise_image(region_id, image, naive_tz=NAIVE_TZ)


def fetched(region_id: str, image: JsonObject, finished_at: datetime) -> TargetResult:
    """A fetch as the crawl hands it over: checked and encoded, rows built by the store."""
    target = Target(region_id, str(image["imageId"]))
    rows = prepare_image(region_id, image, naive_tz=NAIVE_TZ)
    return TargetResult(target, Outcome.FETCHED, 1, finished_at, http_status=200, rows=rows)


def missing(target: Target, finished_at: datetime) -> TargetResult:
    return TargetResult(
        target, Outcome.MISSING, 1, finished_at, http_status=404, error_status="NOT_FOUND",
        error_message=f"image {target.image_id} not found", request_id="req-404",
    )  # fmt: skip


def failed(target: Target, finished_at: datetime, *, attempts: int = 6) -> TargetResult:
    return TargetResult(
        target, Outcome.FAILED, attempts, finished_at, http_status=503,
        error_status="SERVICE_UNAVAILABLE", error_message="retries exhausted",
        request_id="req-503",
    )  # fmt: skip


def existing(inventory: Inventory) -> list[tuple[str, JsonObject]]:
    return [(region, image) for region in REGIONS for image in inventory.images[region]]


def target_of(region_id: str, image: JsonObject) -> Target:
    return Target(region_id, str(image["imageId"]))


def rich_image(inventory: Inventory) -> tuple[str, JsonObject]:
    """An inventory image with the most attachments and tags on its data disks."""

    def children(pair: tuple[str, JsonObject]) -> int:
        rows = normalised(*pair)
        return len(rows.disks) + len(rows.attachments) + len(rows.tags)

    return max(existing(inventory), key=children)


# --- reading the database back, independently of the store ------------------------------------


def engine_of(url: str) -> Engine:
    return create_engine(sync_url(url), poolclass=NullPool)


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def dump(url: str, table: str, *, timestamps: bool = False) -> list[tuple[Any, ...]]:
    """Every row of `table`, sorted; without the `*_at` columns (and SQLite's `finished_us`, the
    time `crawl_results.finished_at` is generated from) unless `timestamps`."""
    engine = engine_of(url)
    try:
        columns = [column["name"] for column in inspect(engine).get_columns(table)]
        kept = [c for c in columns if timestamps or not c.endswith(("_at", "_us"))]
        with engine.connect() as conn:
            rows = [
                tuple(row) for row in conn.execute(text(f"SELECT {', '.join(kept)} FROM {table}"))
            ]
    finally:
        engine.dispose()
    return sorted(rows, key=repr)


def dump_all(url: str, tables: Sequence[str], **options: bool) -> dict[str, list[Any]]:
    return {table: dump(url, table, **options) for table in tables}


def schema_of(url: str) -> list[Any]:
    """Every table with its columns and indexes, and every view, as reflected: to see that none
    changed."""
    engine = engine_of(url)
    try:
        inspector = inspect(engine)
        tables = [
            (
                table,
                [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
                sorted(map(str, inspector.get_indexes(table))),
            )
            for table in sorted(inspector.get_table_names())
        ]
        views = [(v, inspector.get_view_definition(v)) for v in inspector.get_view_names()]
    finally:
        engine.dispose()
    return [*tables, *sorted(views)]


def execute(url: str, sql: str, **params: Any) -> None:
    engine = engine_of(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def image_row(url: str, target: Target) -> dict[str, Any]:
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT * FROM images WHERE region_id = :region AND image_id = :image"),
                {"region": target.region_id, "image": target.image_id},
            ).first()
    finally:
        engine.dispose()
    assert row is not None, f"no images row for {target}"
    return dict(row._mapping)


def as_json(value: Any) -> Any:
    """A JSON column's value: text on SQLite, already parsed (jsonb) on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def count(url: str, table: str, target: Target) -> int:
    sql = f"SELECT COUNT(*) FROM {table} WHERE region_id = :region AND image_id = :image"
    return int(query(url, sql, region=target.region_id, image=target.image_id)[0][0])


# --- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 5, 1, 8, 0, 0, 120, tzinfo=UTC),
        datetime(2024, 5, 1, 16, 0, 0, 120, tzinfo=NAIVE_TZ),
        datetime(2024, 5, 1, 8, 0, 0, 120),  # naive: taken as UTC
    ],
)
def test_the_crawlers_timestamps_are_utc_text(moment: datetime) -> None:
    stored = format_utc(moment)
    assert stored == "2024-05-01 08:00:00.000120"
    assert parse_utc(stored) == datetime(2024, 5, 1, 8, 0, 0, 120, tzinfo=UTC)


# --- opening ------------------------------------------------------------------------------------


async def test_open_migrates_a_new_file(db_url: str) -> None:
    store = await Store.open(db_url)
    await store.close()
    assert query(db_url, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    engine = engine_of(db_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"images", *CHILD_TABLES, "crawl_runs", "crawl_targets", "crawl_results"} <= tables


async def test_open_reports_an_unusable_database_as_store_error(tmp_path: Path) -> None:
    """SQLite only: a file that is not an SQLite database (a server has no such thing)."""
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("this is not an SQLite database, just text " * 100)
    with pytest.raises(StoreError, match=r"notes\.db"):
        await Store.open(url_of(not_sqlite))


async def test_a_write_the_database_refuses_is_a_store_error_naming_it(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = existing(inventory)[0]
    # No crawl_runs row 999: the foreign key (on in every store connection) refuses the results.
    with pytest.raises(StoreError, match=re.escape(database_name(db_url))) as raised:
        await store.write_results(999, [fetched(region, image, at(1))])
    assert (
        "foreign key" in str(raised.value).lower()
    )  # SQLite: FOREIGN KEY; PostgreSQL: foreign key
    assert dump(db_url, "images") == []


# --- writing images -----------------------------------------------------------------------------


async def test_rewriting_the_same_image_changes_nothing_but_timestamps(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    run_id = await store.create_run([target_of(region, image)], strategy="single")
    await store.write_results(run_id, [fetched(region, image, at(1))])
    before = dump_all(db_url, (*IMAGE_TABLES, "crawl_results"))
    first = image_row(db_url, target_of(region, image))

    await store.write_results(run_id, [fetched(region, image, at(2))])

    assert dump_all(db_url, (*IMAGE_TABLES, "crawl_results")) == before
    assert all(before[table] for table in IMAGE_TABLES)  # the image really has every kind of row
    again = image_row(db_url, target_of(region, image))
    assert again["first_seen_at"] == first["first_seen_at"] == "2024-05-01 08:01:00.000000"
    assert again["last_seen_at"] == "2024-05-01 08:02:00.000000"


async def test_a_results_finish_time_reads_back_to_the_microsecond(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    # SQLite stores it as integer microseconds, `finished_at` generated from them (0006);
    # PostgreSQL as the text itself. Either way it reads as the ledger's other timestamps do.
    region, image = rich_image(inventory)
    gone = Target(region, "img-gone000000")
    times = {
        image["imageId"]: START + timedelta(microseconds=123_456),
        gone.image_id: datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    }
    run_id = await store.create_run([target_of(region, image), gone], strategy="single")
    results = [fetched(region, image, times[image["imageId"]]), missing(gone, times[gone.image_id])]
    await store.write_results(run_id, results)
    found = dict(query(db_url, "SELECT image_id, finished_at FROM crawl_results"))
    assert found == {
        image["imageId"]: "2024-05-01 08:00:00.123456",
        gone.image_id: "1999-12-31 23:59:59.999999",
    }
    if db_url.startswith("sqlite"):  # the instant, by SQLite's own date functions
        instants = query(db_url, "SELECT datetime(finished_at) FROM crawl_results ORDER BY 1")
        assert instants == [("1999-12-31 23:59:59",), ("2024-05-01 08:00:00",)]


async def test_an_unchanged_image_writes_no_version_and_keeps_its_children(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])
    await store.finish_run(first, RunStatus.SUCCEEDED, requests=1, retries=0)
    # A mark no crawl writes: a rewrite of the children from the API would remove it.
    execute(db_url, "UPDATE disks SET name = 'not-from-the-api'")

    second = await store.create_run([target], strategy="single")
    reordered = dict(reversed(list(image.items())))  # the same image, its keys in another order
    await store.write_results(second, [fetched(region, reordered, at(2))])

    assert {row[0] for row in query(db_url, "SELECT name FROM disks")} == {"not-from-the-api"}
    row = image_row(db_url, target)
    assert (row["last_seen_at"], row["last_run_id"]) == ("2024-05-01 08:02:00.000000", second)
    assert query(db_url, "SELECT version, valid_from_run, valid_to_run FROM image_versions") == [
        (1, first, None)
    ]


async def test_a_changed_image_closes_its_version_and_opens_the_next(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])
    second = await store.create_run([target], strategy="single")
    await store.write_results(second, [fetched(region, variant(image, 0), at(2))])
    # Fetched again in the same run (a resume): that run's version is replaced, not stacked.
    await store.write_results(second, [fetched(region, variant(image, 3), at(3))])

    versions = query(
        db_url,
        "SELECT version, valid_from_run, valid_to_run, status, content_hash, recorded_at"
        " FROM image_versions ORDER BY version",
    )
    assert [row[:4] for row in versions] == [
        (1, first, second, "present"),
        (2, second, None, "present"),
    ]
    assert versions[0][4] != versions[1][4]
    assert versions[1][5] == "2024-05-01 08:03:00.000000"
    stored = query(db_url, "SELECT content FROM image_versions WHERE version = 2")[0][0]
    assert as_json(stored)["disks"].keys() == {"system:0", "data:0", "data:1", "data:2"}


async def test_fetched_rows_hold_what_normalise_produced(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    run_id = await store.create_run([target], strategy="single")
    await store.write_results(run_id, [fetched(region, image, at(1))])

    rows = normalised(region, image)
    stored = image_row(db_url, target)
    if db_url.startswith("postgresql"):  # raw is jsonb there: the same JSON, parsed
        assert as_json(stored.pop("raw")) == json.loads(rows.image["raw"])
        stored["raw"] = rows.image["raw"]
    assert {column: stored[column] for column in rows.image} == rows.image
    assert stored["last_run_id"] == run_id
    assert stored["missing_since"] is None
    assert count(db_url, "disks", target) == len(rows.disks)
    assert count(db_url, "attachments", target) == len(rows.attachments)
    assert count(db_url, "tags", target) == len(rows.tags)


async def test_a_rewrite_replaces_the_children(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    run_id = await store.create_run([target], strategy="single")
    await store.write_results(run_id, [fetched(region, image, at(1))])
    assert count(db_url, "attachments", target) + count(db_url, "tags", target) > 0

    await store.write_results(run_id, [fetched(region, variant(image, 0), at(2))])
    assert [count(db_url, table, target) for table in CHILD_TABLES] == [1, 0, 0]

    await store.write_results(run_id, [fetched(region, variant(image, 3), at(3))])
    assert [count(db_url, table, target) for table in CHILD_TABLES] == [4, 3, 6]


def stored_children(url: str, target: Target) -> dict[str, set[tuple[Any, ...]]]:
    """Each child table's rows of `target`'s image, every column (by name, sorted)."""
    found = {}
    for table in CHILD_TABLES:
        rows = query(url, f"SELECT * FROM {table} WHERE region_id = :r AND image_id = :i",
                     r=target.region_id, i=target.image_id)  # fmt: skip
        names = [c["name"] for c in inspect(engine_of(url)).get_columns(table)]
        found[table] = {tuple(sorted(zip(names, row, strict=True))) for row in rows}
    return found


def rowids(url: str, table: str, key: str) -> dict[tuple[Any, ...], int]:
    """SQLite's rowid of each row of `table` by `key` (its columns, comma-separated)."""
    return {tuple(row[1:]): row[0] for row in query(url, f"SELECT rowid, {key} FROM {table}")}


async def test_a_changed_images_children_are_rewritten_in_place(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    edited = json.loads(json.dumps(image))
    disks = [d for d in edited["dataDisks"] if isinstance(d.get("cloudDisk"), dict)]
    assert len(disks) >= 2 and any(d["cloudDisk"].get("tags") for d in disks)
    disks[0]["cloudDisk"]["diskType"] = "edited.type"  # a row changed in place
    tagged = next(d["cloudDisk"] for d in disks if d["cloudDisk"].get("tags"))
    tagged["tags"] = [{**tagged["tags"][0], "value": "edited"}, {"key": "new", "value": "tag"}]
    attached = next((d["cloudDisk"] for d in disks if d["cloudDisk"].get("attachments")), None)
    if attached is not None:
        attached["attachments"] = []  # rows gone
    edited["dataDisks"] = edited["dataDisks"][:-1]  # a disk gone, with its attachments and tags
    keys = {
        "disks": "image_id, slot, position",
        "attachments": "image_id, slot, position, seq",
        "tags": "image_id, slot, position, key",
    }
    # Another image written after it, so that its rows are not the last of their tables (a
    # re-inserted row would get its old rowid back then).
    other_region, other = max(
        (pair for pair in existing(inventory) if pair[1]["imageId"] != image["imageId"]),
        key=lambda pair: len(normalised(*pair).disks),
    )
    other_target = target_of(other_region, other)

    run_id = await store.create_run([target, other_target], strategy="single")
    await store.write_results(run_id, [fetched(region, image, at(1))])
    await store.write_results(run_id, [fetched(other_region, other, at(1))])
    on_sqlite = db_url.startswith("sqlite")
    before = {table: rowids(db_url, table, key) for table, key in keys.items()} if on_sqlite else {}
    second = await store.create_run([target], strategy="single")
    await store.write_results(second, [fetched(region, edited, at(2))])

    expected = normalised(region, edited)
    assert stored_children(db_url, target) == {
        table: {tuple(sorted(row.items())) for row in getattr(expected, table)}
        for table in CHILD_TABLES
    }
    assert stored_children(db_url, target) != {
        table: {tuple(sorted(row.items())) for row in getattr(normalised(region, image), table)}
        for table in CHILD_TABLES
    }  # the edit really changed children
    if on_sqlite:  # a row whose key stays keeps its place (its rowid)
        for table, key in keys.items():
            after = rowids(db_url, table, key)
            kept = after.keys() & before[table].keys()
            assert kept, table
            assert {k: after[k] for k in kept} == {k: before[table][k] for k in kept}, table


async def test_missing_marks_at_the_end_of_the_run_without_deleting_and_a_fetch_clears_it(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])
    await store.finish_run(first, RunStatus.SUCCEEDED, requests=1, retries=0)
    children = dump_all(db_url, CHILD_TABLES, timestamps=True)

    second = await store.create_run([target], strategy="single")
    await store.write_results(second, [missing(target, at(2))])
    assert image_row(db_url, target)["missing_since"] is None  # not before the run ends
    await store.finish_run(second, RunStatus.SUCCEEDED, requests=1, retries=0)
    third = await store.create_run([target], strategy="single")
    await store.write_results(third, [missing(target, at(3))])
    await store.finish_run(third, RunStatus.SUCCEEDED, requests=1, retries=0)

    row = image_row(db_url, target)
    assert row["missing_since"] == "2024-05-01 08:02:00.000000"  # the first time is kept
    assert row["last_seen_at"] == "2024-05-01 08:01:00.000000"
    assert dump_all(db_url, CHILD_TABLES, timestamps=True) == children

    fourth = await store.create_run([target], strategy="single")
    await store.write_results(fourth, [fetched(region, image, at(4))])
    row = image_row(db_url, target)
    assert row["missing_since"] is None
    assert row["first_seen_at"] == "2024-05-01 08:01:00.000000"
    assert row["last_seen_at"] == "2024-05-01 08:04:00.000000"
    statuses = query(
        db_url,
        "SELECT version, valid_from_run, valid_to_run, status FROM image_versions ORDER BY 1",
    )
    assert statuses == [
        (1, first, second, "present"),
        (2, second, fourth, "missing"),
        (3, fourth, None, "present"),
    ]


@pytest.mark.parametrize(
    ("guard", "newly_missing", "present_before", "holds"),
    [
        (MissingGuard(0.2, 50), 50, 200, True),  # 25 % and 50 of them
        (MissingGuard(0.2, 50), 49, 200, False),  # under the minimum
        (MissingGuard(0.2, 50), 50, 250, False),  # exactly 20 %: not more than
        (MissingGuard(0.2, 0), 1, 1, True),
        (MissingGuard(1.0, 0), 100, 100, False),  # a fraction of 1 turns it off
        (MissingGuard(0.2, 50, accept=True), 100, 100, False),  # --accept-missing
        (MissingGuard(0.0, 1), 0, 10, False),  # nothing newly missing is never held
    ],
)
def test_the_guard_holds_more_than_the_fraction_and_at_least_the_minimum(
    guard: MissingGuard, newly_missing: int, present_before: int, holds: bool
) -> None:
    assert guard.holds(newly_missing, present_before) is holds


async def test_a_held_run_marks_nothing_until_accepted(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    pairs = existing(inventory)[:10]
    targets = [target_of(*pair) for pair in pairs]
    first = await store.create_run(targets, strategy="single")
    await store.write_results(first, [fetched(*pair, at(1)) for pair in pairs])
    await store.finish_run(first, RunStatus.SUCCEEDED, requests=10, retries=0)
    second = await store.create_run(targets, strategy="single")
    await store.write_results(second, [missing(target, at(2)) for target in targets[:3]])
    await store.write_results(second, [failed(target, at(2)) for target in targets[3:4]])
    await store.write_results(second, [fetched(*pair, at(2)) for pair in pairs[4:]])
    summary = await store.finish_run(
        second, RunStatus.PARTIAL, requests=10, retries=0, guard=MissingGuard(0.2, 3)
    )
    assert summary.status is RunStatus.HELD
    assert summary.message is not None
    assert "held back 3 missing marks: 3 of the 10 images" in summary.message
    assert f"crawler accept {second}" in summary.message
    assert query(db_url, "SELECT COUNT(*) FROM images WHERE missing_since IS NOT NULL") == [(0,)]

    accepted, marked = await store.accept_run(second)
    assert (accepted.status, marked) == (RunStatus.PARTIAL, 3)  # it had a failed target
    assert query(db_url, "SELECT COUNT(*) FROM images WHERE missing_since IS NOT NULL") == [(3,)]
    with pytest.raises(CrawlerError, match="not held"):
        await store.accept_run(second)


async def test_an_interrupted_or_failed_run_marks_nothing_missing(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])
    await store.finish_run(first, RunStatus.SUCCEEDED, requests=1, retries=0)
    for status in (RunStatus.INTERRUPTED, RunStatus.FAILED):
        run_id = await store.create_run([target], strategy="single")
        await store.write_results(run_id, [missing(target, at(2))])
        await store.finish_run(run_id, status, requests=1, retries=0)
    assert image_row(db_url, target)["missing_since"] is None
    assert query(db_url, "SELECT COUNT(*) FROM image_versions") == [(1,)]


async def test_missing_for_a_never_seen_image_records_only_the_result(
    store: Store, db_url: str
) -> None:
    target = Target("cn-north-1", "img-neverseen01")
    run_id = await store.create_run([target], strategy="single")
    await store.write_results(run_id, [missing(target, at(1))])
    assert dump(db_url, "images") == []
    assert query(db_url, "SELECT outcome, http_status, error_status FROM crawl_results") == [
        ("missing", 404, "NOT_FOUND")
    ]


async def test_failed_leaves_the_image_rows_untouched(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])
    before = dump_all(db_url, IMAGE_TABLES, timestamps=True)

    second = await store.create_run([target], strategy="single")
    await store.write_results(second, [failed(target, at(2))])

    assert dump_all(db_url, IMAGE_TABLES, timestamps=True) == before
    assert query(db_url, "SELECT run_id, outcome, attempts FROM crawl_results ORDER BY 1") == [
        (first, "fetched", 1),
        (second, "failed", 6),
    ]


async def test_a_batch_mixes_outcomes_and_the_last_result_for_a_target_wins(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    pairs = existing(inventory)[:3]
    targets = [target_of(*pair) for pair in pairs]
    run_id = await store.create_run(targets, strategy="single")
    await store.write_results(run_id, [fetched(*pairs[2], at(0))])
    batch = [
        fetched(*pairs[0], at(1)),
        failed(targets[1], at(1)),
        fetched(*pairs[1], at(2)),  # a retried target later in the same batch
        missing(targets[2], at(2)),
        fetched(*pairs[0], at(3)),  # the same image twice: no duplicate children
    ]
    await store.write_results(run_id, batch)

    outcomes = query(db_url, "SELECT image_id, outcome FROM crawl_results ORDER BY image_id")
    expected = {targets[0].image_id: "fetched", targets[1].image_id: "fetched"}
    expected[targets[2].image_id] = "missing"
    assert dict(outcomes) == expected
    assert image_row(db_url, targets[0])["last_seen_at"] == "2024-05-01 08:03:00.000000"
    assert count(db_url, "disks", targets[0]) == len(normalised(*pairs[0]).disks)
    await store.finish_run(run_id, RunStatus.PARTIAL, requests=5, retries=0)
    assert image_row(db_url, targets[2])["missing_since"] == "2024-05-01 08:02:00.000000"


async def test_children_follow_the_rows_key_even_if_two_targets_return_one_image(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    alias = Target(region, "img-alias0000")  # say a batch answer mapped to the wrong target
    run_id = await store.create_run([target_of(region, image), alias], strategy="batch")
    result = fetched(region, image, at(1))
    await store.write_results(run_id, [result, replace(result, target=alias)])
    await store.write_results(run_id, [replace(result, target=alias, finished_at=at(2))])

    assert query(db_url, "SELECT image_id FROM images") == [(image["imageId"],)]
    assert count(db_url, "disks", target_of(region, image)) == len(normalised(region, image).disks)


# --- atomicity against a concurrent reader -------------------------------------------------------


def variant(image: JsonObject, data_disks: int) -> JsonObject:
    """`image` with a local system disk and `data_disks` cloud data disks, each attached to one
    instance and carrying two tags, so children counts follow from `raw` alone."""
    disks = [
        {
            "diskCategory": "cloud",
            "deviceName": f"vd{chr(ord('b') + index)}",
            "status": "attached",
            "cloudDisk": {
                "diskId": f"vol-variant{index}",
                "diskType": "ssd.gp1",
                "diskSizeGB": 100 * (index + 1),
                "tags": [{"key": "env", "value": "prod"}, {"key": "slot", "value": str(index)}],
                "attachments": [
                    {
                        "attachmentId": f"attach-v{index}",
                        "instanceId": "i-variant",
                        "status": "attached",
                    }
                ],
            },
        }
        for index in range(data_disks)
    ]
    system = {"diskCategory": "local", "localDisk": {"diskType": "ssd", "diskSizeGB": 40}}
    return {**image, "systemDisk": system, "dataDisks": disks}


# One statement, so one snapshot: per image, the data-disk count its raw JSON promises, and the
# children rows actually there.
CONSISTENCY_SQL = """
SELECT {data_disks},
       (SELECT COUNT(*) FROM disks AS d WHERE d.region_id = i.region_id
           AND d.image_id = i.image_id AND d.slot = 'data'),
       (SELECT COUNT(*) FROM disks AS d WHERE d.region_id = i.region_id
           AND d.image_id = i.image_id AND d.slot = 'system'),
       (SELECT COUNT(*) FROM attachments AS a WHERE a.region_id = i.region_id
           AND a.image_id = i.image_id),
       (SELECT COUNT(*) FROM tags AS t WHERE t.region_id = i.region_id
           AND t.image_id = i.image_id)
  FROM images AS i
"""
DATA_DISKS = {  # the same count in each database's JSON functions (raw is jsonb on PostgreSQL)
    "sqlite": "json_array_length(i.raw, '$.dataDisks')",
    "postgresql": "jsonb_array_length(i.raw -> 'dataDisks')",
}


@dataclass
class Reader:
    """Polls the database from another thread until told to stop, recording what it saw."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    looked: threading.Condition = field(default_factory=threading.Condition)
    snapshots: int = 0
    states: set[tuple[int, ...]] = field(default_factory=set)
    torn: tuple[Any, ...] | None = None

    def run(self) -> None:
        engine = engine_of(self.url)
        sql = text(CONSISTENCY_SQL.format(data_disks=DATA_DISKS[engine.dialect.name]))
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                while not self.stop.is_set():
                    self.check([tuple(row) for row in conn.execute(sql)])
                    with self.looked:
                        self.snapshots += 1
                        self.looked.notify_all()
        finally:
            self.stop.set()  # a reader that died must not leave the writer waiting for it
            with self.looked:
                self.looked.notify_all()
            engine.dispose()

    def check(self, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            expected, data, system, attachments, tags = row
            if (data, system, attachments, tags) != (expected, 1, expected, 2 * expected):
                self.torn = row
        self.states.add(tuple(sorted({row[0] for row in rows})))

    def wait_for_snapshots(self, total: int) -> None:
        with self.looked:
            self.looked.wait_for(lambda: self.snapshots >= total or self.stop.is_set(), 30)


async def test_a_concurrent_reader_never_sees_half_of_an_images_children(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    pairs = existing(inventory)[:40]
    run_id = await store.create_run([target_of(*pair) for pair in pairs], strategy="single")
    sizes = [3, 0, 5, 1, 4, 2]
    await store.write_results(run_id, [fetched(r, variant(i, sizes[-1]), at(0)) for r, i in pairs])
    reader = Reader(db_url)
    polling = asyncio.create_task(asyncio.to_thread(reader.run))
    try:
        for round_no in range(36):
            size = sizes[round_no % len(sizes)]
            await store.write_results(
                run_id, [fetched(r, variant(i, size), at(round_no)) for r, i in pairs]
            )
            # Two more snapshots: at least one of them began after the commit.
            await asyncio.to_thread(reader.wait_for_snapshots, reader.snapshots + 2)
    finally:
        reader.stop.set()
        await polling
    assert reader.torn is None, (
        f"torn read (expected, data, system, attachments, tags): {reader.torn}"
    )
    # Every snapshot showed one batch entirely: all images at the same size.
    assert all(len(state) == 1 for state in reader.states)
    assert len(reader.states) == len(sizes)  # it saw every state, so it could have seen a tear


# --- runs ---------------------------------------------------------------------------------------


async def test_create_run_folds_duplicate_targets(store: Store, db_url: str) -> None:
    targets = [Target("cn-north-1", f"img-{n:04d}") for n in range(5)]
    run_id = await store.create_run([*targets, *targets[:3], targets[0]], strategy="batch")
    summary = await store.run_summary(run_id)
    assert summary.targets_total == 5
    assert summary.status is RunStatus.RUNNING
    assert summary.strategy == "batch"
    assert summary.started_at == START + timedelta(seconds=1)
    assert summary.finished_at is None
    assert len(query(db_url, "SELECT * FROM crawl_targets WHERE run_id = :run", run=run_id)) == 5


async def test_create_run_leaves_nothing_when_the_targets_raise(store: Store, db_url: str) -> None:
    def targets() -> Iterator[Target]:
        for n in range(25_000):  # past the first chunks, which are already inserted
            yield Target("cn-east-2", f"img-{n:06d}")
        raise TargetsError("targets.csv line 25002: bad image id 'IMG-1'")

    with pytest.raises(TargetsError, match="line 25002"):
        await store.create_run(targets(), strategy="single")
    assert dump(db_url, "crawl_runs") == []
    assert dump(db_url, "crawl_targets") == []
    run_id = await store.create_run([Target("cn-east-2", "img-1")], strategy="single")
    assert (await store.run_summary(run_id)).targets_total == 1


async def test_create_run_streams_targets_without_holding_them(store: Store) -> None:
    total = 150_000

    def targets() -> Iterator[Target]:
        for n in range(total):
            yield Target(REGIONS[n % 2], f"img-{n:010d}")

    tracemalloc.start()
    try:
        run_id = await store.create_run(targets(), strategy="single")
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (await store.run_summary(run_id)).targets_total == total
    # Holding them would take over 20 MiB (Target, id string and row tuple each).
    assert peak_bytes < 8 * 2**20


async def test_pending_targets_pages_through_what_has_no_result(
    store: Store, inventory: Inventory
) -> None:
    pairs = existing(inventory)
    extra = [
        Target(region, image_id) for region in REGIONS for image_id in inventory.missing[region]
    ]
    run_id = await store.create_run([*(target_of(*p) for p in pairs), *extra], strategy="single")
    done = [fetched(*pair, at(1)) for pair in pairs[::3]]
    await store.write_results(run_id, [*done, missing(extra[0], at(1))])
    finished = {result.target for result in [*done, missing(extra[0], at(1))]}
    everything = {target_of(*p) for p in pairs} | set(extra)
    expected = sorted(everything - finished)

    counts = await store.pending_counts(run_id)
    assert counts == {r: sum(t.region_id == r for t in expected) for r in REGIONS}
    paged: list[Target] = []
    for region in REGIONS:
        after: str | None = None
        while page := await store.pending_targets(run_id, region, after_image_id=after, limit=7):
            assert len(page) <= 7
            paged += page
            after = page[-1].image_id
    assert sorted(paged) == expected
    assert paged == sorted(paged, key=lambda t: (REGIONS.index(t.region_id), t.image_id))


async def test_finish_run_counts_outcomes_and_a_resume_adds_up_requests(
    store: Store, inventory: Inventory
) -> None:
    pairs = existing(inventory)[:6]
    targets = [target_of(*pair) for pair in pairs]
    run_id = await store.create_run(targets, strategy="single")
    await store.write_results(run_id, [fetched(*pairs[0], at(1)), failed(targets[1], at(1))])
    stopped = await store.finish_run(
        run_id, RunStatus.INTERRUPTED, requests=10, retries=4, message="stopped by SIGINT"
    )
    assert (stopped.fetched, stopped.missing, stopped.failed) == (1, 0, 1)
    assert stopped.finished_at == START + timedelta(seconds=2)
    assert await store.latest_unfinished_run() == run_id

    await store.reopen_run(run_id)
    reopened = await store.run_summary(run_id)
    assert (reopened.status, reopened.finished_at, reopened.message) == ("running", None, None)
    assert await store.pending_counts(run_id) == {targets[2].region_id: 4}
    retried = [fetched(*pairs[1], at(2)), missing(targets[2], at(2))]
    await store.write_results(run_id, [*retried, *(fetched(*p, at(2)) for p in pairs[3:])])
    done = await store.finish_run(run_id, RunStatus.SUCCEEDED, requests=5, retries=1)

    assert done == await store.run_summary(run_id)
    assert (done.status, done.requests, done.retries, done.message) == ("succeeded", 15, 5, None)
    assert (done.targets_total, done.fetched, done.missing, done.failed) == (6, 5, 1, 0)
    assert await store.latest_unfinished_run() is None


async def test_unknown_runs_are_store_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="no run 42"):
        await store.reopen_run(42)
    with pytest.raises(StoreError, match="no run 42"):
        await store.finish_run(42, RunStatus.SUCCEEDED, requests=0, retries=0)
    with pytest.raises(StoreError, match="no run 42"):
        await store.run_summary(42)
    assert await store.latest_unfinished_run() is None


# --- read-only access ---------------------------------------------------------------------------


async def filled(db_url: str, inventory: Inventory) -> list[RunSummary]:
    """Two finished runs over the inventory: the second finds some images gone and fails others.

    Returns:
        The two runs' summaries.
    """
    pairs = existing(inventory)
    gone = {target_of(*pair) for pair in pairs[1::6]}  # 10 images deleted before run 2
    flaky = {target_of(*pair) for pair in pairs[4::10]}  # 6 images run 2 cannot fetch
    edited = {target_of(*pair) for pair in pairs[2::12]}  # 5 images whose data disks change
    absent = [
        Target(region, image_id) for region in REGIONS for image_id in inventory.missing[region]
    ]
    targets = [*(target_of(*p) for p in pairs), *absent]
    store = await Store.open(db_url, clock=Clock())
    try:
        summaries = []
        for run_no in (1, 2):
            run_id = await store.create_run(targets, strategy="single")
            results = [missing(t, at(run_no * 60)) for t in absent]
            for region, image in pairs:
                target = target_of(region, image)
                if run_no == 2 and target in gone:
                    results.append(missing(target, at(run_no * 60 + 1)))
                elif run_no == 2 and target in flaky:
                    results.append(failed(target, at(run_no * 60 + 1)))
                elif run_no == 2 and target in edited:
                    results.append(fetched(region, variant(image, 2), at(run_no * 60 + 1)))
                else:
                    results.append(fetched(region, image, at(run_no * 60 + 1)))
            for start in range(0, len(results), 25):
                await store.write_results(run_id, results[start : start + 25])
            status = RunStatus.PARTIAL if run_no == 2 else RunStatus.SUCCEEDED
            summaries.append(await store.finish_run(run_id, status, requests=100, retries=3))
    finally:
        await store.close()
    return summaries


async def test_query_readonly_returns_columns_and_rows(db_url: str, inventory: Inventory) -> None:
    await filled(db_url, inventory)
    columns, rows = await query_readonly(
        db_url, "SELECT region_id, COUNT(*) AS images FROM images GROUP BY 1 ORDER BY 1"
    )
    assert columns == ["region_id", "images"]
    assert rows == [(region, 30) for region in sorted(REGIONS)]
    no_rows = "PRAGMA foreign_keys=ON" if db_url.startswith("sqlite") else "SET work_mem = '8MB'"
    assert await query_readonly(db_url, no_rows) == ([], [])


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO crawl_runs (started_at, status) VALUES ('2024-01-01', 'running')",
        "UPDATE images SET name = 'x'",
        "DELETE FROM tags",
        "DROP TABLE attachments",
        "CREATE TABLE notes (body TEXT)",
        "CREATE INDEX ix_notes ON images (name)",
        "ALTER TABLE images ADD COLUMN note TEXT",
    ],
)
async def test_query_readonly_refuses_writes_and_changes_nothing(
    sql: str, db_url: str, inventory: Inventory, tmp_path: Path
) -> None:
    await refused_and_unchanged(sql, db_url, inventory, tmp_path)


async def test_query_readonly_refuses_to_attach_a_database(
    sqlite_url: str, inventory: Inventory, tmp_path: Path
) -> None:
    """SQLite only: ATTACH is SQLite's (a PostgreSQL session cannot open another database)."""
    sql = "ATTACH DATABASE '{tmp}/other.db' AS other"
    await refused_and_unchanged(sql, sqlite_url, inventory, tmp_path)


async def refused_and_unchanged(
    sql: str, db_url: str, inventory: Inventory, tmp_path: Path
) -> None:
    await filled(db_url, inventory)
    before = dump_all(db_url, (*IMAGE_TABLES, "crawl_runs", "crawl_results"), timestamps=True)
    schema_before = schema_of(db_url)

    with pytest.raises(StoreError, match=r"^crawler sql is read-only: "):
        await query_readonly(db_url, sql.format(tmp=tmp_path))

    after = dump_all(db_url, (*IMAGE_TABLES, "crawl_runs", "crawl_results"), timestamps=True)
    assert after == before
    assert schema_of(db_url) == schema_before
    assert not (tmp_path / "other.db").exists()


async def test_query_readonly_reports_sqlites_syntax_error(
    sqlite_url: str, inventory: Inventory
) -> None:
    """SQLite only: SQLite's own messages (test_store_dialects checks PostgreSQL's)."""
    db_url = sqlite_url
    await filled(db_url, inventory)
    with pytest.raises(StoreError, match='near "SELEC": syntax error'):
        await query_readonly(db_url, "SELEC * FROM images")
    with pytest.raises(StoreError, match="no such table: imagez"):
        await query_readonly(db_url, "SELECT * FROM imagez")


async def test_query_readonly_does_not_create_a_missing_database(tmp_path: Path) -> None:
    """SQLite only: a missing file (test_store_dialects has the missing PostgreSQL database)."""
    absent = tmp_path / "absent.db"
    with pytest.raises(StoreError, match=re.escape(f"database {absent} does not exist")):
        await query_readonly(url_of(absent), "SELECT 1")
    with pytest.raises(StoreError, match="does not exist"):
        await recent_runs(url_of(absent), limit=5)
    assert not absent.exists()


async def test_recent_runs_lists_the_newest_first(db_url: str, inventory: Inventory) -> None:
    first, second = await filled(db_url, inventory)
    runs = await recent_runs(db_url, limit=10)
    assert runs == [second, first]
    assert await recent_runs(db_url, limit=1) == [second]
    assert (second.status, second.missing, second.failed) == ("partial", 6 + 10, 6)
    assert second.targets_total == first.targets_total == 66


# --- the cookbook -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CookbookQuery:
    title: str
    sql: str
    columns: list[str]


def cookbook_queries() -> list[CookbookQuery]:
    """Every ```sql block of the cookbook, with its section title and the columns it declares."""
    text = COOKBOOK.read_text(encoding="utf-8")
    found = []
    for section in re.split(r"^#### ", text, flags=re.M)[1:]:
        title = section.splitlines()[0]
        for sql in re.findall(r"^```sql\n(.*?)^```", section, flags=re.M | re.S):
            declared = re.match(r"-- columns: (.+)\n", sql)
            assert declared, f"cookbook query {title!r} does not start with '-- columns: ...'"
            found.append(CookbookQuery(title, sql, [c.strip() for c in declared[1].split(",")]))
    assert text.count("```sql") == len(found)
    return found


def test_the_cookbook_has_the_audit_questions() -> None:
    titles = " | ".join(query.title.lower() for query in cookbook_queries())
    for topic in ("region and os", "not ready", "shared", "data disks", "attached", "tag keys"):
        assert topic in titles
    for topic in ("missing since the previous run", "failed in the last run"):
        assert topic in titles
    for topic in ("what changed last night", "as they were at run n", "appeared this week"):
        assert topic in titles
    assert len(cookbook_queries()) >= 8


@pytest.mark.parametrize("recipe", cookbook_queries(), ids=lambda recipe: recipe.title)
async def test_every_cookbook_query_runs_and_finds_rows(
    recipe: CookbookQuery, sqlite_url: str, inventory: Inventory
) -> None:
    """SQLite only: these are the SQLite spellings; test_store_dialects runs both on both."""
    db_url = sqlite_url
    await filled(db_url, inventory)
    columns, rows = await query_readonly(db_url, recipe.sql)
    assert columns == recipe.columns
    assert rows, f"{recipe.title}: no rows"
