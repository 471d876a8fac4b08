"""Peak memory of `crawler crawl` as the targets file grows (issue 4).

For each size (small first, then large): a fresh simulator process (`python -m crawler simulate`)
whose inventory holds exactly the ids of a targets file of that size, then `crawler crawl` of the
whole file into a fresh SQLite file, at zero latency. The crawl's peak resident set is its own
`ru_maxrss` (`os.wait4`); its resident set is also sampled every second to show the curve.

The acceptance bar: the large crawl's peak within 1.5x the small one's.

A million real images would cost the simulator about two minutes and 4-5 GB to build (it encodes
every image up front); by default most of the large file are ids the simulator knows to be
missing (`--missing-rate`, answered 404 NOT_FOUND and recorded as `missing`), and the same mix is
used for the small file. `--missing-rate 0` makes every target an existing image.

    .venv/bin/python benchmarks/crawl_memory.py                           # 1,000,000 vs 10,000
    .venv/bin/python benchmarks/crawl_memory.py --large 100000 --small 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    ChildRun,
    SimulatorProcess,
    count_lines,
    crawl_argv,
    credentials_env,
    machine_note,
    new_secret,
    remove_database,
    run_child,
    run_figures,
    write_crawl_config,
)

from crawler.simulator.inventory import missing_count

TARGET_RATIO = 1.5
REGIONS = ("cn-north-1", "cn-east-1", "cn-east-2", "cn-south-1")


@dataclass(frozen=True, slots=True)
class Mix:
    """What a targets file of a wanted size is made of."""

    images_per_region: int
    missing_per_region: int

    @property
    def existing(self) -> int:
        """Targets that are existing images."""
        return self.images_per_region * len(REGIONS)

    @property
    def total(self) -> int:
        """Targets in the file."""
        return (self.images_per_region + self.missing_per_region) * len(REGIONS)


def mix_for(size: int, missing_rate: float) -> Mix:
    """The simulator settings whose targets file comes closest to `size` targets."""
    images = round(size * (1 - missing_rate) / len(REGIONS))
    return Mix(images, missing_count(images, missing_rate))


@dataclass(frozen=True, slots=True)
class Result:
    """One size's crawl."""

    size: int
    mix: Mix
    sim_start_s: float
    sim_peak_mib: float
    run: ChildRun
    figures: dict[str, Any]
    db_mib: float

    @property
    def ok(self) -> bool:
        """The crawl exited 0 and every target got its expected outcome."""
        return (
            self.run.returncode == 0
            and self.figures.get("fetched") == self.mix.existing
            and self.figures.get("missing") == self.mix.total - self.mix.existing
        )

    def as_json(self) -> dict[str, Any]:
        """The JSON line of this crawl."""
        curve = _thin(self.run.rss_samples, 12)
        return {
            "bench": "crawl_memory", "kind": "crawl", "targets": self.mix.total,
            "existing_images": self.mix.existing, "missing_ids": self.mix.total - self.mix.existing,
            "peak_rss_mib": round(self.run.maxrss_mib, 1), "wall_s": round(self.run.wall_s, 2),
            "cpu_s": round(self.run.cpu_s, 2), "work_s": _rounded(self.figures.get("work_s")),
            "requests": self.figures.get("requests"), "fetched": self.figures.get("fetched"),
            "missing": self.figures.get("missing"), "failed": self.figures.get("failed"),
            "db_mib": round(self.db_mib, 1), "sim_start_s": round(self.sim_start_s, 1),
            "sim_peak_rss_mib": round(self.sim_peak_mib, 1),
            "rss_curve_mib": [[round(t, 1), round(m, 1)] for t, m in curve],
            "exit_code": self.run.returncode, "ok": self.ok,
        }  # fmt: skip


def _rounded(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


def _thin(samples: Sequence[tuple[float, float]], count: int) -> list[tuple[float, float]]:
    if len(samples) <= count:
        return list(samples)
    step = (len(samples) - 1) / (count - 1)
    return [samples[round(i * step)] for i in range(count)]


def crawl_size(args: argparse.Namespace, size: int, workdir: Path) -> Result:
    """Start a simulator for `size` targets, crawl them all into a fresh database."""
    mix = mix_for(size, args.missing_rate)
    env = credentials_env(new_secret())
    targets = workdir / f"targets-{size}.csv"
    sim_args = [
        "--latency-ms", f"{args.latency_ms:g}", "--images-per-region", str(mix.images_per_region),
        "--missing-rate", f"{args.missing_rate:g}", "--write-targets", str(targets),
    ]  # fmt: skip
    print(f"# {size:,}: starting the simulator ({mix.existing:,} images, ", end="")
    print(f"{mix.total - mix.existing:,} missing ids)...", flush=True)
    with SimulatorProcess(sim_args, env, start_timeout_s=args.timeout_s) as sim:
        lines = count_lines(targets)
        if lines != mix.total:
            raise RuntimeError(f"the targets file has {lines} rows, expected {mix.total}")
        print(f"# {size:,}: simulator ready in {sim.start_s:.1f} s; crawling...", flush=True)
        config, db = workdir / f"crawl-{size}.toml", workdir / f"crawl-{size}.db"
        write_crawl_config(config, sim.url, args.concurrency)
        argv = crawl_argv(config, targets, db, args.concurrency)
        run = run_child(argv, env, timeout_s=args.timeout_s, rss_every_s=1.0)
        sim_peak_mib = sim.peak_rss_mib()
        sim_start_s = sim.start_s
    figures = run_figures(db) if db.exists() else {}
    db_mib = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20
    targets.unlink()
    remove_database(db)
    if run.returncode != 0:
        print(f"# the crawl exited {run.returncode}: {run.stderr.strip()[-1000:]}")
    return Result(size, mix, sim_start_s, sim_peak_mib, run, figures, db_mib)


def print_table(results: Sequence[Result], missing_rate: float) -> None:
    """The human table, the ratio and the verdict."""
    print()
    print(
        f"Mix: {1 - missing_rate:.0%} existing images (answered 200, normalised and committed), "
        f"{missing_rate:.0%} ids the simulator knows to be missing (404 NOT_FOUND, recorded as "
        "missing). Zero latency; the simulator shares the CPUs."
    )
    header = (
        f"{'targets':>10} {'images':>9} {'missing':>9} | {'peak RSS MiB':>12} | {'wall s':>8} "
        f"{'req/s':>6} {'CPU s':>7} | {'DB MiB':>7} | {'sim start s':>11} {'sim RSS MiB':>11} | ok"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        rate = (r.figures.get("requests") or 0) / r.run.wall_s if r.run.wall_s else 0.0
        print(
            f"{r.mix.total:>10,} {r.mix.existing:>9,} {r.mix.total - r.mix.existing:>9,} | "
            f"{r.run.maxrss_mib:>12.1f} | {r.run.wall_s:>8.1f} {rate:>6,.0f} {r.run.cpu_s:>7.1f} | "
            f"{r.db_mib:>7.1f} | {r.sim_start_s:>11.1f} {r.sim_peak_mib:>11.0f} | "
            f"{'yes' if r.ok else 'NO'}"
        )
    for r in results:
        curve = ", ".join(f"{t:.0f}s {m:.0f}" for t, m in _thin(r.run.rss_samples, 10))
        print(f"RSS over time, {r.mix.total:,} targets (MiB): {curve}")


def report_ratio(small: Result, large: Result) -> None:
    """The issue-4 verdict."""
    ratio = large.run.maxrss_mib / small.run.maxrss_mib
    met = ratio <= TARGET_RATIO and small.ok and large.ok
    name = f"peak RSS of {large.mix.total:,} targets <= {TARGET_RATIO}x that of {small.mix.total:,}"
    print()
    print(
        f"target {'MET' if met else 'NOT MET'}: {name}: {large.run.maxrss_mib:.1f} MiB / "
        f"{small.run.maxrss_mib:.1f} MiB = {ratio:.2f}x"
    )
    line = {"bench": "crawl_memory", "kind": "target", "target": name, "met": met}
    print(json.dumps({**line, "ratio": round(ratio, 3), "bar": TARGET_RATIO}))


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1)")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak memory of `crawler crawl` for a large vs a small targets file, "
        "against the simulator on 127.0.0.1."
    )
    add = parser.add_argument
    add("--large", type=int, default=1_000_000, help="targets in the large file (1000000)")
    add("--small", type=int, default=10_000, help="targets in the small file (10000)")
    add("--missing-rate", type=_share, default=0.9, help="share of missing ids, both files (0.9)")
    add("--concurrency", type=int, default=64, help="crawl concurrency (64)")
    add("--latency-ms", type=float, default=0.0, help="simulator latency (0)")
    add("--timeout-s", type=float, default=3600.0, help="kill a crawl running longer (3600)")
    add("--workdir", type=Path, help="put the files here (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    print(machine_note())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crawl-memory-", dir=args.workdir) as tmp:
        results = []
        for size in (args.small, args.large):
            result = crawl_size(args, size, Path(tmp))
            print(json.dumps(result.as_json()), flush=True)
            results.append(result)
    print_table(results, args.missing_rate)
    report_ratio(results[0], results[1])
    print(f"# done in {time.perf_counter() - started:.0f} s")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
