"""Batch versus single strategy under the gateway's per-minute limit (issue 6).

Starts `crawler simulate` with a per-access-key limit of N requests per window (600 per 60 s by
default), then crawls the same 10,000 images twice into fresh SQLite files, once with
`--strategy single` and once with `--strategy batch`, and prints the requests each needed (from
the simulator's own count), the rate-limited answers it got, and the wall time.

    .venv/bin/python benchmarks/batch_requests.py                    # the real 60 s window: ~17 min
    .venv/bin/python benchmarks/batch_requests.py --window-s 6       # a 10x shorter window: ~2 min

With a shorter window the request counts are the same; the wall times scale with the window.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import urllib.request
from pathlib import Path

from harness import (
    SimulatorProcess,
    count_lines,
    crawl_argv,
    credentials_env,
    machine_note,
    new_secret,
    run_child,
    write_crawl_config,
)


def simulator_stats(url: str) -> dict[str, object]:
    """The simulator's counters (an unsigned endpoint, not itself counted)."""
    with urllib.request.urlopen(f"{url}/_simulator/stats", timeout=10) as answer:
        stats: dict[str, object] = json.load(answer)
        return stats


def crawl_once(
    sim: SimulatorProcess, env: dict[str, str], folder: Path, targets: Path, strategy: str
) -> dict[str, object]:
    """One crawl with `strategy`, measured by the simulator's request count and the wall clock."""
    config = folder / f"{strategy}.toml"
    write_crawl_config(config, sim.url, concurrency=16)
    before = simulator_stats(sim.url)
    argv = [*crawl_argv(config, targets, folder / f"{strategy}.db", 16), "--strategy", strategy]
    run = run_child(argv, env, timeout_s=3 * 3600)
    after = simulator_stats(sim.url)
    if run.returncode != 0:
        raise SystemExit(f"the {strategy} crawl exited {run.returncode}: {run.stderr[-2000:]}")
    return {
        "strategy": strategy,
        "requests": int(after["requests"]) - int(before["requests"]),  # type: ignore[call-overload]
        "rate_limited": int(after["rate_limited"]) - int(before["rate_limited"]),  # type: ignore[call-overload]
        "wall_s": round(run.wall_s, 1),
        "summary": run.stdout.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="images, over 4 regions")
    parser.add_argument("--limit-per-window", type=int, default=600)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--missing-rate", type=float, default=0.0)
    args = parser.parse_args()
    secret = new_secret()
    env = credentials_env(secret)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        targets = folder / "targets.csv"
        sim_args = [
            "--images-per-region", str(args.images // 4), "--missing-rate", str(args.missing_rate),
            "--rate-limit-per-minute", str(args.limit_per_window),
            "--rate-window-s", str(args.window_s), "--write-targets", str(targets),
        ]  # fmt: skip
        with SimulatorProcess(sim_args, env, start_timeout_s=300) as sim:
            print(machine_note())
            print(f"# {count_lines(targets):,} targets; limit {args.limit_per_window} requests "
                  f"per {args.window_s:g} s window per access key")  # fmt: skip
            results = [crawl_once(sim, env, folder, targets, s) for s in ("batch", "single")]
    print(f"{'strategy':<8} {'requests':>9} {'429s':>6} {'wall s':>8}")
    for result in results:
        print(f"{result['strategy']:<8} {result['requests']:>9,} {result['rate_limited']:>6,} "
              f"{result['wall_s']:>8}")  # fmt: skip
    batch, single = results
    ratio = int(batch["requests"]) / int(single["requests"])  # type: ignore[call-overload]
    print(f"batch needs {ratio:.4f} of the single strategy's requests (target <= 0.02: "
          f"{'met' if ratio <= 0.02 else 'NOT met'})")  # fmt: skip
    for result in results:
        print(json.dumps({"benchmark": "batch_requests", **result, "window_s": args.window_s}))


if __name__ == "__main__":
    main()
