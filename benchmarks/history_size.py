"""How big the database grows over nightly runs, with history and the default retention.

Simulates N nights of a cron job through the store itself (the crawl's write path without HTTP,
which adds no rows): each night opens the store, records a run of every target, writes every
image's result in batches as the crawl's writer does, finishes the run (missing marks and all),
applies `[retention] keep_runs` as `crawler crawl` does, and closes the store. Each night a share
of the images changes (`--change-rate`: a data disk's type and the image's name), and a few
disappear and come back, so history has something to record. The images are real-shaped
(`crawler.simulator.inventory`) and prepared once up front (checked and encoded, as a crawl
hands them to the store, which builds the rows of those whose `raw_digest` is new); results are
written in the order a crawl produces them (each region by image id, the regions in turn).

After the first night and after the last it prints the file's size and each table's share
(SQLite's `dbstat`, indexes counted with their table), and what history adds: `image_versions`
per 1,000 images after the first run (with where a version's bytes go), and per changed image
after that. One JSON line, then human lines. With `--postgres URL` the nights go into a new
database on that server instead (dropped at the end), measured by `pg_total_relation_size`.
Run from the repository root once the package is installed:

    .venv/bin/python benchmarks/history_size.py --images 100000 --nights 30
    .venv/bin/python benchmarks/history_size.py --images 100000 --nights 1 --postgres URL
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from crawler.models import FetchedImage, JsonObject, Outcome, RunStatus, Target, TargetResult
from crawler.normalise import prepare_image
from crawler.simulator.inventory import build_inventory
from crawler.store import Store

REGIONS = ("cn-north-1", "cn-east-1", "cn-east-2", "cn-south-1")
BEIJING = ZoneInfo("Asia/Shanghai")
BATCH = 1000
KEEP_RUNS = 30  # the default of [retention] keep_runs
# Tables and the indexes that belong to them, as dbstat names them.
TABLES = ("images", "disks", "attachments", "tags", "image_versions", "crawl_targets")
TABLES += ("crawl_results", "crawl_runs")


class SqliteFile:
    """The nights' database as a SQLite file in `folder`, measured with `dbstat`."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "inventory.db"
        self.url = f"sqlite+aiosqlite:///{self.path}"

    def file_size(self) -> int:
        return sum(path.stat().st_size for path in self.path.parent.glob(self.path.name + "*"))

    def table_sizes(self) -> dict[str, int]:
        """Bytes per table, its indexes (and SQLite's automatic PK indexes) included."""
        owner = {}
        with closing(sqlite3.connect(self.path)) as conn:
            for name, table in conn.execute("SELECT name, tbl_name FROM sqlite_schema"):
                owner[name] = table
            sizes: dict[str, int] = {}
            for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                table = owner.get(name, name)
                sizes[table] = sizes.get(table, 0) + int(size)
        return sizes

    def version_breakdown(self) -> dict[str, float]:
        """Where an `image_versions` row's bytes go: its content's text, the whole row (payload),
        the page space left unused around the rows, and the two indexes; per version."""
        with closing(sqlite3.connect(self.path)) as conn:
            (versions,) = conn.execute("SELECT COUNT(*) FROM image_versions").fetchone()
            (content,) = conn.execute(
                "SELECT SUM(LENGTH(CAST(content AS BLOB))) FROM image_versions"
            ).fetchone()
            stats = {
                name: (payload, unused, size)
                for name, payload, unused, size in conn.execute(
                    "SELECT name, SUM(payload), SUM(unused), SUM(pgsize) FROM dbstat WHERE name IN"
                    " (SELECT name FROM sqlite_schema WHERE tbl_name = 'image_versions')"
                    " GROUP BY name"
                )
            }
        payload, unused, size = stats.pop("image_versions")
        per = max(1, versions)
        return {
            "content": round(content / per, 1),
            "row_payload": round(payload / per, 1),
            "page_unused": round(unused / per, 1),
            "table": round(size / per, 1),
            "indexes": round(sum(size for _, _, size in stats.values()) / per, 1),
        }


class PostgresDatabase:
    """The nights' database as a new database on the PostgreSQL server at `server_url` (dropped
    again by `drop`), measured with `pg_total_relation_size` and its relatives."""

    def __init__(self, server_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        server = make_url(server_url)
        self.name = f"crawler_history_size_{os.getpid()}"
        self._admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = server.set(database=self.name).render_as_string(hide_password=False)

    def _rows(self, sql: str, params: list[dict[str, Any]]) -> list[Any]:
        """The first row of `sql` for each of `params`."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        engine = create_engine(make_url(self.url).set(drivername="postgresql+psycopg"))
        try:
            with engine.connect() as conn:
                return [conn.execute(text(sql), one).one() for one in params]
        finally:
            engine.dispose()

    def file_size(self) -> int:
        return int(self._rows("SELECT pg_database_size(current_database())", [{}])[0][0])

    def table_sizes(self) -> dict[str, int]:
        """Bytes per table, its indexes and TOAST included."""
        rows = self._rows("SELECT pg_total_relation_size(:t)", [{"t": t} for t in TABLES])
        return {table: int(row[0]) for table, row in zip(TABLES, rows, strict=True)}

    def version_breakdown(self) -> dict[str, float]:
        """An `image_versions` row's content (as jsonb), the table and its indexes; per version."""
        ((versions, content, table, indexes),) = self._rows(
            "SELECT COUNT(*), SUM(pg_column_size(content)), pg_table_size('image_versions'),"
            " pg_indexes_size('image_versions') FROM image_versions",
            [{}],
        )
        per = max(1, int(versions))
        return {
            "content": round(int(content) / per, 1),
            "table": round(int(table) / per, 1),
            "indexes": round(int(indexes) / per, 1),
        }

    def drop(self) -> None:
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin.dispose()


def changed(rng: random.Random, image: JsonObject) -> JsonObject:
    """`image` with a new name, and a new type for one cloud data disk if it has one."""
    image = {**image, "name": f"renamed-{rng.randrange(10**9)}"}
    disks = [dict(disk) for disk in image.get("dataDisks") or []]
    for disk in disks:
        if isinstance(disk.get("cloudDisk"), dict):
            disk["cloudDisk"] = {**disk["cloudDisk"], "diskType": rng.choice(["ssd", "ssd.io1"])}
            break
    if disks:
        image["dataDisks"] = disks
    return image


def crawl_order(rows: dict[Target, FetchedImage]) -> list[Target]:
    """The order a crawl's results arrive in: each region's targets by image id (how the
    scheduler pages them), the regions taken in turn."""
    lanes = [sorted(t for t in rows if t.region_id == region) for region in REGIONS]
    return [t for turn in itertools.zip_longest(*lanes) for t in turn if t is not None]


async def night(
    url: str, run_no: int, rows: dict[Target, FetchedImage], gone: set[Target], at: datetime
) -> None:
    store = await Store.open(url)
    try:
        targets = crawl_order(rows)
        run_id = await store.create_run(targets, strategy="single")
        for start in range(0, len(targets), BATCH):
            results = []
            for target in targets[start : start + BATCH]:
                request_id = f"{run_no:08d}{start:012d}{len(results):012d}"  # 32 characters
                if target in gone:
                    result = TargetResult(
                        target, Outcome.MISSING, 1, at, http_status=404, error_status="NOT_FOUND",
                        request_id=request_id,
                    )  # fmt: skip
                else:
                    result = TargetResult(
                        target, Outcome.FETCHED, 1, at, http_status=200, request_id=request_id,
                        rows=rows[target],
                    )  # fmt: skip
                results.append(result)
            await store.write_results(run_id, results)
        await store.finish_run(run_id, RunStatus.SUCCEEDED, requests=len(targets), retries=0)
        await store.prune(KEEP_RUNS)
        assert run_id == run_no
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--change-rate", type=float, default=0.01, help="share changed a night")
    parser.add_argument("--gone-rate", type=float, default=0.002, help="share gone a night")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--postgres", metavar="URL", help="a PostgreSQL server to write into (a new database on it,"
        " dropped afterwards) instead of a SQLite file"
    )  # fmt: skip
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    inventory = build_inventory(REGIONS, -(-args.images // len(REGIONS)), args.seed)
    images = {
        Target(region, str(image["imageId"])): image
        for region in REGIONS
        for image in inventory.images[region]
    }
    images = dict(list(images.items())[: args.images])
    rows = {t: prepare_image(t.region_id, image, naive_tz=BEIJING) for t, image in images.items()}
    figures: dict[str, Any] = {"bench": "history_size", "images": len(rows), "nights": args.nights}
    changes = 0
    with tempfile.TemporaryDirectory(prefix="history-size-") as tmp:
        db = PostgresDatabase(args.postgres) if args.postgres else SqliteFile(Path(tmp))
        figures["database"] = "postgresql" if args.postgres else "sqlite"
        at = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
        gone: set[Target] = set()
        started = time.perf_counter()
        for run_no in range(1, args.nights + 1):
            if run_no > 1:  # the day's changes, before the night's crawl
                for target in rng.sample(sorted(rows), int(args.change_rate * len(rows))):
                    images[target] = changed(rng, images[target])
                    rows[target] = prepare_image(target.region_id, images[target],
                                                 naive_tz=BEIJING)  # fmt: skip
                    changes += 1
                back = set(rng.sample(sorted(gone), len(gone) // 2)) if gone else set()
                gone = (gone - back) | set(
                    rng.sample(sorted(rows), int(args.gone_rate * len(rows)))
                )
            asyncio.run(night(db.url, run_no, rows, gone, at + timedelta(days=run_no)))
            if run_no == 1:
                figures["first_file_bytes"] = db.file_size()
                figures["first_tables"] = db.table_sizes()
                figures["first_version_bytes"] = db.version_breakdown()
            print(f"# night {run_no}: {db.file_size() / 2**20:,.1f} MiB "
                  f"({time.perf_counter() - started:,.0f} s so far)", flush=True)  # fmt: skip
        figures["last_file_bytes"] = db.file_size()
        figures["last_tables"] = db.table_sizes()
        figures["changed_images"] = changes
        if isinstance(db, PostgresDatabase):
            db.drop()
    first, last = figures["first_tables"], figures["last_tables"]
    per_1k = 1000 / len(rows)
    history_first = first.get("image_versions", 0)
    figures["ratio_last_to_first"] = round(
        figures["last_file_bytes"] / figures["first_file_bytes"], 3
    )
    figures["history_bytes_per_1k_images_first_run"] = round(history_first * per_1k)
    figures["history_bytes_per_changed_image"] = round(
        (last.get("image_versions", 0) - history_first) / max(1, changes)
    )
    print(json.dumps(figures))
    mib = 2**20
    print(
        f"{len(rows):,} images, {args.nights} nights, {args.change_rate:.1%} changed and "
        f"{args.gone_rate:.1%} gone a night, keep_runs {KEEP_RUNS}: after night 1 "
        f"{figures['first_file_bytes'] / mib:,.1f} MiB, after night {args.nights} "
        f"{figures['last_file_bytes'] / mib:,.1f} MiB ({figures['ratio_last_to_first']:.2f}x)"
    )
    for name in TABLES:
        print(f"  {name:15} night 1 {first.get(name, 0) / mib:9,.1f} MiB   night {args.nights} "
              f"{last.get(name, 0) / mib:9,.1f} MiB")  # fmt: skip
    print(
        f"history: {figures['history_bytes_per_1k_images_first_run'] / 1024:,.0f} KiB per 1,000"
        f" images on the first run ({history_first / max(1, first.get('images', 1)):.0%} of"
        f" images), {figures['history_bytes_per_changed_image']:,} bytes per changed image after"
    )
    parts = figures["first_version_bytes"]
    row = (
        f"the row {parts['row_payload']:,.0f} (its content {parts['content']:,.0f}), unused page"
        f" space {parts['page_unused']:,.0f}"
        if "row_payload" in parts
        else f"the table {parts['table']:,.0f} (its content {parts['content']:,.0f} as jsonb)"
    )
    print(
        f"a first-run version: {parts['table'] + parts['indexes']:,.0f} bytes: {row},"
        f" the indexes {parts['indexes']:,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
