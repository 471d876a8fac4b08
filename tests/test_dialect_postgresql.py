"""PostgreSQL's own parts on a real server: the advisory crawl lock and the migration lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy.engine import make_url

from crawler.errors import LockHeldError
from crawler.store import crawl_lock
from crawler.store.migrate import current_revision, head_revision, upgrade

HOLD_LOCK = """
import sys, time
from crawler.store import crawl_lock
lock = crawl_lock(sys.argv[1])
lock.__enter__()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_crawl_lock_is_refused_naming_the_holder(postgres_url: str) -> None:
    first, second = crawl_lock(postgres_url), crawl_lock(postgres_url)
    assert first is not None and second is not None
    with first:
        with pytest.raises(LockHeldError) as info:
            second.__enter__()
        message = str(info.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}"[:40] in message
        assert make_url(postgres_url).database in message
    with second:  # released with the first
        pass


def test_the_lock_of_a_killed_holder_is_free_at_once(postgres_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, postgres_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        lock = crawl_lock(postgres_url)
        assert lock is not None
        with pytest.raises(LockHeldError, match=f"pid {holder.pid} "):
            lock.__enter__()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 30
        while True:  # the server notices the closed socket within moments
            try:
                with lock:
                    break
            except LockHeldError:
                assert time.monotonic() < deadline, "the dead holder's lock was never freed"
                time.sleep(0.05)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()


def test_two_migrations_at_once_queue_instead_of_racing(postgres_url: str) -> None:
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            upgrade(postgres_url)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert current_revision(postgres_url) == head_revision()
