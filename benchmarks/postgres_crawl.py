"""A crawl into PostgreSQL beside the same crawl into SQLite, and two hosts sharing one rate.

`crawl` (default): one simulator process (`--latency-ms`, 20 by default) and, `--repeat` times,
interleaved, `crawler crawl --concurrency C` into a fresh SQLite file and into a fresh PostgreSQL
database, as a user runs it; `per_region_concurrency` is C unless `--per-region-concurrency N`
(the crawler's default is 32: 4 regions then need claims in two or more regions at once).
Reports each run's working time (`crawl_runs.started_at` to `finished_at`), requests/s, the
crawler's own CPU and (for a server on this host whose files can be read) the server's CPU;
then the medians side by side and the ratio of each pair.

`--baseline DIR` (a directory holding another build's `crawler` package, migrations inside it,
as for `paired_crawl.py`) adds a PostgreSQL crawl with that build to every round, the two
PostgreSQL crawls' order alternating, and reports this build / baseline per round. `--build DIR`
measures that directory's package instead of the checkout's (a snapshot, so that the checkout
can be edited meanwhile).

Each crawl also reports the crawler's main thread, the event loop, as the kernel accounted it
(`main_cpu_s`, and `main_wait_s` ready but waiting for a core): on SQLite the statements run on
aiosqlite's thread, and the process's other CPU is that thread's. Two diagnostics, not a fair
setting, say which process's share of the cores holds a crawl back: `--nice-simulator N` runs
the simulator at niceness N (negative puts it ahead of the rest; needs root), `--nice-server N`
the server's new backends (a server on this host; its owner or root). `--pin` puts each crawl
on the first CPU and the simulator and the server (every process of it) on the others, as if the
API and the database were other machines': the crawler then has a core of its own, as on a
crawl host; its SQLite statements stay with it, on aiosqlite's thread.

`rate`: two `crawler crawl` processes with one access key and `rate_limit_per_s` R (50) on one
PostgreSQL database (the second with `--join`), for `--seconds` (60) after both are working;
the rate is counted at the simulator (`/_simulator/stats`), so it is what the API saw.

    CRAWLER_PG_DURABLE=1 tests/with_postgres.sh sh -c \\
        '.venv/bin/python benchmarks/postgres_crawl.py --postgres "$CRAWLER_TEST_POSTGRES_URL"'
    CRAWLER_PG_DURABLE=1 tests/with_postgres.sh sh -c \\
        '.venv/bin/python benchmarks/postgres_crawl.py rate --postgres "$CRAWLER_TEST_POSTGRES_URL"'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    ACCESS_KEY,
    SimulatorProcess,
    compile_package,
    credentials_env,
    machine_note,
    median,
    new_secret,
    project_python,
)

REGIONS = "cn-north-1,cn-east-1,cn-east-2,cn-south-1"


def new_database(server_url: str) -> str:
    server = make_url(server_url)
    name = f"bench_crawl_{uuid.uuid4().hex[:8]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = parsed.set(database="postgres")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    engine.dispose()


def run_row(url: str) -> dict[str, Any]:
    """The newest run's status, counts and working time (from its own UTC text timestamps)."""
    engine = create_engine(url.replace("+aiosqlite", ""), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT status, fetched, missing, failed, requests, started_at, finished_at"
                    " FROM crawl_runs ORDER BY run_id DESC LIMIT 1"
                )
            ).one()
    finally:
        engine.dispose()
    from datetime import datetime

    work_s = (
        datetime.fromisoformat(row.finished_at) - datetime.fromisoformat(row.started_at)
    ).total_seconds()
    return {
        "status": row.status, "fetched": row.fetched, "missing": row.missing,
        "failed": row.failed, "requests": row.requests, "work_s": round(work_s, 3),
        "requests_per_s": round(row.requests / work_s, 1) if work_s else 0.0,
    }  # fmt: skip


def write_config(
    path: Path, endpoint: str, concurrency: int, extra: str = "", *, per_region: int | None = None
) -> Path:
    """A crawler config; `per_region_concurrency` is the concurrency unless `per_region` says."""
    per_region = concurrency if per_region is None else per_region
    path.write_text(
        f'[api]\nendpoint = "{endpoint}"\n[crawl]\nconcurrency = {concurrency}\n'
        f"per_region_concurrency = {per_region}\n{extra}",
        encoding="utf-8",
    )
    return path


def crawl_once(
    python: str, env: dict[str, str], config: Path, targets: Path, url: str, *extra: str,
    build: str | None = None, main_thread: dict[str, float] | None = None,
    cpus: set[int] | None = None,
) -> float:  # fmt: skip
    """Run one crawl (with the package in directory `build`, else the installed one); returns
    the crawler process's own CPU seconds (user + system).

    `main_thread`, if given, receives the crawler's main thread (its event loop) as the kernel
    accounted it (`/proc/PID/task/PID/schedstat`, read every 50 ms until the process ends, so
    its last 50 ms at most are missing; start-up included): `main_cpu_s`, the CPU it used, and
    `main_wait_s`, how long it was ready to run but waiting for a core. The rest of the
    process's CPU is its other threads': on SQLite, aiosqlite's thread running the statements
    outside the GIL. `cpus`: the CPUs the crawler may run on (default: all)."""
    if build is not None:
        env = {**env, "PYTHONPATH": str(Path(build).resolve())}
    # From the config's directory: `python -m` puts the current directory first on the path,
    # ahead of PYTHONPATH, so from a checkout every build would import the checkout's package.
    child = subprocess.Popen(
        [python, "-m", "crawler", "crawl", "--config", str(config), "--targets", str(targets),
         "--db", url, "--no-progress", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=config.parent,
        preexec_fn=None if cpus is None else partial(os.sched_setaffinity, 0, cpus),
    )  # fmt: skip
    schedstat = Path(f"/proc/{child.pid}/task/{child.pid}/schedstat")
    while True:  # wait4, not poll(): reaping the child must also give its resource usage
        pid, status, usage = os.wait4(child.pid, 0 if main_thread is None else os.WNOHANG)
        if pid:
            break
        assert main_thread is not None
        with contextlib.suppress(OSError, ValueError):
            run_ns, wait_ns, _ = map(int, schedstat.read_text().split())
            main_thread.update(main_cpu_s=run_ns / 1e9, main_wait_s=wait_ns / 1e9)
        time.sleep(0.05)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, child.args)
    return usage.ru_utime + usage.ru_stime


class ServerCpu:
    """CPU seconds used by a PostgreSQL server on this host, all its processes: the postmaster's
    own and its reaped backends' (its children's times), plus its live children's. None where
    the server's files or /proc cannot be read (another host, another user)."""

    def __init__(self, server_url: str) -> None:
        self.postmaster: int | None = None
        try:
            engine = create_engine(make_url(server_url), poolclass=NullPool)
            with engine.connect() as conn:
                data = conn.exec_driver_sql("SHOW data_directory").scalar()
            engine.dispose()
            pid_file = Path(str(data)) / "postmaster.pid"
            self.postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError, SQLAlchemyError):
            self.postmaster = None

    def processes(self) -> list[int]:
        """The postmaster and its children (the backends it starts later inherit from it)."""
        if self.postmaster is None:
            return []
        return [self.postmaster, *_children(self.postmaster)]

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        total, tick = 0.0, os.sysconf("SC_CLK_TCK")
        for pid, fields in _process_stats():
            parent, times = int(fields[1]), [int(value) for value in fields[11:15]]
            if pid == self.postmaster:
                total += sum(times) / tick  # its own, and its ended backends' (reaped)
            elif parent == self.postmaster:
                total += (times[0] + times[1]) / tick
        return total


def split_cpus(pin: bool, postmaster: int | None) -> tuple[set[int] | None, set[int]]:
    """`--pin`: the crawler's CPU and the others' (simulator, server); else (None, empty)."""
    if not pin:
        return None, set()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin: needs two CPUs or more")
    if postmaster is None:
        raise SystemExit("--pin: no server of this host whose postmaster can be read")
    return {cpus[0]}, set(cpus[1:])


def process_cpu_s(pid: int) -> float:
    """A live process's own CPU seconds (user + system), from /proc."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    """The fields of a /proc/PID/stat after the command's name (which may hold spaces):
    [0] the state, [1] the parent's pid, [11] and [12] user and system CPU ticks."""
    stat = path.read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _process_stats() -> Iterator[tuple[int, list[str]]]:
    """Every live process's pid and `_stat_fields` (those gone meanwhile are left out)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), _stat_fields(entry / "stat")
            except OSError:
                continue


@contextlib.contextmanager
def reniced(pid: int | None, niceness: int | None) -> Iterator[None]:
    """The process `pid` (the server's postmaster: the backends it starts inherit its
    niceness) at `niceness` meanwhile, then back; nothing if `niceness` is None."""
    if niceness is None:
        yield
        return
    if pid is None:
        raise SystemExit("--nice-server: no server of this host whose postmaster can be read")
    before = os.getpriority(os.PRIO_PROCESS, pid)
    os.setpriority(os.PRIO_PROCESS, pid, niceness)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, pid, before)


def _tasks(pid: int) -> list[int]:
    """The threads of process `pid` (an affinity is a thread's, not a process's)."""
    return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]


def _children(pid: int) -> list[int]:
    return [child for child, fields in _process_stats() if int(fields[1]) == pid]


@contextlib.contextmanager
def pinned(pids: Sequence[int], cpus: set[int]) -> Iterator[None]:
    """Every thread of `pids` on `cpus` meanwhile (the processes they start inherit it), then
    back where each was; nothing for no `cpus`."""
    if not cpus:
        yield
        return
    before: dict[int, set[int]] = {}
    try:
        for pid in pids:
            for task in _tasks(pid):
                with contextlib.suppress(ProcessLookupError):
                    before[task] = os.sched_getaffinity(task)
                    os.sched_setaffinity(task, cpus)
        yield
    finally:
        for task, cpus_before in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(task, cpus_before)


def simulator_args(targets: int, latency_ms: float, targets_file: Path) -> list[str]:
    """The simulator of a PostgreSQL benchmark: `targets` images over REGIONS regions, answering
    after `latency_ms`, writing its targets file and accepting ACCESS_KEY."""
    return [
        "--regions", REGIONS, "--images-per-region", str(targets // len(REGIONS.split(","))),
        "--latency-ms", str(latency_ms), "--write-targets", str(targets_file),
        "--access-key", ACCESS_KEY,
    ]  # fmt: skip


def compare_crawls(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    python, secret = project_python(), new_secret()
    env = {**os.environ, **credentials_env(secret)}
    targets = workdir / "targets.csv"
    sim_args = simulator_args(args.targets, args.latency_ms, targets)
    for build in (args.build, args.baseline):
        if build is not None:  # bytecode written once, not by the first crawl of each build
            compile_package(python, {**env, "PYTHONPATH": str(Path(build).resolve())})
    figures = []
    server = ServerCpu(args.postgres)
    client_cpus, other_cpus = split_cpus(args.pin, server.postmaster)
    with (
        SimulatorProcess(sim_args, env, start_timeout_s=120, python=python) as sim,
        reniced(server.postmaster, args.nice_server),
        pinned([sim.proc.pid, *server.processes()], other_cpus),
    ):
        if args.nice_simulator is not None:
            os.setpriority(os.PRIO_PROCESS, sim.proc.pid, args.nice_simulator)
        config = write_config(
            workdir / "crawler.toml", sim.url, args.concurrency, per_region=args.per_region
        )
        for repeat in range(args.repeat):
            order = ["sqlite", "postgresql"]
            if args.baseline is not None:
                order += ["baseline"]
                if repeat % 2:
                    order = ["sqlite", "baseline", "postgresql"]
            for variant in order:
                database = "sqlite" if variant == "sqlite" else "postgresql"
                build = args.baseline if variant == "baseline" else args.build
                if database == "sqlite":
                    url = f"sqlite+aiosqlite:///{workdir / f'crawl-{repeat}.db'}"
                else:
                    url = new_database(args.postgres)
                try:
                    before = server.seconds() if database == "postgresql" else None
                    sim_before = process_cpu_s(sim.proc.pid)
                    main: dict[str, float] = {}
                    client_cpu_s = crawl_once(
                        python, env, config, targets, url,
                        build=build, main_thread=main, cpus=client_cpus,
                    )  # fmt: skip
                    sim_cpu_s = process_cpu_s(sim.proc.pid) - sim_before
                    after = server.seconds() if database == "postgresql" else None
                    row = run_row(url)
                finally:
                    if database == "postgresql":
                        drop_database(url)
                # The simulator shares the cores: client + server + simulator against the
                # working time says how busy the machine was.
                cpu = {
                    "client_cpu_s": round(client_cpu_s, 2),
                    **{name: round(value, 2) for name, value in main.items()},
                    "simulator_cpu_s": round(sim_cpu_s, 2),
                }
                if before is not None and after is not None:
                    cpu["server_cpu_s"] = round(after - before, 2)
                figures.append({
                    "kind": "crawl", "database": database, "build": variant, "repeat": repeat,
                    "load": round(os.getloadavg()[0], 2), **row, **cpu,
                })  # fmt: skip
    crawls = [f for f in figures if f["kind"] == "crawl"]
    for variant in ("sqlite", "postgresql", "baseline")[: 3 if args.baseline else 2]:
        runs = [f for f in crawls if f["build"] == variant]
        database = "sqlite" if variant == "sqlite" else "postgresql"
        figures.append({
            "kind": "summary", "database": database, "build": variant,
            "latency_ms": args.latency_ms,
            "concurrency": args.concurrency, "targets": args.targets,
            "per_region_concurrency": args.per_region or args.concurrency,
            "median_work_s": median([f["work_s"] for f in runs]),
            "median_requests_per_s": median([f["requests_per_s"] for f in runs]),
            "min_requests_per_s": min(f["requests_per_s"] for f in runs),
            "max_requests_per_s": max(f["requests_per_s"] for f in runs),
            "median_client_cpu_s": median([f["client_cpu_s"] for f in runs]),
            "median_main_cpu_s": median([f.get("main_cpu_s", 0.0) for f in runs]),
            "median_main_wait_s": median([f.get("main_wait_s", 0.0) for f in runs]),
            "median_server_cpu_s": median([f.get("server_cpu_s", 0.0) for f in runs]),
            "median_simulator_cpu_s": median([f["simulator_cpu_s"] for f in runs]),
        })  # fmt: skip
    by_build = {
        variant: [f for f in crawls if f["build"] == variant]
        for variant in ("sqlite", "postgresql", "baseline")
    }
    pairs = zip(by_build["sqlite"], by_build["postgresql"], strict=True)
    ratios = [pg["requests_per_s"] / lite["requests_per_s"] for lite, pg in pairs]
    figures.append({
        "kind": "ratio", "postgresql_over_sqlite_per_pair": [round(r, 2) for r in ratios],
        "median": round(median(ratios), 2),
    })  # fmt: skip
    if args.baseline is not None:
        rounds = list(zip(by_build["postgresql"], by_build["baseline"], strict=True))
        for key in ("requests_per_s", "client_cpu_s", "server_cpu_s"):
            values = [this[key] / base[key] for this, base in rounds if base.get(key)]
            figures.append({
                "kind": "ratio", "this_build_over_baseline": key,
                "per_round": [round(v, 3) for v in values],
                "median": round(median(values), 3) if values else None,
            })  # fmt: skip
        base_pairs = zip(by_build["sqlite"], by_build["baseline"], strict=True)
        base_ratios = [b["requests_per_s"] / lite["requests_per_s"] for lite, b in base_pairs]
        figures.append({
            "kind": "ratio", "baseline_over_sqlite_per_pair": [round(r, 2) for r in base_ratios],
            "median": round(median(base_ratios), 2),
        })  # fmt: skip
    return figures


def simulator_requests(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_simulator/stats", timeout=10) as answer:
        return int(json.load(answer)["requests"])


def shared_rate(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    python, secret = project_python(), new_secret()
    env = {**os.environ, **credentials_env(secret)}
    targets = workdir / "targets.csv"
    per_region = int(args.rate * (args.seconds + 30) / 4) + 1
    sim_args = [
        "--regions", REGIONS, "--images-per-region", str(per_region), "--latency-ms", "10",
        "--write-targets", str(targets), "--access-key", ACCESS_KEY,
    ]  # fmt: skip
    url = new_database(args.postgres)
    children: list[subprocess.Popen[bytes]] = []
    try:
        with SimulatorProcess(sim_args, env, start_timeout_s=120, python=python) as sim:
            config = write_config(
                workdir / "rate.toml", sim.url, 16, f"rate_limit_per_s = {args.rate}\n"
            )
            base = [python, "-m", "crawler", "crawl", "--config", str(config), "--db", url,
                    "--no-progress"]  # fmt: skip
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            children.append(subprocess.Popen([*base, "--targets", str(targets)], env=env, **quiet))
            time.sleep(3)
            children.append(subprocess.Popen([*base, "--join"], env=env, **quiet))
            time.sleep(5)  # both started, migrated and crawling
            before, started = simulator_requests(sim.url), time.monotonic()
            time.sleep(args.seconds)
            sent, elapsed_s = simulator_requests(sim.url) - before, time.monotonic() - started
            alive = [child.poll() is None for child in children]
            for child in children:
                child.send_signal(signal.SIGINT)
            for child in children:
                child.wait(timeout=60)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        drop_database(url)
    rate = sent / elapsed_s
    return [{
        "kind": "shared_rate", "hosts": 2, "rate_limit_per_s": args.rate,
        "seconds": round(elapsed_s, 1), "requests": sent, "requests_per_s": round(rate, 2),
        "deviation_pct": round((rate / args.rate - 1) * 100, 2), "both_alive": all(alive),
    }]  # fmt: skip


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("crawl", "rate"), default="crawl")
    parser.add_argument("--postgres", required=True, metavar="URL")
    parser.add_argument("--targets", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--per-region-concurrency", dest="per_region", type=int, metavar="N",
        help="[crawl] per_region_concurrency (default: the concurrency; the crawler's own"
        " default is 32)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--baseline", metavar="DIR", help="another build, crawled on PostgreSQL")
    parser.add_argument("--build", metavar="DIR", help="the build to measure (default installed)")
    # Diagnostics, not a fair setting: which process's share of the two cores holds the crawl.
    parser.add_argument(
        "--nice-simulator", type=int, metavar="N",
        help="run the simulator at niceness N (negative: ahead of the rest; needs root)",
    )  # fmt: skip
    parser.add_argument(
        "--nice-server", type=int, metavar="N",
        help="run the server's new backends at niceness N (a server on this host; owner or root)",
    )  # fmt: skip
    parser.add_argument(
        "--pin", action="store_true",
        help="the crawler on the first CPU, the simulator and the server on the others",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pg-bench-") as directory:
        work = compare_crawls if args.mode == "crawl" else shared_rate
        figures = work(args, Path(directory))
    print(machine_note())
    for figure in figures:
        print(json.dumps(figure))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
