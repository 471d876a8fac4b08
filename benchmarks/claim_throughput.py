"""Claim/complete throughput on PostgreSQL with 1, 2 and 4 worker processes.

Each worker is a process of its own doing what a `crawl --join` worker does against the database,
without the API in between: claim 100 targets of a region (`FOR UPDATE SKIP LOCKED`, lease and
token), then complete them in one fenced transaction that writes their `crawl_results` rows
(outcome `failed`, which writes no inventory rows: the claim machinery's cost alone). Workers
run until the run has no targets left; the figure is targets per second, all workers together,
from the first claim to the last completion. A fresh run of `--targets` targets per setting.

    CRAWLER_PG_DURABLE=1 tests/with_postgres.sh sh -c \\
        '.venv/bin/python benchmarks/claim_throughput.py --postgres "$CRAWLER_TEST_POSTGRES_URL"'

Prints one JSON line per setting, then a human line each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from crawler.claims import Claims
from crawler.models import Outcome, Target, TargetResult
from crawler.store import Store

REGIONS = ("cn-north-1", "cn-east-1", "cn-east-2", "cn-south-1")
CLAIM_SIZE = 100


async def prepare(url: str, count: int) -> int:
    store = await Store.open(url)
    try:
        targets = (Target(REGIONS[i % len(REGIONS)], f"img-{i:010d}") for i in range(count))
        return await store.create_run(targets, strategy="single")
    finally:
        await store.close()


async def work(url: str, run_id: int, region_offset: int) -> int:
    """Claim and complete until nothing is left; returns how many targets this worker did."""
    store = await Store.open(url)
    claims = Claims(run_id, lease_s=30)
    done = 0
    empty_regions = 0
    turn = region_offset
    cursors = dict.fromkeys(REGIONS, "")
    try:
        while empty_regions < len(REGIONS):
            region = REGIONS[turn % len(REGIONS)]
            turn += 1
            async with store.engine.begin() as conn:  # as ClaimFeed does: on from the last claim
                claimed = await claims.claim(conn, region, CLAIM_SIZE, after=cursors[region])
                if not claimed and cursors[region]:
                    claimed = await claims.claim(conn, region, CLAIM_SIZE)
            if not claimed:
                empty_regions += 1
                continue
            cursors[region] = claimed[-1].image_id
            empty_regions = 0
            now = datetime.now(UTC)
            results = [
                TargetResult(t, Outcome.FAILED, 1, now, http_status=503, error_status="BENCH")
                for t in claimed
            ]
            written = await store.write_results(run_id, results, fence=claims.fence_results)
            claims.settle(results, written)
            done += written
    finally:
        await store.close()
    return done


def new_database(server_url: str) -> str:
    server = make_url(server_url)
    name = f"bench_claims_{uuid.uuid4().hex[:8]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    parsed = make_url(url)
    engine = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT",
                           poolclass=NullPool)  # fmt: skip
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    engine.dispose()


def measure(server_url: str, workers: int, count: int) -> dict[str, object]:
    url = new_database(server_url)
    try:
        run_id = asyncio.run(prepare(url, count))
        started = time.perf_counter()
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", url, str(run_id), str(n)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(workers)
        ]
        done = [int(child.communicate()[0].strip() or 0) for child in children]
        elapsed_s = time.perf_counter() - started
    finally:
        drop_database(url)
    return {
        "benchmark": "claim_throughput",
        "workers": workers,
        "targets": count,
        "completed": sum(done),
        "per_worker": done,
        "seconds": round(elapsed_s, 2),
        "targets_per_s": round(sum(done) / elapsed_s, 1),
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="URL", help="a server to create databases on")
    parser.add_argument("--targets", type=int, default=40_000)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "RUN_ID", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        url, run_id, offset = args.worker
        print(asyncio.run(work(url, int(run_id), int(offset))))
        return 0
    if not args.postgres:
        parser.error("--postgres URL is required")
    settings = [int(n) for n in args.workers.split(",")]
    figures = [measure(args.postgres, workers, args.targets) for workers in settings]
    for figure in figures:
        print(json.dumps(figure))
    for figure in figures:
        print(
            f"{figure['workers']} workers: {figure['completed']:,} of {figure['targets']:,} targets"
            f" claimed and completed in {figure['seconds']} s: {figure['targets_per_s']:,.0f}/s"
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main(sys.argv[1:]))
