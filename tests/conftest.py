"""Shared fixtures: a simulator on loopback in a thread of its own, and crawl configs for it.

The simulator runs on its own event loop in a background thread so the real CLI can be run
in-process (it calls `asyncio.run`) or as a subprocess against it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from crawler.simulator import (
    RunningSimulator,
    Simulator,
    SimulatorConfig,
    server_tls_context,
    start_simulator,
)

ACCESS_KEY_ENV = "TEST_JDCLOUD_ACCESS_KEY"
SECRET_KEY_ENV = "TEST_JDCLOUD_SECRET_KEY"
SECRET_KEY = "s3cr3t-TEST-key-9f8e7d"


class SimulatorThread:
    """A simulator serving from a background thread until `close`."""

    def __init__(self, config: SimulatorConfig, tls: ssl.SSLContext | None = None) -> None:
        self.sim = Simulator(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._running: RunningSimulator = self._call(start_simulator(self.sim, tls=tls))
        self.url = self._running.url

    def _call(self, coroutine: object) -> RunningSimulator:
        future: Future[RunningSimulator] = asyncio.run_coroutine_threadsafe(
            coroutine,  # type: ignore[arg-type]
            self._loop,
        )
        return future.result(timeout=30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._running.close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


SimulatorFactory = Callable[..., SimulatorThread]


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    """Start simulators with `simulator(**SimulatorConfig fields)`; all are stopped afterwards.

    `simulator(tls=context, ...)` serves HTTPS with that server context.
    """
    started: list[SimulatorThread] = []

    def start(tls: ssl.SSLContext | None = None, **fields: object) -> SimulatorThread:
        fields.setdefault("access_key", "TESTAK")
        fields.setdefault("secret_key", SECRET_KEY)
        thread = SimulatorThread(SimulatorConfig(**fields), tls)  # type: ignore[arg-type]
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.close()


def write_config(
    folder: Path,
    url: str | None,
    *,
    db: Path,
    concurrency: int = 16,
    max_attempts: int = 6,
    initial_backoff_s: float = 0.01,
    max_backoff_s: float = 0.05,
    extra_crawl: str = "",
    extra_api: str = "",
    database_url: str | None = None,
    name: str = "crawler.toml",
) -> Path:
    """A crawl config pointed at a simulator (no `[api] endpoint` when `url` is None), with short
    backoffs for tests; the database is the SQLite file `db` unless `database_url` is given."""
    path = folder / name
    endpoint = "" if url is None else f'endpoint = "{url}"'
    path.write_text(
        f"""
[api]
{endpoint}
{extra_api}
timeout_s = 10.0
access_key_env = "{ACCESS_KEY_ENV}"
secret_key_env = "{SECRET_KEY_ENV}"

[crawl]
concurrency = {concurrency}
per_region_concurrency = {concurrency}
{extra_crawl}

[retry]
max_attempts = {max_attempts}
initial_backoff_s = {initial_backoff_s}
max_backoff_s = {max_backoff_s}

[database]
url = "{database_url or "sqlite+aiosqlite:///" + str(db)}"
""",
        encoding="utf-8",
    )
    return path


def crawl_environ(secret: str = SECRET_KEY) -> dict[str, str]:
    """The environment a crawl reads its credentials from."""
    return {ACCESS_KEY_ENV: "TESTAK", SECRET_KEY_ENV: secret}


# --- PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_URL_ENV = "CRAWLER_TEST_POSTGRES_URL"


def _postgres_server_url() -> str:
    """The throwaway server's URL from `tests/with_postgres.sh`, or a skip (a failure under CI)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(f"{POSTGRES_URL_ENV} is not set: CI runs the PostgreSQL tests (make test)")
    pytest.skip(f"no PostgreSQL server ({POSTGRES_URL_ENV} unset; `make test` starts one)")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database on the test server for this test alone, dropped afterwards."""
    server = make_url(_postgres_server_url())
    name = f"crawler_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a new SQLite file and on a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}"
    return str(request.getfixturevalue("postgres_url"))


class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""

    def __init__(self, folder: Path, subject_alt_name: str = "IP:127.0.0.1,DNS:localhost") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.cert = folder / "cert.pem"
        self.key = folder / "key.pem"
        # The openssl CLI, not the `cryptography` package: that is not a dependency of anything
        # the project installs, and a test-only dependency would have to earn its place.
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=crawler test server",
             "-addext", f"subjectAltName={subject_alt_name}",
             "-keyout", str(self.key), "-out", str(self.cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def server_context(self) -> ssl.SSLContext:
        return server_tls_context(self.cert, self.key)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """One self-signed certificate for the whole test session, made at test time."""
    return TlsFiles(tmp_path_factory.mktemp("tls"))
