"""Proxies and TLS: `crawler.network` on its own, then real crawls through a forward proxy on
loopback and against the simulator over HTTPS with a certificate made at test time."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from crawler.cli import Io, main
from crawler.config import ApiConfig
from crawler.errors import ConfigError
from crawler.network import Proxy, bypasses_proxy, choose_proxy, route_tls, tls_context
from tests.conftest import SimulatorFactory, TlsFiles, crawl_environ, write_config

HTTPS_ENDPOINT = "https://vm.jdcloud-api.com"
HTTP_ENDPOINT = "http://127.0.0.1:8000"


# --- the forward proxy used by the end-to-end tests --------------------------------------------


class ForwardProxy:
    """A forward proxy on 127.0.0.1 in a thread of its own, counting what passes through it.

    Plain HTTP requests arrive in absolute form (`GET http://host:port/path`) and are forwarded
    one per connection; `CONNECT host:port` opens a tunnel that is piped both ways (HTTPS).

    Attributes:
        requests: the absolute URLs of the HTTP requests forwarded.
        tunnels: the `host:port` of each CONNECT tunnel opened.
        authorizations: the `Proxy-Authorization` of every request and CONNECT (None if absent).
    """

    def __init__(self, *, require_auth: str | None = None) -> None:
        self.requests: list[str] = []
        self.tunnels: list[str] = []
        self.authorizations: list[str | None] = []
        self._require_auth = require_auth
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server = self._call(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def _call(self, coroutine: object) -> asyncio.Server:
        future: Future[asyncio.Server] = asyncio.run_coroutine_threadsafe(
            coroutine,  # type: ignore[arg-type]
            self._loop,
        )
        return future.result(timeout=30)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, target, version = request_line.split(" ")
        headers = [tuple(line.split(":", 1)) for line in lines if line]
        auth = next((v.strip() for n, v in headers if n.lower() == "proxy-authorization"), None)
        self.authorizations.append(auth)
        if self._require_auth is not None and auth != self._require_auth:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            await self._tunnel(target, reader, writer)
        else:
            await self._forward(method, target, version, headers, writer)

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self.tunnels.append(target)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _forward(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[str, ...]],
        writer: asyncio.StreamWriter,
    ) -> None:
        url = urlsplit(target)
        assert url.scheme == "http" and url.hostname, f"not an absolute-form target: {target}"
        self.requests.append(target)
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        hop_by_hop = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}
        kept = [f"{n}:{v}\r\n" for n, v in headers if n.lower() not in hop_by_hop]
        path = url.path + (f"?{url.query}" if url.query else "")
        request = f"{method} {path} {version}\r\n{''.join(kept)}Connection: close\r\n\r\n"
        up_writer.write(request.encode("latin-1"))
        await up_writer.drain()
        await _pipe(up_reader, writer)
        up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    started = ForwardProxy()
    yield started
    started.close()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- choose_proxy and NO_PROXY -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("vm.jdcloud-api.com", 443, "*", True),
        ("vm.jdcloud-api.com", 443, "jdcloud-api.com", True),
        ("vm.jdcloud-api.com", 443, ".jdcloud-api.com", True),
        ("vm.jdcloud-api.com", 443, "other.com, vm.jdcloud-api.com", True),
        ("vm.jdcloud-api.com", 443, "VM.JDCLOUD-API.COM", True),
        ("vm.jdcloud-api.com", 443, "cloud-api.com", False),
        ("vm.jdcloud-api.com", 443, "vm.jdcloud-api.com:8443", False),
        ("vm.jdcloud-api.com", 443, "vm.jdcloud-api.com:443", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "192.168.0.0/16", False),
        ("127.0.0.1", 8000, "localhost,127.0.0.1", True),
        ("::1", 8000, "::1", True),
        ("vm.jdcloud-api.com", 443, "", False),
        ("vm.jdcloud-api.com", 443, " , ,", False),
    ],
)
def test_no_proxy_entries(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


def test_https_endpoints_use_https_proxy_and_http_endpoints_http_proxy() -> None:
    environ = {"HTTPS_PROXY": "http://secure:3128", "HTTP_PROXY": "http://plain:3128"}
    assert choose_proxy(ApiConfig(), environ, HTTPS_ENDPOINT) == Proxy(
        "http://secure:3128", "HTTPS_PROXY"
    )
    assert choose_proxy(ApiConfig(), environ, HTTP_ENDPOINT) == Proxy(
        "http://plain:3128", "HTTP_PROXY"
    )
    assert choose_proxy(ApiConfig(), {}, HTTPS_ENDPOINT) is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "http://lower:1"),
        ({"HTTPS_PROXY": "http://upper:2"}, "http://upper:2"),
        ({"https_proxy": "", "HTTPS_PROXY": "http://upper:2"}, "http://upper:2"),
        ({"HTTPS_PROXY": "proxy.corp:3128"}, "http://proxy.corp:3128"),
        ({"HTTPS_PROXY": "http://proxy.corp"}, "http://proxy.corp:80"),
    ],
)
def test_either_case_is_honoured_lower_case_first(environ: dict[str, str], expected: str) -> None:
    chosen = choose_proxy(ApiConfig(), environ, HTTPS_ENDPOINT)
    assert chosen is not None and chosen.url == expected


@pytest.mark.parametrize("name", ["NO_PROXY", "no_proxy"])
def test_no_proxy_in_either_case_bypasses_the_environment_proxy(name: str) -> None:
    environ = {"HTTPS_PROXY": "http://proxy:3128", name: "jdcloud-api.com"}
    assert choose_proxy(ApiConfig(), environ, HTTPS_ENDPOINT) is None


def test_api_proxy_overrides_the_environment_and_no_proxy() -> None:
    api = ApiConfig(proxy="http://user:p%40ss@gateway.corp:8080")
    environ = {"HTTPS_PROXY": "http://other:3128", "NO_PROXY": "*"}
    chosen = choose_proxy(api, environ, HTTPS_ENDPOINT)
    assert chosen == Proxy("http://gateway.corp:8080", "api.proxy", "user", "p@ss")
    assert "p@ss" not in repr(chosen)


@pytest.mark.parametrize(
    "value", ["socks5://user:hunter2@proxy:1080", "https://user:hunter2@proxy:443", "http://"]
)
def test_a_proxy_that_is_not_http_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^api\.proxy: ") as caught:
        ApiConfig(proxy=value)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^HTTPS_PROXY: ") as caught:
        choose_proxy(ApiConfig(), {"HTTPS_PROXY": value}, HTTPS_ENDPOINT)
    assert "hunter2" not in str(caught.value)


# --- tls_context -------------------------------------------------------------------------------


def test_the_tls_context_always_verifies(tls_files: TlsFiles) -> None:
    context = tls_context(ApiConfig(ca_bundle=str(tls_files.cert)), {})
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_without_extra_certificates_the_http_clients_verifying_default_serves() -> None:
    # crawler.http's default context then verifies against the system's certificates:
    # test_an_untrusted_certificate_ends_the_run_at_once_with_exit_3 sees it refuse one.
    assert tls_context(ApiConfig(), {"SSL_CERT_FILE": " "}) is None


def test_ca_bundle_and_ssl_cert_file_add_to_the_trusted_certificates(
    tls_files: TlsFiles,
) -> None:
    plain = ssl.create_default_context().cert_store_stats()["x509_ca"]
    with_bundle = tls_context(ApiConfig(ca_bundle=str(tls_files.cert)), {})
    with_env = tls_context(ApiConfig(), {"SSL_CERT_FILE": str(tls_files.cert)})
    assert with_bundle is not None and with_env is not None
    assert with_bundle.cert_store_stats()["x509_ca"] == plain + 1
    assert with_env.cert_store_stats()["x509_ca"] == plain + 1


@pytest.mark.parametrize(
    ("content", "message"), [(None, "cannot read"), ("not a certificate", "no usable PEM")]
)
def test_an_unusable_ca_bundle_is_a_config_error_naming_it(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^api\.ca_bundle: .*{message}") as caught:
        tls_context(ApiConfig(ca_bundle=str(path)), {})
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match=rf"^SSL_CERT_FILE: .*{message}"):
        tls_context(ApiConfig(), {"SSL_CERT_FILE": str(path)})


# --- route_tls: a context only where TLS will be started ---------------------------------------


def test_an_https_endpoint_gets_the_context_with_the_configured_certificates(
    tls_files: TlsFiles,
) -> None:
    plain = ssl.create_default_context().cert_store_stats()["x509_ca"]
    context = route_tls(ApiConfig(), {"SSL_CERT_FILE": str(tls_files.cert)}, HTTPS_ENDPOINT)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    assert context.cert_store_stats()["x509_ca"] == plain + 1


def test_an_http_endpoint_builds_no_context_and_parses_no_bundle(tmp_path: Path) -> None:
    # Readable but no certificate: an https endpoint refuses it, an http one never parses it
    # (which is what shows that no context was built for it).
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate", encoding="utf-8")
    folder = tmp_path / "certs"
    folder.mkdir()
    environ = {"SSL_CERT_FILE": str(junk)}
    api = ApiConfig(ca_bundle=str(folder))
    assert route_tls(api, environ, HTTP_ENDPOINT) is None
    with pytest.raises(ConfigError, match=r"^SSL_CERT_FILE: .*no usable PEM"):
        route_tls(api, environ, HTTPS_ENDPOINT)


@pytest.mark.parametrize("endpoint", [HTTP_ENDPOINT, HTTPS_ENDPOINT])
def test_a_missing_ca_file_fails_either_endpoint_naming_key_and_file(
    tmp_path: Path, endpoint: str
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"^api\.ca_bundle: cannot read ") as caught:
        route_tls(ApiConfig(ca_bundle=str(missing)), {}, endpoint)
    assert str(missing) in str(caught.value)
    with pytest.raises(ConfigError, match=r"^SSL_CERT_FILE: cannot read ") as caught:
        route_tls(ApiConfig(), {"SSL_CERT_FILE": str(missing)}, endpoint)
    assert str(missing) in str(caught.value)


# --- real crawls -------------------------------------------------------------------------------


class Run:
    """One `crawler crawl` through the real CLI, in-process, with its output kept."""

    def __init__(self, config: Path, targets: Path, environ: Mapping[str, str], *args: str):
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        started = time.monotonic()
        self.code = main(
            ["crawl", "--config", str(config), "--targets", str(targets), "--no-progress", *args],
            Io(environ=dict(environ), stdout=self.stdout, stderr=self.stderr),
        )
        self.duration_s = time.monotonic() - started


def _setup(
    tmp_path: Path, server: object, extra_api: str = "", **options: object
) -> tuple[Path, Path]:
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, extra_api=extra_api, **options)  # type: ignore[attr-defined, arg-type]
    targets = tmp_path / "targets.csv"
    server.sim.write_targets(targets)  # type: ignore[attr-defined]
    return config, targets


def _fetched(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "inventory.db") as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM crawl_results WHERE outcome = 'fetched'"
        ).fetchone()
    return int(count)


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy"])
def test_a_crawl_goes_through_http_proxy_and_stays_signed(
    simulator: SimulatorFactory, proxy: ForwardProxy, tmp_path: Path, name: str
) -> None:
    server = simulator(images_per_region=5)
    config, targets = _setup(tmp_path, server)
    run = Run(config, targets, crawl_environ() | {name: proxy.url})
    assert run.code == 0, run.stderr.getvalue()
    assert _fetched(tmp_path) == 20
    # Every request went through the proxy, and the target host's signature held through it.
    assert len(proxy.requests) == server.sim.stats.requests == 20
    assert all(url.startswith(f"{server.url}/v1/regions/") for url in proxy.requests)
    assert server.sim.stats.auth_failures == 0
    assert f"connecting through the proxy {proxy.url} (from {name})" in run.stderr.getvalue()


@pytest.mark.parametrize("name", ["NO_PROXY", "no_proxy"])
def test_no_proxy_sends_the_crawl_past_the_proxy(
    simulator: SimulatorFactory, proxy: ForwardProxy, tmp_path: Path, name: str
) -> None:
    server = simulator(images_per_region=5)
    config, targets = _setup(tmp_path, server)
    environ = crawl_environ() | {"HTTP_PROXY": proxy.url, name: "localhost,127.0.0.1"}
    run = Run(config, targets, environ)
    assert run.code == 0, run.stderr.getvalue()
    assert _fetched(tmp_path) == 20
    assert proxy.requests == [] and proxy.tunnels == [] and proxy.authorizations == []


def test_an_https_crawl_tunnels_through_https_proxy_with_connect(
    simulator: SimulatorFactory, proxy: ForwardProxy, tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = simulator(tls=tls_files.server_context(), images_per_region=5)
    assert server.url.startswith("https://127.0.0.1:")
    config, targets = _setup(tmp_path, server, f'ca_bundle = "{tls_files.cert}"')
    run = Run(config, targets, crawl_environ() | {"HTTPS_PROXY": proxy.url})
    assert run.code == 0, run.stderr.getvalue()
    assert _fetched(tmp_path) == 20
    assert proxy.tunnels and set(proxy.tunnels) == {urlsplit(server.url).netloc}
    assert proxy.requests == []  # nothing went through in the clear
    assert server.sim.stats.requests == 20 and server.sim.stats.auth_failures == 0


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_api_proxy_overrides_the_environment_and_its_password_is_never_logged(
    simulator: SimulatorFactory, tls_files: TlsFiles, tmp_path: Path, https: bool
) -> None:
    password = "pr0xy-pa$$word"
    expected = "Basic " + base64.b64encode(f"crawler:{password}".encode()).decode()
    guarded = ForwardProxy(require_auth=expected)
    try:
        server = simulator(tls=tls_files.server_context() if https else None, images_per_region=5)
        port = urlsplit(guarded.url).port
        api = f'proxy = "http://crawler:pr0xy-pa%24%24word@127.0.0.1:{port}"'
        config, targets = _setup(tmp_path, server, f'{api}\nca_bundle = "{tls_files.cert}"')
        # The environment points at a dead proxy and exempts the host: [api] proxy wins anyway.
        dead = f"http://127.0.0.1:{_closed_port()}"
        environ = crawl_environ() | {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "NO_PROXY": "*"}
        run = Run(config, targets, environ, "--log-level", "debug")
        assert run.code == 0, run.stderr.getvalue()
        assert _fetched(tmp_path) == 20
        if https:
            assert guarded.tunnels and guarded.requests == []
        else:
            assert len(guarded.requests) == 20 and guarded.tunnels == []
        assert set(guarded.authorizations) == {expected}
        output = run.stderr.getvalue() + run.stdout.getvalue()
        assert f"connecting through the proxy {guarded.url} (from api.proxy)" in output
        assert password not in output and "pr0xy-pa%24" not in output
    finally:
        guarded.close()


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_a_proxy_that_refuses_its_credentials_ends_the_run_with_exit_3(
    simulator: SimulatorFactory, tls_files: TlsFiles, tmp_path: Path, https: bool
) -> None:
    guarded = ForwardProxy(require_auth="Basic " + base64.b64encode(b"crawler:right").decode())
    try:
        server = simulator(tls=tls_files.server_context() if https else None, images_per_region=5)
        port = urlsplit(guarded.url).port
        api = f'proxy = "http://crawler:wrong-pw@127.0.0.1:{port}"'
        config, targets = _setup(tmp_path, server, f'{api}\nca_bundle = "{tls_files.cert}"')
        run = Run(config, targets, crawl_environ())
        assert run.code == 3, run.stderr.getvalue()
        assert "the proxy refused its credentials" in run.stderr.getvalue()
        assert "wrong-pw" not in run.stderr.getvalue()
        assert len(guarded.authorizations) == 1  # the first request goes alone; nothing follows
        assert server.sim.stats.requests == 0
    finally:
        guarded.close()


def test_an_https_crawl_trusts_the_certificate_through_ca_bundle(
    simulator: SimulatorFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = simulator(tls=tls_files.server_context(), images_per_region=5)
    config, targets = _setup(tmp_path, server, 'ca_bundle = "cert.pem"')
    (tmp_path / "cert.pem").write_bytes(tls_files.cert.read_bytes())  # relative to the config
    run = Run(config, targets, crawl_environ())
    assert run.code == 0, run.stderr.getvalue()
    assert _fetched(tmp_path) == 20


def test_an_https_crawl_trusts_the_certificate_through_ssl_cert_file(
    simulator: SimulatorFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = simulator(tls=tls_files.server_context(), images_per_region=5)
    config, targets = _setup(tmp_path, server)
    run = Run(config, targets, crawl_environ() | {"SSL_CERT_FILE": str(tls_files.cert)})
    assert run.code == 0, run.stderr.getvalue()
    assert _fetched(tmp_path) == 20


def test_an_untrusted_certificate_ends_the_run_at_once_with_exit_3(
    simulator: SimulatorFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = simulator(tls=tls_files.server_context(), images_per_region=50)
    # Many attempts with long backoffs: a retried certificate failure would take minutes.
    config, targets = _setup(
        tmp_path, server, max_attempts=10, initial_backoff_s=5.0, max_backoff_s=60.0
    )
    run = Run(config, targets, crawl_environ())
    assert run.code == 3, run.stderr.getvalue()
    assert run.duration_s < 30  # generous: it takes one TLS handshake
    message = run.stderr.getvalue()
    assert "the TLS certificate of 127.0.0.1:" in message
    assert "self-signed certificate" in message  # OpenSSL's reason
    assert "ca_bundle" in message  # and what to do about it
    assert server.sim.stats.requests == 0
    with sqlite3.connect(tmp_path / "inventory.db") as connection:
        status, text = connection.execute("SELECT status, message FROM crawl_runs").fetchone()
    assert status == "failed" and "self-signed certificate" in text


def test_a_certificate_for_another_host_is_refused_naming_the_mismatch(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # Trusted (it is in ca_bundle), but issued to localhost only, not to 127.0.0.1.
    other = TlsFiles(tmp_path / "tls", subject_alt_name="DNS:localhost")
    server = simulator(tls=other.server_context(), images_per_region=5)
    config, targets = _setup(tmp_path, server, f'ca_bundle = "{other.cert}"')
    run = Run(config, targets, crawl_environ())
    assert run.code == 3, run.stderr.getvalue()
    assert "IP address mismatch" in run.stderr.getvalue()
    assert "ca_bundle" not in run.stderr.getvalue()  # a CA bundle would not help here


def test_api_config_repr_hides_the_proxy_password() -> None:
    assert "hunter2" not in repr(ApiConfig(proxy="http://me:hunter2@proxy.corp:3128"))


def test_a_certificate_failure_through_a_proxy_is_not_retried(
    simulator: SimulatorFactory, proxy: ForwardProxy, tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = simulator(tls=tls_files.server_context(), images_per_region=50)
    config, targets = _setup(tmp_path, server, max_attempts=6)
    run = Run(config, targets, crawl_environ() | {"HTTPS_PROXY": proxy.url})
    assert run.code == 3, run.stderr.getvalue()
    assert "self-signed certificate" in run.stderr.getvalue()
    assert len(proxy.tunnels) == 1  # the run's first request goes alone, and is not retried


def test_tls_to_a_plain_http_server_is_a_dead_endpoint_exit_3(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Not a certificate problem but a handshake that cannot work: the dead-endpoint rule."""
    server = simulator(images_per_region=50)
    config, targets = _setup(tmp_path, server)
    https = server.url.replace("http://", "https://")
    config.write_text(config.read_text().replace(server.url, https))
    run = Run(config, targets, crawl_environ())
    assert run.code == 3, run.stderr.getvalue()
    message = run.stderr.getvalue()
    assert "endpoint unreachable" in message and "wrong version number" in message.lower()
    assert run.duration_s < 60  # generous: about 50 quick handshake failures
    assert server.sim.stats.requests == 0


def test_a_missing_ca_bundle_is_exit_2_before_anything_is_sent(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=5)
    config, targets = _setup(tmp_path, server, 'ca_bundle = "missing.pem"')
    run = Run(config, targets, crawl_environ())
    assert run.code == 2
    assert f"api.ca_bundle: cannot read {tmp_path / 'missing.pem'}" in run.stderr.getvalue()
    assert server.sim.stats.requests == 0


def test_a_missing_ssl_cert_file_is_exit_2_for_an_http_endpoint_too(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=5)  # plain http: no TLS context is ever built
    config, targets = _setup(tmp_path, server)
    missing = tmp_path / "gone.pem"
    run = Run(config, targets, crawl_environ() | {"SSL_CERT_FILE": str(missing)})
    assert run.code == 2
    assert f"SSL_CERT_FILE: cannot read {missing}" in run.stderr.getvalue()
    assert server.sim.stats.requests == 0


@pytest.mark.parametrize("key", ["verify_ssl = false", "insecure = true", "ssl_verify = false"])
def test_no_config_key_turns_verification_off(
    simulator: SimulatorFactory, tls_files: TlsFiles, tmp_path: Path, key: str
) -> None:
    server = simulator(tls=tls_files.server_context(), images_per_region=5)
    config, targets = _setup(tmp_path, server, key)
    run = Run(config, targets, crawl_environ())
    assert run.code == 2
    assert "unknown key" in run.stderr.getvalue()
    assert server.sim.stats.requests == 0
