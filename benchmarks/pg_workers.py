"""One to four `crawler crawl` worker processes on one PostgreSQL run: throughput and CPU.

One simulator (`--latency-ms`, `--targets` existing images in 4 regions) serves every setting.
For each worker count W of `--workers`: a fresh database on `--postgres`, the coordinator
`crawler crawl --targets` and, once its first results are committed, W - 1 `crawler crawl
--join` processes, each `--concurrency C`, all as a user starts them. Each worker is reaped
with `os.wait4` (its own CPU and peak memory). The PostgreSQL server's CPU over the setting is
read from /proc (the postmaster's own and its reaped backends' time, plus the live backends'):
what the database costs per image, on the same cores. Throughput is the run's targets over its
working time (`crawl_runs.started_at` to `finished_at`).

    CRAWLER_PG_DURABLE=1 tests/with_postgres.sh sh -c \\
        '.venv/bin/python benchmarks/pg_workers.py --postgres "$CRAWLER_TEST_POSTGRES_URL"'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    ACCESS_KEY,
    SimulatorProcess,
    comma_list,
    compile_package,
    count_lines,
    credentials_env,
    machine_note,
    new_secret,
    project_python,
)
from postgres_crawl import REGIONS, drop_database, new_database, run_row, write_config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds the server has used: the postmaster, its reaped and its live children."""
    own = _stat_fields(postmaster)
    total = sum(int(value) for value in own[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
        if fields[1] == str(postmaster):
            total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def postmaster_pid(url: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            data_directory = conn.execute(text("SHOW data_directory")).scalar_one()
    finally:
        engine.dispose()
    return int((Path(data_directory) / "postmaster.pid").read_text().split()[0])


def results_committed(url: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM crawl_results")).scalar_one())
    except Exception:  # the schema is not there yet
        return 0
    finally:
        engine.dispose()


def reap(child: subprocess.Popen[bytes]) -> tuple[int, float, float]:
    """(exit code, CPU seconds, peak RSS MiB) of one worker."""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def one_setting(
    args: argparse.Namespace, sim: SimulatorProcess, env: dict[str, str], targets: Path,
    workers: int, workdir: Path, postmaster: int,
) -> dict[str, Any]:  # fmt: skip
    """A fresh database, the coordinator and `workers - 1` joined workers; their figures."""
    url = new_database(args.postgres)
    config = write_config(workdir / "workers.toml", sim.url, args.concurrency)
    base = [
        args.python, "-m", "crawler", "crawl", "--config", str(config), "--db", url,
        "--no-progress",
    ]  # fmt: skip
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    children: list[subprocess.Popen[bytes]] = []
    try:
        server_before = server_cpu_s(postmaster)
        children.append(
            subprocess.Popen([*base, "--targets", str(targets)], env=env, cwd=workdir, **quiet)
        )
        deadline = time.monotonic() + 120
        while workers > 1 and results_committed(url) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(workers - 1):
            children.append(subprocess.Popen([*base, "--join"], env=env, cwd=workdir, **quiet))
        reaped = [reap(child) for child in children]
        server_s = server_cpu_s(postmaster) - server_before
        row = run_row(url)
    finally:
        for child in children:
            if child.returncode is None and child.poll() is None:
                child.kill()
                child.wait()
        drop_database(url)
    images = count_lines(targets)
    client_s = sum(cpu for _, cpu, _ in reaped)
    work_s = float(row["work_s"]) or 1e-9
    return {
        "bench": "pg_workers", "workers": workers, "targets": images,
        "fetched": row["fetched"], "status": row["status"], "work_s": work_s,
        "targets_per_s": round(images / work_s, 1),
        "targets_per_s_per_worker": round(images / work_s / workers, 1),
        "worker_cpu_s": [round(cpu, 2) for _, cpu, _ in reaped],
        "client_cpu_ms_per_image": round(1000 * client_s / images, 4),
        "server_cpu_ms_per_image": round(1000 * server_s / images, 4),
        "peak_rss_mib": [round(rss, 1) for _, _, rss in reaped],
        "exit_codes": [code for code, _, _ in reaped],
        "ok": row["fetched"] == images and all(code == 0 for code, _, _ in reaped),
    }  # fmt: skip


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--postgres", required=True, help="a server URL (postgresql+psycopg://...)")
    add("--workers", type=comma_list(int, 1), default=[1, 2, 4], help="(1,2,4)")
    add("--targets", type=int, default=20_000, help="targets, all existing images (20000)")
    add("--concurrency", type=int, default=64, help="each worker's concurrency (64)")
    add("--latency-ms", type=float, default=20.0, help="simulator latency (20)")
    add("--repeat", type=int, default=1, help="runs of each setting (1)")
    add("--python", default=project_python(), help="interpreter for the simulator and crawls")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    print(machine_note())
    compile_package(args.python)
    env = credentials_env(new_secret())
    postmaster = postmaster_pid(args.postgres)
    found = []
    with tempfile.TemporaryDirectory(prefix="pg-workers-") as tmp:
        workdir = Path(tmp)
        targets = workdir / "targets.csv"
        sim_args = [
            "--regions", REGIONS, "--images-per-region", str(-(-args.targets // 4)),
            "--latency-ms", f"{args.latency_ms:g}", "--write-targets", str(targets),
            "--access-key", ACCESS_KEY,
        ]  # fmt: skip
        with SimulatorProcess(sim_args, env, start_timeout_s=600, python=args.python) as sim:
            for repeat in range(args.repeat):
                for workers in args.workers:
                    result = one_setting(args, sim, env, targets, workers, workdir, postmaster)
                    result["repeat"] = repeat
                    print(json.dumps(result), flush=True)
                    found.append(result)
    print()
    print("| workers | targets/s | per worker | client CPU ms/image | server CPU ms/image | ok |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in found:
        print(
            f"| {r['workers']} | {r['targets_per_s']:,.0f} | {r['targets_per_s_per_worker']:,.0f}"
            f" | {r['client_cpu_ms_per_image']:.3f} | {r['server_cpu_ms_per_image']:.3f}"
            f" | {r['ok']} |"
        )
    return 0 if all(r["ok"] for r in found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
