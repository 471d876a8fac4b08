"""The store and its history on both databases: a new SQLite file and a new PostgreSQL database
per test.

The same writes must leave the same rows in both, table by table (PostgreSQL's `raw` is jsonb, so
it is compared as parsed JSON); the read-only side must refuse writes by name on both.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from test_store import (
    REGIONS,
    Clock,
    at,
    existing,
    failed,
    fetched,
    missing,
    rich_image,
    target_of,
)

from crawler import schema
from crawler.errors import StoreError
from crawler.models import RunStatus, Target
from crawler.simulator.inventory import Inventory, build_inventory
from crawler.store import RunSummary, Store, query_readonly, recent_runs
from crawler.store.migrate import sync_url
from tests.conftest import _postgres_server_url

TABLES = (
    "images", "disks", "attachments", "tags", "crawl_runs", "crawl_targets", "crawl_results",
    "image_versions",
)  # fmt: skip


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return build_inventory(REGIONS, 30, seed=11, missing_rate=0.1)


def dump(url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of `table` as plain values, sorted; JSON parsed, whatever its column type.
    The columns are those both databases have: SQLite's `crawl_results.finished_us` is how it
    stores `finished_at` (compared as read), not a column of PostgreSQL's."""
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        columns = [column["name"] for column in inspect(engine).get_columns(table)]
        columns = [name for name in columns if name in schema.metadata.tables[table].c]
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT {', '.join(columns)} FROM {table}")).all()
    finally:
        engine.dispose()

    def plain(name: str, value: Any) -> Any:
        if name in ("raw", "content"):
            return json.loads(value) if isinstance(value, str) else value
        if name == "lease_expires_at" and value is not None:
            return "set"  # an instant of the server's clock: present or not
        return value

    return sorted(
        [tuple(plain(n, v) for n, v in zip(columns, row, strict=True)) for row in rows], key=repr
    )


async def fill(url: str, inventory: Inventory) -> list[RunSummary]:
    """Two finished runs: the second finds some images gone and cannot fetch others."""
    pairs = existing(inventory)
    gone = {target_of(*pair) for pair in pairs[1::6]}
    flaky = {target_of(*pair) for pair in pairs[4::10]}
    absent = [Target(r, image_id) for r in REGIONS for image_id in inventory.missing[r]]
    targets = [*(target_of(*p) for p in pairs), *absent]
    store = await Store.open(url, clock=Clock())
    try:
        summaries = []
        for run_no in (1, 2):
            run_id = await store.create_run([*targets, *targets[:3]], strategy="single")
            results = [missing(t, at(run_no * 60)) for t in absent]
            for region, image in pairs:
                target = target_of(region, image)
                if run_no == 2 and target in gone:
                    results.append(missing(target, at(run_no * 60 + 1)))
                elif run_no == 2 and target in flaky:
                    results.append(failed(target, at(run_no * 60 + 1)))
                else:
                    results.append(fetched(region, image, at(run_no * 60 + 1)))
            for start in range(0, len(results), 25):
                await store.write_results(run_id, results[start : start + 25])
            status = RunStatus.PARTIAL if run_no == 2 else RunStatus.SUCCEEDED
            summaries.append(await store.finish_run(run_id, status, requests=100, retries=3))
    finally:
        await store.close()
    return summaries


def tables(url: str, names: Sequence[str] = TABLES) -> dict[str, list[tuple[Any, ...]]]:
    return {name: dump(url, name) for name in names}


async def test_the_same_writes_leave_the_same_rows_in_both_databases(
    tmp_path: Any, postgres_url: str, inventory: Inventory
) -> None:
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}"
    on_sqlite = await fill(sqlite_url, inventory)
    on_postgres = await fill(postgres_url, inventory)
    assert on_sqlite == on_postgres
    assert on_postgres[1].missing > 0 and on_postgres[1].failed > 0
    sqlite_tables, postgres_tables = tables(sqlite_url), tables(postgres_url)
    for name in TABLES:
        assert postgres_tables[name] == sqlite_tables[name], name
        # A finished run's crawl_targets are dropped (its results name them all).
        assert postgres_tables[name] or name == "crawl_targets", f"{name} is empty"


async def test_a_rewrite_replaces_the_children(db_url: str, inventory: Inventory) -> None:
    region, image = rich_image(inventory)
    stripped = {**image, "dataDisks": []}
    store = await Store.open(db_url, clock=Clock())
    try:
        run_id = await store.create_run([target_of(region, image)], strategy="single")
        await store.write_results(run_id, [fetched(region, image, at(1))])
        before = tables(db_url, ("disks",))["disks"]
        await store.write_results(run_id, [fetched(region, stripped, at(2))])
        after = tables(db_url, ("disks",))["disks"]
    finally:
        await store.close()
    assert len(before) > len(after) == 1  # the system disk only
    children = tables(db_url, ("attachments", "tags"))
    assert all(row[2] == "system" for rows in children.values() for row in rows)


async def test_pending_targets_and_finish_on_both(db_url: str, inventory: Inventory) -> None:
    pairs = existing(inventory)[:6]
    store = await Store.open(db_url, clock=Clock())
    try:
        run_id = await store.create_run([target_of(*p) for p in pairs], strategy="batch")
        await store.write_results(run_id, [fetched(*pairs[0], at(1))])
        pending = await store.pending_counts(run_id)
        assert sum(pending.values()) == 5
        assert await store.latest_unfinished_run() == run_id
        done = await store.finish_run(run_id, RunStatus.INTERRUPTED, requests=2**33, retries=1)
        assert done.requests == 2**33  # 64-bit counters on both
    finally:
        await store.close()


async def test_readonly_queries_read_and_refuse_writes_by_name(
    db_url: str, inventory: Inventory
) -> None:
    await fill(db_url, inventory)
    columns, rows = await query_readonly(
        db_url, "SELECT region_id, COUNT(*) AS images FROM images GROUP BY 1 ORDER BY 1"
    )
    assert columns == ["region_id", "images"]
    assert [region for region, _ in rows] == sorted(REGIONS)
    before = tables(db_url, ("images", "crawl_runs"))
    for statement in ("DELETE FROM images", "UPDATE crawl_runs SET status = 'failed'"):
        with pytest.raises(StoreError, match=r"^crawler sql is read-only"):
            await query_readonly(db_url, statement)
    assert tables(db_url, ("images", "crawl_runs")) == before
    runs = await recent_runs(db_url, limit=1)
    assert [run.run_id for run in runs] == [2]


async def test_postgresql_sql_cannot_step_out_of_its_read_only_transaction(
    postgres_url: str, inventory: Inventory
) -> None:
    await fill(postgres_url, inventory)
    before = tables(postgres_url, ("images",))
    for statement in (
        "COMMIT; DELETE FROM images",
        "SET default_transaction_read_only = off; DELETE FROM images",
        "BEGIN READ WRITE; DELETE FROM images",
    ):
        with pytest.raises(StoreError):
            await query_readonly(postgres_url, statement)
    assert tables(postgres_url, ("images",)) == before
    _, rows = await query_readonly(
        postgres_url, "SELECT count(*) FROM images WHERE image_id LIKE 'img-%' AND '%' = '%'"
    )
    assert rows[0][0] > 0  # a % is text, not a placeholder
    _, rows = await query_readonly(postgres_url, "SHOW statement_timeout")
    assert rows == [("1min",)]
    _, rows = await query_readonly(postgres_url, "SELECT raw->>'name' FROM images LIMIT 1")
    assert rows[0][0]


async def test_a_missing_postgresql_database_is_a_store_error_without_the_password(
    postgres_url: str,
) -> None:
    bad = (
        make_url(postgres_url)
        .set(username="nobody", password="hunter2", database="no_such_database")
        .render_as_string(hide_password=False)
    )
    with pytest.raises(StoreError) as info:
        await Store.open(bad)
    assert "hunter2" not in str(info.value)
    with pytest.raises(StoreError) as info:
        await query_readonly(bad, "SELECT 1")
    assert "hunter2" not in str(info.value)


# --- the cookbook on both -----------------------------------------------------------------------

COOKBOOK = Path(__file__).resolve().parent.parent / "README.md"


def cookbook_pairs() -> list[tuple[str, str, str]]:
    """(title, SQLite query, PostgreSQL query) for every cookbook query: the `postgresql` block
    after a query where the README gives one, else the same query."""
    text = COOKBOOK.read_text(encoding="utf-8")
    pairs = []
    for section in re.split(r"^#### ", text, flags=re.M)[1:]:
        title = section.splitlines()[0]
        queries = re.findall(r"^```sql\n(.*?)^```", section, flags=re.M | re.S)
        spelled = re.findall(r"^```postgresql\n(.*?)^```", section, flags=re.M | re.S)
        assert not spelled or len(queries) == len(spelled) == 1, title
        pairs += [(title, sql, spelled[0] if spelled else sql) for sql in queries]
    return pairs


def test_some_cookbook_queries_have_a_postgresql_spelling() -> None:
    assert sum(sqlite != postgres for _, sqlite, postgres in cookbook_pairs()) >= 5


@pytest.fixture(scope="module")
def filled_pair(
    tmp_path_factory: pytest.TempPathFactory, inventory: Inventory, request: pytest.FixtureRequest
) -> tuple[str, str]:
    """The same two runs written into SQLite and PostgreSQL, once for every cookbook query."""
    folder = tmp_path_factory.mktemp("cookbook")
    sqlite_url = f"sqlite+aiosqlite:///{folder / 'inventory.db'}"
    server = make_url(_postgres_server_url())
    name = f"crawler_cookbook_{folder.name[-8:].replace('-', '_')}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    postgres_url = server.set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    request.addfinalizer(drop)
    for url in (sqlite_url, postgres_url):
        asyncio.run(fill(url, inventory))
    return sqlite_url, postgres_url


@pytest.mark.parametrize(("title", "sqlite_sql", "postgres_sql"), cookbook_pairs(),
                         ids=[title for title, _, _ in cookbook_pairs()])  # fmt: skip
async def test_every_cookbook_query_gives_the_same_answer_on_both(
    filled_pair: tuple[str, str], title: str, sqlite_sql: str, postgres_sql: str
) -> None:
    sqlite_url, postgres_url = filled_pair
    sqlite_columns, sqlite_rows = await query_readonly(sqlite_url, sqlite_sql)
    postgres_columns, postgres_rows = await query_readonly(postgres_url, postgres_sql)
    assert postgres_columns == sqlite_columns
    assert len(postgres_rows) == len(sqlite_rows), title
