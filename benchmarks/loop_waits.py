"""Where a crawl's event loop waits: inside the writer's transactions and outside them.

A crawl into a fresh SQLite file and into a fresh PostgreSQL database, `--repeat` times,
interleaved, each `crawler crawl` run in a child process with timing wrappers around a few of
its functions (nothing of the crawler is changed; the wrappers cost some CPU of their own, so
compare the two databases here, and take throughput from `postgres_crawl.py`). Per crawl:

- `write_share`: the share of the crawl spent inside the writer's transactions (`Store._write`,
  fence, versions, upserts, commit), and how many there were;
- `rps_in` / `rps_out`: answers per second taken in by the workers inside and outside them;
- `blocked_in_s` / `blocked_out_s`: how long the loop was held up, in total, beyond 2 ms at a
  time (a task sleeping 1 ms and measuring how late it woke), inside and outside; `hold_max_ms` /
  `hold_max_in_ms` the longest single hold (anywhere, inside), `hold_p90_in_ms` the 90th
  percentile of the `holds_in` holds inside, and `holds_over_10ms` / `holds_over_20ms` how many
  were longer (an answer of 20 ms waits out a hold longer than that: every slot drains);
- `build_s`: the writer's CPU on the loop for rows (`_Batch.build`, rows built by
  `record_versions`, the version plan, the images parameters); `sql_s`: time in the store's
  statements (`_Statement.run_many`, current versions, the fence: the client adapting the
  parameters and the server's answer);
- `claims`: claim transactions on PostgreSQL and the time the feeder spent in them;
- `results_queue_max`: the most results waiting for the writer (the queue holds 2,048);
- `parked_mean`: workers parked for want of a target (not in a request), sampled every tick
  while the crawl is in its steady part (after the first answer, before the last lane is
  exhausted), and `parked_share`, the share of those samples with any worker parked; `queued_min`
  the fewest targets queued in the lanes at any of those samples;
- `work_s`: the run's own working time (`crawl_runs.started_at` to `finished_at`, what
  `postgres_crawl.py` divides by): the difference from `crawl_s` is creating the run, loading
  its targets and finishing it;
- `first_answer_s`, `after_last_s`: from the scheduler's start to the first answer, and from the
  last answer to the scheduler's end (the writer draining what is left).

    CRAWLER_PG_DURABLE=1 tests/with_postgres.sh sh -c \\
        '.venv/bin/python benchmarks/loop_waits.py --postgres "$CRAWLER_TEST_POSTGRES_URL"'
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    SimulatorProcess,
    credentials_env,
    machine_note,
    median,
    new_secret,
    project_python,
)
from postgres_crawl import (
    drop_database,
    new_database,
    run_row,
    simulator_args,
    write_config,
)

LATE_S = 0.002  # a wake-up this late counts as the loop held up
TICK_S = 0.001


class Probe:
    """What the wrappers record in the child."""

    def __init__(self) -> None:
        self.transactions: list[tuple[float, float]] = []
        self.transaction_cpu_s = 0.0
        self.answers: list[float] = []
        self.latencies: list[tuple[float, float]] = []  # (answered at, seconds in flight)
        self.late: list[tuple[float, float]] = []  # (woke at, how late)
        self.timers: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.started = self.ended = self.crawl_cpu_s = 0.0
        self.queue_max = 0
        self.parked: list[int] = []
        self.queued: list[int] = []

    def add(self, name: str, seconds: float) -> None:
        self.timers[name] = self.timers.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    def timed_sync(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return wrapper

    def timed_async(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return wrapper

    async def sample(self, scheduler: Any) -> None:
        queue: asyncio.Queue[Any] = scheduler._results
        while True:
            self.queue_max = max(self.queue_max, queue.qsize())
            lanes = scheduler._lanes
            steady = scheduler._first_answer.is_set() and not any(lane.exhausted for lane in lanes)
            if steady:
                self.parked.append(len(scheduler._idle_workers))
                self.queued.append(sum(len(lane.queue) for lane in lanes))
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            woke = time.perf_counter()
            late = woke - before - TICK_S
            if late > LATE_S:
                self.late.append((woke, late))

    def summary(self) -> dict[str, Any]:
        windows = self.transactions
        total_s = self.ended - self.started
        inside_s = sum(end - start for start, end in windows)

        def inside(at: float) -> bool:
            return any(start <= at <= end for start, end in windows)

        answers_in = sum(1 for at in self.answers if inside(at))
        blocked_in = sum(late for at, late in self.late if inside(at - late / 2))
        blocked_out = sum(late for _, late in self.late) - blocked_in
        holds_in = sorted((late for at, late in self.late if inside(at - late / 2)), reverse=True)
        holds = sorted((late for _, late in self.late), reverse=True)
        lat_in = [seconds for at, seconds in self.latencies if inside(at)]
        lat_out = [seconds for at, seconds in self.latencies if not inside(at)]
        build = sum(self.timers.get(name, 0.0) for name in _BUILD)
        sql = sum(self.timers.get(name, 0.0) for name in _SQL)
        outside_s = total_s - inside_s
        return {
            "crawl_s": round(total_s, 3),
            "first_answer_s": round(min(self.answers) - self.started, 3) if self.answers else 0.0,
            "after_last_s": round(self.ended - max(self.answers), 3) if self.answers else 0.0,
            "transactions": len(windows),
            "write_share": round(inside_s / total_s, 3) if total_s else 0.0,
            "rps_in": round(answers_in / inside_s) if inside_s else 0,
            "rps_out": round((len(self.answers) - answers_in) / outside_s) if outside_s else 0,
            "busy_in": round(self.transaction_cpu_s / inside_s, 3) if inside_s else 0.0,
            "busy_out": round((self.crawl_cpu_s - self.transaction_cpu_s) / outside_s, 3)
            if outside_s
            else 0.0,
            "latency_in_ms": round(median(lat_in) * 1000, 1) if lat_in else 0.0,
            "latency_out_ms": round(median(lat_out) * 1000, 1) if lat_out else 0.0,
            "blocked_in_s": round(blocked_in, 3),
            "blocked_out_s": round(blocked_out, 3),
            "hold_max_ms": round(holds[0] * 1000, 1) if holds else 0.0,
            "hold_max_in_ms": round(holds_in[0] * 1000, 1) if holds_in else 0.0,
            "hold_p90_in_ms": round(holds_in[len(holds_in) // 10] * 1000, 1) if holds_in else 0.0,
            "holds_in": len(holds_in),
            "holds_over_10ms": sum(1 for late in holds if late > 0.010),
            "holds_over_20ms": sum(1 for late in holds if late > 0.020),
            "build_s": round(build, 3),
            "sql_s": round(sql, 3),
            "results_queue_max": self.queue_max,
            "parked_mean": round(sum(self.parked) / len(self.parked), 2) if self.parked else 0.0,
            "parked_share": round(sum(1 for n in self.parked if n) / len(self.parked), 3)
            if self.parked
            else 0.0,
            "queued_min": min(self.queued) if self.queued else 0,
            "claims": self.counts.get("claim", 0),
            "claims_s": round(self.timers.get("claim", 0.0), 3),
            "timers": {name: round(value, 3) for name, value in sorted(self.timers.items())},
        }


_BUILD = ("batch_build", "rows_of", "plan_versions", "image_params", "children")
_SQL = ("run_many", "current_versions", "fence")


def instrument(probe: Probe) -> None:
    """Wrap the functions the summary reads (the child process only)."""
    from crawler import claims, client, scheduler
    from crawler.store import ledger, statements, versions, writer

    batch = writer._Batch
    batch.build = classmethod(probe.timed_sync("batch_build", batch.build.__func__))  # type: ignore[method-assign]
    batch.rows_of = probe.timed_sync("rows_of", batch.rows_of)  # type: ignore[method-assign]
    batch.image_params = probe.timed_sync("image_params", batch.image_params)  # type: ignore[method-assign]
    batch.children = probe.timed_sync("children", batch.children)  # type: ignore[method-assign]
    writer.plan_versions = probe.timed_sync("plan_versions", writer.plan_versions)
    writer.current_versions = probe.timed_async("current_versions", versions.current_versions)
    statement = statements._Statement
    statement.run_many = probe.timed_async("run_many", statement.run_many)  # type: ignore[method-assign]
    claims.Claims.fence_results = probe.timed_async("fence", claims.Claims.fence_results)  # type: ignore[method-assign]
    claims.ClaimFeed.next_page = probe.timed_async("claim", claims.ClaimFeed.next_page)  # type: ignore[method-assign]

    original_write = ledger.Store._write

    async def write(self: Any, *args: Any) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return await original_write(self, *args)
        finally:
            probe.transactions.append((start, time.perf_counter()))
            probe.transaction_cpu_s += time.process_time() - cpu

    ledger.Store._write = write  # type: ignore[method-assign]
    original_describe = client.ApiClient.describe_image

    async def describe(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent = time.perf_counter()
        try:
            return await original_describe(self, *args, **kwargs)
        finally:
            answered = time.perf_counter()
            probe.answers.append(answered)
            probe.latencies.append((answered, answered - sent))

    client.ApiClient.describe_image = describe  # type: ignore[method-assign]
    original_run = scheduler.Scheduler.run

    async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        sampler = asyncio.create_task(probe.sample(self))
        probe.started, cpu = time.perf_counter(), time.process_time()
        try:
            return await original_run(self, *args, **kwargs)
        finally:
            probe.ended = time.perf_counter()
            probe.crawl_cpu_s = time.process_time() - cpu
            sampler.cancel()

    scheduler.Scheduler.run = run  # type: ignore[method-assign]


def child(out: str, argv: list[str]) -> int:
    probe = Probe()
    instrument(probe)
    from crawler.cli import main

    code = main(argv)
    Path(out).write_text(json.dumps(probe.summary()), encoding="utf-8")
    return code


def crawl(
    python: str, env: dict[str, str], config: Path, targets: Path, url: str, out: Path
) -> dict[str, Any]:
    import subprocess

    argv = ["crawl", "--config", str(config), "--targets", str(targets), "--db", url,
            "--no-progress"]  # fmt: skip
    subprocess.run(
        [python, __file__, "child", str(out), *argv], env=env, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=config.parent,
    )  # fmt: skip
    figures: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return figures


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["child"]:
        return child(argv[1], list(argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, metavar="URL")
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--per-region-concurrency", dest="per_region", type=int, metavar="N",
        help="[crawl] per_region_concurrency (default: the concurrency)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--build", metavar="DIR", help="the build to probe (default installed)")
    args = parser.parse_args(argv)
    python, secret = project_python(), new_secret()
    env = {**os.environ, **credentials_env(secret)}
    if args.build is not None:
        env["PYTHONPATH"] = str(Path(args.build).resolve())
    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="loop-waits-") as directory:
        workdir = Path(directory)
        targets = workdir / "targets.csv"
        sim_args = simulator_args(args.targets, args.latency_ms, targets)
        with SimulatorProcess(sim_args, env, start_timeout_s=120, python=python) as sim:
            config = write_config(
                workdir / "crawler.toml", sim.url, args.concurrency, per_region=args.per_region
            )
            for repeat in range(args.repeat):
                for database in ("sqlite", "postgresql"):
                    if database == "sqlite":
                        url = f"sqlite+aiosqlite:///{workdir / f'crawl-{repeat}.db'}"
                    else:
                        url = new_database(args.postgres)
                    try:
                        probe = crawl(python, env, config, targets, url, workdir / "probe.json")
                        row = run_row(url)
                    finally:
                        if database == "postgresql":
                            drop_database(url)
                    figures.append({"database": database, "repeat": repeat,
                                    "requests_per_s": row["requests_per_s"],
                                    "work_s": row["work_s"], **probe})  # fmt: skip
    print(machine_note())
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")
    for figure in figures:
        print(json.dumps(figure))
    for database in ("sqlite", "postgresql"):
        runs = [f for f in figures if f["database"] == database]
        keys = (
            "requests_per_s", "work_s", "crawl_s", "first_answer_s", "after_last_s", "write_share",
            "rps_in", "rps_out", "busy_in", "busy_out", "latency_in_ms", "latency_out_ms",
            "blocked_in_s", "blocked_out_s", "hold_max_ms", "hold_max_in_ms", "hold_p90_in_ms",
            "holds_in", "holds_over_10ms", "holds_over_20ms", "build_s", "sql_s", "claims_s",
            "results_queue_max", "parked_mean", "parked_share", "queued_min",
        )  # fmt: skip
        medians = {key: median([f[key] for f in runs]) for key in keys}
        print(json.dumps({"kind": "median", "database": database, **medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
