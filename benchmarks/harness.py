"""Process plumbing shared by the crawl benchmarks: a simulator child, measured children.

Every measured program runs as its own child process and is reaped with `os.wait4`, which gives
that child's own resource usage: user + system CPU seconds and its peak resident set
(`ru_maxrss`). A fresh child per measurement keeps peaks from one run out of the next.

Only 127.0.0.1 is touched. The secret key reaches the simulator and the crawler through the
environment (`JDCLOUD_SECRET_KEY`), never through argv, which every user of the machine can read.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import os
import re
import resource
import secrets
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "BENCHMARKAK"
LISTENING_RE = re.compile(r"listening on (http://127\.0\.0\.1:([0-9]+))")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used since boot (from /proc/stat).

    The growth over a measurement, minus what the benchmark's own processes used, is what other
    programs took from the same CPUs meanwhile: the figures are only as clean as that is small.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def credentials_env(secret_key: str) -> dict[str, str]:
    """The parent's environment plus the benchmark's credentials, as the crawler reads them."""
    env = dict(os.environ)
    env["JDCLOUD_ACCESS_KEY"] = ACCESS_KEY
    env["JDCLOUD_SECRET_KEY"] = secret_key
    return env


def new_secret() -> str:
    """A throwaway secret for one benchmark run."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class ChildRun:
    """One reaped child: exit code, wall time, its own CPU and peak memory, its output."""

    returncode: int
    wall_s: float
    user_s: float
    system_s: float
    maxrss_kib: int
    stdout: str
    stderr: str
    rss_samples: list[tuple[float, float]]  # (seconds since start, resident MiB)

    @property
    def cpu_s(self) -> float:
        """User plus system CPU seconds of the child (its own threads included)."""
        return self.user_s + self.system_s

    @property
    def maxrss_mib(self) -> float:
        """Peak resident set of the child in MiB."""
        return self.maxrss_kib / 1024


def run_child(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout_s: float,
    cwd: Path | None = None,
    rss_every_s: float = 0.0,
    guard: SourceGuard | None = None,
) -> ChildRun:
    """Run `argv` to completion and measure it; killed (and reported) after `timeout_s`.

    The CPU figures come from `os.wait4` on this child alone. They are cross-checked against the
    growth of `getrusage(RUSAGE_CHILDREN)`, which counts every child reaped meanwhile. With
    `rss_every_s`, the child's resident set is also read from /proc that often (`rss_samples`).

    `guard` (by default the one of the crawler package a child started in `cwd` imports) is
    checked once the child is reaped: a benchmark whose crawler source changed since its first
    child stops with `SourceChangedError` rather than report figures of two builds.

    Raises:
        SourceChangedError: a source file of the guarded package changed.
    """
    watched = guard if guard is not None else _guard_for(cwd)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=dict(env), stdout=out, stderr=err, cwd=cwd)
        timer = threading.Timer(timeout_s, _kill, (proc.pid,))
        timer.start()
        sampler = _RssSampler(proc.pid, rss_every_s, started) if rss_every_s > 0 else None
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            if sampler is not None:
                sampler.stop()
        wall_s = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        _check_children_delta(before, after, usage)
        if watched is not None:
            watched.check()
        out.seek(0)
        err.seek(0)
        return ChildRun(
            proc.returncode,
            wall_s,
            usage.ru_utime,
            usage.ru_stime,
            usage.ru_maxrss,
            out.read(),
            err.read(),
            sampler.samples if sampler is not None else [],
        )


class SourceChangedError(RuntimeError):
    """The crawler source a benchmark measures changed while it ran."""


class SourceGuard:
    """The source files of one crawler package as they were when a benchmark first ran it.

    A child imports the package's files when it starts, so a benchmark run from a working tree
    that is edited meanwhile measures whatever the files held at each child's start: the one
    first crawl that took 150 CPU seconds instead of 3.6 (README, "150 CPU seconds") started in
    the minute in which `crawler/store/versions.py` held, on purpose, the quadratic statement
    the query-plan test must catch. `check` makes that an error instead of a figure.
    """

    def __init__(self, package: Path) -> None:
        self.package = package.resolve()
        self._roots = [self.package, *_sibling_migrations(self.package)]
        self._digests = self._read()

    def _read(self) -> dict[str, str]:
        digests = {}
        for root in self._roots:
            for path in sorted(root.rglob("*.py")):
                name = str(path.relative_to(root.parent))
                digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        return digests

    def check(self) -> None:
        """Raise `SourceChangedError` naming every file added, removed or edited since."""
        now = self._read()
        changed = sorted(
            name for name in self._digests.keys() | now.keys()
            if self._digests.get(name) != now.get(name)
        )  # fmt: skip
        if changed:
            raise SourceChangedError(
                f"the crawler source under {self.package.parent} changed while the benchmark"
                f" ran ({', '.join(changed)}): its figures would mix two builds. Benchmark a"
                " tree nobody edits meanwhile (a `git worktree` or `git archive` copy)"
            )


def _sibling_migrations(package: Path) -> list[Path]:
    # The migrations are imported as `crawler.migrations` from the checkout's own directory.
    migrations = package.parent / "migrations"
    return [migrations] if (migrations / "env.py").is_file() else []


def child_package(cwd: Path | None = None) -> Path | None:
    """The crawler package `python -m crawler` imports when started in `cwd`: that directory's
    own `crawler/` (the working directory comes first on its path), else the installed one."""
    local = (cwd or Path.cwd()) / "crawler"
    if (local / "__init__.py").is_file():
        return local.resolve()
    spec = importlib.util.find_spec("crawler")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.resolve()


_GUARDS: dict[Path, SourceGuard] = {}


def _guard_for(cwd: Path | None) -> SourceGuard | None:
    """One guard per package for the whole benchmark process, stamped at its first child."""
    package = child_package(cwd)
    if package is None:
        return None
    if package not in _GUARDS:
        _GUARDS[package] = SourceGuard(package)
    return _GUARDS[package]


class _RssSampler:
    """Reads a process's VmRSS every `every_s` seconds on a thread until stopped."""

    def __init__(self, pid: int, every_s: float, started: float) -> None:
        self.samples: list[tuple[float, float]] = []
        self._path = Path(f"/proc/{pid}/status")
        self._every_s = every_s
        self._started = started
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._every_s):
            rss_mib = resident_mib(self._path)
            if rss_mib is None:
                return
            self.samples.append((time.perf_counter() - self._started, rss_mib))

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def resident_mib(status: Path, field: str = "VmRSS:") -> float | None:
    """A `Vm...` figure of /proc/PID/status in MiB; None once the process is gone."""
    try:
        text = status.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _check_children_delta(
    before: resource.struct_rusage, after: resource.struct_rusage, usage: resource.struct_rusage
) -> None:
    """Warn if RUSAGE_CHILDREN grew by more than this child used (another child was reaped)."""
    delta = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    own = usage.ru_utime + usage.ru_stime
    if abs(delta - own) > 0.05:
        print(f"# note: RUSAGE_CHILDREN grew {delta:.2f} s, the child used {own:.2f} s")


class SimulatorProcess:
    """`python -m crawler simulate ...` as a child process, stopped with SIGTERM."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        start_timeout_s: float,
        python: str = sys.executable,
    ) -> None:
        """Start the simulator and wait for its `listening on http://HOST:PORT` line.

        Args:
            args: flags after `crawler simulate --host 127.0.0.1 --port 0`.
            env: its environment (the secret key in JDCLOUD_SECRET_KEY).
            start_timeout_s: how long building the inventory may take.
            python: an interpreter that can import `crawler`.

        Raises:
            RuntimeError: it exited or did not announce itself within `start_timeout_s`.
        """
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by stop()
        argv = [python, "-m", "crawler", "simulate", "--host", "127.0.0.1", "--port", "0"]
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [*argv, *args], env=dict(env), stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.url = self._await_url(start_timeout_s)
        self.start_s = time.perf_counter() - started
        self.port = int(self.url.rsplit(":", 1)[1])

    def _await_url(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        match = LISTENING_RE.search(line)
        if match is None:
            self.stop()
            self._stderr.seek(0)
            raise RuntimeError(
                f"the simulator did not start within {timeout_s:g} s: {line!r} "
                f"{self._stderr.read()[-2000:]}"
            )
        return match[1]

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the simulator has used so far, from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def peak_rss_mib(self) -> float:
        """The simulator's peak resident set so far (VmHWM), in MiB."""
        return resident_mib(Path(f"/proc/{self.proc.pid}/status"), "VmHWM:") or 0.0

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def write_crawl_config(path: Path, endpoint: str, concurrency: int) -> None:
    """A crawl config for the simulator: per-region concurrency = concurrency, so it never caps.

    `max_attempts = 1` is not set: the crawl runs with its default retry policy, as a user's would.
    """
    path.write_text(
        "[api]\n"
        f'endpoint = "{endpoint}"\n'
        "[crawl]\n"
        f"concurrency = {concurrency}\n"
        f"per_region_concurrency = {concurrency}\n",
        encoding="utf-8",
    )


def crawl_argv(
    config: Path, targets: Path, db: Path, concurrency: int, python: str = sys.executable
) -> list[str]:
    """`crawler crawl` exactly as a user runs it from a cron job."""
    return [
        python, "-m", "crawler", "crawl", "--config", str(config), "--targets",
        str(targets), "--db", str(db), "--no-progress", "--concurrency", str(concurrency),
    ]  # fmt: skip


def run_figures(db: Path) -> dict[str, Any]:
    """The newest run's row of a crawl database, with `work_s` from its own timestamps.

    `crawl_runs.started_at` is written before the targets are recorded and `finished_at` after the
    last result is committed, both to the microsecond: the crawl's working time without the
    interpreter's start-up.
    """
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT status, fetched, missing, failed, requests, retries,"
            " (julianday(finished_at) - julianday(started_at)) * 86400.0"
            " FROM crawl_runs ORDER BY run_id DESC LIMIT 1"
        ).fetchone()
    names = ("status", "fetched", "missing", "failed", "requests", "retries", "work_s")
    return dict(zip(names, row, strict=True)) if row else {}


def remove_database(db: Path) -> None:
    """Delete an SQLite file with its -wal, -shm and lock companions."""
    for path in db.parent.glob(db.name + "*"):
        path.unlink()


def count_lines(path: Path) -> int:
    """Data rows of a targets CSV (every line but the header)."""
    with path.open("rb") as stream:
        return sum(1 for _ in stream) - 1


def project_python() -> str:
    """The project's interpreter (`.venv/bin/python` beside `benchmarks/`), else this one.

    The official-SDK scripts run in a scratch venv that has `jdcloud_sdk` but not the crawler;
    they start the simulator and the crawler with this interpreter instead.
    """
    candidate = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def compile_package(python: str, env: Mapping[str, str] | None = None) -> None:
    """Write the bytecode of the `crawler` package that `python` imports (with `env`).

    `pip install` compiles a package's modules once; an editable install in an environment with
    PYTHONDONTWRITEBYTECODE set (as some shells and CI runners have) never writes them, and every
    crawl then compiles the whole package again: about 0.05 CPU s of its start-up. Compiling up
    front measures what an installed crawler costs.
    """
    program = (
        "import compileall, os, crawler; "
        "compileall.compile_dir(os.path.dirname(crawler.__file__), quiet=1)"
    )
    subprocess.run([python, "-c", program], env=None if env is None else dict(env), check=True)


def read_targets(path: Path) -> list[tuple[str, str]]:
    """The (region, image) pairs of a targets CSV."""
    with path.open(encoding="utf-8", newline="") as stream:
        return [(row["region_id"], row["image_id"]) for row in csv.DictReader(stream)]


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def machine_note() -> str:
    """Two lines about where the figures come from."""
    cpus = os.cpu_count()
    floor_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (
        f"# {cpus} CPUs, Python {sys.version.split()[0]}; the simulator runs on the same CPUs as "
        "the client, so every figure is client and server together sharing them.\n"
        f"# This process holds {floor_mib:.0f} MiB: a child's ru_maxrss cannot read lower (it is "
        "spawned with vfork and starts from its parent's high-water mark)."
    )


@dataclass(frozen=True, slots=True)
class Setting:
    """What every measurement against one simulator process shares."""

    sim: SimulatorProcess
    env: dict[str, str]
    targets_path: Path
    targets: int
    latency_ms: float
    workdir: Path
    timeout_s: float
    python: str = sys.executable  # the interpreter that runs the crawler


def comma_list(kind: Callable[[str], float], minimum: float) -> Callable[[str], list[Any]]:
    """An argparse type: "16,64,256" as numbers of `kind`, none below `minimum`."""

    def parse(text: str) -> list[Any]:
        values = [kind(part) for part in text.split(",") if part.strip()]
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give numbers of at least {minimum:g}, comma-separated"
            )
        return values

    return parse
