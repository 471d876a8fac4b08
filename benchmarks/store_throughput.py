"""How fast images are normalised and committed to SQLite by `crawler.store`.

Builds N real-shaped `Image` objects (from `crawler.simulator.inventory`, the simulator's own
generator, so with the same mix of disks, attachments and tags as a crawl of the simulator), then
times, each into a fresh SQLite file under a temporary directory:

- normalise: `prepare_image` (check, encode `raw`, digest) and building the rows, alone;
- store: `Store.write_results` alone, in batches of already-normalised rows (first crawl; the
  canonical content and the version are the store's work, so they count here);
- rewrite: the same batches written again (an unchanged re-crawl: the same `raw_digest`, so
  nothing is built or rewritten, only `last_seen_at` and `last_run_id` move);
- for store and rewrite, also the CPU of the calling thread, the event loop's, per image: what a
  crawl's answers wait behind (on SQLite the statements run on aiosqlite's thread, on PostgreSQL
  psycopg adapts and sends them on the loop);
- both: prepare plus write, batch by batch, one after the other in one thread, exactly as a
  crawl hands its fetches over (the store builds the rows); the crawl does the same work on one
  event loop; SQLite releases the GIL only per row, so the two hardly overlap even when they
  run in different tasks).

Prints one JSON line (machine-readable) then one human line. Optionally (`--targets N`) also
times `create_run` over N streamed targets and reports how much peak memory grew meanwhile.
With `--postgres URL` (a server the benchmark may create databases on, e.g. from
`tests/with_postgres.sh`: `$CRAWLER_TEST_POSTGRES_URL`) every phase runs on SQLite and then on a
new PostgreSQL database, and both lines are printed one after the other.
Run from the repository root once the package is installed (or with `PYTHONPATH=.`):

    .venv/bin/python benchmarks/store_throughput.py --images 20000 --batch 500
    .venv/bin/python benchmarks/store_throughput.py --shape rich --targets 1000000
    CRAWLER_PG_DURABLE=1 tests/with_postgres.sh sh -c \
        '.venv/bin/python benchmarks/store_throughput.py --postgres "$CRAWLER_TEST_POSTGRES_URL"'
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import math
import resource
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from crawler.models import FetchedImage, ImageRows, JsonObject, Outcome, Target, TargetResult
from crawler.normalise import prepare_image
from crawler.simulator.inventory import build_inventory
from crawler.store import Store

REGIONS = ("cn-north-1", "cn-east-1", "cn-east-2", "cn-south-1")
BEIJING = ZoneInfo("Asia/Shanghai")


def build_images(
    count: int, seed: int, *, shape: str = "inventory"
) -> list[tuple[str, JsonObject]]:
    """`count` (region, image) pairs from the deterministic inventory; `rich` gives each image
    three full cloud data disks, each attached once and tagged twice."""
    per_region = math.ceil(count / len(REGIONS))
    inventory = build_inventory(REGIONS, per_region, seed)
    pairs = [(region, image) for region in REGIONS for image in inventory.images[region]]
    if shape == "rich":
        pairs = [(region, enrich(region, image)) for region, image in pairs]
    return pairs[:count]


def enrich(region: str, image: JsonObject) -> JsonObject:
    """`image` with three full cloud data disks in the documented `Disk` shape."""
    image_id = str(image["imageId"])
    disks = []
    for index in range(3):
        disk_id = f"vol-{image_id[4:]}{index}"
        cloud = {
            "diskId": disk_id,
            "az": f"{region}a",
            "name": f"data-{index}",
            "description": "数据盘",
            "diskType": ("ssd.gp1", "ssd.io1", "hdd.std1")[index],
            "diskSizeGB": 100 * (index + 1),
            "iops": 3000,
            "throughput": 150,
            "status": "in-use",
            "multiAttachable": False,
            "encrypted": index == 1,
            "enabled": True,
            "snapshotId": "",
            "createTime": "2023-03-01 10:00:00",
            "charge": {
                "chargeMode": "postpaid_by_duration",
                "chargeStatus": "normal",
                "chargeStartTime": "2023-03-01T02:00:00Z",
                "chargeExpiredTime": "",
            },
            "tags": [{"key": "env", "value": "prod"}, {"key": "team", "value": "infra"}],
            "attachments": [
                {
                    "attachmentId": f"attach-{image_id[4:]}{index}",
                    "diskId": disk_id,
                    "instanceType": "vm",
                    "instanceId": f"i-{image_id[4:]}",
                    "status": "attached",
                    "attachTime": "2023-03-02 09:30:00",
                }
            ],
        }
        mapping = {"diskCategory": "cloud", "autoDelete": True, "deviceName": f"vd{'bcd'[index]}"}
        disks.append({**mapping, "status": "attached", "cloudDisk": cloud})
    return {**image, "dataDisks": disks}


def prepare_all(images: Sequence[tuple[str, JsonObject]]) -> list[FetchedImage]:
    return [prepare_image(region, image, naive_tz=BEIJING) for region, image in images]


def normalise_all(images: Sequence[tuple[str, JsonObject]]) -> list[ImageRows]:
    return [prepared.build() for prepared in prepare_all(images)]


def prebuilt(
    images: Sequence[tuple[str, JsonObject]], rows: Sequence[ImageRows]
) -> list[FetchedImage]:
    """Fetches whose rows are built already, so that the store phase times the store alone."""
    return [
        dataclasses.replace(prepared, rows_from=functools.partial(lambda built, _: built, built))
        for prepared, built in zip(prepare_all(images), rows, strict=True)
    ]


def fetched(rows: Sequence[FetchedImage], at: datetime) -> list[TargetResult]:
    return [
        TargetResult(
            Target(row.region_id, row.image_id),
            Outcome.FETCHED,
            1,
            at,
            http_status=200,
            request_id="c2hmmaan8w06w19qcdfuic4w03f7ft2d",
            rows=row,
        )
        for row in rows
    ]


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# A phase's database by name: an SQLite file in the temporary directory, or a new PostgreSQL one.
UrlFor = Callable[[str], str]


def sqlite_urls(directory: Path) -> UrlFor:
    return lambda name: f"sqlite+aiosqlite:///{directory / name}"


class PostgresDatabases:
    """New databases on a PostgreSQL server, one per phase, dropped by `drop_all`."""

    def __init__(self, server_url: str) -> None:
        self.server = make_url(server_url)
        self.created: list[str] = []

    def _admin(self) -> Any:
        return create_engine(self.server, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def __call__(self, name: str) -> str:
        database = f"bench_{name.split('.')[0]}_{uuid.uuid4().hex[:8]}"
        engine = self._admin()
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
        engine.dispose()
        self.created.append(database)
        return self.server.set(database=database).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        engine = self._admin()
        with engine.connect() as conn:
            for database in self.created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        engine.dispose()


async def open_run(url_for: UrlFor, name: str, targets: Sequence[Target]) -> tuple[Store, int]:
    store = await Store.open(url_for(name))
    return store, await store.create_run(targets, strategy="single")


async def time_store(
    url_for: UrlFor, rows: Sequence[FetchedImage], batch: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(Seconds, this thread's CPU seconds) for the first write of every image, then for
    rewriting them all. This thread is the event loop's: on SQLite the statements themselves
    run on aiosqlite's thread, on PostgreSQL psycopg's work is on the loop (a crawl's answers
    wait while the loop is busy)."""
    results = fetched(rows, datetime.now(UTC))
    store, run_id = await open_run(url_for, "store.db", [r.target for r in results])
    try:
        timings = []
        for _ in range(2):
            started, started_cpu = time.perf_counter(), time.thread_time()
            for chunk in batches(results, batch):
                await store.write_results(run_id, chunk)
            timings.append((time.perf_counter() - started, time.thread_time() - started_cpu))
    finally:
        await store.close()
    return timings[0], timings[1]


async def time_both(url_for: UrlFor, images: Sequence[tuple[str, JsonObject]], batch: int) -> float:
    """Seconds to normalise and write every image, batch by batch."""
    targets = [Target(region, str(image["imageId"])) for region, image in images]
    store, run_id = await open_run(url_for, "both.db", targets)
    try:
        started = time.perf_counter()
        for chunk in batches(images, batch):
            results = fetched(prepare_all(chunk), datetime.now(UTC))
            await store.write_results(run_id, results)
        return time.perf_counter() - started
    finally:
        await store.close()


def synthetic_targets(count: int) -> Iterator[Target]:
    """`count` distinct targets, generated lazily."""
    for index in range(count):
        yield Target(REGIONS[index % len(REGIONS)], f"img-{index:010d}")


async def time_create_run(url_for: UrlFor, count: int) -> tuple[float, float]:
    """Seconds for create_run over `count` streamed targets, and how much the process's peak
    resident memory grew meanwhile (MiB; run first, so earlier phases do not mask it)."""
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = await Store.open(url_for("targets.db"))
    try:
        started = time.perf_counter()
        await store.create_run(synthetic_targets(count), strategy="single")
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib
    return elapsed, grown_kib / 1024


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


async def measure(args: argparse.Namespace, url_for: UrlFor, database: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"benchmark": "store_throughput", "database": database}
    if args.targets:
        create_s, grown_mib = await time_create_run(url_for, args.targets)
        figures["create_run_targets"] = args.targets
        figures["create_run_targets_per_s"] = rate(args.targets, create_s)
        figures["create_run_peak_rss_growth_mib"] = round(grown_mib, 1)
    images = build_images(args.images, args.seed, shape=args.shape)
    started = time.perf_counter()
    rows = normalise_all(images)
    normalise_s = time.perf_counter() - started
    (store_s, store_loop_s), (rewrite_s, rewrite_loop_s) = await time_store(
        url_for, prebuilt(images, rows), args.batch
    )
    both_s = await time_both(url_for, images, args.batch)
    figures |= {
        "images": len(images),
        "batch": args.batch,
        "shape": args.shape,
        "disks_per_image": round(sum(len(r.disks) for r in rows) / len(rows), 2),
        "attachments_per_image": round(sum(len(r.attachments) for r in rows) / len(rows), 2),
        "tags_per_image": round(sum(len(r.tags) for r in rows) / len(rows), 2),
        "normalise_images_per_s": rate(len(rows), normalise_s),
        "store_images_per_s": rate(len(rows), store_s),
        "rewrite_images_per_s": rate(len(rows), rewrite_s),
        "store_loop_cpu_us_per_image": round(store_loop_s / len(rows) * 1e6, 1),
        "rewrite_loop_cpu_us_per_image": round(rewrite_loop_s / len(rows) * 1e6, 1),
        "both_images_per_s": rate(len(rows), both_s),
    }
    return figures


def describe(figures: dict[str, Any]) -> str:
    line = (
        f"{figures['database']}: {figures['images']:,} images ({figures['disks_per_image']} disks,"
        f" {figures['attachments_per_image']} attachments, {figures['tags_per_image']} tags"
        f" each), batches of {figures['batch']}: normalise {figures['normalise_images_per_s']:,.0f}"
        f"/s, store {figures['store_images_per_s']:,.0f}/s, rewrite"
        f" {figures['rewrite_images_per_s']:,.0f}/s, normalise+store"
        f" {figures['both_images_per_s']:,.0f} images/s; the event loop's thread"
        f" {figures['store_loop_cpu_us_per_image']} us of CPU per image written,"
        f" {figures['rewrite_loop_cpu_us_per_image']} rewritten"
    )
    if "create_run_targets" in figures:
        line += (
            f"; create_run {figures['create_run_targets']:,} targets at"
            f" {figures['create_run_targets_per_s']:,.0f}/s, peak memory grew"
            f" {figures['create_run_peak_rss_growth_mib']} MiB"
        )
    return line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="images to write")
    parser.add_argument("--batch", type=int, default=500, help="results per write_results call")
    parser.add_argument("--seed", type=int, default=0, help="inventory seed")
    parser.add_argument(
        "--shape",
        choices=("inventory", "rich"),
        default="inventory",
        help="inventory: the simulator's mix; rich: three attached, tagged data disks per image",
    )
    parser.add_argument(
        "--targets", type=int, default=0, help="also time create_run over this many targets"
    )
    parser.add_argument(
        "--postgres", metavar="URL", help="also run every phase on new databases of this server"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="store-bench-") as directory:
        runs.append(asyncio.run(measure(args, sqlite_urls(Path(directory)), "sqlite")))
    if args.postgres:
        databases = PostgresDatabases(args.postgres)
        try:
            runs.append(asyncio.run(measure(args, databases, "postgresql")))
        finally:
            databases.drop_all()
    for figures in runs:
        print(json.dumps(figures))
    for figures in runs:
        print(describe(figures))


if __name__ == "__main__":
    main()
