"""Shared fixtures: a simulator on loopback in a thread of its own, and crawl configs for it.

The simulator runs on its own event loop in a background thread so the real CLI can be run
in-process (it calls `asyncio.run`) or as a subprocess against it.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

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
) -> Path:
    """A crawl config pointed at a simulator (no `[api] endpoint` when `url` is None), with short
    backoffs for tests."""
    path = folder / "crawler.toml"
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
url = "sqlite+aiosqlite:///{db}"
""",
        encoding="utf-8",
    )
    return path


def crawl_environ(secret: str = SECRET_KEY) -> dict[str, str]:
    """The environment a crawl reads its credentials from."""
    return {ACCESS_KEY_ENV: "TESTAK", SECRET_KEY_ENV: secret}


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
