"""How CPU per image and peak memory grow with the number of targets, single and batch.

For each size: one simulator process (`python -m crawler simulate`, 4 regions, every target an
existing image, `--latency-ms`), then for each strategy a first crawl of the whole file into a
fresh SQLite file (`crawler crawl --strategy S`, exactly as a cron job runs it). Per crawl: the
child's own CPU (user + system, start-up included) per image, its peak resident set (`os.wait4`),
wall time, the simulator's CPU meanwhile, and how many cores other programs kept busy
(`other_cores`: the machine may be shared). A crawl whose CPU per image grows with the size is
doing work per batch that grows with the database (the history's end-of-run marks were such a
case: 0.4 CPU ms per image at 20,000 images became 8 before they were fixed).

    .venv/bin/python benchmarks/growth.py --sizes 10000,100000
    .venv/bin/python benchmarks/growth.py --sizes 10000,100000,1000000 --repeat 1   # long

The simulator encodes every image up front: a million take it minutes and gigabytes to build.
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
    crawl_argv,
    credentials_env,
    machine_busy_s,
    machine_note,
    median,
    new_secret,
    project_python,
    remove_database,
    run_child,
    run_figures,
    write_crawl_config,
)

REGIONS = 4


def crawl_once(
    args: argparse.Namespace, sim: SimulatorProcess, env: dict[str, str], targets: Path,
    strategy: str, workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    """One first crawl of `targets` with `strategy`; its figures as one JSON-able dict."""
    config = workdir / "growth.toml"
    write_crawl_config(config, sim.url, args.concurrency)
    db = workdir / "growth.db"
    remove_database(db)
    argv = [*crawl_argv(config, targets, db, args.concurrency, args.python), "--strategy", strategy]
    busy_before, sim_before = machine_busy_s(), sim.cpu_s()
    run = run_child(argv, env, timeout_s=args.timeout_s)
    other_s = machine_busy_s() - busy_before - (sim.cpu_s() - sim_before) - run.cpu_s
    figures = run_figures(db) if db.exists() else {}
    size_mib = sum(p.stat().st_size for p in workdir.glob("growth.db*")) / 2**20
    remove_database(db)
    fetched = int(figures.get("fetched") or 0)
    images = count_lines(targets)
    return {
        "bench": "growth", "strategy": strategy, "targets": images, "fetched": fetched,
        "requests": figures.get("requests"), "cpu_s": round(run.cpu_s, 3),
        "cpu_ms_per_image": round(1000 * run.cpu_s / max(1, images), 4),
        "peak_rss_mib": round(run.maxrss_mib, 1), "wall_s": round(run.wall_s, 2),
        "simulator_cpu_s": round(sim.cpu_s() - sim_before, 2), "db_mib": round(size_mib, 1),
        "other_cores": round(max(0.0, other_s) / run.wall_s, 2),
        "ok": run.returncode == 0 and fetched == images,
    }  # fmt: skip


def run_size(args: argparse.Namespace, size: int, workdir: Path) -> list[dict[str, Any]]:
    """Every strategy and repeat at one size, against one simulator."""
    env = credentials_env(new_secret())
    targets = workdir / f"targets-{size}.csv"
    sim_args = [
        "--latency-ms", f"{args.latency_ms:g}", "--images-per-region",
        str(-(-size // REGIONS)), "--write-targets", str(targets),
    ]  # fmt: skip
    found = []
    with SimulatorProcess(sim_args, env, start_timeout_s=3600, python=args.python) as sim:
        print(f"# {count_lines(targets):,} targets; simulator built in {sim.start_s:.0f} s")
        for repeat in range(args.repeat):
            for strategy in args.strategies:
                result = {
                    **crawl_once(args, sim, env, targets, strategy, workdir),
                    "repeat": repeat,
                }
                print(json.dumps(result), flush=True)
                found.append(result)
    return found


def print_table(results: Sequence[dict[str, Any]]) -> None:
    """Medians per (size, strategy)."""
    print()
    print("| targets | strategy | CPU ms per image | peak RSS MiB | wall s | ok |")
    print("|---:|---|---:|---:|---:|---|")
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for result in results:
        cells.setdefault((result["targets"], result["strategy"]), []).append(result)
    for (targets, strategy), runs in cells.items():
        cpu = [r["cpu_ms_per_image"] for r in runs]
        spread = f" ({min(cpu):.3f}-{max(cpu):.3f})" if len(cpu) > 1 else ""
        print(
            f"| {targets:,} | {strategy} | {median(cpu):.3f}{spread} |"
            f" {median([r['peak_rss_mib'] for r in runs]):.0f} |"
            f" {median([r['wall_s'] for r in runs]):.1f} | {all(r['ok'] for r in runs)} |"
        )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--sizes", type=comma_list(int, 1), default=[10_000, 100_000], help="(10000,100000)")
    add("--strategies", type=lambda t: t.split(","), default=["single", "batch"])
    add("--repeat", type=int, default=1, help="crawls per size and strategy (1)")
    add("--concurrency", type=int, default=64, help="crawl concurrency (64)")
    add("--latency-ms", type=float, default=0.0, help="simulator latency (0)")
    add("--timeout-s", type=float, default=7200.0, help="kill a crawl running longer (7200)")
    add("--python", default=project_python(), help="interpreter for the simulator and crawler")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    print(machine_note())
    compile_package(args.python)  # as `pip install` leaves it: no crawl compiles the modules
    with tempfile.TemporaryDirectory(prefix="growth-") as tmp:
        found = [r for size in args.sizes for r in run_size(args, size, Path(tmp))]
    print_table(found)
    return 0 if all(r["ok"] for r in found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
