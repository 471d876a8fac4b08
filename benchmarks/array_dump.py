"""The client's CPU for packing a PostgreSQL write batch's arrays: psycopg's dumper and ours.

Writes `--images` simulator images to a new PostgreSQL database in batches of `--batch` (as
`store_throughput.py` does, a first write), keeping a copy of every array the batch statements
send (`_Statement.run_many`); then packs all of them again, alternating psycopg's own
`ListBinaryDumper` and the store's `FastListDumper`, `--repeat` times, and reports the CPU
seconds (`time.process_time`, best of the repeats) per batch of each and their ratio. The bytes
of the two are compared too. CPU time of a loop on one core, so a busy machine moves it less
than a wall-clock figure.

    tests/with_postgres.sh sh -c \\
        '.venv/bin/python benchmarks/array_dump.py --postgres "$CRAWLER_TEST_POSTGRES_URL"'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import adapters
from psycopg.adapt import AdaptersMap, PyFormat, Transformer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_note
from store_throughput import PostgresDatabases, batches, build_images, fetched, prepare_all

from crawler.models import Target
from crawler.store import Store
from crawler.store.dialects.postgresql import FastListDumper
from crawler.store.statements import _Statement


async def captured_arrays(url: str, images: int, batch: int) -> list[list[Any]]:
    """Every array the batch statements sent while writing `images` images."""
    arrays: list[list[Any]] = []
    original = _Statement.run_many

    async def run_many(self: _Statement, conn: Any, params: list[tuple[Any, ...]]) -> None:
        if params and self.bulk is not None:
            arrays.extend(map(list, zip(*params, strict=True)))
        await original(self, conn, params)

    rows = prepare_all(build_images(images, 0))
    store = await Store.open(url)
    try:
        run_id = await store.create_run(
            [Target(row.region_id, row.image_id) for row in rows], strategy="single"
        )
        _Statement.run_many = run_many  # type: ignore[method-assign]
        for part in batches(fetched(rows, datetime.now(UTC)), batch):
            await store.write_results(run_id, part)
    finally:
        _Statement.run_many = original  # type: ignore[method-assign]
        await store.close()
    return arrays


def pack_all(transformer: Transformer, arrays: Sequence[list[Any]]) -> tuple[float, list[Any]]:
    """CPU seconds to choose a dumper for and pack every array, and what they packed to."""
    started = time.process_time()
    packed = [transformer.get_dumper(array, PyFormat.BINARY).dump(array) for array in arrays]
    return time.process_time() - started, packed


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, metavar="URL")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    databases = PostgresDatabases(args.postgres)
    try:
        arrays = asyncio.run(captured_arrays(databases("dump"), args.images, args.batch))
    finally:
        databases.drop_all()
    fast = AdaptersMap(adapters)
    fast.register_dumper(list, FastListDumper)
    timings: dict[str, list[float]] = {"psycopg": [], "fast": []}
    for repeat in range(args.repeat):
        order = ("psycopg", "fast") if repeat % 2 == 0 else ("fast", "psycopg")
        packed = {}
        for name in order:
            transformer = Transformer(fast if name == "fast" else adapters)
            seconds, packed[name] = pack_all(transformer, arrays)
            timings[name].append(seconds)
        assert packed["fast"] == packed["psycopg"], "the two dumpers packed different bytes"
    count = -(-args.images // args.batch)
    best = {name: min(values) for name, values in timings.items()}
    print(machine_note())
    print(f"# load average {os.getloadavg()[0]:.2f}")
    print(json.dumps({
        "bench": "array_dump", "images": args.images, "batch": args.batch,
        "arrays": len(arrays), "values": sum(map(len, arrays)),
        "psycopg_ms_per_batch": round(1000 * best["psycopg"] / count, 2),
        "fast_ms_per_batch": round(1000 * best["fast"] / count, 2),
        "fast_over_psycopg": round(best["fast"] / best["psycopg"], 3),
        "psycopg_s_per_10k_images": round(best["psycopg"] * 10_000 / args.images, 3),
        "fast_s_per_10k_images": round(best["fast"] * 10_000 / args.images, 3),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
