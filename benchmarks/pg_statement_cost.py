"""The client's CPU per statement on PostgreSQL: through SQLAlchemy, straight on psycopg, pipelined.

`--statements` one-row `SELECT %s::int` statements, each way, on one connection of the store's
kind (an async SQLAlchemy engine with psycopg, `paramstyle="format"`): through
`AsyncConnection.exec_driver_sql`, as the store runs its statements; straight on psycopg's own
`AsyncConnection.execute`; and inside psycopg's pipeline (`--per-pipeline` statements, then one
sync). Prints this process's CPU (`time.process_time`) and wall time per statement, each way,
as one JSON line per way, `--repeat` times interleaved: what a round trip costs the event loop
that also takes a crawl's answers.

    CRAWLER_PG_DURABLE=1 tests/with_postgres.sh sh -c \\
        '.venv/bin/python benchmarks/pg_statement_cost.py --postgres "$CRAWLER_TEST_POSTGRES_URL"'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

STATEMENT = "SELECT %s::int"


async def through_sqlalchemy(conn: AsyncConnection, driver: Any, count: int, _: int) -> None:
    for number in range(count):
        await conn.exec_driver_sql(STATEMENT, (number,))


async def straight(conn: AsyncConnection, driver: Any, count: int, _: int) -> None:
    for number in range(count):
        await driver.execute(STATEMENT, (number,))


async def pipelined(conn: AsyncConnection, driver: Any, count: int, per_pipeline: int) -> None:
    for start in range(0, count, per_pipeline):
        async with driver.pipeline():
            for number in range(start, min(count, start + per_pipeline)):
                await driver.execute(STATEMENT, (number,))


Way = Callable[[AsyncConnection, Any, int, int], Awaitable[None]]
WAYS: dict[str, Way] = {
    "sqlalchemy": through_sqlalchemy, "psycopg": straight, "pipeline": pipelined,
}  # fmt: skip


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    engine = create_async_engine(args.postgres, paramstyle="format")
    figures = []
    try:
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await through_sqlalchemy(conn, driver, 100, 1)  # connected, statements prepared
            for repeat in range(args.repeat):
                for name, way in WAYS.items():
                    cpu, wall = time.process_time(), time.perf_counter()
                    await way(conn, driver, args.statements, args.per_pipeline)
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                    figures.append({
                        "way": name, "repeat": repeat, "statements": args.statements,
                        "cpu_us_per_statement": round(cpu / args.statements * 1e6, 1),
                        "wall_us_per_statement": round(wall / args.statements * 1e6, 1),
                    })  # fmt: skip
                await conn.rollback()
    finally:
        await engine.dispose()
    return figures


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, metavar="URL")
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--per-pipeline", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    for figure in asyncio.run(measure(args)):
        print(json.dumps(figure))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
