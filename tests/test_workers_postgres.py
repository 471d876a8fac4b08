"""Several worker processes on one PostgreSQL run, end to end: the key's spent minute held by
every worker, the batch strategy shared by three workers, and a take-over refused by the server.

Worker processes are real `python -m crawler crawl` subprocesses (`start` from
tests/test_cli_postgres.py); the simulator runs in this process, so its counters are read here.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from test_cli import Recorder, crawl, targets_file
from test_cli_postgres import finish, inventory, owned_by, query, results, start, wait_until

from crawler.budget import SharedHold
from crawler.simulator import Simulator
from tests.conftest import SimulatorFactory, write_config

ACCESS_KEY = "TESTAK"  # the key `crawl_environ` gives every worker


def stop_all(*children: subprocess.Popen[str] | None) -> None:
    for child in children:
        if child is None:
            continue
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
        child.communicate()


def one_outcome_each(url: str, total: int) -> None:
    assert query(
        url, "SELECT count(*), count(DISTINCT (region_id, image_id)) FROM crawl_results"
    ) == [(total, total)]
    assert query(url, "SELECT count(*) FROM crawl_targets WHERE lease_expires_at IS NOT NULL") == [
        (0,)
    ]


# --- the key's per-minute budget, across worker processes ----------------------------------------


def test_a_spent_minute_holds_both_workers_until_the_window_passes(
    simulator: SimulatorFactory, tmp_path: Path, postgres_url: str
) -> None:
    """The simulator allows 30 requests per 2 s window for the key both workers use; once a
    window is spent (x-jdcloud-remaining-minute 0, then 429 HTTP_RATE_LIMIT_EXCEEDED) both hold
    until the next one, so the 429s stay a few per window instead of a stream."""
    window_s, limit = 2.0, 30
    server = simulator(
        images_per_region=30, latency_ms=5, rate_limit_per_minute=limit, rate_window_s=window_s
    )
    targets = targets_file(tmp_path, server.sim)
    total = len(list(server.sim.targets()))
    config = write_config(
        tmp_path, server.url, db=tmp_path / "x.db", database_url=postgres_url, concurrency=4,
        max_attempts=20,
    )  # fmt: skip
    first = start(config, "--targets", str(targets))
    second: subprocess.Popen[str] | None = None
    started = time.monotonic()
    try:
        wait_until(lambda: results(postgres_url) >= 1, "the first worker's first result")
        second = start(config, "--join")
        codes = [finish(child) for child in (first, second)]
    finally:
        stop_all(first, second)
    elapsed_s = time.monotonic() - started
    assert [code for code, _ in codes] == [0, 0], codes
    one_outcome_each(postgres_url, total)
    assert query(postgres_url, "SELECT outcome, count(*) FROM crawl_results GROUP BY 1") == [
        ("fetched", total)
    ]
    assert owned_by(postgres_url, second.pid, live=False) > 0, "the second worker took no part"
    # The crawl needed several windows; in each, once it was spent, at most the requests already
    # in flight (4 per worker) and a probe or two per worker got a 429 (none at all when the
    # remaining count ran out before the limit did). Workers that kept sending would collect
    # hundreds per window (4 in flight each at 5 ms per answer).
    windows = math.ceil(elapsed_s / window_s) + 1
    assert total > 2 * limit
    assert server.sim.stats.rate_limited <= 16 * windows, (
        server.sim.stats.rate_limited,
        windows,
    )
    # The spent minute went through the database, for every worker on the key.
    ((held,),) = query(postgres_url, "SELECT count(*) FROM rate_budgets WHERE held_until_s > 0")
    assert held == 1


def test_a_hold_set_by_another_host_stops_every_worker_until_it_passes(
    simulator: SimulatorFactory, tmp_path: Path, postgres_url: str
) -> None:
    """A third host found the key's minute spent and wrote the hold (as `SharedHold.hold` does):
    both workers stop within moments, send nothing while it lasts, then finish the run."""
    hold_s = 10.0
    server = simulator(images_per_region=150, latency_ms=100)
    targets = targets_file(tmp_path, server.sim)
    total = len(list(server.sim.targets()))
    config = write_config(
        tmp_path, server.url, db=tmp_path / "x.db", database_url=postgres_url, concurrency=2
    )
    first = start(config, "--targets", str(targets))
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: results(postgres_url) >= 5, "the first worker's results")
        second = start(config, "--join")
        joined = second
        wait_until(lambda: owned_by(postgres_url, joined.pid, live=False) >= 5, "worker 2")
        held_at = time.monotonic()
        asyncio.run(hold_key(postgres_url, hold_s))
        quiet_since = wait_for_quiet(server.sim.stats, quiet_s=1.5, timeout_s=hold_s - 1)
        sent_while_held = server.sim.stats.requests
        assert first.poll() is None and second.poll() is None, "a worker ran out of targets"
        assert results(postgres_url) < total
        wait_until(
            lambda: server.sim.stats.requests > sent_while_held, "requests after the hold",
            timeout_s=hold_s + 60,
        )  # fmt: skip
        resumed_at = time.monotonic()
        codes = [finish(child) for child in (first, second)]
    finally:
        stop_all(first, second)
    assert [code for code, _ in codes] == [0, 0], codes
    # Quiet within moments of the hold (what was in flight, and a look at the hold every 0.5 s),
    # and nothing sent by either until it had passed.
    assert quiet_since - held_at < hold_s - 1
    assert resumed_at - held_at >= hold_s - 0.5, resumed_at - held_at
    one_outcome_each(postgres_url, total)


async def hold_key(url: str, hold_s: float) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        await SharedHold(engine, ACCESS_KEY).hold(hold_s)
    finally:
        await engine.dispose()


def wait_for_quiet(stats: object, *, quiet_s: float, timeout_s: float) -> float:
    """When the simulator's request count last moved, once it has stood still for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    count, since = stats.requests, time.monotonic()  # type: ignore[attr-defined]
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the workers kept sending through the hold"
        time.sleep(0.02)
        if stats.requests != count:  # type: ignore[attr-defined]
            count, since = stats.requests, time.monotonic()  # type: ignore[attr-defined]
    return since


# --- the batch strategy with several workers -----------------------------------------------------


def test_three_batch_workers_claim_whole_batches_of_one_region(
    simulator: SimulatorFactory, tmp_path: Path, postgres_url: str
) -> None:
    """`--strategy batch`, one crawl and two --join: every describeImages call carries a whole
    claimed batch of one region, so the three workers together send exactly the requests one
    process sends, name each target as often, and store the same inventory."""
    server = simulator(images_per_region=200, missing_rate=0.05, latency_ms=300, seed=11)
    batch_sizes = count_batch_sizes(server.sim)
    targets = targets_file(tmp_path, server.sim)
    total = len(list(server.sim.targets()))
    config = write_config(
        tmp_path, server.url, db=tmp_path / "x.db", database_url=postgres_url, concurrency=1
    )
    batch = ("--strategy", "batch")
    coordinator = start(config, "--targets", str(targets), *batch)
    joiners: list[subprocess.Popen[str]] = []
    try:
        wait_until(lambda: results(postgres_url) >= 1, "the coordinator's first batch")
        joiners = [start(config, "--join", *batch), start(config, "--join", *batch)]
        codes = [finish(child) for child in (coordinator, *joiners)]
    finally:
        stop_all(coordinator, *joiners)
    assert [code for code, _ in codes] == [0, 0, 0], codes
    one_outcome_each(postgres_url, total)
    assert query(postgres_url, "SELECT status, strategy FROM crawl_runs") == [
        ("succeeded", "batch")
    ]
    workers = query(
        postgres_url, "SELECT count(DISTINCT lease_owner) FROM crawl_targets WHERE claims > 0"
    )
    assert workers[0][0] >= 2, "the joined workers took no part"
    shared_requests, shared_attempts = server.sim.stats.requests, Counter(server.sim.stats.attempts)
    shared_batches = Counter(batch_sizes)
    batch_sizes.clear()

    folder = tmp_path / "sqlite"
    folder.mkdir()
    reference = write_config(folder, server.url, db=folder / "reference.db", concurrency=8)
    assert crawl(reference, "--targets", str(targets), *batch) == 0
    single_requests = server.sim.stats.requests - shared_requests
    single_attempts = Counter(server.sim.stats.attempts) - shared_attempts
    # Whole batches: per region, full ones of 100 and the region's remainder, as one process
    # sends them. Three workers claiming one region at the same moment may split it unevenly
    # once (SKIP LOCKED passes over a row another claim holds: 99 and 12 instead of 100 and 11),
    # so each such race may cost one call more; nothing is asked twice.
    per_region = Counter(target.region_id for target in server.sim.targets())
    expected = Counter({100: sum(count // 100 for count in per_region.values())})
    expected.update(count % 100 for count in per_region.values() if count % 100)
    assert batch_sizes == expected
    assert max(shared_batches) == 100 and shared_batches[100] >= expected[100] - 2
    assert shared_batches.total() <= expected.total() + 2
    assert sum(size * calls for size, calls in shared_batches.items()) == total
    assert single_requests == expected.total() + missing_checks(single_attempts)
    assert shared_requests - shared_batches.total() == missing_checks(single_attempts)
    assert shared_attempts == single_attempts
    assert inventory(postgres_url) == inventory(f"sqlite+aiosqlite:///{folder / 'reference.db'}")


def count_batch_sizes(sim: Simulator) -> Counter[int]:
    """From now on, how many describeImages calls named how many ids (describeImage: none)."""
    sizes: Counter[int] = Counter()
    count_attempts = sim._count_attempts

    def counting(region: str, image_id: str | None, query: Any) -> list[Hashable]:
        if image_id is None:
            sizes[sum(key.startswith("ids.") for key in query)] += 1
        return count_attempts(region, image_id, query)

    sim._count_attempts = counting  # type: ignore[method-assign]
    return sizes


def missing_checks(attempts: Counter[object]) -> int:
    """describeImage calls on top of the batches: ids a batch answer left out are asked alone."""
    return sum(count - 1 for count in attempts.values())


# --- taking over a lapsed lease without the right to end the other session -----------------------


@pytest.fixture
def two_roles(postgres_url: str) -> Iterator[tuple[str, str]]:
    """Two ordinary login roles (no superuser, no pg_signal_backend) that may read and write the
    migrated inventory at `postgres_url`: the URLs of each, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = [f"crawler_a_{suffix}", f"crawler_b_{suffix}"]
    password = os.environ.get("PGPASSWORD")  # pg_virtualenv's; libpq sends it for any role
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    database = make_url(postgres_url).database
    recorder = Recorder()
    from crawler.cli import main

    assert main(["migrate", "--db", postgres_url], recorder.io()) == 0, recorder.stderr.getvalue()
    try:
        with admin.connect() as conn:
            for name in names:
                login = f"LOGIN PASSWORD '{password}'" if password else "LOGIN"
                conn.exec_driver_sql(f"CREATE ROLE {name} {login}")
                conn.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{database}" TO {name}')
                conn.exec_driver_sql(
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}"
                )
                conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name}")
        url = make_url(postgres_url)
        yield (
            url.set(username=names[0]).render_as_string(hide_password=False),
            url.set(username=names[1]).render_as_string(hide_password=False),
        )
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE usename IN ('{names[0]}', '{names[1]}')"
            )
            for name in names:
                conn.exec_driver_sql(f"DROP OWNED BY {name}")
                conn.exec_driver_sql(f"DROP ROLE {name}")
        admin.dispose()


def test_a_take_over_the_role_may_not_signal_ends_that_worker_with_exit_3(
    simulator: SimulatorFactory, tmp_path: Path, two_roles: tuple[str, str]
) -> None:
    """Worker A (one role) is paused past its lease; worker B, of another role without
    pg_signal_backend, claims A's lapsed targets and may not end A's sessions: B exits 3 naming
    the refusal, with its claims handed back; A, resumed, has its late results refused, crawls
    what is left and finishes the run."""
    url_a, url_b = two_roles
    server = simulator(images_per_region=60, latency_ms=40)
    targets = targets_file(tmp_path, server.sim)
    total = len(list(server.sim.targets()))
    lease = "lease_s = 2"
    config_a = write_config(
        tmp_path, server.url, db=tmp_path / "x.db", database_url=url_a, concurrency=2,
        extra_crawl=lease, name="a.toml",
    )  # fmt: skip
    config_b = write_config(
        tmp_path, server.url, db=tmp_path / "x.db", database_url=url_b, concurrency=2,
        extra_crawl=lease, name="b.toml",
    )  # fmt: skip
    worker_a = start(config_a, "--targets", str(targets))
    worker_b: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: owned_by(url_a, worker_a.pid, live=False) >= 10, "worker A's results")
        wait_until(lambda: owned_by(url_a, worker_a.pid, live=True) > 0, "worker A's claims")
        worker_a.send_signal(signal.SIGSTOP)
        worker_b = start(config_b, "--join")
        code_b, log_b = finish(worker_b)
        worker_a.send_signal(signal.SIGCONT)
        code_a, log_a = finish(worker_a)
    finally:
        stop_all(worker_a, worker_b)
    assert code_b == 3, log_b
    role_b = make_url(url_b).username
    assert "cannot end the database sessions of a worker whose leases lapsed" in log_b, log_b
    assert f"GRANT pg_signal_backend TO {role_b}" in log_b, log_b
    assert "returned" in log_b and "claimed targets of run 1 to the pool" in log_b, log_b
    assert code_a == 0, log_a
    assert "late results of run 1 refused" in log_a, log_a
    assert query(url_a, "SELECT status FROM crawl_runs") == [("succeeded",)]
    one_outcome_each(url_a, total)
