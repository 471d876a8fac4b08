"""The `crawler` command: parses flags, runs a command, maps errors to exit codes.

This is the only module that knows exit codes (CONTRACT.md §2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from crawler import demo as demo_module
from crawler.app import CrawlJob, CrawlOptions, CrawlReport, Plan, discover_targets
from crawler.changes import (
    DIFF_FORMATS,
    HISTORY_FORMATS,
    describe_counts,
    describe_pair,
    render_diff,
    render_history,
)
from crawler.config import Config, database_url, default_config, load_config
from crawler.discovery import IMAGE_SOURCES, DiscoveryStats
from crawler.errors import (
    ApiError,
    AuthError,
    CrawlerError,
    EndpointUnreachableError,
    InternalError,
    LockHeldError,
    StoreError,
)
from crawler.logs import configure_logging
from crawler.models import RunStatus
from crawler.progress import show_progress
from crawler.render import FORMATS, describe_report, render, render_table
from crawler.scheduler import Pacing
from crawler.simulator import Simulator, SimulatorConfig, serve_forever
from crawler.store import (
    RunSummary,
    Store,
    crawl_lock,
    query_readonly,
    read_diff,
    read_history,
    recent_runs,
    run_pair,
)
from crawler.store.migrate import upgrade

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


def main(argv: Sequence[str] | None = None, io: Io | None = None) -> int:
    """Run one command; returns the process exit code."""
    io = io or Io()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    handler: Callable[[argparse.Namespace, Io], int] = args.handler
    try:
        return handler(args, io)
    except CrawlerError as error:
        print(f"crawler {args.command}: {error}", file=io.stderr)
        return exit_code_for(error)
    except Exception as exc:  # a bug outside the run's own handling: say so, exit 70
        traceback.print_exception(exc, file=io.stderr)
        print(
            f"crawler {args.command}: internal error (a bug, please report): {exc!r}",
            file=io.stderr,
        )
        return EXIT_INTERNAL


def exit_code_for(error: CrawlerError) -> int:
    """The exit code of a command that ended with `error`."""
    if isinstance(error, LockHeldError):
        return EXIT_LOCKED
    if isinstance(error, AuthError | StoreError | EndpointUnreachableError):
        return EXIT_FATAL
    if isinstance(error, InternalError):
        return EXIT_INTERNAL
    if isinstance(error, ApiError):  # e.g. a discovery page that failed for good
        return EXIT_FAILED_TARGETS
    return EXIT_USAGE


# --- crawl -------------------------------------------------------------------------------------


def run_crawl(args: argparse.Namespace, io: Io) -> int:
    """`crawler crawl`."""
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
    )
    if options.join and (options.resume or options.targets is not None):
        print(
            "crawler crawl: --join takes the run's own targets; no --resume or --targets",
            file=io.stderr,
        )
        return EXIT_USAGE
    context = configure_logging(io.stderr, fmt=args.log_format, level=args.log_level)
    job = CrawlJob(
        options,
        environ=io.environ,
        stdin=io.stdin,
        pacing=io.pacing,
        on_run_id=lambda run_id: setattr(context, "run_id", run_id),
    )
    if options.dry_run:
        print(_describe_plan(job.plan(), options.config), file=io.stdout)
        return EXIT_OK
    show = io.stderr.isatty() and not args.no_progress
    try:
        report = asyncio.run(_crawl_with_signals(job, io, show_progress_bar=show))
    except AuthError as error:
        print(f"crawler crawl: the credentials were rejected: {error}", file=io.stderr)
        return EXIT_FATAL
    summary = describe_report(report)
    log.info("%s", summary)  # the log (cron's record) gets the summary as well as stdout
    print(summary, file=io.stdout)
    return _exit_code_for_report(report, joined=options.join)


async def _crawl_with_signals(job: CrawlJob, io: Io, *, show_progress_bar: bool) -> CrawlReport:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop_once, loop, job, signum)
    progress = None
    if show_progress_bar:
        stats = lambda: job.scheduler.stats if job.scheduler else None  # noqa: E731
        progress = asyncio.create_task(show_progress(stats, io.stderr))
    try:
        return await job.run()
    finally:
        if progress is not None:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)


def _stop_once(loop: asyncio.AbstractEventLoop, job: CrawlJob, signum: int) -> None:
    """First signal: stop cleanly. Later ones fall back to the default action (kill)."""
    loop.remove_signal_handler(signum)
    job.stop("signal")


def _crawl_config(args: argparse.Namespace) -> Config:
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


# --- discover ----------------------------------------------------------------------------------


def run_discover(args: argparse.Namespace, io: Io) -> int:
    """`crawler discover`: a targets CSV of every visible image, written whole or not at all."""
    configure_logging(io.stderr, fmt="text", level="warning")
    config = load_config(Path(args.config))
    regions = [region.strip() for region in args.regions.split(",") if region.strip()]
    sources = [source.strip() for source in args.image_source.split(",") if source.strip()]
    if args.output == "-":
        stats = asyncio.run(
            discover_targets(
                config, regions, sources, io.stdout, environ=io.environ, pacing=io.pacing
            )
        )
    else:
        stats = _discover_to_file(Path(args.output), config, regions, sources, io)
    counts = ", ".join(f"{region} {count:,}" for region, count in sorted(stats.by_region.items()))
    print(f"discovered {stats.images:,} images ({counts}) in {stats.requests:,} requests",
          file=io.stderr)  # fmt: skip
    return EXIT_OK


def _discover_to_file(
    path: Path, config: Config, regions: list[str], sources: list[str], io: Io
) -> DiscoveryStats:
    # Written beside the target and renamed at the end, so a cron job never crawls a list
    # that a failed discovery left half-written.
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            stats = asyncio.run(
                discover_targets(
                    config, regions, sources, out, environ=io.environ, pacing=io.pacing
                )
            )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return stats


# --- simulate, demo, migrate, runs, sql --------------------------------------------------------


def run_simulate(args: argparse.Namespace, io: Io) -> int:
    """`crawler simulate`: serve until SIGINT/SIGTERM."""
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
    )
    simulator = Simulator(config)
    if args.write_targets:
        simulator.write_targets(Path(args.write_targets))
    asyncio.run(_simulate(simulator, args.host, args.port, io.stdout))
    return EXIT_OK


async def _simulate(simulator: Simulator, host: str, port: int, out: TextIO) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def announce(url: str) -> None:
        print(f"listening on {url}", file=out, flush=True)

    await serve_forever(simulator, host, port, on_listening=announce, stop=stop)


def run_demo(args: argparse.Namespace, io: Io) -> int:
    """`crawler demo`."""
    configure_logging(io.stderr, fmt="text", level="warning")
    return asyncio.run(demo_module.run_demo(Path(args.db), args.images, io.stdout))


def run_migrate(args: argparse.Namespace, io: Io) -> int:
    """`crawler migrate`."""
    url = _db_url(args)
    backup = upgrade(url)
    if backup is not None:
        print(f"backed up the database to {backup}", file=io.stdout)
    print(f"{url}: schema is at the newest migration", file=io.stdout)
    return EXIT_OK


def run_runs(args: argparse.Namespace, io: Io) -> int:
    """`crawler runs`."""
    runs = asyncio.run(recent_runs(_db_url(args), limit=args.limit))
    print(render_table(*_runs_table(runs)), file=io.stdout)
    return EXIT_OK


def run_sql(args: argparse.Namespace, io: Io) -> int:
    """`crawler sql`."""
    columns, rows = asyncio.run(query_readonly(_db_url(args), args.query))
    print(render(columns, rows, args.format), file=io.stdout)
    return EXIT_OK


# --- diff, history, accept, prune ------------------------------------------------------------


def run_diff(args: argparse.Namespace, io: Io) -> int:
    """`crawler diff`: exit 0, or with --exit-code 1 when anything changed."""
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
    entries = asyncio.run(read_history(_db_url(args), args.region_id, args.image_id))
    if not entries:
        raise CrawlerError(f"no history for {args.region_id}/{args.image_id} in this database")
    print(render_history(entries, args.format), file=io.stdout)
    return EXIT_OK


def run_accept(args: argparse.Namespace, io: Io) -> int:
    """`crawler accept RUN_ID`: apply the missing marks a held run held back."""
    summary, marked = asyncio.run(
        _locked(_db_url(args), lambda store: store.accept_run(args.run_id))
    )
    print(
        f"run {summary.run_id} {summary.status}: {marked:,} images marked missing", file=io.stdout
    )
    return EXIT_OK


def run_prune(args: argparse.Namespace, io: Io) -> int:
    """`crawler prune`: delete old runs' targets and results; runs and history stay."""
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
    lock = crawl_lock(url)
    with lock if lock is not None else contextlib.nullcontext():
        store = await Store.open(url)
        try:
            return await action(store)
        finally:
            await store.close()


def _runs_table(runs: Sequence[RunSummary]) -> tuple[list[str], list[tuple[Any, ...]]]:
    columns = ["run_id", "status", "started_at", "finished_at", "targets", "fetched", "missing"]
    columns += ["failed", "requests", "retries", "message"]
    rows = [
        (r.run_id, r.status, r.started_at, r.finished_at, r.targets_total, r.fetched, r.missing,
         r.failed, r.requests, r.retries, r.message or "")
        for r in runs
    ]  # fmt: skip
    return columns, rows


def _db_url(args: argparse.Namespace) -> str:
    if args.db is not None:
        return database_url(args.db)
    return _config(args).database.url


def _config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config)) if args.config else default_config()


# --- parser ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crawler", description="Async bulk inventory crawler for JD Cloud VM images."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_crawl(commands)
    _add_discover(commands)
    _add_simulate(commands)
    _add_demo(commands)
    _add_db_command(
        commands, "migrate", run_migrate, "bring the database schema to the newest migration"
    )
    runs = _add_db_command(commands, "runs", run_runs, "the last runs with status and counts")
    runs.add_argument("--limit", type=_positive_int, default=10, help="how many runs (default 10)")
    sql = _add_db_command(commands, "sql", run_sql, "a read-only query over the inventory")
    sql.add_argument("query", help="one SQL statement; writes are refused")
    sql.add_argument("--format", choices=FORMATS, default="table")
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
    diff.add_argument("--format", choices=DIFF_FORMATS, default="table")
    diff.add_argument("--region", help="only this region id")
    diff.add_argument(
        "--exit-code", action="store_true", help="exit 1 when anything changed, like git diff"
    )
    history = _add_db_command(
        commands, "history", run_history, "one image's versions as a timeline"
    )
    history.add_argument("region_id")
    history.add_argument("image_id")
    history.add_argument("--format", choices=HISTORY_FORMATS, default="table")
    accept = _add_db_command(
        commands, "accept", run_accept, "apply the missing marks the guard held back for a run"
    )
    accept.add_argument("run_id", type=_positive_int, metavar="RUN_ID")
    prune = _add_db_command(
        commands, "prune", run_prune, "delete old runs' targets and results; runs, history stay"
    )
    prune.add_argument(
        "--keep-runs", type=_non_negative_int, metavar="N",
        help="runs that keep their rows, newest first; 0 = all (default: [retention] keep_runs)",
    )  # fmt: skip
    prune.add_argument("--vacuum", action="store_true", help="then shrink the database file")


def _add_crawl(commands: Any) -> None:
    crawl = commands.add_parser("crawl", help="crawl the targets into the database")
    crawl.set_defaults(handler=run_crawl)
    crawl.add_argument("--config", required=True, help="TOML config file (config.example.toml)")
    crawl.add_argument("--targets", help="targets CSV, or - for standard input")
    crawl.add_argument("--db", help="SQLAlchemy URL or SQLite file path")
    crawl.add_argument(
        "--resume", nargs="?", const=0, type=_positive_int, metavar="RUN_ID",
        help="finish an unfinished run (default: the latest one)",
    )  # fmt: skip
    crawl.add_argument(
        "--join", nargs="?", const=0, type=_positive_int, metavar="RUN_ID",
        help="PostgreSQL: crawl a running run (default: the latest) as one more worker, from"
        " any host; exits 0 when nothing is left to claim",
    )  # fmt: skip
    crawl.add_argument("--concurrency", type=_positive_int)
    crawl.add_argument("--rate-limit", type=_non_negative_float, metavar="PER_S")
    crawl.add_argument("--strategy", choices=("single", "batch"))
    crawl.add_argument("--deadline", type=_non_negative_float, metavar="SECONDS")
    crawl.add_argument("--skip-invalid", action="store_true", help="report and skip bad lines")
    crawl.add_argument("--log-format", choices=("text", "json"), default="text")
    crawl.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    crawl.add_argument("--no-progress", action="store_true")
    crawl.add_argument("--dry-run", action="store_true", help="validate and plan; send nothing")
    crawl.add_argument(
        "--accept-missing", action="store_true",
        help="apply this run's missing marks even if the mass-deletion guard would hold them",
    )  # fmt: skip


def _add_discover(commands: Any) -> None:
    discover = commands.add_parser("discover", help="write a targets CSV of every visible image")
    discover.set_defaults(handler=run_discover)
    discover.add_argument("--config", required=True, help="TOML config file (for the API)")
    discover.add_argument("--regions", required=True, help="comma-separated region ids")
    discover.add_argument(
        "--image-source", default=",".join(IMAGE_SOURCES),
        help=f"comma-separated, of {','.join(IMAGE_SOURCES)} (default: all)",
    )  # fmt: skip
    discover.add_argument("--output", default="-", help="targets CSV to write, or - (default)")


def _add_simulate(commands: Any) -> None:
    sim = commands.add_parser("simulate", help="run the local JD Cloud API simulator")
    sim.set_defaults(handler=run_simulate)
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0)
    sim.add_argument("--regions", default="cn-north-1,cn-east-1,cn-east-2,cn-south-1")
    sim.add_argument("--images-per-region", type=_non_negative_int, default=250)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--latency-ms", type=_non_negative_float, default=0.0)
    sim.add_argument("--fail-rate", type=_share, default=0.0, help="share answered 500/503")
    sim.add_argument("--throttle-rate", type=_share, default=0.0, help="share answered 429")
    sim.add_argument("--missing-rate", type=_share, default=0.0, help="share of targets missing")
    sim.add_argument("--max-faults-per-image", type=_non_negative_int)
    sim.add_argument("--rate-limit-per-minute", type=_non_negative_int, default=0)
    sim.add_argument("--rate-window-s", type=_non_negative_float, default=60.0)
    sim.add_argument("--access-key", help="accepted access key (secret from JDCLOUD_SECRET_KEY)")
    sim.add_argument(
        "--secret-key",
        help="accepted secret key; prefer JDCLOUD_SECRET_KEY, since argv is visible to all users",
    )
    sim.add_argument("--write-targets", metavar="PATH", help="write the targets CSV and serve")


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser("demo", help="crawl a built-in simulator into demo.db")
    demo.set_defaults(handler=run_demo)
    demo.add_argument("--db", default="demo.db")
    demo.add_argument("--images", type=_positive_int, default=3000)


def _add_db_command(commands: Any, name: str, handler: Callable[..., int], help_text: str) -> Any:
    command = commands.add_parser(name, help=help_text)
    command.set_defaults(handler=handler)
    command.add_argument("--db", help="SQLAlchemy URL or SQLite file path")
    command.add_argument("--config", help="take the database URL from this config file")
    return command


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value
