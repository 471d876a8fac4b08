"""Wires one crawl together and closes everything in reverse order.

Order matters: credentials and targets are checked before anything is locked or sent, the lock is
taken before the database is touched, and the run's row is finished even when the run is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import math
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo

from crawler.client import ApiClient, open_session
from crawler.config import Config
from crawler.credentials import Access, resolve_access
from crawler.discovery import IMAGE_SOURCES, Discovery, DiscoveryStats
from crawler.errors import (
    AuthError,
    CrawlerError,
    EndpointUnreachableError,
    InternalError,
    RunNotFoundError,
    StoreError,
)
from crawler.models import JsonObject, RunStatus, Target, TargetResult
from crawler.network import Proxy, choose_proxy, route_tls
from crawler.normalise import NORMALISER_VERSION, prepare_image, scrub_text
from crawler.retry import Retrier, RetryPolicy
from crawler.scheduler import (
    BATCH_MAX_IDS,
    CrawlStats,
    Normaliser,
    Pacing,
    Scheduler,
    SchedulerConfig,
)
from crawler.signer import Signer
from crawler.store import MissingGuard, RunSummary, Store, crawl_lock, unfinished_run_pending
from crawler.targets import TargetsReader, decoded_lines, is_valid_region_id

if TYPE_CHECKING:  # imported by `_crawl_shared`: a crawl on SQLite never needs them
    from crawler.claims import Claims

log = logging.getLogger(__name__)

# `--resume RUN_ID` also takes a run an error stopped (e.g. a database that refused a write),
# once the cause is fixed; plain `--resume` picks only running or interrupted runs.
RESUMABLE_BY_ID = (RunStatus.RUNNING, RunStatus.INTERRUPTED, RunStatus.FAILED)

# The dry run's time estimate needs a latency; this is a typical in-country API round trip.
ASSUMED_LATENCY_S = 0.05
# Databases on which several worker processes can share a run (CONTRACT.md §9).
SHARED_URL_PREFIX = "postgresql+psycopg://"
# A worker holds claims for this many times its concurrency: the next targets are queued before
# the slots free up, so workers never wait for a claim's round trip. A claim is made once half is
# free. With 2 that was just as the queue ran dry; with 4, 6-15 of 64 workers still sat parked on
# average (sampled every 10 ms), waiting for a claim delayed by the busy event loop; with 8, 1-5.
# Paired crawls at 20 ms / 64 in flight: 4 ahead 1,100 / 1,482 requests/s, 8 ahead 1,329 / 1,563.
# Batches (100 ids per slot) keep 2: enough queued, and less held by one worker.
CLAIM_AHEAD = 8
CLAIM_AHEAD_BATCHES = 2


@dataclass(frozen=True, slots=True)
class CrawlOptions:
    """One `crawler crawl` invocation after flags and config are merged."""

    config: Config
    targets: str | None = None  # a path, or "-" for standard input
    resume: bool = False
    resume_run_id: int | None = None
    skip_invalid: bool = False
    dry_run: bool = False
    join: bool = False  # `--join`: one more worker on a running run (PostgreSQL)
    join_run_id: int | None = None
    accept_missing: bool = False  # apply the missing marks even if the guard would hold them
    profile: str | None = None  # --profile NAME


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """Everything needed to reach the API, checked before anything is locked or sent."""

    access: Access
    tls: ssl.SSLContext | None  # None: the system's trusted certificates (still verified)
    proxy: Proxy | None


def api_route(
    config: Config, environ: Mapping[str, str], *, profile: str | None = None
) -> ApiRoute:
    """The credentials, endpoint, trusted certificates and proxy of a run.

    Raises:
        ConfigError: a credential, the profile, the CA bundle or the proxy is unusable.
    """
    access = resolve_access(config, environ, profile=profile)
    tls = route_tls(config.api, environ, access.endpoint)
    proxy = choose_proxy(config.api, environ, access.endpoint)
    return ApiRoute(access, tls, proxy)


@dataclass(frozen=True, slots=True)
class CrawlReport:
    """What a finished (or stopped) run did."""

    summary: RunSummary  # the whole run, over every session (what `crawler runs` shows)
    stats: CrawlStats  # this session only
    duration_s: float  # this session only
    stopped_by: str | None  # "signal", "deadline" or None
    resumed: bool = False  # this session finished an earlier, unfinished run


@dataclass(frozen=True, slots=True)
class Plan:
    """What a dry run found: targets per region and an estimate at the configured limits."""

    targets_by_region: dict[str, int]
    requests: int
    estimate_s: float
    skipped_lines: int
    resume_run_id: int | None = None  # the run `--resume` would finish; its pending targets


class CrawlJob:
    """One run of the crawler, stoppable from a signal handler."""

    def __init__(
        self,
        options: CrawlOptions,
        *,
        environ: Mapping[str, str],
        stdin: TextIO = sys.stdin,
        pacing: Pacing | None = None,
        on_run_id: Callable[[int], None] | None = None,
    ) -> None:
        self.options = options
        self.run_id: int | None = None
        self.scheduler: Scheduler | None = None
        self.stopped_by: str | None = None
        self.resumed = False
        # Set when the run ends with an error after it was created (credentials rejected, the
        # database refused a write, a bug), so the CLI can still print the run's summary line.
        self.failed_report: CrawlReport | None = None
        self._environ = environ
        self._stdin = stdin
        self._pacing = pacing or Pacing()
        self._on_run_id = on_run_id

    def stop(self, reason: str) -> None:
        """Stop the run cleanly: what was fetched is committed, the run stays resumable."""
        if self.stopped_by is None:
            self.stopped_by = reason
            log.warning("stopping the run (%s); what was fetched is kept", reason)
        if self.scheduler is not None:
            self.scheduler.stop()

    async def plan(self) -> Plan:
        """Validate credentials and targets and estimate the run, sending nothing.

        With `--resume`, the plan is the unfinished run's pending targets, read over a read-only
        connection; with `--resume --targets` and nothing to resume, the targets file's.
        """
        config = self.options.config
        api_route(config, self._environ, profile=self.options.profile)
        if self.options.resume:
            found = await unfinished_run_pending(config.database.url, self.options.resume_run_id)
            if found is not None:
                run_id, pending = found
                requests = _requests_needed(pending, config.crawl.strategy)
                total = sum(requests.values())
                return Plan(pending, total, _estimate_s(requests, config), 0, run_id)
            self._check_new_run_allowed(self.options.resume_run_id)
        return self._plan_targets()

    def _plan_targets(self) -> Plan:
        config = self.options.config
        counts: dict[str, int] = {}
        seen: set[Target] = set()
        with self._targets_reader() as reader:
            for target in reader:
                if target not in seen:
                    seen.add(target)
                    counts[target.region_id] = counts.get(target.region_id, 0) + 1
        requests = _requests_needed(counts, config.crawl.strategy)
        return Plan(
            counts, sum(requests.values()), _estimate_s(requests, config), reader.invalid_count
        )

    async def run(self) -> CrawlReport:
        """Crawl and return the report; raises CrawlerError subclasses for the CLI to map."""
        config = self.options.config
        route = api_route(config, self._environ, profile=self.options.profile)
        started = time.monotonic()
        if self.options.join and not config.database.url.startswith(SHARED_URL_PREFIX):
            raise CrawlerError("--join needs a PostgreSQL database (postgresql+psycopg://...)")
        # A joining worker is not a coordinator: it takes no lock and creates no run.
        lock = None if self.options.join else crawl_lock(config.database.url)
        async with AsyncExitStack() as stack:
            if lock is not None:
                stack.enter_context(lock)
            store = await Store.open(config.database.url)
            stack.push_async_callback(store.close)
            self.run_id = await (
                self._join_run(store) if self.options.join else self._start_run(store)
            )
            if self._on_run_id is not None:
                self._on_run_id(self.run_id)
            if self.options.join:
                log.info("joined run %d as one more worker", self.run_id)
            try:
                if store.shared:
                    stats, summary = await self._crawl_shared(store, route)
                else:
                    stats = await self._crawl(store, route)
            except CrawlerError:
                await self._keep_failed_report(store, time.monotonic() - started)
                raise
            if not store.shared:
                summary = await self._finish(store, stats)
            await self._prune(store)
        duration_s = time.monotonic() - started
        return CrawlReport(summary, stats, duration_s, self.stopped_by, self.resumed)

    async def _keep_failed_report(self, store: Store, duration_s: float) -> None:
        """The failed run's summary for the CLI, if the database can still be read."""
        assert self.run_id is not None
        try:
            summary = await store.run_summary(self.run_id)
        except StoreError as exc:
            log.debug("no summary of the failed run %d: %s", self.run_id, exc)
            return
        stats = self.scheduler.stats if self.scheduler else CrawlStats()
        self.failed_report = CrawlReport(summary, stats, duration_s, None, self.resumed)

    async def _join_run(self, store: Store) -> int:
        run_id = self.options.join_run_id or await store.latest_running_run()
        if run_id is None:
            raise CrawlerError("--join: this database has no running run to join")
        status = await store.run_status(run_id)
        if status is not RunStatus.RUNNING:
            state = "no such run" if status is None else f"its status is {status}"
            raise CrawlerError(f"--join: run {run_id} is not running ({state})")
        return run_id

    async def _crawl_shared(self, store: Store, route: ApiRoute) -> tuple[CrawlStats, RunSummary]:
        """Crawl the run as one of possibly many workers: targets by claims, one rate budget."""
        from crawler.budget import SharedHold, SharedRate
        from crawler.claims import ClaimFeed, Claims, keep_renewed, release_claims

        config = self.options.config
        run_id = self.run_id
        assert run_id is not None
        batch_size = BATCH_MAX_IDS if config.crawl.strategy == "batch" else 1
        claims = Claims(run_id, lease_s=config.crawl.lease_s)
        ahead = (CLAIM_AHEAD if batch_size == 1 else CLAIM_AHEAD_BATCHES) * batch_size
        per_region = min(config.crawl.per_region_concurrency, config.crawl.concurrency)
        feed = ClaimFeed(
            store.engine, claims, capacity=ahead * config.crawl.concurrency,
            batch_size=batch_size, region_capacity=ahead * per_region,
        )  # fmt: skip
        rate = None
        if config.crawl.rate_limit_per_s > 0:
            rate = SharedRate(
                store.engine, route.access.credentials.access_key, config.crawl.rate_limit_per_s,
                clock=self._pacing.clock, sleep=self._pacing.sleep,
            )  # fmt: skip
        access_key = route.access.credentials.access_key
        hold = SharedHold(store.engine, access_key, clock=self._pacing.clock)
        pending = await store.pending_counts(run_id)
        renewer = asyncio.create_task(keep_renewed(store.engine, claims), name="lease-renewer")
        try:
            _log_route(route)
            async with _api_client(config, route) as api:
                self.scheduler = Scheduler(
                    _scheduler_config(config), api, _FencedStore(store, claims),
                    _normaliser(config), pacing=self._pacing, feed=feed, rate=rate,
                    key_hold=hold,
                )  # fmt: skip
                if self.stopped_by is not None:
                    self.scheduler.stop()
                stats = await self._scheduled(
                    store, pending, route, on_error=lambda: release_claims(store.engine, claims)
                )
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        if self.stopped_by is not None:
            await release_claims(store.engine, claims)
        summary, finished = await store.leave_shared_run(
            run_id, requests=stats.requests, retries=stats.retries,
            may_finish=self.stopped_by is None, guard=self._guard(),
        )  # fmt: skip
        if finished:
            log.info("run %d finished by this worker (%s)", run_id, claims.owner)
            if summary.status is RunStatus.HELD:
                log.warning("run %d %s", summary.run_id, summary.message)
        elif self._coordinator_stopped(summary):  # as on SQLite: the run becomes resumable
            status, message = self._final_status(stats)
            summary = await store.finish_run(run_id, status, requests=0, retries=0, message=message)
        if claims.refused or claims.reclaimed:
            log.info(
                "run %d: %d targets taken over from lapsed leases, %d late results refused",
                run_id, claims.reclaimed, claims.refused,
            )  # fmt: skip
        return stats, summary

    async def _start_run(self, store: Store) -> int:
        if self.options.resume:
            run_id = await self._unfinished_run(store)
            if run_id is not None:
                await store.reopen_run(run_id)
                self.resumed = True
                if self.options.targets is not None:
                    log.info(
                        "--resume: finishing run %d; --targets is read only when there is "
                        "nothing to resume",
                        run_id,
                    )
                return run_id
            self._check_new_run_allowed(self.options.resume_run_id)
            log.info("--resume: no unfinished run, so a new run starts from the targets file")
        with self._targets_reader() as reader:
            run_id = await store.create_run(reader, strategy=self.options.config.crawl.strategy)
        if reader.invalid_count:
            log.warning("%s", reader.describe_invalid())
        return run_id

    async def _unfinished_run(self, store: Store) -> int | None:
        """The run `--resume` finishes: RUN_ID if it is unfinished, else the latest unfinished."""
        run_id = self.options.resume_run_id
        if run_id is None:
            return await store.latest_unfinished_run()
        summary = await store.run_summary(run_id)  # RunNotFoundError: a usage error
        if summary.status not in RESUMABLE_BY_ID:
            raise CrawlerError(
                f"--resume {run_id}: run {run_id} is {summary.status}; only a running, "
                "interrupted or failed run can be resumed"
            )
        return run_id

    def _check_new_run_allowed(self, run_id: int | None) -> None:
        """With nothing to resume, only `--resume --targets PATH` may start a new run."""
        if run_id is not None:  # an explicit RUN_ID that is not unfinished was refused already
            raise RunNotFoundError(f"--resume {run_id}: no unfinished run {run_id}")
        if self.options.targets is None:
            raise CrawlerError(
                "--resume: this database has no unfinished run to resume (add --targets PATH "
                "to start a new run when there is none, as a nightly job does)"
            )

    async def _crawl(self, store: Store, route: ApiRoute) -> CrawlStats:
        config = self.options.config
        assert self.run_id is not None
        pending = await store.pending_counts(self.run_id)
        self._log_start(await store.run_summary(self.run_id), sum(pending.values()))
        _log_route(route)
        async with _api_client(config, route) as api:
            self.scheduler = Scheduler(
                _scheduler_config(config), api, store, _normaliser(config), pacing=self._pacing
            )
            if self.stopped_by is not None:  # a signal arrived while the run was being set up
                self.scheduler.stop()
            return await self._scheduled(store, pending, route)

    async def _scheduled(
        self,
        store: Store,
        pending: dict[str, int],
        route: ApiRoute,
        *,
        on_error: Callable[[], Awaitable[None]] | None = None,
    ) -> CrawlStats:
        """Run the scheduler; a run-ending error marks the run failed (a joined worker's
        does not: the run goes on without it) after `on_error` (returning claims)."""
        assert self.run_id is not None and self.scheduler is not None
        with self._deadline(self.options.config.crawl.deadline_s):
            try:
                return await self.scheduler.run(self.run_id, pending)
            except AuthError as error:
                explained = _explain_rejection(error, route.access)
                await self._ended_by(store, explained, on_error)
                if explained is error:
                    raise
                raise explained from error
            except (StoreError, EndpointUnreachableError, InternalError) as error:
                await self._ended_by(store, error, on_error)
                raise
            except Exception as exc:
                # A bug: the run row says failed and why, the lock is released on the way out.
                log.error("internal error in the run", exc_info=exc)
                internal = InternalError(
                    f"internal error (a bug, please report): {type(exc).__name__}: {exc}"
                )
                await self._ended_by(store, internal, on_error)
                raise internal from exc

    async def _ended_by(
        self, store: Store, error: CrawlerError, on_error: Callable[[], Awaitable[None]] | None
    ) -> None:
        if on_error is not None:
            await on_error()
        if not self.options.join:
            await self._fail(store, error)

    def _log_start(self, run: RunSummary, pending: int) -> None:
        if self.resumed:
            log.info(
                "resumed: %s of %s pending", _count(pending, "target"), f"{run.targets_total:,}"
            )
        else:
            log.info("started: %s", _count(run.targets_total, "target"))

    async def _finish(self, store: Store, stats: CrawlStats) -> RunSummary:
        assert self.run_id is not None
        status, message = self._final_status(stats)
        summary = await store.finish_run(
            self.run_id, status, requests=stats.requests, retries=stats.retries, message=message,
            guard=self._guard(),
        )  # fmt: skip
        if summary.status is RunStatus.HELD:
            log.warning("run %d %s", summary.run_id, summary.message)
        return summary

    def _guard(self) -> MissingGuard:
        crawl = self.options.config.crawl
        return MissingGuard(
            crawl.max_missing_fraction, crawl.missing_guard_min, self.options.accept_missing
        )

    async def _prune(self, store: Store) -> None:
        keep_runs = self.options.config.retention.keep_runs
        pruned = await store.prune(keep_runs)
        if pruned.run_ids:
            log.info(
                "retention (keep_runs %d): deleted the targets and results of %d older runs",
                keep_runs, len(pruned.run_ids),
            )  # fmt: skip

    def _coordinator_stopped(self, summary: RunSummary) -> bool:
        joined, stopped = self.options.join, self.stopped_by is not None
        return stopped and not joined and summary.status is RunStatus.RUNNING

    def _final_status(self, stats: CrawlStats) -> tuple[RunStatus, str | None]:
        if self.stopped_by == "deadline":
            deadline_s = self.options.config.crawl.deadline_s
            return (
                RunStatus.INTERRUPTED,
                f"deadline of {deadline_s:g} s reached; resume with --resume",
            )
        if self.stopped_by is not None:
            return RunStatus.INTERRUPTED, f"stopped by {self.stopped_by}; resume with --resume"
        if stats.failed:
            return RunStatus.PARTIAL, None
        return RunStatus.SUCCEEDED, None

    async def _fail(self, store: Store, error: CrawlerError) -> None:
        assert self.run_id is not None and self.scheduler is not None
        stats = self.scheduler.stats
        try:
            await store.finish_run(
                self.run_id, RunStatus.FAILED, requests=stats.requests, retries=stats.retries,
                message=scrub_text(str(error)),
            )  # fmt: skip
        except Exception as exc:  # the run's own error is the one to report, not this one
            log.error("could not mark run %d failed: %s", self.run_id, exc)

    @contextlib.contextmanager
    def _deadline(self, deadline_s: float) -> Iterator[None]:
        if deadline_s <= 0:
            yield
            return
        timer = asyncio.get_running_loop().call_later(deadline_s, self.stop, "deadline")
        try:
            yield
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def _targets_reader(self) -> Iterator[TargetsReader]:
        path = self.options.targets or self.options.config.targets.file
        if path is None:
            raise CrawlerError("no targets: give --targets PATH (or -) or set [targets] file")
        skip_invalid = self.options.skip_invalid
        if path == "-":
            binary = getattr(self._stdin, "buffer", None)  # a real stdin; tests pass a StringIO
            lines = self._stdin if binary is None else decoded_lines(binary, "<stdin>")
            yield TargetsReader(lines, "<stdin>", skip_invalid=skip_invalid)
            return
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CrawlerError(f"cannot read the targets file {path}: {exc.strerror}") from exc
        with stream:
            yield TargetsReader(decoded_lines(stream, path), path, skip_invalid=skip_invalid)


_REJECTED = (401, 403)  # credentials refused: the whole worker stops (AuthError)


class _FencedStore:
    """The store as one worker of a shared run writes to it: only results it still holds."""

    def __init__(self, store: Store, claims: Claims) -> None:
        self._store = store
        self._claims = claims

    async def pending_targets(
        self, run_id: int, region_id: str, *, after_image_id: str | None, limit: int
    ) -> list[Target]:
        return await self._store.pending_targets(
            run_id, region_id, after_image_id=after_image_id, limit=limit
        )

    async def write_results(self, run_id: int, results: Sequence[TargetResult]) -> int:
        # A target answered 401/403 failed because of this worker's credentials, not its own:
        # it goes back to the pool with the rest of the claims (the run goes on without us).
        kept = [result for result in results if result.http_status not in _REJECTED]
        written = await self._store.write_results(run_id, kept, fence=self._claims.fence_results)
        self._claims.settle(kept, written)
        # No pause before the next write, as on SQLite. A 0.1 s pause made batches of ~500 (20
        # transactions per 10,000 results, fewer fixed ~5 ms of server work each), and each one
        # held up the event loop ~50 ms (psycopg adapting and sending the statements, the rows
        # built), more than a 20 ms round trip, so answers waited and slots sat idle: 2,345
        # requests/s with it, 2,546 without on a quiet machine (README, PostgreSQL crawl).
        return written


def _log_route(route: ApiRoute) -> None:
    """Where the keys came from and which proxy is used: the first things to check on a 401."""
    log.info("signing with the keys from %s", route.access.source)
    if route.proxy is not None:
        log.info("connecting through the proxy %s (from %s)", route.proxy.url, route.proxy.source)


def _explain_rejection(error: AuthError, access: Access) -> AuthError:
    """A 401 while signing with a temporary credential most likely means it expired."""
    if access.credentials.session_token is None or error.http_status != 401:
        return error
    return AuthError(
        f"{error.message}; the session token may have expired: get a new temporary credential",
        http_status=error.http_status,
        error_status=error.error_status,
        request_id=error.request_id,
    )


@contextlib.asynccontextmanager
async def _api_client(config: Config, route: ApiRoute) -> AsyncIterator[ApiClient]:
    keys = route.access.credentials
    signer = Signer(
        keys.access_key,
        keys.secret_key,
        version=config.api.signature_version,
        sign_date_nonce=config.api.sign_date_nonce,
        session_token=keys.session_token,
    )
    async with open_session(concurrency=config.crawl.concurrency, tls=route.tls) as session:
        yield ApiClient(
            session,
            route.access.endpoint,
            signer,
            timeout_s=config.api.timeout_s,
            max_response_bytes=config.api.max_response_bytes,
            proxy=route.proxy,
            answer_salt=_answer_salt(config),
        )


async def discover_targets(
    config: Config,
    regions: Sequence[str],
    sources: Sequence[str],
    out: TextIO,
    *,
    environ: Mapping[str, str],
    pacing: Pacing | None = None,
    profile: str | None = None,
) -> DiscoveryStats:
    """Write a targets CSV of every image the API lists in `regions` for `sources`."""
    route = api_route(config, environ, profile=profile)
    _check_discovery_args(regions, sources)
    pacing = pacing or Pacing()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["region_id", "image_id", "image_source", "name"])

    def found(target: Target, image: JsonObject) -> None:
        writer.writerow(
            [target.region_id, target.image_id, image.get("imageSource"), image.get("name")]
        )

    retrier = Retrier(_retry_policy(config), sleep=pacing.sleep, rng=pacing.rng)
    async with _api_client(config, route) as api:
        try:
            return await Discovery(api, retrier, found).run(regions, sources)
        except AuthError as error:
            explained = _explain_rejection(error, route.access)
            if explained is error:
                raise
            raise explained from error


def _check_discovery_args(regions: Sequence[str], sources: Sequence[str]) -> None:
    bad_regions = [region for region in regions if not is_valid_region_id(region)]
    if bad_regions or not regions:
        raise CrawlerError(f"--regions: not a region id: {', '.join(bad_regions) or '(none)'}")
    bad_sources = [source for source in sources if source not in IMAGE_SOURCES]
    if bad_sources or not sources:
        raise CrawlerError(
            f"--image-source: {', '.join(bad_sources) or '(none)'} is not one of "
            f"{', '.join(IMAGE_SOURCES)}"
        )


def _retry_policy(config: Config) -> RetryPolicy:
    return RetryPolicy(
        config.retry.max_attempts, config.retry.initial_backoff_s, config.retry.max_backoff_s
    )


def _scheduler_config(config: Config) -> SchedulerConfig:
    return SchedulerConfig(
        concurrency=config.crawl.concurrency,
        per_region_concurrency=min(config.crawl.per_region_concurrency, config.crawl.concurrency),
        rate_limit_per_s=config.crawl.rate_limit_per_s,
        strategy=config.crawl.strategy,
        retry=_retry_policy(config),
    )


def _normaliser(config: Config) -> Normaliser:
    # Rows are built by the store, and only for an image whose raw_digest is new.
    return partial(prepare_image, naive_tz=ZoneInfo(config.api.naive_time_zone))


def _answer_salt(config: Config) -> bytes:
    # What besides an answer decides its rows (as in `raw_digest`): a new normaliser or another
    # zone for times without an offset makes every stored answer digest a stranger.
    return f"crawler-answer {NORMALISER_VERSION} {config.api.naive_time_zone}\n".encode()


def _count(number: int, noun: str) -> str:
    """`1 target`, `2,500 targets`."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _requests_needed(targets_by_region: dict[str, int], strategy: str) -> dict[str, int]:
    if strategy == "batch":
        return {region: math.ceil(count / 100) for region, count in targets_by_region.items()}
    return dict(targets_by_region)


def _estimate_s(requests_by_region: dict[str, int], config: Config) -> float:
    """Seconds at the configured limits, assuming `ASSUMED_LATENCY_S` per request."""
    if not requests_by_region:
        return 0.0
    global_rate = config.crawl.concurrency / ASSUMED_LATENCY_S
    if config.crawl.rate_limit_per_s > 0:
        global_rate = min(global_rate, config.crawl.rate_limit_per_s)
    region_rate = config.crawl.per_region_concurrency / ASSUMED_LATENCY_S
    busiest = max(requests_by_region.values())
    return max(sum(requests_by_region.values()) / global_rate, busiest / region_rate)
