"""SQLite's own: the per-database lock (exclusive, names its holder, taken over from a dead
process) and the connection PRAGMAs."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crawler.errors import LockHeldError, StoreError
from crawler.store import Store, crawl_lock, format_utc
from crawler.store.dialects.sqlite import BUSY_TIMEOUT_MS, DatabaseLock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from crawler.store.dialects.sqlite import DatabaseLock
lock = DatabaseLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def hold_in_child(db: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    child.stdout.close()
    return child


def test_a_second_holder_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    db = tmp_path / "inventory.db"
    child = hold_in_child(db)
    try:
        with pytest.raises(LockHeldError) as caught:
            DatabaseLock(db).acquire()
        assert f"pid {child.pid}" in str(caught.value)
        assert str(db) in str(caught.value)
    finally:
        child.kill()
        child.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "inventory.db"
    child = hold_in_child(db)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with DatabaseLock(db) as lock:
        assert lock.path.exists()
        assert str(os.getpid()) in lock.path.read_text()


def test_release_lets_the_next_crawl_in(tmp_path: Path) -> None:
    db = tmp_path / "inventory.db"
    with DatabaseLock(db):
        pass
    with DatabaseLock(db):
        pass


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:///inventory.db", "inventory.db.lock"),
        ("sqlite+aiosqlite:////var/lib/crawler/x.db?mode=rwc", "/var/lib/crawler/x.db.lock"),
        ("sqlite+aiosqlite://", None),
        ("sqlite+aiosqlite:///:memory:", None),
    ],
)
def test_lock_path_follows_the_database_file(url: str, expected: str | None) -> None:
    lock = crawl_lock(url)
    assert isinstance(lock, DatabaseLock | None)
    assert (str(lock.path) if lock else None) == expected


def test_a_database_without_a_dialect_is_refused_by_name() -> None:
    with pytest.raises(StoreError, match="'mysql' is not supported"):
        crawl_lock("mysql://host/db")


async def test_the_store_sets_its_pragmas_on_every_connection(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}")
    try:
        pragmas = await store.settings()
    finally:
        await store.close()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["foreign_keys"] == 1
    assert pragmas["synchronous"] == 1  # NORMAL
    assert pragmas["busy_timeout"] > 0


@pytest.mark.parametrize("migrated", [False, True], ids=["to-migrate", "at-head"])
async def test_a_file_not_yet_in_wal_mode_waits_the_full_busy_timeout_for_a_reader(
    tmp_path: Path, migrated: bool
) -> None:
    # A file still in rollback-journal mode, read by another program: upgrading it and switching
    # it to WAL both need that reader gone. It leaves after longer than the driver's default
    # wait (5 s) and well within the store's own busy_timeout, which must apply to both.
    db = tmp_path / "inventory.db"
    url = f"sqlite+aiosqlite:///{db}"
    if migrated:
        await (await Store.open(url)).close()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.commit()
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    assert BUSY_TIMEOUT_MS / 1000 > 7.0
    reader = sqlite3.connect(db, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM t").fetchall()
    leave = threading.Timer(6.5, reader.rollback)
    leave.start()
    try:
        store = await Store.open(url)
        try:
            assert (await store.settings())["journal_mode"] == "wal"
        finally:
            await store.close()
    finally:
        leave.join()
        reader.close()


def test_the_crawlers_timestamps_are_text_sqlites_date_functions_read() -> None:
    stored = format_utc(datetime(2024, 5, 1, 8, 0, 0, 120, tzinfo=UTC))
    with closing(sqlite3.connect(":memory:")) as conn:
        assert conn.execute("SELECT datetime(?)", (stored,)).fetchone() == ("2024-05-01 08:00:00",)
