"""`store_throughput.py` of several builds side by side, timed in CPU, interleaved, with medians.

On a machine shared with other work, wall-clock rates of the same code vary by 2x from one minute
to the next; the process's CPU time (all threads: the event loop and aiosqlite's) does not. So
each build's own `benchmarks/store_throughput.py` is run in a fresh child process, with its clock
swapped for `time.process_time`, round after round (build A, build B, ..., then again), and the
medians and their ratio to the first build are printed. A build is a directory holding
`crawler/` and `benchmarks/store_throughput.py` (this checkout, or an older release from `git
archive`, its `migrations/` moved into `crawler/` as that release expects):

    .venv/bin/python benchmarks/store_paired.py --rounds 3 /tmp/release-0f361e6 .

Besides the medians it prints each round's ratio to the first build's figure of the same round.
`--freeze-input` calls `gc.freeze()` once the benchmark has generated its images (in every build
alike): a full collection walks those ~1 million objects, ~8-9 us per image of the phase it lands
in, and which phase that is depends on each build's allocations rather than its speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PHASES = ("normalise", "store", "rewrite", "both")

# Run inside the child, with the build's directory first on sys.path.
CHILD = """
import asyncio, gc, json, sys, tempfile, time, types
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
import store_throughput as bench
bench.time = types.SimpleNamespace(perf_counter=time.process_time)
if sys.argv[3] == "freeze":
    build_images = bench.build_images
    def frozen_images(*args, **kwargs):
        images = build_images(*args, **kwargs)
        gc.collect()
        gc.freeze()
        return images
    bench.build_images = frozen_images
args = bench.parse_args(["--images", sys.argv[2]])
with tempfile.TemporaryDirectory() as directory:
    if hasattr(bench, "sqlite_urls"):  # this release's signature
        figures = asyncio.run(bench.measure(args, bench.sqlite_urls(Path(directory)), "sqlite"))
    else:  # the previous release's
        figures = asyncio.run(bench.measure(args, Path(directory)))
print(json.dumps(figures))
"""


def run_once(build: Path, images: int, freeze: bool = False) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(build.resolve()), str(images),
         "freeze" if freeze else "-"],
        cwd=build, capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {phase: float(figures[f"{phase}_images_per_s"]) for phase in PHASES}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("builds", nargs="+", type=Path, help="directories; the first is the base")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument(
        "--freeze-input",
        action="store_true",
        help="move the benchmark's generated images out of the garbage collector's reach"
        " (gc.freeze) before any phase, so that its full collections walk the store's objects only",
    )
    args = parser.parse_args(argv)
    rates: dict[Path, list[dict[str, float]]] = {build: [] for build in args.builds}
    for round_no in range(args.rounds):
        for build in args.builds:
            figures = run_once(build, args.images, args.freeze_input)
            rates[build].append(figures)
            print(json.dumps({"round": round_no, "build": str(build), **figures}), flush=True)
    base = args.builds[0]
    frozen = ", input frozen" if args.freeze_input else ""
    print(
        f"# {args.images:,} images, {args.rounds} rounds{frozen}, images per CPU second:"
        " median (range)"
    )
    for build in args.builds:
        cells = []
        for phase in PHASES:
            values = [figures[phase] for figures in rates[build]]
            ratio = statistics.median(values) / statistics.median(
                [figures[phase] for figures in rates[base]]
            )
            cells.append(
                f"{phase} {statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f},"
                f" {ratio:.0%})"
            )
        print(f"# {build}: " + "; ".join(cells))
    # Each round's ratio to the base's figure of the same round (run next to it): the pairing
    # that the medians above lose.
    for build in args.builds[1:]:
        cells = []
        for phase in PHASES:
            ratios = [
                mine[phase] / theirs[phase]
                for mine, theirs in zip(rates[build], rates[base], strict=True)
            ]
            each = ", ".join(f"{ratio:.2f}" for ratio in ratios)
            cells.append(f"{phase} {statistics.median(ratios):.0%} ({each})")
        print(f"# {build} / {base}, paired per round: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
