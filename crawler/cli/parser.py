"""The `crawler` command: parses flags, runs a command, maps errors to exit codes.

This is the only module that knows exit codes (CONTRACT.md §2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import signal
import ssl
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

# Only what parsing the command line and mapping errors need is imported here; each command
# imports the rest itself, so `crawler --help`, `runs` and `sql` never load aiohttp, tenacity or
# the scheduler, and nothing loads Alembic unless a database is behind (see crawler.store.migrate).
# benchmarks/startup_cpu.py measures what each command costs to start.
from crawler.changes import DIFF_FORMATS, HISTORY_FORMATS
from crawler.discovery import IMAGE_SOURCES
from crawler.errors import (
    ApiError,
    AuthError,
    CrawlerError,
    EndpointUnreachableError,
    InternalError,
    LockHeldError,
    QueryError,
    RunNotFoundError,
    StoreError,
)
from crawler.freshness import describe_freshness, parse_duration_s
from crawler.logs import LEVELS, RunContext, configure_logging
from crawler.models import RunStatus
from crawler.render import (
    FORMATS,
    describe_report,
    render,
    render_runs,
    render_table,
    report_fields,
)
from crawler.version import crawler_version

if TYPE_CHECKING:
    import ssl

    from crawler.app import CrawlJob, CrawlReport, Plan
    from crawler.config import Config
    from crawler.discovery import DiscoveryStats
    from crawler.metrics import RunMetrics
    from crawler.scheduler import Pacing
    from crawler.simulator import Simulator
    from crawler.store import MonitoringFacts, Store

log = logging.getLogger("crawler.cli")
T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED_TARGETS = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_HELD = 4  # the mass-deletion guard held back the run's missing marks
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug, please report
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130


@dataclasses.dataclass(frozen=True)
class Io:
    """The process's surroundings, passed in so tests can run the real CLI in-process."""

    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    stdin: TextIO = dataclasses.field(default_factory=lambda: sys.stdin)
    stdout: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)
    stderr: TextIO = dataclasses.field(default_factory=lambda: sys.stderr)
    pacing: Pacing | None = None
    argv0: str = dataclasses.field(default_factory=lambda: sys.argv[0])


def main(argv: Sequence[str] | None = None, io: Io | None = None) -> int:
    """Run one command; returns the process exit code.

    Without `io` this is the process itself (the console script, `python -m crawler`), and
    start-up also tunes the garbage collector for a process that ends when the command does.
    """
    if io is None:
        _pause_collection()
    try:
        return _dispatch(sys.argv[1:] if argv is None else list(argv), io or Io())
    finally:
        gc.enable()


# Net new container objects that trigger a collection of the youngest generation (Python: 700).
YOUNG_COLLECTION_THRESHOLD = 10_000


def _pause_collection() -> None:
    # Loading modules allocates a few hundred thousand long-lived objects and no garbage, so the
    # collections it would trigger are wasted work. A command resumes collecting once its modules
    # are loaded (`_modules_loaded`); `main`'s `finally` makes sure of it in any case.
    gc.disable()


def _modules_loaded() -> None:
    """A command calls this after its own imports: collect again, if start-up paused it.

    What start-up loaded is then frozen (`gc.freeze`): modules, classes and functions live as
    long as the process, so no later collection needs to walk them, nor the one at exit
    (together ~0.06 CPU s per crawl, more as a long crawl collects again and again).
    """
    if not gc.isenabled():
        gc.freeze()
        # A crawl keeps every parsed answer and its rows alive until its batch is written, so at
        # the default 700 the young generation is collected every ~50 images and finds little to
        # free: 0.019 CPU ms per image with the single strategy, 0.007 with batch; at 10,000,
        # 0.005 and 0.004, the peak resident set the same (benchmarks/gc_cost.py). The older
        # generations keep their default thresholds.
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        gc.enable()


def _dispatch(argv: list[str], io: Io) -> int:
    try:
        args = _parse(argv, io)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    handler: Callable[[argparse.Namespace, Io], int] = args.handler
    try:
        return handler(args, io)
    except CrawlerError as error:
        code = exit_code_for(error)
        report_error(args, io, error, code)
        return code
    except Exception as exc:  # a bug outside the run's own handling: say so, exit 70
        report_bug(args, io, exc)
        return EXIT_INTERNAL


def report_bug(args: argparse.Namespace, io: Io, exc: Exception) -> None:
    """The traceback and one line saying it is a bug; one JSON record under JSON logs."""
    message = f"internal error (a bug, please report): {exc!r}"
    if getattr(args, "log_format", "text") == "json":
        fields = {"command": args.command, "exit_code": EXIT_INTERNAL}
        log.error("%s", message, exc_info=exc, extra={"fields": fields})
        return
    traceback.print_exception(exc, file=io.stderr)
    print(f"crawler {args.command}: {message}", file=io.stderr)


def _parse(argv: list[str], io: Io) -> argparse.Namespace:
    """The parsed command line. Under `--log-format json` a usage error is a JSON line too."""
    if not _wants_json(argv):
        return build_parser().parse_args(argv)
    captured = StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            message = captured.getvalue().strip().splitlines()[-1]
            configure_logging(io.stderr, fmt="json", level="error")
            log.error("%s", message, extra={"fields": {"exit_code": int(exc.code)}})
        raise


def _wants_json(argv: list[str]) -> bool:
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    return "--log-format=json" in argv or ("--log-format", "json") in pairs


def report_error(args: argparse.Namespace, io: Io, error: CrawlerError, code: int) -> None:
    """One line on stderr: plain text, or a JSON log record under `--log-format json`."""
    if getattr(args, "log_format", "text") == "json":
        log.error("%s", error, extra={"fields": {"command": args.command, "exit_code": code}})
    else:
        print(f"crawler {args.command}: {error}", file=io.stderr)


def exit_code_for(error: CrawlerError) -> int:
    """The exit code of a command that ended with `error`."""
    if isinstance(error, LockHeldError):
        return EXIT_LOCKED
    if isinstance(error, QueryError | RunNotFoundError):  # the database is fine; the ask is not
        return EXIT_USAGE
    if isinstance(error, AuthError | StoreError | EndpointUnreachableError):
        return EXIT_FATAL
    if isinstance(error, InternalError):
        return EXIT_INTERNAL
    if isinstance(error, ApiError):  # e.g. a discovery page that failed for good
        return EXIT_FAILED_TARGETS
    return EXIT_USAGE


# --- crawl -------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Invocation:
    """What one `crawler crawl` got as far as knowing, for its metrics file."""

    started_s: float
    url: str | None = None
    report: CrawlReport | None = None


def run_crawl(args: argparse.Namespace, io: Io) -> int:
    """`crawler crawl`: the crawl, then its summary line, final log record and metrics file."""
    context = configure_logging(io.stderr, fmt=args.log_format, level=args.log_level)
    invocation = _Invocation(started_s=time.time())
    try:
        code = _crawl(args, io, context, invocation)
    except CrawlerError as error:
        code = exit_code_for(error)
        report_error(args, io, error, code)
        if invocation.report is not None:  # the run was created, then failed: still summarise
            _summarise(args, io, invocation.report, code)
    except Exception:
        _write_metrics(args, invocation, EXIT_INTERNAL)
        raise
    _write_metrics(args, invocation, code)
    return code


def _crawl(args: argparse.Namespace, io: Io, context: RunContext, invocation: _Invocation) -> int:
    from crawler.app import CrawlJob, CrawlOptions

    _modules_loaded()
    options = CrawlOptions(
        config=_crawl_config(args),
        targets=args.targets,
        resume=args.resume is not None,
        resume_run_id=args.resume or None,
        skip_invalid=args.skip_invalid,
        dry_run=args.dry_run,
        join=args.join is not None,
        join_run_id=args.join or None,
        accept_missing=args.accept_missing,
        profile=args.profile,
    )
    if options.join and (options.resume or options.targets is not None):
        raise CrawlerError("--join takes the run's own targets; give no --resume or --targets")
    invocation.url = options.config.database.url
    job = CrawlJob(
        options,
        environ=io.environ,
        stdin=io.stdin,
        pacing=io.pacing,
        on_run_id=lambda run_id: setattr(context, "run_id", run_id),
    )
    if options.dry_run:
        print(_describe_plan(asyncio.run(job.plan()), options.config), file=io.stdout)
        return EXIT_OK
    show = io.stderr.isatty() and not args.no_progress and args.log_format == "text"
    try:
        report = asyncio.run(_crawl_with_signals(job, io, context, show_progress_bar=show))
    except CrawlerError:  # the run ended with an error after it was created: summarise it
        invocation.report = job.failed_report
        raise
    invocation.report = report
    code = _exit_code_for_report(report, joined=options.join)
    _summarise(args, io, report, code)
    return code


def _summarise(args: argparse.Namespace, io: Io, report: CrawlReport, code: int) -> None:
    """The summary line on stdout; the run's last log record, carrying every figure."""
    summary = describe_report(report)
    print(summary, file=io.stdout)
    # At a terminal stdout already shows the line; a log file (cron) needs its own copy.
    at_terminal = io.stdout.isatty() and io.stderr.isatty()
    if args.log_format == "json" or not at_terminal:
        log.info("%s", summary, extra={"fields": report_fields(report, code)})


async def _crawl_with_signals(
    job: CrawlJob, io: Io, context: RunContext, *, show_progress_bar: bool
) -> CrawlReport:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop_once, loop, job, signum)
    progress = None
    if show_progress_bar:  # imported only for a terminal: a cron job never draws one
        from crawler.progress import ProgressLine, show_progress

        stats = lambda: job.scheduler.stats if job.scheduler else None  # noqa: E731
        line = ProgressLine(stats, io.stderr)
        context.overlay = line
        progress = asyncio.create_task(show_progress(line))
    try:
        return await job.run()
    finally:
        if progress is not None:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            context.overlay = None


def _stop_once(loop: asyncio.AbstractEventLoop, job: CrawlJob, signum: int) -> None:
    """First signal: stop cleanly. Later ones fall back to the default action (kill)."""
    loop.remove_signal_handler(signum)
    job.stop("signal")


def _crawl_config(args: argparse.Namespace) -> Config:
    from crawler.config import database_url, load_config

    config = load_config(Path(args.config))
    crawl = config.crawl
    overrides: dict[str, Any] = {
        "concurrency": args.concurrency,
        "rate_limit_per_s": args.rate_limit,
        "strategy": args.strategy,
        "deadline_s": args.deadline,
    }
    crawl = dataclasses.replace(crawl, **{k: v for k, v in overrides.items() if v is not None})
    if args.concurrency is not None:
        crawl = dataclasses.replace(
            crawl, per_region_concurrency=min(crawl.per_region_concurrency, args.concurrency)
        )
    database = config.database
    if args.db is not None:
        database = dataclasses.replace(database, url=database_url(args.db))
    return dataclasses.replace(config, crawl=crawl, database=database)


def _exit_code_for_report(report: CrawlReport, *, joined: bool = False) -> int:
    if report.stopped_by == "signal":
        return EXIT_INTERRUPTED
    if joined:  # a joined worker's job is done when nothing is left to claim
        return EXIT_OK
    if report.summary.status == RunStatus.HELD:
        return EXIT_HELD
    if report.summary.status == RunStatus.SUCCEEDED:
        return EXIT_OK
    return EXIT_FAILED_TARGETS


def _describe_plan(plan: Plan, config: Config) -> str:
    lines = [f"dry run: nothing was sent. strategy {config.crawl.strategy}"]
    if plan.resume_run_id is not None:
        lines.append(f"  --resume would finish run {plan.resume_run_id}; its pending targets:")
    for region, count in sorted(plan.targets_by_region.items()):
        lines.append(f"  {region}: {count:,} targets")
    total = sum(plan.targets_by_region.values())
    lines.append(f"  total: {total:,} targets, {plan.requests:,} requests")
    if plan.skipped_lines:
        lines.append(f"  {plan.skipped_lines:,} invalid lines would be skipped")
    lines.append(
        f"  estimate: {plan.estimate_s:,.0f} s at concurrency {config.crawl.concurrency}"
        f" (per region {config.crawl.per_region_concurrency}), rate limit "
        f"{config.crawl.rate_limit_per_s or 'none'}, assuming 50 ms per request"
    )
    return "\n".join(lines)


def _write_metrics(args: argparse.Namespace, invocation: _Invocation, code: int) -> None:
    """The `--metrics-file`, whatever the outcome; a failure to write it is logged, not fatal.

    A dry run is not a run: it leaves the file as the last real run wrote it.
    """
    if not args.metrics_file or args.dry_run:
        return
    from crawler.metrics import format_metrics, write_textfile
    from crawler.store import monitoring_facts, run_changes

    facts = None
    changes = None
    if invocation.url is not None:
        try:
            facts = asyncio.run(monitoring_facts(invocation.url))
            if invocation.report is not None:
                run_id = invocation.report.summary.run_id
                counts = asyncio.run(run_changes(invocation.url, run_id))
                changes = {str(change): count for change, count in counts.items()}
        except StoreError as error:
            log.warning("metrics: %s", error)
    metrics = run_metrics(
        invocation.started_s, time.time(), code, invocation.report, facts, changes=changes
    )
    try:
        write_textfile(Path(args.metrics_file), format_metrics(metrics))
    except OSError as error:
        log.error("cannot write the metrics file %s: %s", args.metrics_file, error.strerror)


def run_metrics(
    started_s: float,
    ended_s: float,
    code: int,
    report: CrawlReport | None,
    facts: MonitoringFacts | None,
    *,
    changes: Mapping[str, int] | None = None,
) -> RunMetrics:
    """The metrics file's figures; `changes` are the run's images per change kind (from
    `crawler.store.run_changes`), None to leave `crawler_last_run_changes` out."""
    from crawler.metrics import RunMetrics

    run = report.summary if report is not None else None
    return RunMetrics(
        start_s=started_s,
        end_s=ended_s,
        exit_code=code,
        version=crawler_version(),
        run_id=run.run_id if run else None,
        outcomes={"fetched": run.fetched, "missing": run.missing, "failed": run.failed}
        if run
        else None,
        requests=run.requests if run else None,
        retries=run.retries if run else None,
        last_success_s=facts.last_success_at.timestamp()
        if facts and facts.last_success_at
        else None,
        images={"present": facts.images_present, "missing": facts.images_missing}
        if facts
        else None,
        changes=changes,
    )


# --- discover ----------------------------------------------------------------------------------


def run_discover(args: argparse.Namespace, io: Io) -> int:
    """`crawler discover`: a targets CSV of every visible image, written whole or not at all."""
    from crawler.app import discover_targets
    from crawler.config import load_config

    _modules_loaded()
    configure_logging(io.stderr, fmt=args.log_format, level=args.log_level)
    config = load_config(Path(args.config))
    regions = [region.strip() for region in args.regions.split(",") if region.strip()]
    sources = [source.strip() for source in args.image_source.split(",") if source.strip()]
    if args.output == "-":
        stats = asyncio.run(
            discover_targets(
                config,
                regions,
                sources,
                io.stdout,
                environ=io.environ,
                pacing=io.pacing,
                profile=args.profile,
            )
        )
    else:
        stats = _discover_to_file(Path(args.output), config, regions, sources, io, args.profile)
    counts = ", ".join(f"{region} {count:,}" for region, count in sorted(stats.by_region.items()))
    line = f"discovered {stats.images:,} images ({counts}) in {stats.requests:,} requests"
    if args.log_format == "json":
        fields = {"images": stats.images, "requests": stats.requests, "by_region": stats.by_region}
        log.info("%s", line, extra={"fields": fields})
    else:
        print(line, file=io.stderr)
    return EXIT_OK


def _discover_to_file(
    path: Path, config: Config, regions: list[str], sources: list[str], io: Io, profile: str | None
) -> DiscoveryStats:
    # Written beside the target and renamed at the end, so a cron job never crawls a list
    # that a failed discovery left half-written.
    from crawler.app import discover_targets

    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            stats = asyncio.run(
                discover_targets(
                    config,
                    regions,
                    sources,
                    out,
                    environ=io.environ,
                    pacing=io.pacing,
                    profile=profile,
                )
            )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return stats


# --- simulate, demo, migrate, runs, sql --------------------------------------------------------


def run_simulate(args: argparse.Namespace, io: Io) -> int:
    """`crawler simulate`: serve until SIGINT/SIGTERM."""
    from crawler.simulator import Simulator, SimulatorConfig, server_tls_context

    _modules_loaded()
    config = SimulatorConfig(
        regions=tuple(args.regions.split(",")),
        images_per_region=args.images_per_region,
        seed=args.seed,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        throttle_rate=args.throttle_rate,
        missing_rate=args.missing_rate,
        rate_limit_per_minute=args.rate_limit_per_minute,
        rate_window_s=args.rate_window_s,
        max_faults_per_image=args.max_faults_per_image,
        access_key=args.access_key or io.environ.get("JDCLOUD_ACCESS_KEY", "SIMULATORAK"),
        secret_key=args.secret_key or io.environ.get("JDCLOUD_SECRET_KEY", "SIMULATORSK"),
        session_token=args.session_token or io.environ.get("JDCLOUD_SESSION_TOKEN") or None,
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CrawlerError("--tls-cert and --tls-key go together")
    tls = server_tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    simulator = Simulator(config)
    if args.write_targets:
        simulator.write_targets(Path(args.write_targets))
    asyncio.run(_simulate(simulator, args.host, args.port, io.stdout, tls))
    return EXIT_OK


async def _simulate(
    simulator: Simulator, host: str, port: int, out: TextIO, tls: ssl.SSLContext | None
) -> None:
    from crawler.simulator import serve_forever

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def announce(url: str) -> None:
        print(f"listening on {url}", file=out, flush=True)

    await serve_forever(simulator, host, port, on_listening=announce, stop=stop, tls=tls)


def run_demo(args: argparse.Namespace, io: Io) -> int:
    """`crawler demo`."""
    from crawler import demo as demo_module

    _modules_loaded()
    configure_logging(io.stderr, fmt="text", level="warning")
    program = program_name(io.argv0, io.environ.get("PATH"))
    return asyncio.run(demo_module.run_demo(Path(args.db), args.images, io.stdout, program))


def program_name(argv0: str, path: str | None) -> str:
    """How the user can run this crawler again: `crawler` if that is on PATH, else its path."""
    on_path = shutil.which("crawler", path=path)
    here = Path(argv0)
    if on_path is not None and (here.name != "crawler" or Path(on_path).samefile(here)):
        return "crawler"
    if here.name == "__main__.py":
        return "python -m crawler"
    if here.name == "crawler" and here.exists():
        return str(here) if here.is_absolute() or "/" in argv0 else f"./{argv0}"
    return "crawler"


def run_migrate(args: argparse.Namespace, io: Io) -> int:
    """`crawler migrate`."""
    from crawler.store.migrate import upgrade

    _modules_loaded()
    url = _db_url(args)
    backup = upgrade(url)
    if backup is not None:
        print(f"backed up the database to {backup}", file=io.stdout)
    print(f"{url}: schema is at the newest migration", file=io.stdout)
    return EXIT_OK


def run_runs(args: argparse.Namespace, io: Io) -> int:
    """`crawler runs`: a table that fits 80 columns, then each run's message in full."""
    from crawler.store import recent_runs

    _modules_loaded()
    runs = asyncio.run(recent_runs(_db_url(args), limit=args.limit))
    print(render_runs(runs, wide=args.wide), file=io.stdout)
    return EXIT_OK


def run_sql(args: argparse.Namespace, io: Io) -> int:
    """`crawler sql`."""
    from crawler.store import query_readonly

    _modules_loaded()
    columns, rows = asyncio.run(query_readonly(_db_url(args), args.query))
    print(render(columns, rows, args.format), file=io.stdout)
    return EXIT_OK


# --- diff, history, accept, prune ------------------------------------------------------------


def run_diff(args: argparse.Namespace, io: Io) -> int:
    """`crawler diff`: exit 0, or with --exit-code 1 when anything changed."""
    from crawler.changes import describe_counts, describe_pair, render_diff
    from crawler.store import read_diff, run_pair

    _modules_loaded()
    url = _db_url(args)
    pair = asyncio.run(run_pair(url, args.from_run, args.to_run))
    diffs = asyncio.run(read_diff(url, pair, region_id=args.region))
    text = render_diff(pair, diffs, args.format)
    if text:
        print(text, file=io.stdout)
    if args.format != "table":  # the table says it itself; keep jsonl and csv pure data
        print(f"{describe_pair(pair)}: {describe_counts(diffs)}", file=io.stderr)
    return EXIT_FAILED_TARGETS if args.exit_code and diffs else EXIT_OK


def run_history(args: argparse.Namespace, io: Io) -> int:
    """`crawler history REGION_ID IMAGE_ID`."""
    from crawler.changes import render_history
    from crawler.store import read_history

    _modules_loaded()
    entries = asyncio.run(read_history(_db_url(args), args.region_id, args.image_id))
    if not entries:
        raise CrawlerError(f"no history for {args.region_id}/{args.image_id} in this database")
    print(render_history(entries, args.format), file=io.stdout)
    return EXIT_OK


def run_accept(args: argparse.Namespace, io: Io) -> int:
    """`crawler accept RUN_ID`: apply the missing marks a held run held back."""
    _modules_loaded()
    summary, marked = asyncio.run(
        _locked(_db_url(args), lambda store: store.accept_run(args.run_id))
    )
    print(
        f"run {summary.run_id} {summary.status}: {marked:,} images marked missing", file=io.stdout
    )
    return EXIT_OK


def run_prune(args: argparse.Namespace, io: Io) -> int:
    """`crawler prune`: delete old runs' targets and results; runs and history stay."""
    _modules_loaded()
    url = _db_url(args)
    keep_runs = args.keep_runs if args.keep_runs is not None else _config(args).retention.keep_runs
    pruned = asyncio.run(_locked(url, lambda store: store.prune(keep_runs, vacuum=args.vacuum)))
    runs = ", ".join(map(str, pruned.run_ids)) or "none"
    print(
        f"kept the newest {keep_runs} runs (0 = all); pruned runs: {runs}"
        f" ({pruned.targets:,} targets, {pruned.results:,} results deleted)"
        + ("; vacuumed" if args.vacuum else ""),
        file=io.stdout,
    )
    return EXIT_OK


async def _locked(url: str, action: Callable[[Store], Awaitable[T]]) -> T:
    # These write: never beside a running crawl (exit 75 if one holds the lock).
    from crawler.store import Store, crawl_lock

    lock = crawl_lock(url)
    with lock if lock is not None else contextlib.nullcontext():
        store = await Store.open(url)
        try:
            return await action(store)
        finally:
            await store.close()


def run_check(args: argparse.Namespace, io: Io) -> int:
    """`crawler check`: 0 when the latest succeeded run finished within --max-age, else 1."""
    from crawler.store import monitoring_facts

    _modules_loaded()
    url = _db_url(args)
    try:
        facts = asyncio.run(monitoring_facts(url))
    except StoreError as error:
        print(f"STALE: {error}", file=io.stdout)
        return EXIT_FAILED_TARGETS
    ok, line = describe_freshness(facts, args.max_age, datetime.now(UTC))
    print(line, file=io.stdout)
    return EXIT_OK if ok else EXIT_FAILED_TARGETS


def run_tables(args: argparse.Namespace, io: Io) -> int:
    """`crawler tables`: every table and view with its row count and what it holds."""
    from crawler.schema_docs import parse_docs, readme_text
    from crawler.store import table_counts

    _modules_loaded()
    counted = asyncio.run(table_counts(_db_url(args)))
    docs = parse_docs(readme_text())
    rows = [
        (name, kind, count, docs.tables[name].summary if name in docs.tables else "")
        for name, kind, count in counted
    ]
    print(render_table(["name", "type", "rows", "description"], rows), file=io.stdout)
    return EXIT_OK


def run_datasette_metadata(args: argparse.Namespace, io: Io) -> int:
    """`crawler datasette-metadata`: a Datasette metadata file (JSON) on stdout."""
    from crawler.datasette import datasette_metadata
    from crawler.schema_docs import parse_docs, readme_text
    from crawler.store import database_name, table_counts

    _modules_loaded()
    url = _db_url(args)
    present = [name for name, _kind, _rows in asyncio.run(table_counts(url))]
    metadata = datasette_metadata(parse_docs(readme_text()), database_name(url), present)
    print(json.dumps(metadata, ensure_ascii=False, indent=2), file=io.stdout)
    return EXIT_OK


def _db_url(args: argparse.Namespace) -> str:
    from crawler.config import database_url

    if args.db is not None:
        return database_url(args.db)
    return _config(args).database.url


def _config(args: argparse.Namespace) -> Config:
    from crawler.config import default_config, load_config

    return load_config(Path(args.config)) if args.config else default_config()


# --- parser ------------------------------------------------------------------------------------

_CONFIG_HELP = "TOML config file (every key is documented in config.example.toml)"
_DB_HELP = (
    "database: an SQLAlchemy URL (sqlite+aiosqlite:///PATH) or a plain SQLite file path; "
    "overrides [database] url"
)
_SIMULATOR_KEYS = """\
The simulator accepts exactly one access key and its secret: --access-key, else the environment
variable JDCLOUD_ACCESS_KEY, else SIMULATORAK; and --secret-key, else JDCLOUD_SECRET_KEY, else
SIMULATORSK (prefer the variable: argv is visible to every user). Point a crawl at it with
[api] endpoint = "http://127.0.0.1:PORT" and the same two variables."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends `(default: X)` to every option that has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


class _VersionAction(argparse.Action):
    """`--version`: reads the installed version only when asked (importlib.metadata scans the
    path's distributions, a few ms that every other command would pay at start-up)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"crawler {crawler_version()}")  # standard output, as argparse's version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The `crawler` command line, every command and flag with its help text."""
    parser = argparse.ArgumentParser(
        prog="crawler",
        description="Async bulk inventory crawler for JD Cloud VM images.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="print the installed version and exit"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of:"
    )
    _add_crawl(commands)
    _add_discover(commands)
    _add_simulate(commands)
    _add_demo(commands)
    _add_db_command(
        commands, "migrate", run_migrate, "bring the database schema to the newest migration"
    )
    runs = _add_db_command(commands, "runs", run_runs, "the last runs with status and counts")
    runs.add_argument("--limit", type=_positive_int, default=10, help="how many runs to list")
    runs.add_argument(
        "--wide", action="store_true",
        help="also show finish time, requests, retries and strategy (wider than 80 columns)",
    )  # fmt: skip
    sql = _add_db_command(commands, "sql", run_sql, "a read-only query over the inventory")
    sql.add_argument("query", help="one SQL statement; writes are refused")
    sql.add_argument("--format", choices=FORMATS, default="table", help="output format")
    check = _add_db_command(
        commands, "check", run_check,
        "exit 0 if the latest succeeded run finished within --max-age, else 1 (for monitors)",
    )  # fmt: skip
    check.add_argument(
        "--max-age", type=_duration, required=True, metavar="DURATION",
        help="how old the latest success may be: seconds, or a number with s, m, h or d "
        "(90m, 26h, 2d)",
    )  # fmt: skip
    _add_db_command(
        commands, "tables", run_tables, "tables and views with row counts and a description each"
    )
    _add_db_command(
        commands, "datasette-metadata", run_datasette_metadata,
        "print a Datasette metadata file (JSON): descriptions, hidden bookkeeping tables and "
        "the cookbook as canned queries",
    )  # fmt: skip
    _add_history_commands(commands)
    return parser


def _add_history_commands(commands: Any) -> None:
    diff = _add_db_command(commands, "diff", run_diff, "what changed between two runs")
    diff.add_argument(
        "--from", dest="from_run", type=_positive_int, metavar="RUN_ID",
        help="the older run (default: the finished run before --to; none: a baseline)",
    )  # fmt: skip
    diff.add_argument(
        "--to", dest="to_run", type=_positive_int, metavar="RUN_ID",
        help="the newer run (default: the latest succeeded or partial run)",
    )  # fmt: skip
    diff.add_argument(
        "--format", choices=DIFF_FORMATS, default="table",
        help="table, or jsonl (one object per image) or csv (one row per field) for programs",
    )  # fmt: skip
    diff.add_argument("--region", metavar="REGION_ID", help="only images of this region")
    diff.add_argument(
        "--exit-code", action="store_true", help="exit 1 when anything changed, like git diff"
    )
    history = _add_db_command(
        commands, "history", run_history, "one image's versions as a timeline"
    )
    history.add_argument("region_id", metavar="REGION_ID", help="the image's region id")
    history.add_argument("image_id", metavar="IMAGE_ID", help="the image id, e.g. img-m5s0ed7ldz")
    history.add_argument(
        "--format", choices=HISTORY_FORMATS, default="table",
        help="table, or jsonl (one object per version)",
    )  # fmt: skip
    accept = _add_db_command(
        commands, "accept", run_accept, "apply the missing marks the guard held back for a run"
    )
    accept.add_argument(
        "run_id", type=_positive_int, metavar="RUN_ID", help="the held run (see crawler runs)"
    )
    prune = _add_db_command(
        commands, "prune", run_prune, "delete old runs' targets and results; runs, history stay"
    )
    prune.add_argument(
        "--keep-runs", type=_non_negative_int, metavar="N",
        help="runs that keep their rows, newest first; 0 = all (default: [retention] keep_runs)",
    )  # fmt: skip
    prune.add_argument("--vacuum", action="store_true", help="then shrink the database file")


def _add_crawl(commands: Any) -> None:
    crawl = commands.add_parser(
        "crawl", help="crawl the targets into the database", formatter_class=_HelpFormatter,
        description="Crawl the targets into the database. Flags override the config file.",
    )  # fmt: skip
    crawl.set_defaults(handler=run_crawl)
    crawl.add_argument("--config", required=True, metavar="PATH", help=_CONFIG_HELP)
    crawl.add_argument(
        "--targets", metavar="PATH",
        help="targets CSV (UTF-8, header naming region_id and image_id), or - for standard "
        "input; overrides [targets] file",
    )  # fmt: skip
    crawl.add_argument("--db", metavar="URL", help=_DB_HELP)
    crawl.add_argument(
        "--resume", nargs="?", const=0, type=_positive_int, metavar="RUN_ID",
        help="finish a run: RUN_ID (running, interrupted or failed), else the latest running or "
        "interrupted one. "
        "With --targets: finish the latest unfinished run if there is one, else start a new run "
        "from those targets (what a nightly job wants)",
    )  # fmt: skip
    crawl.add_argument(
        "--join", nargs="?", const=0, type=_positive_int, metavar="RUN_ID",
        help="PostgreSQL only: crawl a running run (RUN_ID, else the latest with status running) "
        "as one more worker, from any host, with this config's credentials and limits; exits 0 "
        "when nothing is left to claim, 2 when there is no running run",
    )  # fmt: skip
    crawl.add_argument(
        "--concurrency", type=_positive_int, metavar="N",
        help="requests in flight, all regions together; overrides [crawl] concurrency "
        "(default from the config: 64)",
    )  # fmt: skip
    crawl.add_argument(
        "--rate-limit", type=_non_negative_float, metavar="PER_S",
        help="client-side cap on requests per second, 0 = none; overrides [crawl] "
        "rate_limit_per_s (default from the config: 0)",
    )  # fmt: skip
    crawl.add_argument(
        "--strategy", choices=("single", "batch"),
        help="single: describeImage per target; batch: describeImages with up to 100 ids per "
        "call; overrides [crawl] strategy (default from the config: single)",
    )  # fmt: skip
    crawl.add_argument(
        "--deadline", type=_non_negative_float, metavar="SECONDS",
        help="stop cleanly after this many seconds, resumable with --resume, 0 = none; "
        "overrides [crawl] deadline_s (default from the config: 0)",
    )  # fmt: skip
    crawl.add_argument(
        "--skip-invalid", action="store_true",
        help="report invalid targets-file lines and crawl the rest, instead of exiting 2",
    )  # fmt: skip
    crawl.add_argument(
        "--metrics-file", metavar="PATH",
        help="write a Prometheus textfile (node_exporter textfile collector) at the end of "
        "every run, whatever its outcome; written to a temporary file and renamed",
    )  # fmt: skip
    _add_log_flags(crawl, default_level="info")
    crawl.add_argument(
        "--no-progress", action="store_true",
        help="no progress line (it is shown only when stderr is a terminal and logs are text)",
    )  # fmt: skip
    crawl.add_argument(
        "--dry-run", action="store_true",
        help="validate the config, credentials and targets (or --resume's pending targets) "
        "and print a plan; send nothing",
    )  # fmt: skip
    crawl.add_argument(
        "--accept-missing", action="store_true",
        help="apply this run's missing marks even if the mass-deletion guard would hold them "
        "([crawl] max_missing_fraction, missing_guard_min)",
    )  # fmt: skip
    _add_profile(crawl)


def _add_log_flags(command: argparse.ArgumentParser, *, default_level: str) -> None:
    command.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="stderr as text lines, or as JSON lines only (one object per line, errors "
        "included; stdout keeps the one summary line)",
    )  # fmt: skip
    command.add_argument(
        "--log-level", choices=LEVELS, default=default_level,
        help="the least severe log records written (warn means warning)",
    )  # fmt: skip


def _add_discover(commands: Any) -> None:
    discover = commands.add_parser(
        "discover", help="write a targets CSV of every visible image",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    discover.set_defaults(handler=run_discover)
    discover.add_argument(
        "--config", required=True, metavar="PATH", help=_CONFIG_HELP + "; only [api] is used"
    )
    discover.add_argument(
        "--regions", required=True, metavar="R1,R2", help="comma-separated region ids"
    )
    discover.add_argument(
        "--image-source", default=",".join(IMAGE_SOURCES), metavar="S1,S2",
        help=f"comma-separated image sources to list, of {','.join(IMAGE_SOURCES)}",
    )  # fmt: skip
    discover.add_argument(
        "--output", default="-", metavar="PATH",
        help="targets CSV to write (whole or not at all), or - for standard output",
    )  # fmt: skip
    _add_log_flags(discover, default_level="info")
    _add_profile(discover)


def _add_profile(command: Any) -> None:
    command.add_argument(
        "--profile", metavar="NAME",
        help="take the access and secret key from this JD Cloud CLI profile in ~/.jdc/config "
        "(current: the one named in ~/.jdc/current); wins over [api] profile and the key "
        "variables",
    )  # fmt: skip


def _add_simulate(commands: Any) -> None:
    sim = commands.add_parser(
        "simulate", help="run the local JD Cloud API simulator until stopped",
        formatter_class=_HelpFormatter, epilog=_SIMULATOR_KEYS,
        description="Serve a faithful stand-in for the JD Cloud VM API (describeImage, "
        "describeImages) on loopback, signatures checked and faults injected, until SIGINT or "
        "SIGTERM. The first line printed is `listening on http://HOST:PORT`.",
    )  # fmt: skip
    sim.set_defaults(handler=run_simulate)
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=_port, default=0, help="port to listen on, 0 = any free port")
    sim.add_argument(
        "--regions", default="cn-north-1,cn-east-1,cn-east-2,cn-south-1", metavar="R1,R2",
        help="comma-separated regions that exist; any other is answered 400",
    )  # fmt: skip
    sim.add_argument(
        "--images-per-region", type=_non_negative_int, default=250, metavar="N",
        help="existing images per region",
    )  # fmt: skip
    sim.add_argument(
        "--seed", type=_integer, default=0, metavar="S",
        help="seeds the inventory, the faults and the request ids",
    )  # fmt: skip
    sim.add_argument(
        "--latency-ms", type=_non_negative_float, default=0.0, metavar="MS",
        help="added to every answer",
    )  # fmt: skip
    sim.add_argument(
        "--fail-rate", type=_share, default=0.0, metavar="F",
        help="share of requests answered 500 or 503 (half each), 0 to 1",
    )  # fmt: skip
    sim.add_argument(
        "--throttle-rate", type=_share, default=0.0, metavar="F",
        help="share of requests answered 429 RATE_LIMIT_EXCEEDED with Retry-After, 0 to 1",
    )  # fmt: skip
    sim.add_argument(
        "--missing-rate", type=_share, default=0.0, metavar="F",
        help="share of the written targets that do not exist (answered 404 NOT_FOUND)",
    )  # fmt: skip
    sim.add_argument(
        "--max-faults-per-image", type=_non_negative_int, metavar="N",
        help="at most this many injected faults in a row for one image (default: no cap)",
    )  # fmt: skip
    sim.add_argument(
        "--rate-limit-per-minute", type=_non_negative_int, default=0, metavar="N",
        help="requests per access key per window before 429s, 0 = no limit",
    )  # fmt: skip
    sim.add_argument(
        "--rate-window-s", type=_non_negative_float, default=60.0, metavar="SECONDS",
        help="the fixed window of --rate-limit-per-minute",
    )  # fmt: skip
    sim.add_argument(
        "--access-key", metavar="AK",
        help="the one access key accepted (default: $JDCLOUD_ACCESS_KEY, else SIMULATORAK)",
    )  # fmt: skip
    sim.add_argument(
        "--secret-key", metavar="SK",
        help="its secret (default: $JDCLOUD_SECRET_KEY, else SIMULATORSK); prefer the "
        "variable, since argv is visible to all users",
    )  # fmt: skip
    sim.add_argument(
        "--write-targets", metavar="PATH",
        help="write a targets CSV of the simulated images (and the missing ids), then serve",
    )  # fmt: skip
    sim.add_argument(
        "--tls-cert", metavar="PEM",
        help="serve HTTPS with this certificate chain (with --tls-key)",
    )  # fmt: skip
    sim.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    sim.add_argument(
        "--session-token", metavar="TOKEN",
        help="require every request to carry and sign this x-jdcloud-security-token "
        "(default: $JDCLOUD_SESSION_TOKEN, else none); prefer the variable, since argv is "
        "visible to all users",
    )  # fmt: skip


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="crawl a built-in simulator into demo.db", formatter_class=_HelpFormatter,
        description="Start the simulator in-process on a free loopback port, crawl it, print a "
        "summary and two example queries with their results. No account or network needed.",
    )  # fmt: skip
    demo.set_defaults(handler=run_demo)
    demo.add_argument("--db", default="demo.db", metavar="PATH", help="SQLite file to crawl into")
    demo.add_argument(
        "--images", type=_positive_int, default=3000, metavar="N",
        help="images the simulator holds, over four regions",
    )  # fmt: skip


def _add_db_command(commands: Any, name: str, handler: Callable[..., int], help_text: str) -> Any:
    command = commands.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    command.set_defaults(handler=handler)
    command.add_argument("--db", metavar="URL", help=_DB_HELP)
    command.add_argument(
        "--config", metavar="PATH",
        help="take the database URL from this config file's [database] url (without --db and "
        "--config: inventory.db)",
    )  # fmt: skip
    return command


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (1 or more)")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _port(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
