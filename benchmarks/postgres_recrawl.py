"""The CPU of an unchanged re-crawl on PostgreSQL: this build beside a baseline, paired.

Per repeat and build, in alternating order: a fresh database, a first crawl of the targets and
an unchanged re-crawl of the same targets (the simulator answers each image as before, with a
new requestId). Prints one JSON line per crawl pair and the medians; the re-crawl's client CPU
(the crawler process's user + system, from wait4) and the server's (benchmarks/postgres_crawl.py
`ServerCpu`).

    CRAWLER_PG_DURABLE=1 tests/with_postgres.sh sh -c '.venv/bin/python \
        benchmarks/postgres_recrawl.py --postgres "$CRAWLER_TEST_POSTGRES_URL" \
        --build DIR --baseline DIR'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    SimulatorProcess,
    compile_package,
    credentials_env,
    median,
    new_secret,
    project_python,
)
from postgres_crawl import (
    ServerCpu,
    crawl_once,
    drop_database,
    new_database,
    run_row,
    simulator_args,
    write_config,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, metavar="URL")
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--build", required=True, metavar="DIR", help="the build to measure")
    parser.add_argument("--baseline", required=True, metavar="DIR", help="the build beside it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="postgres-recrawl-") as directory:
        return measure(args, Path(directory))


def measure(args: argparse.Namespace, workdir: Path) -> int:
    python, secret = project_python(), new_secret()
    env = {**os.environ, **credentials_env(secret)}
    targets = workdir / "targets.csv"
    sim_args = simulator_args(args.targets, args.latency_ms, targets)
    builds = {"this": args.build, "baseline": args.baseline}
    for build in builds.values():
        compile_package(python, {**env, "PYTHONPATH": str(Path(build).resolve())})
    server = ServerCpu(args.postgres)
    rows: list[dict[str, Any]] = []
    with SimulatorProcess(sim_args, env, start_timeout_s=120, python=python) as sim:
        config = write_config(workdir / "crawler.toml", sim.url, args.concurrency)
        for repeat in range(args.repeat):
            order = ["this", "baseline"] if repeat % 2 == 0 else ["baseline", "this"]
            for name in order:
                url = new_database(args.postgres)
                try:
                    before = server.seconds() or 0.0
                    first = crawl_once(python, env, config, targets, url, build=builds[name])
                    middle = server.seconds() or 0.0
                    again = crawl_once(python, env, config, targets, url, build=builds[name])
                    after = server.seconds() or 0.0
                    run = run_row(url)
                finally:
                    drop_database(url)
                rows.append({
                    "build": name, "repeat": repeat, "load": round(os.getloadavg()[0], 2),
                    "first_client_cpu_s": round(first, 2), "recrawl_client_cpu_s": round(again, 2),
                    "first_server_cpu_s": round(middle - before, 2),
                    "recrawl_server_cpu_s": round(after - middle, 2), **run,
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    by_build = {name: [row for row in rows if row["build"] == name] for name in builds}
    for name, runs in by_build.items():
        print(json.dumps({
            "kind": "summary", "build": name,
            "median_recrawl_client_cpu_s": median([r["recrawl_client_cpu_s"] for r in runs]),
            "median_first_client_cpu_s": median([r["first_client_cpu_s"] for r in runs]),
            "median_recrawl_server_cpu_s": median([r["recrawl_server_cpu_s"] for r in runs]),
            "recrawl_over_first": [
                round(r["recrawl_client_cpu_s"] / r["first_client_cpu_s"], 3) for r in runs
            ],
        }))  # fmt: skip
    pairs = zip(by_build["this"], by_build["baseline"], strict=True)
    ratios = [this["recrawl_client_cpu_s"] / base["recrawl_client_cpu_s"] for this, base in pairs]
    print(json.dumps({
        "kind": "ratio", "this_over_baseline": "recrawl_client_cpu_s",
        "per_repeat": [round(r, 3) for r in ratios], "median": round(median(ratios), 3),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
