"""What the garbage collector costs a crawl, at the crawler's young-generation threshold and others.

One simulator (`--latency-ms`, every target an existing image); then `--repeat` rounds, each
running, for every threshold of `--thresholds` and every strategy, a first crawl into a fresh
SQLite file: `crawler.cli.main` in a child process with `crawler.cli.startup`'s
`YOUNG_COLLECTION_THRESHOLD` set to that threshold (700 is Python's default) and a
`gc.callbacks` hook that times every collection (`time.thread_time`: a collection runs on the
thread that triggered it, while aiosqlite's thread goes on).
Per crawl: collections and their CPU seconds by generation, the child's whole CPU (`os.wait4`,
noisy on a shared machine; the collections' own time is not) and its peak resident set.

    .venv/bin/python benchmarks/gc_cost.py --targets 20000 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    SimulatorProcess,
    comma_list,
    compile_package,
    count_lines,
    credentials_env,
    machine_note,
    median,
    new_secret,
    project_python,
    remove_database,
    run_child,
    write_crawl_config,
)

REGIONS = 4

# The child: time every collection, run the crawl as `crawler crawl` would, print the figures.
_CHILD = """
import gc, json, sys, time
import crawler.cli as cli
import crawler.cli.startup as startup
threshold, config, targets, db, strategy = sys.argv[1:6]
startup.YOUNG_COLLECTION_THRESHOLD = int(threshold)
found = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
started = [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.thread_time()
    else:
        entry = found[info["generation"]]
        entry[0] += 1
        entry[1] += time.thread_time() - started[0]
gc.callbacks.append(timed)
code = cli.main(["crawl", "--config", config, "--targets", targets, "--db", db,
                 "--no-progress", "--strategy", strategy])
gc.callbacks.remove(timed)
print(json.dumps({"code": code, "threshold": gc.get_threshold()[0], "gc": found}))
"""


def crawl(
    args: argparse.Namespace, sim: SimulatorProcess, env: dict[str, str], targets: Path,
    workdir: Path, threshold: int, strategy: str,
) -> dict[str, Any]:  # fmt: skip
    config = workdir / "gc.toml"
    write_crawl_config(config, sim.url, args.concurrency)
    db = workdir / "gc.db"
    remove_database(db)
    argv = [args.python, "-c", _CHILD, str(threshold), str(config), str(targets), str(db), strategy]
    run = run_child(argv, env, timeout_s=args.timeout_s, cwd=workdir)
    remove_database(db)
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    images = count_lines(targets)
    collections = figures["gc"]
    gc_s = sum(seconds for _, seconds in collections.values())
    return {
        "bench": "gc_cost", "strategy": strategy, "threshold": threshold,
        "threshold_seen": figures["threshold"], "targets": images,
        "collections": {gen: n for gen, (n, _) in collections.items()},
        "gc_cpu_s": round(gc_s, 3), "gc_cpu_ms_per_image": round(1000 * gc_s / images, 4),
        "cpu_s": round(run.cpu_s, 2), "cpu_ms_per_image": round(1000 * run.cpu_s / images, 4),
        "peak_rss_mib": round(run.maxrss_mib, 1),
        "ok": run.returncode == 0 and figures["code"] == 0,
    }  # fmt: skip


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--thresholds", type=comma_list(int, 1), default=[700, 10_000], help="(700,10000)")
    add("--strategies", type=lambda t: t.split(","), default=["single", "batch"])
    add("--targets", type=int, default=20_000, help="targets, all existing images (20000)")
    add("--repeat", type=int, default=2, help="rounds (2)")
    add("--concurrency", type=int, default=64, help="crawl concurrency (64)")
    add("--latency-ms", type=float, default=0.0, help="simulator latency (0)")
    add("--timeout-s", type=float, default=1800.0, help="kill a crawl running longer (1800)")
    add("--python", default=project_python(), help="interpreter for the simulator and crawls")
    args = parser.parse_args(argv)
    print(machine_note())
    compile_package(args.python)
    env = credentials_env(new_secret())
    found = []
    with tempfile.TemporaryDirectory(prefix="gc-cost-") as tmp:
        workdir = Path(tmp)
        targets = workdir / "targets.csv"
        sim_args = [
            "--latency-ms", f"{args.latency_ms:g}", "--images-per-region",
            str(-(-args.targets // REGIONS)), "--write-targets", str(targets),
        ]  # fmt: skip
        with SimulatorProcess(sim_args, env, start_timeout_s=600, python=args.python) as sim:
            for repeat in range(args.repeat):
                for strategy in args.strategies:
                    for threshold in args.thresholds:
                        result = crawl(args, sim, env, targets, workdir, threshold, strategy)
                        result["repeat"] = repeat
                        print(json.dumps(result), flush=True)
                        found.append(result)
    print()
    print("| strategy | threshold | GC CPU ms per image | crawl CPU ms per image | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for strategy in args.strategies:
        for threshold in args.thresholds:
            runs = [r for r in found if (r["strategy"], r["threshold"]) == (strategy, threshold)]
            gc_ms = [r["gc_cpu_ms_per_image"] for r in runs]
            cpu = [r["cpu_ms_per_image"] for r in runs]
            print(
                f"| {strategy} | {threshold:,} | {median(gc_ms):.4f} ({min(gc_ms):.4f}-"
                f"{max(gc_ms):.4f}) | {median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f}) |"
                f" {median([r['peak_rss_mib'] for r in runs]):.0f} MiB |"
            )
    return 0 if all(r["ok"] for r in found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
