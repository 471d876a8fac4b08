"""Two builds of the crawler side by side: CPU per request of `crawler crawl`, paired runs.

One simulator (`--latency-ms`, 4 regions, every target an existing image); then `--repeat`
rounds, each crawling the whole targets file into a fresh SQLite file once with this checkout
and once with the other build (`--baseline DIR`: a directory holding another version's
`crawler` package, migrations inside it, put first on PYTHONPATH), the order alternating per
round; both packages' bytecode is written first. Per crawl: the child's own CPU (user +
system, start-up, migrations and commits included, `os.wait4`) per request and its wall
time; per round the ratio baseline / this, so a busy phase of the shared machine hits both
alike. Medians and spread at the end.

    mkdir /tmp/base && git archive main crawler migrations | tar -x -C /tmp/base
    mv /tmp/base/migrations /tmp/base/crawler/
    .venv/bin/python benchmarks/paired_crawl.py --baseline /tmp/base --repeat 5

`--strategy batch` crawls with describeImages. `--env NAME=VALUE` sets a variable for this
checkout's crawls only (an experiment switch, say).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    SimulatorProcess,
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


def crawl(
    args: argparse.Namespace, sim: SimulatorProcess, env: dict[str, str], targets: Path,
    workdir: Path, variant: str,
) -> dict[str, Any]:  # fmt: skip
    """One first crawl with one build; its figures."""
    config = workdir / "paired.toml"
    write_crawl_config(config, sim.url, args.concurrency)
    db = workdir / f"paired-{variant}.db"
    remove_database(db)
    child_env = dict(env)
    if variant == "baseline":
        child_env["PYTHONPATH"] = str(Path(args.baseline).resolve())
    else:
        child_env.update(item.split("=", 1) for item in args.env)
    argv = [*crawl_argv(config, targets, db, args.concurrency, args.python)]
    argv += ["--strategy", args.strategy]
    busy_before, sim_before = machine_busy_s(), sim.cpu_s()
    # Run from the work directory: `python -m` puts the current directory first on the path,
    # ahead of PYTHONPATH, so from a checkout both variants would import the checkout's package.
    run = run_child(argv, child_env, timeout_s=args.timeout_s, cwd=workdir)
    other_s = machine_busy_s() - busy_before - (sim.cpu_s() - sim_before) - run.cpu_s
    figures = run_figures(db) if db.exists() else {}
    remove_database(db)
    requests = int(figures.get("requests") or 0)
    images = count_lines(targets)
    return {
        "bench": "paired_crawl", "variant": variant, "strategy": args.strategy,
        "targets": images, "fetched": figures.get("fetched"), "requests": requests,
        "cpu_s": round(run.cpu_s, 3),
        "cpu_ms_per_request": round(1000 * run.cpu_s / max(1, requests), 4),
        "cpu_ms_per_image": round(1000 * run.cpu_s / max(1, images), 4),
        "wall_s": round(run.wall_s, 2), "other_cores": round(max(0.0, other_s) / run.wall_s, 2),
        "ok": run.returncode == 0 and figures.get("fetched") == images,
    }  # fmt: skip


def summarise(found: Sequence[dict[str, Any]], key: str) -> None:
    """Medians (min-max) per variant and of the per-round ratio baseline / this."""
    by: dict[str, list[float]] = {}
    for result in found:
        by.setdefault(result["variant"], []).append(result[key])
    ratios = [b / t for b, t in zip(by["baseline"], by["this"], strict=True) if t]
    print()
    print(f"{key}, median (min-max) of {len(ratios)} paired rounds:")
    for variant, values in by.items():
        print(f"  {variant:<9} {median(values):.4f} ({min(values):.4f}-{max(values):.4f})")
    print(f"  baseline / this {median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--baseline", required=True, metavar="DIR", help="directory holding the other `crawler`")
    add("--targets", type=int, default=6000, help="targets, all existing images (6000)")
    add("--repeat", type=int, default=3, help="paired rounds (3)")
    add("--concurrency", type=int, default=64, help="crawl concurrency (64)")
    add("--latency-ms", type=float, default=20.0, help="simulator latency (20)")
    add("--strategy", choices=("single", "batch"), default="single")
    add("--env", action="append", default=[], metavar="NAME=VALUE", help="for this build only")
    add("--timeout-s", type=float, default=1800.0, help="kill a crawl running longer (1800)")
    add("--python", default=project_python(), help="interpreter for the simulator and crawls")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if not (Path(args.baseline) / "crawler" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: no crawler package there")
    print(machine_note())
    env = credentials_env(new_secret())
    env.pop("PYTHONPATH", None)
    compile_package(args.python, env)
    compile_package(args.python, {**env, "PYTHONPATH": str(Path(args.baseline).resolve())})
    found = []
    with tempfile.TemporaryDirectory(prefix="paired-") as tmp:
        workdir = Path(tmp)
        targets = workdir / "targets.csv"
        sim_args = [
            "--latency-ms", f"{args.latency_ms:g}", "--images-per-region",
            str(-(-args.targets // REGIONS)), "--write-targets", str(targets),
        ]  # fmt: skip
        with SimulatorProcess(sim_args, env, start_timeout_s=600, python=args.python) as sim:
            print(
                f"# {count_lines(targets):,} targets at {args.latency_ms:g} ms, pid {os.getpid()}"
            )
            for repeat in range(args.repeat):
                order = ("this", "baseline") if repeat % 2 == 0 else ("baseline", "this")
                for variant in order:
                    result = {**crawl(args, sim, env, targets, workdir, variant), "repeat": repeat}
                    print(json.dumps(result), flush=True)
                    found.append(result)
    summarise(found, "cpu_ms_per_request")
    summarise(found, "wall_s")
    return 0 if all(r["ok"] for r in found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
