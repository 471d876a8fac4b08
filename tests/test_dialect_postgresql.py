"""PostgreSQL's own parts on a real server: the advisory crawl lock and the migration lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from crawler.errors import LockHeldError
from crawler.store import crawl_lock
from crawler.store.dialects import postgresql
from crawler.store.migrate import current_revision, head_revision, sync_url, upgrade

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
    """Taken right after its holder was killed: the server may not have ended the dead
    holder's session yet (moments, longer on a loaded machine); the lock waits for that."""
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
        with lock:
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_gone_holder_whose_session_does_not_end_is_named_after_the_wait(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session named as a crawl of this host whose process is gone, that the server does not
    end (here: it is this test's): the wait is bounded, then the lock is refused naming it."""
    monkeypatch.setattr(postgresql, "DEAD_HOLDER_WAIT_S", 0.5)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    name = f"crawler crawl pid {gone.pid} on {socket.gethostname()}"[:63]
    engine = create_engine(
        sync_url(postgres_url), poolclass=NullPool, connect_args={"application_name": name}
    )
    try:
        with engine.connect() as conn:
            key = (postgresql.LOCK_NAMESPACE, postgresql.COORDINATOR_LOCK)
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s, %s)", key)
            conn.commit()
            lock = crawl_lock(postgres_url)
            assert lock is not None
            with pytest.raises(LockHeldError) as info:
                lock.__enter__()
            message = str(info.value)
            assert name in message, message
            assert "that process is gone, its session did not end in 0.5 s" in message
    finally:
        engine.dispose()


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


# --- the write path's batch statements ------------------------------------------------------------


def test_every_write_statement_runs_once_per_batch_on_postgresql() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from crawler.store.dialects.postgresql import DIALECT
    from crawler.store.statements import _Statement, _WriteStatements

    engine = create_async_engine("postgresql+psycopg://nobody@localhost/none", paramstyle="format")
    statements = _WriteStatements.compile(DIALECT, engine.sync_engine.dialect)
    for name in statements.__dataclass_fields__:
        statement = getattr(statements, name)
        if not isinstance(statement, _Statement):
            continue  # the compiled statements' own settings
        assert statement.bulk is not None, name
        # one array parameter per value parameter, in the same order
        assert statement.bulk.count("%b::") == statement.sql.count("%s") == len(statement.names)
        assert "%s" not in statement.bulk


def test_batch_forms_of_insert_upsert_update_and_delete() -> None:
    from crawler.store.dialects.postgresql import DIALECT

    assert DIALECT.bulk_sql(
        "INSERT INTO t (a, b) VALUES (%s::VARCHAR, %s::JSONB) ON CONFLICT (a) DO UPDATE SET"
        " b = excluded.b"
    ) == (
        # JSON goes as text and is parsed once per row where it is used
        "INSERT INTO t (a, b) SELECT _bulk.p1, _bulk.p2::JSONB"
        " FROM unnest(%b::VARCHAR[], %b::TEXT[]) AS _bulk(p1, p2)"
        " ON CONFLICT (a) DO UPDATE SET b = excluded.b"
    )
    assert DIALECT.bulk_sql("UPDATE t SET b=%s::INTEGER WHERE t.a = %s::VARCHAR(8)") == (
        "UPDATE t SET b=_bulk.p1 FROM unnest(%b::INTEGER[], %b::VARCHAR(8)[]) AS _bulk(p1, p2)"
        " WHERE t.a = _bulk.p2"
    )
    assert DIALECT.bulk_sql("DELETE FROM t WHERE t.a = %s::DOUBLE PRECISION") == (
        "DELETE FROM t USING unnest(%b::DOUBLE PRECISION[]) AS _bulk(p1) WHERE t.a = _bulk.p1"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t (a, b) VALUES (%s, %s::VARCHAR)",  # a parameter without its type
        "INSERT INTO t (a, b) VALUES (%s::VARCHAR, 'fixed')",  # a value that is not a parameter
        "INSERT INTO t (a) VALUES (%s::VARCHAR) ON CONFLICT (a) DO UPDATE SET b = %s::VARCHAR",
        "INSERT INTO t (a) SELECT a FROM u WHERE u.a = %s::VARCHAR",
        "SELECT a FROM t WHERE a = %s::VARCHAR",
        "UPDATE t SET a = %s::VARCHAR",  # no WHERE: not a row-by-row statement
    ],
)
def test_a_statement_of_another_shape_keeps_executemany(sql: str) -> None:
    from crawler.store.dialects.postgresql import DIALECT

    assert DIALECT.bulk_sql(sql) is None
