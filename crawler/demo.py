"""`crawler demo`: the built-in simulator, a real crawl of it, a summary and two example queries.

Everything a newcomer needs to see the tool work, with no account and no network: the simulator
listens on a free loopback port in this process, with a few faults and missing images so the
retries and the `missing` outcome show up in the summary.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import TextIO

from crawler.app import CrawlJob, CrawlOptions
from crawler.config import Config, DatabaseConfig, database_url, default_config
from crawler.render import describe_report, render_table
from crawler.simulator import Simulator, SimulatorConfig, start_simulator
from crawler.store import query_readonly

DEMO_ACCESS_KEY_ENV = "CRAWLER_DEMO_ACCESS_KEY"
DEMO_SECRET_KEY_ENV = "CRAWLER_DEMO_SECRET_KEY"
REGIONS = ("cn-north-1", "cn-east-1", "cn-east-2", "cn-south-1")

# Two recipes of the README's cookbook, verbatim (a test keeps them in step).
EXAMPLE_QUERIES = (
    (
        "Images per region and OS type",
        """SELECT region_id,
       SUM(os_type = 'linux') AS linux,
       SUM(os_type = 'windows') AS windows,
       COUNT(*) AS total
  FROM images
 WHERE missing_since IS NULL
 GROUP BY region_id
 ORDER BY region_id;""",
    ),
    (
        "How the last run went",
        """SELECT outcome, COUNT(*) AS targets,
       SUM(attempts) AS attempts, MAX(attempts) AS max_attempts
  FROM crawl_results
 WHERE run_id = (SELECT MAX(run_id) FROM crawl_runs)
 GROUP BY outcome
 ORDER BY outcome;""",
    ),
)


def demo_simulator_config(images: int) -> SimulatorConfig:
    """A few thousand images over four regions, with faults and missing images."""
    return SimulatorConfig(
        regions=REGIONS,
        images_per_region=math.ceil(images / len(REGIONS)),
        seed=2026,
        latency_ms=5.0,
        fail_rate=0.05,
        throttle_rate=0.02,
        retry_after_s=0.2,
        missing_rate=0.03,
    )


def demo_crawl_config(endpoint: str, db_path: Path) -> Config:
    """The defaults, pointed at the simulator, with short backoffs so the demo is quick."""
    base = default_config()
    api = dataclasses.replace(
        base.api,
        endpoint=endpoint,
        access_key_env=DEMO_ACCESS_KEY_ENV,
        secret_key_env=DEMO_SECRET_KEY_ENV,
    )
    retry = dataclasses.replace(base.retry, initial_backoff_s=0.05, max_backoff_s=1.0)
    database = DatabaseConfig(url=database_url(str(db_path)))
    return dataclasses.replace(base, api=api, retry=retry, database=database)


async def run_demo(db_path: Path, images: int, out: TextIO, program: str = "crawler") -> int:
    """Crawl a fresh simulator into `db_path` and show what came of it.

    `program` is how the user runs the crawler from here (`.venv/bin/crawler` after
    `make demo`), so the closing hint can be pasted as it is.
    """
    simulator = Simulator(demo_simulator_config(images))
    running = await start_simulator(simulator)
    try:
        with tempfile.TemporaryDirectory() as folder:
            targets = Path(folder) / "targets.csv"
            simulator.write_targets(targets)
            print(f"simulator on {running.url}; crawling into {db_path} ...", file=out)
            config = demo_crawl_config(running.url, db_path)
            environ = {
                DEMO_ACCESS_KEY_ENV: simulator.config.access_key,
                DEMO_SECRET_KEY_ENV: simulator.config.secret_key,
            }
            job = CrawlJob(CrawlOptions(config, targets=str(targets)), environ=environ)
            report = await job.run()
    finally:
        await running.close()
    print(describe_report(report), file=out)
    for title, sql in EXAMPLE_QUERIES:
        columns, rows = await query_readonly(config.database.url, sql)
        print(f"\n{title}:\n{sql}\n\n{render_table(columns, rows)}", file=out)
    print(f'\nAsk your own: {program} sql "SELECT ..." --db {db_path}', file=out)
    print(f"List the tables: {program} tables --db {db_path}", file=out)
    return 0
