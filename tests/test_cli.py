"""The real CLI end to end against the simulator on loopback and a real SQLite file.

Each of the crawl engine's "done when" checks is one test here.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crawler.cli import Io, main
from crawler.scheduler import Pacing
from tests.conftest import (
    ACCESS_KEY_ENV,
    SECRET_KEY,
    SECRET_KEY_ENV,
    SimulatorFactory,
    crawl_environ,
    write_config,
)

REPO = Path(__file__).parents[1]
INVENTORY_TABLES = ("images", "disks", "attachments", "tags")
# When an image was crawled and from which call (answer_digest: describeImage only), not what.
NOT_INVENTORY = {"first_seen_at", "last_seen_at", "last_run_id", "missing_since", "answer_digest"}


class Recorder:
    """Captured output and an injected sleep that records waits instead of sleeping."""

    def __init__(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)  # a real sleep yields to the loop; so must this one

    def io(self, secret: str = SECRET_KEY, *, fake_sleep: bool = False, stdin: str = "") -> Io:
        pacing = Pacing(sleep=self.sleep, rng=random.Random(0)) if fake_sleep else None
        return Io(
            environ=crawl_environ(secret),
            stdin=io.StringIO(stdin),
            stdout=self.stdout,
            stderr=self.stderr,
            pacing=pacing,
        )


def crawl(config: Path, *args: str, recorder: Recorder | None = None, **io_args: object) -> int:
    recorder = recorder or Recorder()
    return main(["crawl", "--config", str(config), "--no-progress", *args], recorder.io(**io_args))  # type: ignore[arg-type]


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def inventory_without_timestamps(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every inventory table, minus the columns that record when, not what."""
    dump = {}
    with sqlite3.connect(db) as connection:
        for table in INVENTORY_TABLES:
            columns = [
                name
                for _, name, *_ in connection.execute(f"PRAGMA table_info({table})")
                if name not in NOT_INVENTORY
            ]
            query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {', '.join(columns[:5])}"
            dump[table] = connection.execute(query).fetchall()
    return dump


def targets_file(folder: Path, sim: object) -> Path:
    path = folder / "targets.csv"
    sim.write_targets(path)  # type: ignore[attr-defined]
    return path


def test_a_clean_crawl_fetches_everything_and_exits_0(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=45, missing_rate=0.1)  # 5 missing ids per region
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    recorder = Recorder()
    code = crawl(config, "--targets", str(targets_file(tmp_path, server.sim)), recorder=recorder)
    assert code == 0, recorder.stderr.getvalue()
    outcomes = dict(rows(db, "SELECT outcome, count(*) FROM crawl_results GROUP BY outcome"))
    assert outcomes["fetched"] == 4 * 45
    assert outcomes["missing"] == 4 * 5
    assert rows(db, "SELECT status, fetched, missing, failed FROM crawl_runs") == [
        ("succeeded", 180, 20, 0)
    ]
    summary = recorder.stdout.getvalue()
    assert "run 1 succeeded: 180 fetched, 20 missing, 0 failed of 200 targets" in summary
    assert "requests/s" in summary


def test_a_fault_storm_ends_with_everything_fetched_and_visible_backoff(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(
        images_per_region=100,
        rate_503=0.30,
        rate_500=0.10,
        throttle_rate=0.05,
        retry_after_s=2.0,
        max_faults_per_image=5,
        seed=11,
    )
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, max_attempts=6, initial_backoff_s=0.5,
                          max_backoff_s=8.0)  # fmt: skip
    recorder = Recorder()
    targets = targets_file(tmp_path, server.sim)
    code = crawl(config, "--targets", str(targets), recorder=recorder, fake_sleep=True)
    assert code == 0, recorder.stderr.getvalue()
    assert rows(db, "SELECT outcome, count(*) FROM crawl_results GROUP BY outcome") == [
        ("fetched", 400)
    ]
    assert server.sim.stats.max_attempts() <= 6
    retries = rows(db, "SELECT retries FROM crawl_runs")[0][0]
    assert retries > 100  # a 45 % storm over 400 targets
    waits = recorder.waits
    assert len(waits) >= retries
    assert max(waits) <= 8.0
    assert any(wait == 2.0 for wait in waits)  # a Retry-After was honoured as a floor
    assert min(waits) < 0.5  # full jitter reaches down towards zero


def test_a_wrong_secret_stops_the_run_at_once_with_exit_3(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=500)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, concurrency=32)
    recorder = Recorder()
    targets = targets_file(tmp_path, server.sim)
    code = crawl(config, "--targets", str(targets), recorder=recorder, secret="wrong-secret")
    assert code == 3
    assert "credentials were rejected" in recorder.stderr.getvalue()
    assert server.sim.stats.requests < 32
    assert rows(db, "SELECT status FROM crawl_runs") == [("failed",)]


def test_bad_targets_exit_2_naming_each_line_and_send_nothing(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=5)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    targets = tmp_path / "bad.csv"
    targets.write_text(
        "region_id,image_id\ncn-north-1,img-ok1\nCN-NORTH-1,img-a\ncn-north-1,img-ok2\n"
        "cn-north-1,not-an-image\n",
        encoding="utf-8",
    )
    recorder = Recorder()
    assert crawl(config, "--targets", str(targets), recorder=recorder) == 2
    message = recorder.stderr.getvalue()
    assert "line 3:" in message and "line 5:" in message and str(targets) in message
    assert server.sim.stats.requests == 0
    assert rows(db, "SELECT count(*) FROM crawl_runs") == [(0,)]


def test_skip_invalid_crawls_the_good_lines(simulator: SimulatorFactory, tmp_path: Path) -> None:
    server = simulator(images_per_region=5)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    good = next(iter(server.sim.targets()))
    stdin = f"region_id,image_id\n{good.region_id},{good.image_id}\nbad,img-a\n"
    recorder = Recorder()
    code = crawl(config, "--targets", "-", "--skip-invalid", recorder=recorder, stdin=stdin)
    assert code == 0, recorder.stderr.getvalue()
    assert "line 3:" in recorder.stderr.getvalue()
    assert rows(db, "SELECT outcome FROM crawl_results") == [("fetched",)]


def test_the_secret_appears_nowhere_even_at_debug_level(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=20, fail_rate=0.2, missing_rate=0.1)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    targets = targets_file(tmp_path, server.sim)
    recorder = Recorder()
    code = crawl(config, "--targets", str(targets), "--log-level", "debug", "--log-format",
                 "json", recorder=recorder)  # fmt: skip
    assert code == 0
    wrong = Recorder()
    crawl(config, "--targets", str(targets), "--log-level", "debug", recorder=wrong,
          secret="another-secret-value")  # fmt: skip
    output = recorder.stdout.getvalue() + recorder.stderr.getvalue()
    output += wrong.stdout.getvalue() + wrong.stderr.getvalue()
    assert "debug" in recorder.stderr.getvalue()  # debug lines were really written
    assert SECRET_KEY not in output and "another-secret-value" not in output
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert SECRET_KEY not in dump and "another-secret-value" not in dump


def test_json_logs_carry_the_run_id(simulator: SimulatorFactory, tmp_path: Path) -> None:
    server = simulator(images_per_region=5)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    recorder = Recorder()
    crawl(config, "--targets", str(targets_file(tmp_path, server.sim)), "--log-format", "json",
          recorder=recorder)  # fmt: skip
    lines = [json.loads(line) for line in recorder.stderr.getvalue().splitlines()]
    assert lines, "the run logged nothing"
    assert any(line["run_id"] == 1 for line in lines)


def test_dry_run_prints_the_plan_and_sends_nothing(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=30)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    recorder = Recorder()
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets), "--dry-run", recorder=recorder) == 0
    plan = recorder.stdout.getvalue()
    assert "cn-north-1: 30 targets" in plan
    assert "total: 120 targets, 120 requests" in plan
    assert "estimate" in plan
    assert server.sim.stats.requests == 0
    assert not db.exists()


def test_a_config_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[crawl]\nconcurrency = 0\n", encoding="utf-8")
    recorder = Recorder()
    assert crawl(config, "--targets", "-", recorder=recorder) == 2
    assert "crawl.concurrency" in recorder.stderr.getvalue()
    assert str(config) in recorder.stderr.getvalue()


def test_a_missing_secret_variable_exits_2_naming_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", db=tmp_path / "x.db")
    recorder = Recorder()
    io_ = Io(environ={ACCESS_KEY_ENV: "AK"}, stdout=recorder.stdout, stderr=recorder.stderr)
    assert main(["crawl", "--config", str(config), "--targets", "-"], io_) == 2
    assert SECRET_KEY_ENV in recorder.stderr.getvalue()


# --- the lifecycle: lock, SIGKILL and resume, SIGINT ------------------------------------------


def start_crawl_process(config: Path, targets: Path) -> subprocess.Popen[str]:
    environ = {**os.environ, **crawl_environ(), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "crawler", "crawl", "--config", str(config), "--targets",
         str(targets), "--no-progress"],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_results(db: Path, at_least: int, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert child.poll() is None, "the crawl ended before it could be interrupted"
        try:
            if rows(db, "SELECT count(*) FROM crawl_results")[0][0] >= at_least:
                return
        except sqlite3.OperationalError:
            pass  # not created yet
        time.sleep(0.05)
    raise AssertionError("the crawl made no progress")


def test_a_second_crawl_exits_75_and_changes_nothing(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=400, latency_ms=20)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, concurrency=4)
    targets = targets_file(tmp_path, server.sim)
    child = start_crawl_process(config, targets)
    try:
        wait_for_results(db, 10, child)
        requests_before = server.sim.stats.requests
        runs_before = rows(db, "SELECT run_id, status FROM crawl_runs")
        recorder = Recorder()
        assert crawl(config, "--targets", str(targets), recorder=recorder) == 75
        assert "another crawl holds the lock" in recorder.stderr.getvalue()
        assert f"pid {child.pid}" in recorder.stderr.getvalue()
        assert rows(db, "SELECT run_id, status FROM crawl_runs") == runs_before
        assert server.sim.stats.requests - requests_before < 4 * 20  # only the first crawl's
    finally:
        child.kill()
        child.communicate()


def test_accept_and_prune_exit_75_naming_the_holder_while_a_crawl_runs(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=400, latency_ms=20)
    db = tmp_path / "inventory.db"
    targets = targets_file(tmp_path, server.sim)
    few = tmp_path / "few.csv"
    few.write_text("\n".join(targets.read_text(encoding="utf-8").splitlines()[:21]) + "\n")
    config = write_config(tmp_path, server.url, db=db, concurrency=4)
    assert crawl(config, "--targets", str(few)) == 0  # run 1: finished, so prune could take it
    results_of_run_1 = rows(db, "SELECT count(*) FROM crawl_results WHERE run_id = 1")
    assert results_of_run_1 == [(20,)]
    child = start_crawl_process(config, targets)
    try:
        wait_for_results(db, 30, child)
        environ = {**os.environ, "PYTHONPATH": str(REPO)}
        for command in (["accept", "1"], ["prune", "--keep-runs", "1", "--vacuum"]):
            done = subprocess.run(
                [sys.executable, "-m", "crawler", *command, "--db", str(db)],
                env=environ, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 75, (command, done.stderr)
            assert "another crawl holds the lock" in done.stderr, command
            assert f"pid {child.pid}" in done.stderr, command
        assert child.poll() is None  # still crawling: neither command touched it
        assert rows(db, "SELECT count(*) FROM crawl_results WHERE run_id = 1") == results_of_run_1
        assert rows(db, "SELECT run_id, status FROM crawl_runs") == [
            (1, "succeeded"),
            (2, "running"),
        ]
    finally:
        child.kill()
        child.communicate()


def test_sigkill_then_resume_gives_the_same_inventory_as_a_clean_crawl(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=150, latency_ms=10, missing_rate=0.05, fail_rate=0.05)
    targets = targets_file(tmp_path, server.sim)
    killed_db = tmp_path / "killed.db"
    killed = write_config(tmp_path, server.url, db=killed_db, concurrency=4)
    child = start_crawl_process(killed, targets)
    wait_for_results(killed_db, 50, child)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    done = rows(killed_db, "SELECT count(*) FROM crawl_results")[0][0]
    total = len(list(server.sim.targets()))
    assert 50 <= done < total
    assert rows(killed_db, "SELECT status FROM crawl_runs") == [("running",)]

    recorder = Recorder()
    assert crawl(killed, "--resume", recorder=recorder) == 0, recorder.stderr.getvalue()
    assert rows(killed_db, "SELECT count(*) FROM crawl_runs") == [(1,)]
    assert rows(killed_db, "SELECT status, targets_total FROM crawl_runs") == [("succeeded", total)]

    clean_folder = tmp_path / "clean"
    clean_folder.mkdir()
    clean_db = clean_folder / "clean.db"
    clean = write_config(clean_folder, server.url, db=clean_db, concurrency=16)
    assert crawl(clean, "--targets", str(targets)) == 0
    assert inventory_without_timestamps(killed_db) == inventory_without_timestamps(clean_db)
    assert rows(killed_db, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_commits_what_was_fetched_and_exits_130(
    simulator: SimulatorFactory, tmp_path: Path, signum: signal.Signals
) -> None:
    server = simulator(images_per_region=400, latency_ms=20)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, concurrency=4)
    child = start_crawl_process(config, targets_file(tmp_path, server.sim))
    wait_for_results(db, 20, child)
    child.send_signal(signum)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert "interrupted" in out
    status, fetched = rows(db, "SELECT status, fetched FROM crawl_runs")[0]
    assert status == "interrupted"
    assert fetched == rows(db, "SELECT count(*) FROM images")[0][0] >= 20


def test_a_deadline_stops_cleanly_and_the_run_can_be_resumed(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=200, latency_ms=20)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, concurrency=2)
    targets = targets_file(tmp_path, server.sim)
    recorder = Recorder()
    assert crawl(config, "--targets", str(targets), "--deadline", "0.5", recorder=recorder) == 1
    assert "deadline" in recorder.stdout.getvalue()
    assert rows(db, "SELECT status FROM crawl_runs") == [("interrupted",)]
    assert crawl(config, "--resume", "1", "--concurrency", "32") == 0
    assert rows(db, "SELECT status, fetched FROM crawl_runs") == [("succeeded", 800)]


# --- batch strategy and discovery ---------------------------------------------------------------


def test_batch_and_single_give_identical_inventories_with_far_fewer_requests(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=250, missing_rate=0.04, fail_rate=0.05, seed=5)
    targets = targets_file(tmp_path, server.sim)
    totals = {}
    for strategy in ("single", "batch"):
        folder = tmp_path / strategy
        folder.mkdir()
        db = folder / "inventory.db"
        config = write_config(folder, server.url, db=db)
        before = server.sim.stats.requests
        recorder = Recorder()
        code = crawl(config, "--targets", str(targets), "--strategy", strategy, recorder=recorder)
        assert code == 0, recorder.stderr.getvalue()
        totals[strategy] = server.sim.stats.requests - before
        assert rows(db, "SELECT outcome, count(*) FROM crawl_results GROUP BY outcome") == [
            ("fetched", 1000),
            ("missing", 40),
        ]
    single_db, batch_db = tmp_path / "single" / "inventory.db", tmp_path / "batch" / "inventory.db"
    assert inventory_without_timestamps(single_db) == inventory_without_timestamps(batch_db)
    # 1,040 targets: 11 batches, 40 confirmations of missing ids, and a few retries
    assert totals["batch"] < totals["single"] / 10
    assert rows(batch_db, "SELECT requests FROM crawl_runs") == [(totals["batch"],)]


def test_discover_writes_every_visible_image_and_the_crawl_takes_it(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=230, regions=("cn-north-1", "cn-east-2", "cn-south-1"))
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    output = tmp_path / "discovered.csv"
    recorder = Recorder()
    argv = ["discover", "--config", str(config), "--regions", "cn-north-1,cn-east-2",
            "--output", str(output)]  # fmt: skip
    assert main(argv, recorder.io()) == 0, recorder.stderr.getvalue()
    lines = output.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "region_id,image_id,image_source,name"
    found = {tuple(line.split(",")[:2]) for line in lines[1:]}
    expected = {
        (region, image["imageId"])
        for region in ("cn-north-1", "cn-east-2")
        for image in server.sim.inventory.images[region]
    }
    assert found == expected
    assert len(lines) - 1 == len(expected)  # each image once, though listed per source
    assert "discovered 460 images" in recorder.stderr.getvalue()
    assert crawl(config, "--targets", str(output), "--strategy", "batch") == 0
    assert rows(db, "SELECT count(*) FROM images") == [(460,)]


def test_a_failed_discovery_leaves_no_file_behind(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=20)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    output = tmp_path / "discovered.csv"
    recorder = Recorder()
    argv = ["discover", "--config", str(config), "--regions", "cn-north-1", "--output", str(output)]
    assert main(argv, recorder.io(secret="wrong")) == 3
    assert "credentials were rejected" in recorder.stderr.getvalue()
    assert list(tmp_path.glob("discovered.csv*")) == []


# --- the query side: migrate, runs, sql --------------------------------------------------------


def crawled_db(simulator: SimulatorFactory, tmp_path: Path) -> Path:
    server = simulator(images_per_region=10, missing_rate=0.1)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    assert crawl(config, "--targets", str(targets_file(tmp_path, server.sim))) == 0
    return db


def test_migrate_creates_the_schema_and_runs_lists_the_runs(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    recorder = Recorder()
    fresh = tmp_path / "fresh.db"
    assert main(["migrate", "--db", str(fresh)], recorder.io()) == 0
    assert "newest migration" in recorder.stdout.getvalue()
    assert ("images",) in rows(fresh, "SELECT name FROM sqlite_master WHERE type = 'table'")
    db = crawled_db(simulator, tmp_path)
    recorder = Recorder()
    assert main(["runs", "--db", str(db)], recorder.io()) == 0
    table = recorder.stdout.getvalue().splitlines()
    assert table[0].split()[:4] == ["run", "status", "started", "(UTC)"]
    assert table[2].split()[:2] == ["1", "succeeded"]


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_sql_answers_in_each_format(simulator: SimulatorFactory, tmp_path: Path, fmt: str) -> None:
    db = crawled_db(simulator, tmp_path)
    recorder = Recorder()
    query = "SELECT region_id, count(*) AS images FROM images GROUP BY 1 ORDER BY 1"
    assert main(["sql", query, "--db", str(db), "--format", fmt], recorder.io()) == 0
    out = recorder.stdout.getvalue()
    if fmt == "json":
        assert json.loads(out)[0] == {"region_id": "cn-east-1", "images": 10}
    elif fmt == "csv":
        assert out.splitlines()[:2] == ["region_id,images", "cn-east-1,10"]
    else:
        assert out.splitlines()[2].split() == ["cn-east-1", "10"]
        assert "(4 rows)" in out


def test_sql_refuses_writes_and_changes_nothing(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    db = crawled_db(simulator, tmp_path)
    recorder = Recorder()
    assert main(["sql", "DELETE FROM images", "--db", str(db)], recorder.io()) != 0
    assert "read-only" in recorder.stderr.getvalue()
    assert rows(db, "SELECT count(*) FROM images") == [(40,)]


def test_the_progress_bar_shows_on_a_terminal_only(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    server = simulator(images_per_region=50)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    targets = str(targets_file(tmp_path, server.sim))
    terminal = Terminal()
    environ = crawl_environ()
    assert main(["crawl", "--config", str(config), "--targets", targets],
                Io(environ=environ, stdout=io.StringIO(), stderr=terminal)) == 0  # fmt: skip
    assert "200/200 100%" in terminal.getvalue()
    quiet = Terminal()
    assert main(["crawl", "--config", str(config), "--targets", targets, "--no-progress"],
                Io(environ=environ, stdout=io.StringIO(), stderr=quiet)) == 0  # fmt: skip
    assert "100%" not in quiet.getvalue()
