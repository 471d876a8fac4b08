"""The `crawler` command: parses flags, runs a command, maps errors to exit codes.

This is the only module that knows exit codes (CONTRACT.md §2).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import ssl
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from crawler import demo as demo_module
from crawler.app import CrawlJob, CrawlOptions, CrawlReport, Plan, discover_targets
from crawler.config import Config, database_url, default_config, load_config
from crawler.discovery import IMAGE_SOURCES, DiscoveryStats
from crawler.errors import (
    ApiError,
    AuthError,
    CertificateError,
    CrawlerError,
    EndpointUnreachableError,
    InternalError,
    LockHeldError,
    StoreError,
)
from crawler.logs import configure_logging
from crawler.migrate import upgrade
from crawler.models import RunStatus
from crawler.progress import show_progress
from crawler.render import FORMATS, describe_report, render, render_table
from crawler.scheduler import Pacing
from crawler.simulator import Simulator, SimulatorConfig, serve_forever, server_tls_context
from crawler.store import RunSummary, query_readonly, recent_runs

log = logging.getLogger("crawler.cli")

EXIT_OK = 0
EXIT_FAILED_TARGETS = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
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
        profile=args.profile,
    )
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
    except CertificateError as error:
        print(f"crawler crawl: the server could not be trusted: {error}", file=io.stderr)
        return EXIT_FATAL
    except AuthError as error:
        print(f"crawler crawl: the credentials were rejected: {error}", file=io.stderr)
        return EXIT_FATAL
    summary = describe_report(report)
    log.info("%s", summary)  # the log (cron's record) gets the summary as well as stdout
    print(summary, file=io.stdout)
    return _exit_code_for_report(report)


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


def _exit_code_for_report(report: CrawlReport) -> int:
    if report.stopped_by == "signal":
        return EXIT_INTERRUPTED
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
    print(f"discovered {stats.images:,} images ({counts}) in {stats.requests:,} requests",
          file=io.stderr)  # fmt: skip
    return EXIT_OK


def _discover_to_file(
    path: Path, config: Config, regions: list[str], sources: list[str], io: Io, profile: str | None
) -> DiscoveryStats:
    # Written beside the target and renamed at the end, so a cron job never crawls a list
    # that a failed discovery left half-written.
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def announce(url: str) -> None:
        print(f"listening on {url}", file=out, flush=True)

    await serve_forever(simulator, host, port, on_listening=announce, stop=stop, tls=tls)


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
    config = load_config(Path(args.config)) if args.config else default_config()
    return config.database.url


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
    return parser


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
    crawl.add_argument("--concurrency", type=_positive_int)
    crawl.add_argument("--rate-limit", type=_non_negative_float, metavar="PER_S")
    crawl.add_argument("--strategy", choices=("single", "batch"))
    crawl.add_argument("--deadline", type=_non_negative_float, metavar="SECONDS")
    crawl.add_argument("--skip-invalid", action="store_true", help="report and skip bad lines")
    crawl.add_argument("--log-format", choices=("text", "json"), default="text")
    crawl.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    crawl.add_argument("--no-progress", action="store_true")
    crawl.add_argument("--dry-run", action="store_true", help="validate and plan; send nothing")
    _add_profile(crawl)


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
    _add_profile(discover)


def _add_profile(command: Any) -> None:
    command.add_argument(
        "--profile", metavar="NAME",
        help="take the keys from this JD Cloud CLI profile in ~/.jdc/config (current: the one "
        "in ~/.jdc/current); overrides [api] profile and the key variables",
    )  # fmt: skip


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
    sim.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    sim.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    sim.add_argument(
        "--session-token",
        help="require and check this x-jdcloud-security-token on every request; prefer "
        "JDCLOUD_SESSION_TOKEN, since argv is visible to all users",
    )


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
