"""Crawl throughput against the simulator, beside the ceiling of a bare aiohttp loop (issue 5).

One simulator (`python -m crawler simulate`, a separate process) serves every measurement of a
latency setting. For each concurrency, `--repeat` times, interleaved:

  a. bare: a child process running the leanest loop this client could run: `concurrency` tasks
     sending signed GETs (`Signer.sign`, the client's nonce and clock, a keep-alive connector
     sized to the concurrency) and reading the bodies, nothing else. The ceiling of this machine
     for this client.
  b. crawl: `python -m crawler crawl --config ... --targets ... --no-progress --concurrency C`
     into a fresh SQLite file, as a user runs it (normalise, commit every image, record every
     outcome).
  c. with `--with-parse` only: the bare loop that also parses each body (`json.loads`) and
     normalises its image (`normalise_image`) on the loop thread, storing nothing. It shows what
     the work every crawl must do per image costs on its own: the ceiling for any crawl whose
     event loop parses what it fetches.

Per measurement: requests/s over the child's wall time (interpreter start-up included) and over
its working time (the bare loop's own timer; the crawl's `crawl_runs.started_at..finished_at`),
CPU seconds per 1,000 targets and peak memory of that child (`os.wait4`), and the simulator's CPU
meanwhile. Medians are reported. The simulator shares the CPUs with the client.

    .venv/bin/python benchmarks/crawl_throughput.py                       # 20 ms, 16/64/256
    .venv/bin/python benchmarks/crawl_throughput.py --latency-ms 0 --concurrency 64
    .venv/bin/python benchmarks/crawl_throughput.py _bare --help          # the child (a)

Output: a human table, and one JSON line per measurement (`"kind": "bare" | "crawl"`), per
median (`"kind": "summary"`) and per target (`"kind": "target"`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from harness import (
    ChildRun,
    Setting,
    SimulatorProcess,
    comma_list,
    count_lines,
    crawl_argv,
    credentials_env,
    machine_busy_s,
    machine_note,
    median,
    new_secret,
    read_targets,
    remove_database,
    run_child,
    run_figures,
    write_crawl_config,
)

REGIONS = 4
# Issue 5's acceptance figures.
TARGET_SHARE_OF_BARE = 0.85
TARGET_SHARE_OF_CEILING = 0.80
TARGET_ZERO_LATENCY_RPS = 1900.0
TARGET_CONCURRENCY = 64
TARGET_LATENCY_MS = 20.0


# --- (a) the bare loop, run as a child process -------------------------------------------------


async def bare_loop(
    url: str,
    targets: Sequence[tuple[str, str]],
    concurrency: int,
    access_key: str,
    secret: str,
    *,
    normalise: bool = False,
) -> dict[str, Any]:
    """Send one signed describeImage GET per target with `concurrency` tasks; read each body.

    With `normalise`, also parse each body and normalise its image, as (c) does.
    """
    # Imported here, in the child only: a child's ru_maxrss starts at its parent's resident set
    # (it is spawned with vfork), so the measuring parent stays lean.
    import aiohttp
    from yarl import URL

    from crawler.client import new_nonce, utc_now
    from crawler.normalise import normalise_image
    from crawler.signer import Signer

    naive_tz = ZoneInfo("Asia/Shanghai")  # the config's default naive_time_zone

    signer = Signer(access_key, secret)
    origin = URL(url)
    host = f"{origin.host}:{origin.port}"
    statuses: Counter[int] = Counter()
    pending = iter(targets)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)

    async def worker(session: Any) -> None:
        for region, image_id in pending:
            path = f"/v1/regions/{region}/images/{image_id}"
            headers = signer.sign(
                method="GET", host=host, path=path, query="", region=region,
                at=utc_now(), nonce=new_nonce(),
            )  # fmt: skip
            headers["Host"] = host
            target = URL.build(scheme="http", authority=host, path=path, encoded=True)
            async with session.get(target, headers=headers) as resp:
                body = await resp.read()
                statuses[resp.status] += 1
            if normalise:
                normalise_image(region, json.loads(body)["result"]["image"], naive_tz=naive_tz)

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        loop_s = time.perf_counter() - started
    return {"requests": sum(statuses.values()), "work_s": loop_s, "statuses": dict(statuses)}


def bare_main(argv: Sequence[str]) -> int:
    """Entry of the child process (a): prints one JSON object."""
    parser = argparse.ArgumentParser(
        prog="crawl_throughput.py _bare",
        description="The bare signed-GET loop (credentials from JDCLOUD_ACCESS_KEY/SECRET_KEY).",
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--targets", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--normalise", action="store_true", help="also parse and normalise")
    args = parser.parse_args(argv)
    targets = read_targets(args.targets)
    keys = os.environ["JDCLOUD_ACCESS_KEY"], os.environ["JDCLOUD_SECRET_KEY"]
    loop = bare_loop(args.url, targets, args.concurrency, *keys, normalise=args.normalise)
    result = asyncio.run(loop)
    print(json.dumps(result))
    return 0


# --- the measurements --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """One child's figures."""

    kind: str  # "bare", "parse" or "crawl"
    latency_ms: float
    concurrency: int
    repeat: int
    targets: int
    requests: int
    wall_s: float
    work_s: float  # bare: its own loop timer; crawl: crawl_runs.started_at..finished_at
    cpu_s: float
    maxrss_mib: float
    sim_cpu_s: float
    other_cpu_s: float  # CPU that other programs on the machine used meanwhile
    ok: bool
    detail: str

    @property
    def rps_wall(self) -> float:
        """Requests per second over the child's whole life."""
        return self.requests / self.wall_s if self.wall_s else 0.0

    @property
    def rps_work(self) -> float:
        """Requests per second over the working part (start-up excluded)."""
        return self.requests / self.work_s if self.work_s else 0.0

    @property
    def other_cores(self) -> float:
        """CPUs' worth of other programs' work during this measurement (noise; 0 is clean)."""
        return self.other_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_s_per_1k(self) -> float:
        """The child's CPU seconds per 1,000 targets."""
        return 1000 * self.cpu_s / self.targets

    @property
    def sim_cpu_s_per_1k(self) -> float:
        """The simulator's CPU seconds per 1,000 targets during this child."""
        return 1000 * self.sim_cpu_s / self.targets

    def as_json(self) -> dict[str, Any]:
        """The JSON line of this measurement."""
        return {
            "bench": "crawl_throughput", "kind": self.kind, "latency_ms": self.latency_ms,
            "concurrency": self.concurrency, "repeat": self.repeat, "targets": self.targets,
            "requests": self.requests, "wall_s": round(self.wall_s, 3),
            "work_s": round(self.work_s, 3), "rps_wall": round(self.rps_wall, 1),
            "rps_work": round(self.rps_work, 1), "cpu_s": round(self.cpu_s, 3),
            "cpu_s_per_1k_targets": round(self.cpu_s_per_1k, 3),
            "maxrss_mib": round(self.maxrss_mib, 1), "sim_cpu_s": round(self.sim_cpu_s, 3),
            "sim_cpu_s_per_1k_targets": round(self.sim_cpu_s_per_1k, 3),
            "other_cores": round(self.other_cores, 2), "ok": self.ok,
            "detail": self.detail,
        }  # fmt: skip


def measure_bare(setting: Setting, concurrency: int, repeat: int) -> Measurement:
    """(a): the bare loop in a fresh child."""
    return _measure_loop("bare", setting, concurrency, repeat)


def measure_parse(setting: Setting, concurrency: int, repeat: int) -> Measurement:
    """(c): the bare loop that also parses and normalises, in a fresh child."""
    return _measure_loop("parse", setting, concurrency, repeat)


def _measure_loop(kind: str, setting: Setting, concurrency: int, repeat: int) -> Measurement:
    argv = [
        sys.executable, str(Path(__file__).resolve()), "_bare", "--url", setting.sim.url,
        "--targets", str(setting.targets_path), "--concurrency", str(concurrency),
        *(["--normalise"] if kind == "parse" else []),
    ]  # fmt: skip
    run, sim_cpu_s, other_cpu_s = _run_measured(setting, argv)
    figures: dict[str, Any] = {}
    if run.returncode == 0:
        figures = json.loads(run.stdout.strip().splitlines()[-1])
    statuses = figures.get("statuses", {})
    ok = run.returncode == 0 and statuses == {"200": setting.targets}
    detail = f"statuses {statuses}" if run.returncode == 0 else _failure(run)
    cpu = (run, sim_cpu_s, other_cpu_s)
    return _measurement(kind, setting, concurrency, repeat, cpu, ok, detail, figures)


def measure_crawl(setting: Setting, concurrency: int, repeat: int) -> Measurement:
    """(b): `crawler crawl` end to end in a fresh child, into a fresh SQLite file."""
    config = setting.workdir / f"crawl-{concurrency}.toml"
    write_crawl_config(config, setting.sim.url, concurrency)
    db = setting.workdir / f"crawl-l{setting.latency_ms:g}-c{concurrency}-r{repeat}.db"
    argv = crawl_argv(config, setting.targets_path, db, concurrency)
    run, sim_cpu_s, other_cpu_s = _run_measured(setting, argv)
    figures = run_figures(db) if db.exists() else {}
    summary_requests = _summary_requests(run.stdout)
    ok = (
        run.returncode == 0
        and figures.get("fetched") == setting.targets
        and summary_requests == figures.get("requests")
    )
    detail = (
        f"status {figures.get('status')}, fetched {figures.get('fetched')}, requests "
        f"{figures.get('requests')} (summary line: {summary_requests}), retries "
        f"{figures.get('retries')}"
    )
    if run.returncode != 0:
        detail = f"{detail}; {_failure(run)}"
    remove_database(db)
    cpu = (run, sim_cpu_s, other_cpu_s)
    return _measurement("crawl", setting, concurrency, repeat, cpu, ok, detail, figures)


def _run_measured(setting: Setting, argv: Sequence[str]) -> tuple[ChildRun, float, float]:
    """The child's run, the simulator's CPU seconds meanwhile, and everybody else's."""
    busy_before, sim_before = machine_busy_s(), setting.sim.cpu_s()
    run = run_child(argv, setting.env, timeout_s=setting.timeout_s)
    sim_cpu_s = setting.sim.cpu_s() - sim_before
    other_cpu_s = machine_busy_s() - busy_before - sim_cpu_s - run.cpu_s
    return run, sim_cpu_s, max(0.0, other_cpu_s)


def _measurement(
    kind: str,
    setting: Setting,
    concurrency: int,
    repeat: int,
    cpu: tuple[ChildRun, float, float],
    ok: bool,
    detail: str,
    figures: dict[str, Any],
) -> Measurement:
    run, sim_cpu_s, other_cpu_s = cpu
    return Measurement(
        kind, setting.latency_ms, concurrency, repeat, setting.targets,
        int(figures.get("requests", 0)), run.wall_s, float(figures.get("work_s", 0.0)),
        run.cpu_s, run.maxrss_mib, sim_cpu_s, other_cpu_s, ok, detail,
    )  # fmt: skip


def _failure(run: ChildRun) -> str:
    return f"exit {run.returncode}: {run.stderr.strip()[-500:]}"


def _summary_requests(stdout: str) -> int | None:
    """The request count of the crawl's summary line (`...; 10,000 requests, 0 retries in ...`)."""
    for line in stdout.splitlines():
        if line.startswith("run ") and " requests, " in line:
            return int(line.split("; ", 1)[1].split(" requests", 1)[0].replace(",", ""))
    return None


# --- the run -----------------------------------------------------------------------------------


def run_setting(args: argparse.Namespace, latency_ms: float, workdir: Path) -> list[Measurement]:
    """Every measurement at one latency, against one simulator process."""
    secret = new_secret()
    env = credentials_env(secret)
    targets_path = workdir / f"targets-{latency_ms:g}.csv"
    sim_args = [
        "--latency-ms", f"{latency_ms:g}", "--images-per-region",
        str(-(-args.targets // REGIONS)), "--write-targets", str(targets_path),
    ]  # fmt: skip
    measurements: list[Measurement] = []
    with SimulatorProcess(sim_args, env, start_timeout_s=300) as sim:
        setting = Setting(
            sim, env, targets_path, count_lines(targets_path), latency_ms, workdir, args.timeout_s
        )
        print(
            f"# latency {latency_ms:g} ms: simulator {sim.url} (pid {sim.proc.pid}), "
            f"{setting.targets:,} targets, every one an existing image"
        )
        for concurrency in args.concurrency:
            for repeat in range(args.repeat):
                kinds = (measure_bare, measure_parse) if args.with_parse else (measure_bare,)
                for measure in (*kinds, measure_crawl):
                    measurement = measure(setting, concurrency, repeat)
                    print(json.dumps(measurement.as_json()), flush=True)
                    measurements.append(measurement)
    return measurements


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians of one (latency, concurrency) cell."""

    latency_ms: float
    concurrency: int
    bare: dict[str, float]
    crawl: dict[str, float]
    all_ok: bool
    parse: dict[str, float] | None = None  # (c), with --with-parse only

    @property
    def ceiling_rps(self) -> float | None:
        """concurrency / latency: what the latency alone allows."""
        return self.concurrency / (self.latency_ms / 1000) if self.latency_ms > 0 else None

    def ratio(self, basis: str) -> float:
        """crawl / bare requests/s, over `basis` ("work" or "wall")."""
        bare = self.bare[f"rps_{basis}"]
        return self.crawl[f"rps_{basis}"] / bare if bare else 0.0

    def share_of_ceiling(self, basis: str) -> float | None:
        """The crawl's requests/s as a share of the latency ceiling."""
        ceiling = self.ceiling_rps
        return self.crawl[f"rps_{basis}"] / ceiling if ceiling else None

    def as_json(self) -> dict[str, Any]:
        """The JSON line of this cell."""
        share_work, share_wall = self.share_of_ceiling("work"), self.share_of_ceiling("wall")
        return {
            "bench": "crawl_throughput", "kind": "summary", "latency_ms": self.latency_ms,
            "concurrency": self.concurrency, "bare": self.bare, "crawl": self.crawl,
            "ceiling_rps": self.ceiling_rps, "crawl_over_bare_work": round(self.ratio("work"), 3),
            "crawl_over_bare_wall": round(self.ratio("wall"), 3),
            "crawl_share_of_ceiling_work": None if share_work is None else round(share_work, 3),
            "crawl_share_of_ceiling_wall": None if share_wall is None else round(share_wall, 3),
            "all_ok": self.all_ok, "parse": self.parse,
        }  # fmt: skip


_MEDIAN_FIELDS = (
    "rps_work", "rps_wall", "work_s", "wall_s", "cpu_s_per_1k", "maxrss_mib", "other_cores",
)  # fmt: skip


def summarise(measurements: Sequence[Measurement]) -> list[Summary]:
    """Medians per (latency, concurrency), in the order measured."""
    cells: dict[tuple[float, int], list[Measurement]] = {}
    for m in measurements:
        cells.setdefault((m.latency_ms, m.concurrency), []).append(m)
    return [
        Summary(
            latency_ms,
            concurrency,
            _medians(ms, "bare"),
            _medians(ms, "crawl"),
            all(m.ok for m in ms),
            _medians(ms, "parse") if any(m.kind == "parse" for m in ms) else None,
        )
        for (latency_ms, concurrency), ms in cells.items()
    ]


def _medians(ms: Sequence[Measurement], kind: str) -> dict[str, float]:
    chosen = [m for m in ms if m.kind == kind]
    figures = {name: median([getattr(m, name) for m in chosen]) for name in _MEDIAN_FIELDS}
    figures["sim_cpu_s_per_1k"] = median([m.sim_cpu_s_per_1k for m in chosen])
    return {name: round(value, 3) for name, value in figures.items()}


def print_table(summaries: Sequence[Summary], repeat: int) -> None:
    """The human tables: medians of `repeat` interleaved runs."""
    print()
    print(f"Throughput, medians of {repeat} interleaved runs (rps = requests/s). 'work' leaves")
    print("out interpreter start-up (bare: its loop; crawl: crawl_runs.started_at..finished_at,")
    print("which includes recording the targets and committing every result); 'wall' is the")
    print("whole child process. ceiling = concurrency / latency.")
    header = (
        f"{'lat ms':>6} {'conc':>5} | {'bare':>6} {'crawl':>6} {'b/a':>5} {'ceiling':>7} "
        f"{'b/ceil':>6} | {'bare':>6} {'crawl':>6} {'b/a':>5} | ok"
    )
    print(f"{'':13}| {'work rps':^36} | {'wall rps':^20} |")
    print(header)
    print("-" * len(header))
    for s in summaries:
        ceiling = f"{s.ceiling_rps:,.0f}" if s.ceiling_rps else "-"
        share = s.share_of_ceiling("work")
        print(
            f"{s.latency_ms:>6g} {s.concurrency:>5} | {s.bare['rps_work']:>6,.0f} "
            f"{s.crawl['rps_work']:>6,.0f} {s.ratio('work'):>5.0%} {ceiling:>7} "
            f"{'-' if share is None else f'{share:.0%}':>6} | {s.bare['rps_wall']:>6,.0f} "
            f"{s.crawl['rps_wall']:>6,.0f} {s.ratio('wall'):>5.0%} | {'yes' if s.all_ok else 'NO'}"
        )
    print()
    print("Resources, medians. CPU = CPU seconds per 1,000 targets of the measured process (all")
    print("its threads); sim = the simulator's meanwhile; RSS = the process's peak resident set;")
    print("other = CPUs' worth of unrelated programs running meanwhile (0 = a quiet machine).")
    header = (
        f"{'lat ms':>6} {'conc':>5} | {'bare':>5} {'crawl':>5} | {'bare':>5} {'crawl':>5} | "
        f"{'bare':>5} {'crawl':>5} | {'bare':>5} {'crawl':>5}"
    )
    print(f"{'':13}| {'CPU s/1k':^11} | {'sim s/1k':^11} | {'RSS MiB':^11} | {'other':^11}")
    print(header)
    print("-" * len(header))
    for s in summaries:
        b, c = s.bare, s.crawl
        print(
            f"{s.latency_ms:>6g} {s.concurrency:>5} | {b['cpu_s_per_1k']:>5.3f} "
            f"{c['cpu_s_per_1k']:>5.3f} | {b['sim_cpu_s_per_1k']:>5.3f} "
            f"{c['sim_cpu_s_per_1k']:>5.3f} | {b['maxrss_mib']:>5.0f} {c['maxrss_mib']:>5.0f} | "
            f"{b['other_cores']:>5.2f} {c['other_cores']:>5.2f}"
        )
    print_parse_table([s for s in summaries if s.parse is not None])


def print_parse_table(summaries: Sequence[Summary]) -> None:
    """(c) beside (a) and (b): what parsing and normalising alone cost the loop."""
    if not summaries:
        return
    print()
    print("Parse: the bare loop that also json.loads each body and normalises its image (c),")
    print("storing nothing; medians over the working time.")
    header = (
        f"{'lat ms':>6} {'conc':>5} | {'bare':>6} {'parse':>6} {'crawl':>6} | {'c/a':>5} "
        f"{'b/c':>5} | {'CPU s/1k':>8}"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        assert s.parse is not None
        bare, parse, crawl = s.bare["rps_work"], s.parse["rps_work"], s.crawl["rps_work"]
        print(
            f"{s.latency_ms:>6g} {s.concurrency:>5} | {bare:>6,.0f} {parse:>6,.0f} "
            f"{crawl:>6,.0f} | {parse / bare if bare else 0:>5.0%} "
            f"{crawl / parse if parse else 0:>5.0%} | {s.parse['cpu_s_per_1k']:>8.3f}"
        )


def check_targets(summaries: Sequence[Summary]) -> None:
    """Issue 5's acceptance figures, each on the working time and on the wall time."""
    print()
    for s in summaries:
        if s.latency_ms == TARGET_LATENCY_MS and s.concurrency == TARGET_CONCURRENCY:
            for basis in ("work", "wall"):
                share = s.share_of_ceiling(basis) or 0.0
                _report_target(
                    f"{basis}: crawl >= {TARGET_SHARE_OF_BARE:.0%} of the bare loop at 20 ms, c=64",
                    s.ratio(basis), TARGET_SHARE_OF_BARE, f"{s.ratio(basis):.1%}",
                )  # fmt: skip
                _report_target(
                    f"{basis}: crawl >= {TARGET_SHARE_OF_CEILING:.0%} of 64/0.02 s = 3,200 req/s",
                    share, TARGET_SHARE_OF_CEILING,
                    f"{s.crawl[f'rps_{basis}']:,.0f} req/s = {share:.1%}",
                )  # fmt: skip
        if s.latency_ms == 0:
            for basis in ("work", "wall"):
                rps = s.crawl[f"rps_{basis}"]
                _report_target(
                    f"{basis}: crawl >= {TARGET_ZERO_LATENCY_RPS:,.0f} req/s at 0 ms, "
                    f"c={s.concurrency}",
                    rps, TARGET_ZERO_LATENCY_RPS, f"{rps:,.0f} req/s",
                )  # fmt: skip


def _report_target(name: str, value: float, bar: float, shown: str) -> None:
    met = value >= bar
    print(f"target {'MET' if met else 'NOT MET'}: {name}: {shown}")
    line = {"bench": "crawl_throughput", "kind": "target", "target": name, "met": met}
    print(json.dumps({**line, "value": round(value, 4), "bar": bar}))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Crawl throughput beside a bare aiohttp loop, against the simulator "
        "(127.0.0.1 only). The child loop (a) is `crawl_throughput.py _bare`.",
    )
    add = parser.add_argument
    add(
        "--concurrency",
        type=comma_list(int, 1),
        default=[16, 64, 256],
        help="comma-separated (16,64,256)",
    )
    add(
        "--latency-ms",
        type=comma_list(float, 0),
        default=[20.0],
        help="comma-separated, in ms (20)",
    )
    add("--targets", type=int, default=20_000, help="targets, all existing images (20000)")
    add("--repeat", type=int, default=3, help="runs of each, interleaved (3)")
    add("--timeout-s", type=float, default=600.0, help="kill a child running longer (600)")
    add("--workdir", type=Path, help="keep files here (default: a temp dir)")
    add("--with-parse", action="store_true", help="also measure (c): bare + parse + normalise")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "_bare":
        return bare_main(argv[1:])
    args = parse_args(argv)
    print(machine_note())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crawl-throughput-", dir=args.workdir) as tmp:
        measurements = [
            m for latency in args.latency_ms for m in run_setting(args, latency, Path(tmp))
        ]
    summaries = summarise(measurements)
    for summary in summaries:
        print(json.dumps(summary.as_json()))
    print_table(summaries, args.repeat)
    check_targets(summaries)
    print(f"# done in {time.perf_counter() - started:.0f} s")
    return 0 if all(m.ok for m in measurements) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
