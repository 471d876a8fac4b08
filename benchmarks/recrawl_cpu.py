"""CPU per image of a re-crawl of an unchanged inventory against the first crawl, end to end.

Each repeat crawls N simulator images with `crawler crawl` (a fresh child process, exactly as a
cron job runs it) into a fresh SQLite file, then crawls the same, unchanged, targets again into the
same file. The second crawl fetches, parses and normalises everything again but writes no version
and rewrites no rows: only each image's `last_seen_at` and `last_run_id` move. The CPU figures are
the crawl child's own (user + system, from `os.wait4`); the simulator is a separate process on
the same cores, its CPU reported beside. The database is migrated before the first crawl (not
measured), so that both crawls start from the same schema and do the same fixed work.

Prints one JSON line per crawl, then a summary with medians and the ratio. Run from the
repository root once the package is installed:

    .venv/bin/python benchmarks/recrawl_cpu.py --targets 20000 --repeat 3
    .venv/bin/python benchmarks/recrawl_cpu.py --targets 20000 --repeat 3 --strategy batch

`--compare DIR` measures another build too (the crawler package in DIR, e.g. main from `git
archive`), against the same simulator: in each repeat both builds make their first crawl and
re-crawl, one build after the other, the order alternating, so that the two ratios of a repeat
share the machine's state of those minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import (
    SimulatorProcess,
    count_lines,
    crawl_argv,
    credentials_env,
    machine_busy_s,
    machine_note,
    median,
    new_secret,
    remove_database,
    run_child,
    run_figures,
    write_crawl_config,
)

REGIONS = 4


def crawl_once(
    sim: SimulatorProcess, env: dict[str, str], config: Path, targets: Path, db: Path, args: Any
) -> dict[str, Any]:
    busy, sim_before = machine_busy_s(), sim.cpu_s()
    argv = [*crawl_argv(config, targets, db, args.concurrency), "--strategy", args.strategy]
    # The baseline runs from its own directory, so `crawler` is its package, not this one.
    cwd = env.get("PYTHONPATH")
    run = run_child(argv, env, timeout_s=args.timeout_s, cwd=Path(cwd) if cwd else None)
    sim_cpu_s = sim.cpu_s() - sim_before
    other_s = max(0.0, machine_busy_s() - busy - sim_cpu_s - run.cpu_s)
    figures = run_figures(db)
    if run.returncode != 0 or figures.get("status") != "succeeded":
        raise RuntimeError(f"crawl failed: exit {run.returncode}: {run.stderr[-1000:]}")
    return {
        "cpu_s": round(run.cpu_s, 3),
        "wall_s": round(run.wall_s, 3),
        "work_s": round(float(figures["work_s"]), 3),
        "fetched": figures["fetched"],
        "requests": figures["requests"],
        "sim_cpu_s": round(sim_cpu_s, 3),
        "other_cores": round(other_s / run.wall_s, 2) if run.wall_s else 0.0,
    }


def first_and_again(
    sim: SimulatorProcess,
    env: dict[str, str],
    config: Path,
    targets: Path,
    db: Path,
    args: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One build's first crawl and unchanged re-crawl into a new file `db` (removed after)."""
    # The schema first, unmeasured: both crawls then do the same fixed work.
    migrate = [sys.executable, "-m", "crawler", "migrate", "--db", str(db)]
    cwd = env.get("PYTHONPATH")
    run_child(migrate, env, timeout_s=args.timeout_s, cwd=Path(cwd) if cwd else None)
    first = crawl_once(sim, env, config, targets, db, args)
    again = crawl_once(sim, env, config, targets, db, args)
    remove_database(db)
    return first, again


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--targets", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--strategy", choices=("single", "batch"), default="single")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--compare", type=Path, metavar="DIR",
        help="also measure the first crawl and the re-crawl of the crawler package in DIR,"
        " interleaved with this one's, repeat by repeat",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR",
        help="also time a first crawl by the crawler package in DIR (an older release, e.g. from"
        " `git archive`), in the same repeat, for a side-by-side figure",
    )  # fmt: skip
    args = parser.parse_args(argv)
    print(machine_note())
    env = credentials_env(new_secret())
    baseline_cpu: list[float] = []
    builds: list[tuple[str, dict[str, str]]] = [("this", env)]
    if args.compare is not None:
        builds.append(("compare", {**env, "PYTHONPATH": str(args.compare.resolve())}))
    figures_of: dict[str, dict[str, list[float]]] = {
        name: {"first": [], "again": [], "ratio": []} for name, _ in builds
    }
    with tempfile.TemporaryDirectory(prefix="recrawl-") as tmp:
        workdir = Path(tmp)
        targets = workdir / "targets.csv"
        sim_args = ["--images-per-region", str(-(-args.targets // REGIONS))]
        with SimulatorProcess([*sim_args, "--write-targets", str(targets)], env,
                              start_timeout_s=300) as sim:  # fmt: skip
            config = workdir / "crawl.toml"
            write_crawl_config(config, sim.url, args.concurrency)
            count = count_lines(targets)
            for repeat in range(args.repeat):
                db = workdir / f"recrawl-{repeat}.db"
                measured = []
                for build, build_env in builds if repeat % 2 == 0 else builds[::-1]:
                    first, again = first_and_again(sim, build_env, config, targets, db, args)
                    figures_of[build]["first"].append(first["cpu_s"])
                    figures_of[build]["again"].append(again["cpu_s"])
                    figures_of[build]["ratio"].append(again["cpu_s"] / first["cpu_s"])
                    prefix = "" if build == "this" else "compare_"
                    measured += [(f"{prefix}first", first), (f"{prefix}unchanged", again)]
                if args.baseline is not None:
                    old_env = {**env, "PYTHONPATH": str(args.baseline.resolve())}
                    old = crawl_once(sim, old_env, config, targets, db, args)
                    remove_database(db)
                    measured.append(("baseline_first", old))
                    baseline_cpu.append(old["cpu_s"])
                for kind, figures in measured:
                    line = {"bench": "recrawl_cpu", "kind": kind, "repeat": repeat}
                    line |= {"targets": count, **figures}
                    line["cpu_s_per_1k"] = round(1000 * figures["cpu_s"] / count, 3)
                    print(json.dumps(line), flush=True)
    first_cpu, again_cpu = figures_of["this"]["first"], figures_of["this"]["again"]
    ratios = figures_of["this"]["ratio"]
    per_1k = 1000 / count
    print(
        f"# {count:,} targets, strategy {args.strategy}, {args.repeat} repeats: first crawl "
        f"{median(first_cpu) * per_1k:.3f} CPU s per 1k images, unchanged re-crawl "
        f"{median(again_cpu) * per_1k:.3f}; re-crawl / first = {median(ratios):.0%} (median of "
        f"{', '.join(f'{ratio:.0%}' for ratio in ratios)})"
    )
    if args.compare is not None:
        other = figures_of["compare"]
        paired = [mine / theirs for mine, theirs in zip(ratios, other["ratio"], strict=True)]
        print(
            f"# compared ({args.compare}): first crawl {median(other['first']) * per_1k:.3f} CPU s"
            f" per 1k images, unchanged re-crawl {median(other['again']) * per_1k:.3f};"
            f" re-crawl / first = {median(other['ratio']):.0%} (median of"
            f" {', '.join(f'{ratio:.0%}' for ratio in other['ratio'])}); this ratio / that,"
            f" paired by repeat: {', '.join(f'{ratio:.2f}' for ratio in paired)}"
        )
    if baseline_cpu:
        print(
            f"# baseline ({args.baseline}) first crawl {median(baseline_cpu) * per_1k:.3f} CPU s"
            f" per 1k images; this release's first crawl / baseline's ="
            f" {median(first_cpu) / median(baseline_cpu):.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
