"""The official SDK in a thread pool beside `crawler crawl`, against the same simulator.

What a user would do instead of this project (jdcloud-api.md §7): one shared `VmClient`, one
`send(DescribeImageRequest(...))` per pair from a `ThreadPoolExecutor`, with a quiet logger.
For each latency (one simulator process each) and each worker count, `--repeat` times and
interleaved:

  sdk:   a child process running that pool over every target (it only fetches: no database);
  crawl: `python -m crawler crawl --concurrency W` into a fresh SQLite file (fetch, normalise,
         commit every image, record every outcome).

Both count only answers carrying the image asked for. Figures per child: requests/s over its
working time (the pool's own timer; the crawl's `crawl_runs` timestamps) and over its wall time,
CPU seconds per 1,000 targets and peak memory (`os.wait4`). The simulator shares the CPUs.

`jdcloud_sdk` is not a project dependency; run this from a scratch venv (the simulator and the
crawler run with the project's `.venv/bin/python`, or `--python`):

    python3 -m venv /tmp/sdkvenv && /tmp/sdkvenv/bin/pip install jdcloud-sdk==1.6.354
    /tmp/sdkvenv/bin/python benchmarks/sdk_baseline.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    ACCESS_KEY,
    Setting,
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
    read_targets,
    remove_database,
    run_child,
    run_figures,
    write_crawl_config,
)
from official_sdk_check import SDK_VERSION, describe_image, sdk_client, sdk_version

REGIONS = 4


# --- the SDK pool, run as a child process ------------------------------------------------------


def sdk_pool(endpoint: str, targets: Sequence[tuple[str, str]], workers: int) -> dict[str, Any]:
    """Every target through one shared VmClient from `workers` threads."""
    import os

    client = sdk_client(endpoint, ACCESS_KEY, os.environ["JDCLOUD_SECRET_KEY"])

    def fetch(target: tuple[str, str]) -> bool:
        try:
            resp = describe_image(client, *target)
        except Exception:  # the SDK raises on transport errors and non-JSON bodies
            return False
        image = (resp.result or {}).get("image") if resp.error is None else None
        return isinstance(image, dict) and image.get("imageId") == target[1]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = sum(pool.map(fetch, targets))
    work_s = time.perf_counter() - started
    return {"requests": len(targets), "fetched": ok, "work_s": work_s}


def sdk_main(argv: Sequence[str]) -> int:
    """Entry of the SDK child: prints one JSON object."""
    parser = argparse.ArgumentParser(prog="sdk_baseline.py _sdk")
    parser.add_argument("--endpoint", required=True, help="HOST:PORT")
    parser.add_argument("--targets", type=Path, required=True)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(sdk_pool(args.endpoint, read_targets(args.targets), args.workers)))
    return 0


# --- the measurements --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """One child's figures."""

    kind: str  # "sdk" or "crawl"
    latency_ms: float
    workers: int
    repeat: int
    targets: int
    fetched: int
    work_s: float
    wall_s: float
    cpu_s: float
    maxrss_mib: float
    other_cores: float
    ok: bool

    def as_json(self) -> dict[str, Any]:
        """The JSON line of this measurement."""
        return {
            "bench": "sdk_baseline", "kind": self.kind, "latency_ms": self.latency_ms,
            "workers": self.workers, "repeat": self.repeat, "targets": self.targets,
            "fetched": self.fetched, "work_s": round(self.work_s, 3),
            "wall_s": round(self.wall_s, 3), "rps_work": round(self.rps("work"), 1),
            "rps_wall": round(self.rps("wall"), 1), "cpu_s_per_1k_targets": round(self.cpu_1k, 3),
            "maxrss_mib": round(self.maxrss_mib, 1), "other_cores": round(self.other_cores, 2),
            "ok": self.ok,
        }  # fmt: skip

    def rps(self, basis: str) -> float:
        """Targets per second over the working ("work") or the whole ("wall") time."""
        seconds = self.work_s if basis == "work" else self.wall_s
        return self.targets / seconds if seconds else 0.0

    @property
    def cpu_1k(self) -> float:
        """CPU seconds per 1,000 targets."""
        return 1000 * self.cpu_s / self.targets


def measure(setting: Setting, kind: str, workers: int, repeat: int) -> Measurement:
    """One fresh child: the SDK pool or the crawl."""
    db = setting.workdir / f"crawl-{workers}-{repeat}.db"
    if kind == "sdk":
        endpoint = setting.sim.url.removeprefix("http://")
        argv = [
            sys.executable, str(Path(__file__).resolve()), "_sdk", "--endpoint", endpoint,
            "--targets", str(setting.targets_path), "--workers", str(workers),
        ]  # fmt: skip
    else:
        config = setting.workdir / f"crawl-{workers}.toml"
        write_crawl_config(config, setting.sim.url, workers)
        argv = crawl_argv(config, setting.targets_path, db, workers, setting.python)
    busy_before, sim_before = machine_busy_s(), setting.sim.cpu_s()
    run = run_child(argv, setting.env, timeout_s=setting.timeout_s)
    other_s = machine_busy_s() - busy_before - (setting.sim.cpu_s() - sim_before) - run.cpu_s
    if kind == "sdk":
        figures = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else {}
    else:
        figures = run_figures(db) if db.exists() else {}
        remove_database(db)
    fetched = int(figures.get("fetched") or 0)
    return Measurement(
        kind, setting.latency_ms, workers, repeat, setting.targets, fetched,
        float(figures.get("work_s") or 0.0), run.wall_s, run.cpu_s, run.maxrss_mib,
        max(0.0, other_s) / run.wall_s, run.returncode == 0 and fetched == setting.targets,
    )  # fmt: skip


def run_latency(args: argparse.Namespace, latency_ms: float, workdir: Path) -> list[Measurement]:
    """Every measurement at one latency, against one simulator."""
    env = credentials_env(new_secret())
    targets_path = workdir / f"targets-{latency_ms:g}.csv"
    sim_args = [
        "--latency-ms", f"{latency_ms:g}", "--images-per-region",
        str(-(-args.targets // REGIONS)), "--write-targets", str(targets_path),
    ]  # fmt: skip
    found = []
    with SimulatorProcess(sim_args, env, start_timeout_s=300, python=args.python) as sim:
        setting = Setting(
            sim, env, targets_path, count_lines(targets_path), latency_ms, workdir, args.timeout_s,
            python=args.python,
        )  # fmt: skip
        print(f"# latency {latency_ms:g} ms: simulator {sim.url}, {setting.targets:,} targets")
        for workers in args.workers:
            for repeat in range(args.repeat):
                for kind in ("sdk", "crawl"):
                    measurement = measure(setting, kind, workers, repeat)
                    print(json.dumps(measurement.as_json()), flush=True)
                    found.append(measurement)
    return found


_FIGURES: dict[str, Callable[[Measurement], float]] = {
    "work": lambda m: m.rps("work"),
    "wall": lambda m: m.rps("wall"),
    "cpu": lambda m: m.cpu_1k,
    "rss": lambda m: m.maxrss_mib,
    "other": lambda m: m.other_cores,
}


def print_table(measurements: Sequence[Measurement], repeat: int) -> None:
    """Medians per (latency, workers), SDK beside crawl."""
    print()
    print(f"Medians of {repeat} interleaved runs; rps = targets/s. work = the SDK pool's own timer")
    print("or the crawl's crawl_runs timestamps; wall = the whole child process (start-up too).")
    print("The SDK only fetches; the crawl also normalises and commits every image to SQLite.")
    header = (
        f"{'lat ms':>6} {'workers':>7} | {'SDK':>6} {'crawl':>6} {'x':>5} | {'SDK':>6} "
        f"{'crawl':>6} {'x':>5} | {'SDK':>5} {'crawl':>5} | {'SDK':>4} {'crawl':>5} | "
        f"{'other':>5} | ok"
    )
    print(f"{'':15}| {'work rps':^20} | {'wall rps':^20} | {'CPU s/1k':^11} | {'RSS MiB':^10} |")
    print(header)
    print("-" * len(header))
    cells: dict[tuple[float, int], list[Measurement]] = {}
    for m in measurements:
        cells.setdefault((m.latency_ms, m.workers), []).append(m)
    for (latency_ms, workers), ms in cells.items():
        sdk = [m for m in ms if m.kind == "sdk"]
        crawl = [m for m in ms if m.kind == "crawl"]
        row = {
            name: (median([f(m) for m in sdk]), median([f(m) for m in crawl]))
            for name, f in _FIGURES.items()
        }
        print(
            f"{latency_ms:>6g} {workers:>7} | {row['work'][0]:>6,.0f} {row['work'][1]:>6,.0f} "
            f"{_times(row['work']):>5} | {row['wall'][0]:>6,.0f} {row['wall'][1]:>6,.0f} "
            f"{_times(row['wall']):>5} | {row['cpu'][0]:>5.2f} {row['cpu'][1]:>5.2f} | "
            f"{row['rss'][0]:>4.0f} {row['rss'][1]:>5.0f} | {max(row['other']):>5.2f} | "
            f"{'yes' if all(m.ok for m in ms) else 'NO'}"
        )


def _times(pair: tuple[float, float]) -> str:
    return f"{pair[1] / pair[0]:.1f}x" if pair[0] else "-"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The official SDK in a ThreadPoolExecutor beside `crawler crawl`, against "
        "the simulator on 127.0.0.1 (run with an interpreter that has jdcloud-sdk installed)."
    )
    add = parser.add_argument
    add(
        "--latency-ms",
        type=comma_list(float, 0),
        default=[0.0, 20.0],
        help="comma-separated (0,20)",
    )
    add("--workers", type=comma_list(int, 0), default=[16, 64], help="comma-separated (16,64)")
    add("--targets", type=int, default=10_000, help="targets, all existing images (10000)")
    add("--repeat", type=int, default=1, help="runs of each, interleaved (1)")
    add("--timeout-s", type=float, default=600.0, help="kill a child running longer (600)")
    add("--python", default=project_python(), help="interpreter for the simulator and crawler")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "_sdk":
        return sdk_main(argv[1:])
    args = parse_args(argv)
    installed = sdk_version()
    if installed is None:
        print(
            "SKIPPED: jdcloud_sdk is not importable by this interpreter; run:\n"
            f"  python3 -m venv /tmp/sdkvenv && /tmp/sdkvenv/bin/pip install "
            f"jdcloud-sdk=={SDK_VERSION}\n  /tmp/sdkvenv/bin/python benchmarks/sdk_baseline.py"
        )
        return 0
    print(machine_note())
    compile_package(args.python)  # as `pip install` leaves it: no crawl compiles the modules
    print(f"# jdcloud-sdk {installed} (new TCP connection per request, no retries) vs crawler")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdk-baseline-") as tmp:
        found = [m for latency in args.latency_ms for m in run_latency(args, latency, Path(tmp))]
    print_table(found, args.repeat)
    print(f"# done in {time.perf_counter() - started:.0f} s")
    return 0 if all(m.ok for m in found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
