"""History's queries stay linear: SQLite's own query plans for what a batch and a run's end execute.

Last session a row-value `IN` list made every batch's current-version lookup scan the whole of
`image_versions`, and a correlated `EXISTS` made closing a run's missing versions search the
`valid_from_run` index (shared by every version of the run) once per row: both quadratic in the
size of the inventory, and both invisible on a small test database. So rather than timing, the
statements the store really executes are captured and `EXPLAIN QUERY PLAN` is asked of each:

- a statement run per batch may read `images` and `image_versions` only by the image key (no
  scan, and no search by region alone);
- in any statement, a table read inside a loop (nested under another table's scan or search, or
  in a correlated subquery) must be found by its image key, `region_id=? AND image_id=?`; only
  a loop over `crawl_runs` (a row per run) may look a per-run table up by `run_id` alone.

Every statement of a run's end is checked, retention included, not only those on history.

Deliberately bad queries show the check catches both regressions (and a lookup by region only).
The number of statements a batch executes must not depend on how many images the database holds.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from crawler.models import RunStatus, Target
from crawler.simulator.inventory import build_inventory
from crawler.store import Store
from tests.test_store import NAIVE_TZ, Clock, at, fetched, missing

assert NAIVE_TZ  # the fetches are normalised in the store's own zone
REGIONS = ("cn-north-1", "cn-east-2")
HISTORY_TABLES = ("images", "image_versions")
IMAGE_KEY = "region_id=? AND image_id=?"
HISTORY_READ = re.compile(rf"(SCAN|SEARCH) ({'|'.join(HISTORY_TABLES)})\b")


@dataclass(frozen=True)
class Executed:
    sql: str
    params: tuple[Any, ...]


@contextmanager
def captured(store: Store) -> Iterator[list[Executed]]:
    """Every statement the store's engine sends while the block runs (one parameter set each)."""
    seen: list[Executed] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool) -> None:
        first = params[0] if many and params else params
        seen.append(Executed(sql, tuple(first or ())))

    engine = store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plan(db: Path, executed: Executed) -> list[tuple[int, int, str]]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {executed.sql}", executed.params).fetchall()
    return [(int(node), int(parent), str(detail)) for node, parent, _, detail in rows]


def _loops(detail: str) -> bool:
    return detail.startswith(("SCAN ", "SEARCH "))


def problems(db: Path, executed: Executed, *, per_batch: bool) -> list[str]:
    """What in `executed`'s plan would make it grow faster than the rows it touches."""
    nodes = plan(db, executed)
    parent_of = {node: parent for node, parent, _ in nodes}
    detail_of = {node: detail for node, _, detail in nodes}
    outer = [detail.split()[1] for _, parent, detail in nodes if parent == 0 and _loops(detail)]
    over_runs = bool(outer) and set(outer) == {"crawl_runs"}
    found = []
    for node, _, detail in nodes:
        if per_batch and HISTORY_READ.match(detail) and IMAGE_KEY not in detail:
            found.append(f"a batch reads a history table beyond its images: {detail}")
        ancestors, up = [], parent_of.get(node, 0)
        while up:
            ancestors.append(detail_of[up])
            up = parent_of.get(up, 0)
        nested = any(_loops(a) or "CORRELATED" in a for a in ancestors)
        per_run = over_runs and detail.endswith("(run_id=?)")
        if nested and _loops(detail) and IMAGE_KEY not in detail and not per_run:
            found.append(f"read inside a loop without the image key: {detail} (under {ancestors})")
    return found


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "inventory.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{db}", clock=Clock())
    try:
        yield opened
    finally:
        await opened.close()


def images(count: int) -> list[tuple[str, Any]]:
    inventory = build_inventory(REGIONS, count // len(REGIONS), seed=3, missing_rate=0.0)
    return [(region, image) for region, found in inventory.images.items() for image in found]


async def crawl(store: Store, pairs: list[tuple[str, Any]], gone: set[str], minute: int) -> int:
    targets = [Target(region, image["imageId"]) for region, image in pairs]
    run_id = await store.create_run(targets, strategy="single")
    results = [
        missing(target, at(minute))
        if target.image_id in gone
        else fetched(region, image, at(minute))
        for target, (region, image) in zip(targets, pairs, strict=True)
    ]
    for start in range(0, len(results), 100):
        await store.write_results(run_id, results[start : start + 100])
    return run_id


def queries(seen: list[Executed]) -> list[Executed]:
    """The statements that have a plan (not BEGIN, COMMIT or a PRAGMA)."""
    return [
        e
        for e in seen
        if e.sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE"))
    ]


def history_statements(seen: list[Executed]) -> list[Executed]:
    return [e for e in seen if any(table in e.sql for table in HISTORY_TABLES)]


async def test_a_batch_and_a_runs_end_read_history_by_key(store: Store, db: Path) -> None:
    pairs = images(400)
    first = await crawl(store, pairs, set(), 1)
    await store.finish_run(first, RunStatus.SUCCEEDED, requests=1, retries=0)
    # The second night: some images changed, a few gone (and the guard off, so they are marked).
    changed = [(region, {**image, "name": "renamed"}) for region, image in pairs[:40]]
    gone = {image["imageId"] for _, image in pairs[40:50]}
    with captured(store) as batch_statements:
        run_id = await crawl(store, changed + pairs[40:], gone, 2)
    with captured(store) as end_statements:
        from crawler.store.versions import MissingGuard

        summary = await store.finish_run(
            run_id, RunStatus.SUCCEEDED, requests=1, retries=0, guard=MissingGuard(max_fraction=1)
        )
        # What a crawl does next with `[retention] keep_runs = 1`: the first run's rows go.
        pruned = await store.prune(1)
    assert summary.status == RunStatus.SUCCEEDED
    assert pruned.run_ids == (first,)
    # The check looked at what matters: the lookup of current versions, the missing marks, the
    # dropped targets, the counts and retention's deletes.
    assert any("valid_to_run IS NULL" in e.sql for e in history_statements(batch_statements))
    for start in (
        "INSERT INTO image_versions",
        "DELETE FROM crawl_targets",
        "DELETE FROM crawl_results",
    ):
        assert any(e.sql.startswith(start) for e in end_statements), start
    assert any("GROUP BY crawl_results.outcome" in e.sql for e in end_statements)
    found = [
        p for e in history_statements(batch_statements) for p in problems(db, e, per_batch=True)
    ]
    found += [p for e in queries(end_statements) for p in problems(db, e, per_batch=False)]
    assert found == []


async def test_the_check_catches_both_regressions(store: Store, db: Path) -> None:
    await crawl(store, images(40), set(), 1)
    row_value_in = Executed(
        "SELECT image_id, version FROM image_versions WHERE (region_id, image_id) IN"
        " (VALUES (?, ?), (?, ?)) AND valid_to_run IS NULL",
        ("cn-north-1", "img-a", "cn-north-1", "img-b"),
    )
    assert any("beyond its images" in p for p in problems(db, row_value_in, per_batch=True))
    by_region_only = Executed(
        "SELECT image_id, version FROM image_versions WHERE region_id = ?"
        " AND lower(image_id) IN (?, ?) AND valid_to_run IS NULL",
        ("cn-north-1", "img-a", "img-b"),
    )
    assert any("beyond its images" in p for p in problems(db, by_region_only, per_batch=True))
    correlated_exists = Executed(
        "UPDATE image_versions SET valid_to_run = ? WHERE valid_to_run IS NULL AND status = ?"
        " AND EXISTS (SELECT 1 FROM image_versions AS m WHERE m.region_id ="
        " image_versions.region_id AND m.image_id = image_versions.image_id AND"
        " m.valid_from_run = ? AND m.status = ? AND m.valid_to_run IS NULL)",
        (2, "present", 2, "missing"),
    )
    assert any("inside a loop" in p for p in problems(db, correlated_exists, per_batch=False))
    # A per-run table looked up by its run alone is allowed inside a loop over runs only.
    by_run_per_image = Executed(
        "SELECT count(*) FROM images WHERE EXISTS (SELECT 1 FROM crawl_results AS r"
        " WHERE r.run_id = ? AND r.image_id = images.image_id)",
        (1,),
    )
    assert any("inside a loop" in p for p in problems(db, by_run_per_image, per_batch=False))


async def test_a_batch_runs_as_many_statements_whatever_the_database_holds(
    tmp_path: Path,
) -> None:
    pairs = images(1200)
    small, big = pairs[:100], pairs[100:]
    counts = []
    for name, existing in (("empty.db", []), ("full.db", big)):
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / name}", clock=Clock())
        try:
            if existing:
                await crawl(store, existing, set(), 1)
            with captured(store) as seen:
                await crawl(store, small, set(), 2)
        finally:
            await store.close()
        counts.append([e.sql.split(" (")[0] for e in seen])
    assert counts[0] == counts[1]
    assert sum(sql.startswith("SELECT image_versions.image_id") for sql in counts[1]) == 1
