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
after that. One JSON line, then
human lines. Run from the repository root once the package is installed:

    .venv/bin/python benchmarks/history_size.py --images 100000 --nights 30
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
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


def table_sizes(db: Path) -> dict[str, int]:
    """Bytes per table, its indexes (and SQLite's automatic PK indexes) included."""
    owner = {}
    with closing(sqlite3.connect(db)) as conn:
        for name, table in conn.execute("SELECT name, tbl_name FROM sqlite_schema"):
            owner[name] = table
        sizes: dict[str, int] = {}
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            sizes[table] = sizes.get(table, 0) + int(size)
    return sizes


def version_breakdown(db: Path) -> dict[str, float]:
    """Where an `image_versions` row's bytes go: its content's text, the whole row (payload),
    the page space left unused around the rows, and the two indexes; per version."""
    with closing(sqlite3.connect(db)) as conn:
        (versions,) = conn.execute("SELECT COUNT(*) FROM image_versions").fetchone()
        (content,) = conn.execute(
            "SELECT SUM(LENGTH(CAST(content AS BLOB))) FROM image_versions"
        ).fetchone()
        stats = {
            name: (payload, unused, size)
            for name, payload, unused, size in conn.execute(
                "SELECT name, SUM(payload), SUM(unused), SUM(pgsize) FROM dbstat"
                " WHERE name IN (SELECT name FROM sqlite_schema WHERE tbl_name = 'image_versions')"
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


def file_size(db: Path) -> int:
    return sum(path.stat().st_size for path in db.parent.glob(db.name + "*"))


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
    db: Path, run_no: int, rows: dict[Target, FetchedImage], gone: set[Target], at: datetime
) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{db}")
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
        db = Path(tmp) / "inventory.db"
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
            asyncio.run(night(db, run_no, rows, gone, at + timedelta(days=run_no)))
            if run_no == 1:
                figures["first_file_bytes"] = file_size(db)
                figures["first_tables"] = table_sizes(db)
                figures["first_version_bytes"] = version_breakdown(db)
            print(f"# night {run_no}: {file_size(db) / 2**20:,.1f} MiB "
                  f"({time.perf_counter() - started:,.0f} s so far)", flush=True)  # fmt: skip
        figures["last_file_bytes"] = file_size(db)
        figures["last_tables"] = table_sizes(db)
        figures["changed_images"] = changes
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
    print(
        f"a first-run version: {parts['table'] + parts['indexes']:,.0f} bytes: the row"
        f" {parts['row_payload']:,.0f} (its content {parts['content']:,.0f}), unused page space"
        f" {parts['page_unused']:,.0f}, the indexes {parts['indexes']:,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
