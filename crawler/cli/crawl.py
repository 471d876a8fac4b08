"""`crawler crawl`: the run under SIGINT/SIGTERM, its summary line, last log record and
metrics file."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawler.cli.exits import (
    EXIT_FAILED_TARGETS,
    EXIT_HELD,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    exit_code_for,
    report_error,
)
from crawler.cli.startup import modules_loaded
from crawler.errors import CrawlerError, StoreError
from crawler.logs import RunContext, configure_logging
from crawler.models import RunStatus
from crawler.render import describe_report, report_fields
from crawler.version import crawler_version

if TYPE_CHECKING:
    from crawler.app import CrawlJob, CrawlReport, Plan
    from crawler.cli.process import Io
    from crawler.config import Config
    from crawler.metrics import RunMetrics
    from crawler.store import MonitoringFacts

log = logging.getLogger("crawler.cli")


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

    modules_loaded()
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
