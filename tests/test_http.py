"""Tests for `crawler.http`, the crawler's own HTTP/1.1 client, through `ApiClient`.

Raw asyncio servers on loopback send exactly the bytes each test needs (keep-alive, chunks,
bodies read to the end of the connection, hostile heads and bodies), counting connections, so
that reuse and its refusal are seen on the wire; the simulator behind a real forward proxy
covers CONNECT and TLS. Nothing of the transport is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crawler.client import ApiClient, open_session
from crawler.config import ApiConfig
from crawler.errors import (
    ApiError,
    BadBodyError,
    CertificateError,
    PermanentApiError,
    TransientApiError,
)
from crawler.http import HttpSession, Origin
from crawler.network import Proxy, tls_context
from crawler.signer import Signer
from tests.conftest import SECRET_KEY, SimulatorFactory, TlsFiles
from tests.test_client import IMAGE, MIB, REGION, image_doc, image_error, make_client
from tests.test_network import ForwardProxy

BODY = json.dumps(image_doc()).encode()


def answer(
    body: bytes = BODY, *, status: str = "200 OK", version: str = "1.1", extra: str = ""
) -> bytes:
    """A Content-Length response."""
    head = f"HTTP/{version} {status}\r\nContent-Type: application/json\r\n{extra}"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(*pieces: bytes, trailer: bytes = b"", extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
    framed = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    return (
        (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
        + framed
        + b"0\r\n"
        + trailer
        + b"\r\n"
    )


@dataclass
class Reply:
    """What the server does with one request: send `data`, wait `pause_s`, send `then`; then
    hang up (`close`), or keep waiting until the client hangs up (`hold`)."""

    data: bytes
    close: bool = False
    hold: bool = False
    pause_s: float = 0.0
    then: bytes = b""


@dataclass
class Script:
    """A raw server's replies, one per request in arrival order, and what it received."""

    replies: list[Reply]
    url: str = ""
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, head)
    connections: int = 0

    @property
    def connection_of_each_request(self) -> list[int]:
        return [number for number, _ in self.requests]


@contextlib.asynccontextmanager
async def scripted(*replies: Reply) -> AsyncIterator[Script]:
    """A raw HTTP server on 127.0.0.1 answering the requests with `replies`, in order."""
    script = Script(list(replies))
    handlers: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        writers.append(writer)
        script.connections += 1
        number = script.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                script.requests.append((number, head))
                reply = script.replies.pop(0)
                writer.write(reply.data)
                await writer.drain()
                if reply.pause_s:
                    await asyncio.sleep(reply.pause_s)
                if reply.then:
                    writer.write(reply.then)
                    await writer.drain()
                if reply.hold:
                    await reader.read()
                if reply.close or reply.hold:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    script.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield script
    finally:
        server.close()
        for writer in writers:  # a handler still reading or holding sees the end and returns
            writer.close()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 10)
        await server.wait_closed()


@pytest.fixture
async def session() -> AsyncIterator[HttpSession]:
    async with open_session(concurrency=4) as opened:
        yield opened


async def fetch_twice(session: HttpSession, script: Script) -> ApiError | None:
    """A first request (its error, if any), then a healthy second one."""
    client = make_client(session, script.url, timeout_s=5)
    first: ApiError | None = None
    try:
        await client.describe_image(REGION, IMAGE)
    except ApiError as exc:
        first = exc
    assert (await client.describe_image(REGION, IMAGE)).image["imageId"] == IMAGE
    return first


# --- keep-alive: reuse, and when a connection is never reused ----------------------------------


async def test_a_keep_alive_connection_carries_every_request(session: HttpSession) -> None:
    async with scripted(*(Reply(answer()) for _ in range(4))) as script:
        client = make_client(session, script.url)
        for _ in range(4):
            await client.describe_image(REGION, IMAGE)
    assert script.connection_of_each_request == [1, 1, 1, 1]


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(Reply(answer(extra="Connection: close\r\n")), id="connection-close"),
        pytest.param(Reply(answer(version="1.0")), id="http-1.0"),
        pytest.param(Reply(answer() + answer(b'{"stray": 1}')), id="stray-bytes-after"),
        pytest.param(Reply(chunked(BODY) + b"HTTP/1.1 200 OK\r\n"), id="stray-bytes-after-chunks"),
    ],
)
async def test_a_connection_is_not_reused_after_a_response_that_forbids_it(
    session: HttpSession, first: Reply
) -> None:
    async with scripted(first, Reply(answer())) as script:
        assert await fetch_twice(session, script) is None
    assert script.connection_of_each_request == [1, 2]


@pytest.mark.parametrize(
    ("first", "error_status"),
    [
        pytest.param(Reply(answer()[:-5], hold=True), "TIMEOUT", id="timeout"),
        pytest.param(
            Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9999999\r\n\r\n", hold=True),
            "RESPONSE_TOO_LARGE", id="declared-too-large",
        ),
        pytest.param(
            Reply(chunked(b"x" * 3000), hold=True), "RESPONSE_TOO_LARGE", id="chunks-too-large"
        ),
        pytest.param(Reply(b"HTTP/1.1 2OO OK\r\n\r\n", hold=True), "HTTP_ERROR", id="malformed"),
        pytest.param(
            Reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", hold=True),
            "PAYLOAD_ERROR", id="bad-chunk",
        ),
    ],
)  # fmt: skip
async def test_a_connection_is_dropped_after_a_failed_exchange(
    first: Reply, error_status: str
) -> None:
    async with open_session(concurrency=1) as session, scripted(first, Reply(answer())) as script:
        client = make_client(session, script.url, timeout_s=0.5, max_response_bytes=2000)
        error = await image_error(client)
        assert error.error_status == error_status
        assert (await client.describe_image(REGION, IMAGE)).image["imageId"] == IMAGE
    assert script.connection_of_each_request == [1, 2]


async def test_a_body_read_to_the_end_of_the_connection_is_whole_and_not_reused(
    session: HttpSession,
) -> None:
    no_length = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
    first = Reply(no_length + BODY[:10], pause_s=0.05, then=BODY[10:], close=True)
    async with scripted(first, Reply(answer())) as script:
        assert await fetch_twice(session, script) is None
    assert script.connection_of_each_request == [1, 2]


async def test_a_body_read_to_the_end_is_capped(session: HttpSession) -> None:
    no_length = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
    async with scripted(Reply(no_length + b" " * 5000, hold=True)) as script:
        error = await image_error(make_client(session, script.url, max_response_bytes=4999))
    assert (type(error), error.error_status) == (PermanentApiError, "RESPONSE_TOO_LARGE")
    assert "sent more than 4999 bytes" in error.message


@pytest.mark.parametrize("pause_s", [0, 0.05], ids=["noticed-on-sending", "noticed-while-idle"])
async def test_a_server_closing_an_idle_connection_costs_no_failure(
    session: HttpSession, pause_s: float
) -> None:
    # The server hangs up after answering, without saying Connection: close. Sent at once, the
    # next request goes out on that connection before its end is read, and is sent again on a
    # new one; after a pause the pool has seen the end and opens a new one straight away.
    async with scripted(Reply(answer(), close=True), Reply(answer())) as script:
        client = make_client(session, script.url)
        await client.describe_image(REGION, IMAGE)
        await asyncio.sleep(pause_s)
        assert (await client.describe_image(REGION, IMAGE)).request_id == "rid-ok"
    assert script.connection_of_each_request == [1, 2]


async def test_an_interim_100_answer_is_skipped(session: HttpSession) -> None:
    async with scripted(Reply(b"HTTP/1.1 100 Continue\r\n\r\n" + answer())) as script:
        response = await make_client(session, script.url).describe_image(REGION, IMAGE)
    assert response.request_id == "rid-ok"


# --- framing: chunks, trailers, lengths ---------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(chunked(BODY), id="one-chunk"),
        pytest.param(chunked(*(BODY[n : n + 7] for n in range(0, len(BODY), 7))), id="many"),
        pytest.param(chunked(BODY, trailer=b"x-checksum: 1\r\nx-more: 2\r\n"), id="trailers"),
        pytest.param(
            chunked().replace(b"0\r\n", b"%x;name=value\r\n%s\r\n0\r\n" % (len(BODY), BODY)),
            id="extension",
        ),
        pytest.param(
            chunked(BODY).replace(b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200\r\n"), id="no-reason"
        ),
    ],
)  # fmt: skip
async def test_chunked_bodies_are_read_whole(session: HttpSession, reply: bytes) -> None:
    pieces = [reply[n : n + 5] for n in range(0, len(reply), 5)]  # in many small reads
    first = Reply(pieces[0], pause_s=0.02, then=b"".join(pieces[1:]))
    async with scripted(first, Reply(answer())) as script:
        assert await fetch_twice(session, script) is None
    assert script.connection_of_each_request == [1, 1]


@pytest.mark.parametrize(
    "framed",
    [
        pytest.param(b"zz\r\n" + BODY, id="not-hex"),
        pytest.param(b"0x10\r\n" + BODY[:16] + b"\r\n0\r\n\r\n", id="0x-prefix"),
        pytest.param(b"1_0\r\n" + BODY[:16] + b"\r\n0\r\n\r\n", id="underscore"),
        pytest.param(b"-1\r\n", id="negative"),
        pytest.param(b"\r\n", id="empty-size"),
        pytest.param(b"4\r\n" + BODY[:10] + b"\r\n0\r\n\r\n", id="longer-than-its-size"),
        pytest.param(b"1" * 5000, id="endless-size-line"),
        pytest.param(b"4\r\n" + BODY[:4] + b"\r\n0\r\nno colon here\r\n\r\n", id="bad-trailer"),
        pytest.param(b"0\r\n" + b"x-trailer: 1\r\n" * 6000, id="endless-trailer"),
    ],
)
async def test_malformed_chunks_are_payload_errors(session: HttpSession, framed: bytes) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nx-jdcloud-request-id: rid-chunk\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    async with scripted(Reply(head + framed, hold=True)) as script:
        error = await image_error(make_client(session, script.url, timeout_s=5))
    assert (type(error), error.error_status, error.http_status) == (
        TransientApiError, "PAYLOAD_ERROR", 200
    )  # fmt: skip
    assert error.request_id == "rid-chunk"


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(chunked(BODY)[:-20], id="chunked"),
        pytest.param(answer()[:-20], id="content-length"),
    ],
)
async def test_a_connection_closed_mid_body_is_a_payload_error(
    session: HttpSession, cut: bytes
) -> None:
    async with scripted(Reply(cut, close=True)) as script:
        error = await image_error(make_client(session, script.url))
    assert (error.error_status, error.http_status) == ("PAYLOAD_ERROR", 200)
    assert "the connection closed" in error.message


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", id="oversize"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"x-a: b\r\n" * 9000, id="endless-headers"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" * 5000, id="endless-interim-answers"),
        pytest.param(b"HTTP/1.1 2OO OK\r\n\r\n", id="status-not-digits"),
        pytest.param(b"HTTP/2 200\r\n\r\n", id="not-http-1"),
        pytest.param(b"SMTP ready\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", id="header-without-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n", id="space-in-name"),
        pytest.param(b"HTTP/1.1 200 OK\r\na: b\r\n folded\r\n\r\n", id="folded-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\na: b\nc: d\r\n\r\n", id="bare-lf"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", id="negative-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", id="length-list"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            id="two-lengths",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="length-and-chunked",
        ),
    ],
)
async def test_malformed_heads_are_http_errors(session: HttpSession, head: bytes) -> None:
    async with scripted(Reply(head, hold=True)) as script:
        error = await image_error(make_client(session, script.url, timeout_s=5))
    assert (type(error), error.error_status, error.http_status) == (
        TransientApiError, "HTTP_ERROR", None
    )  # fmt: skip
    assert "MalformedResponse" in error.message


async def test_a_connection_closed_within_the_headers_is_a_connection_error(
    session: HttpSession,
) -> None:
    async with scripted(Reply(b"HTTP/1.1 200 OK\r\nContent-Le", close=True)) as script:
        error = await image_error(make_client(session, script.url))
    assert (error.error_status, error.http_status) == ("CONNECTION_ERROR", None)


async def test_a_body_trickling_past_the_time_limit_times_out(session: HttpSession) -> None:
    head = answer()[: -len(BODY)]
    async with scripted(Reply(head + BODY[:5], pause_s=3, then=BODY[5:])) as script:
        error = await image_error(make_client(session, script.url, timeout_s=0.3))
    assert (error.error_status, error.http_status) == ("TIMEOUT", None)


async def test_no_content_statuses_have_no_body(session: HttpSession) -> None:
    # A 204 ends with its headers even though it names no length; the next answer follows.
    async with scripted(Reply(b"HTTP/1.1 204 No Content\r\n\r\n"), Reply(answer())) as script:
        error = await fetch_twice(session, script)
    assert isinstance(error, BadBodyError) and error.http_status == 204
    assert script.connection_of_each_request == [1, 1]


# --- compressed bodies ---------------------------------------------------------------------------


def deflated(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize("wbits", [15, -15], ids=["zlib-wrapped", "raw"])
async def test_deflate_bodies_are_inflated(session: HttpSession, wbits: int) -> None:
    reply = answer(deflated(BODY, wbits), extra="Content-Encoding: deflate\r\n")
    async with scripted(Reply(reply)) as script:
        response = await make_client(session, script.url).describe_image(REGION, IMAGE)
    assert response.request_id == "rid-ok"
    assert b"accept-encoding: gzip, deflate" in script.requests[0][1].lower()


@pytest.mark.parametrize(
    "body",
    [deflated(BODY, 31)[:-12], b"\x1f\x8b not gzip at all"],
    ids=["cut-short", "not-gzip"],
)
async def test_a_broken_gzip_body_is_a_payload_error(session: HttpSession, body: bytes) -> None:
    async with scripted(Reply(answer(body, extra="Content-Encoding: gzip\r\n"))) as script:
        error = await image_error(make_client(session, script.url))
    assert (error.error_status, error.http_status) == ("PAYLOAD_ERROR", 200)


# --- the request on the wire ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers"),
    [("/x", {"X-Token": "token\r\nX-Evil: 1"}), ("/x HTTP/1.1\r\nX-Evil: 1", {})],
    ids=["header", "target"],
)
async def test_a_line_break_is_never_sent(
    session: HttpSession, target: str, headers: dict[str, str]
) -> None:
    async with scripted(Reply(answer())) as script:
        port = int(script.url.rsplit(":", 1)[1])
        with pytest.raises(ValueError, match="CR or LF"):
            await session.get(
                Origin("http", "127.0.0.1", port), target, headers,
                timeout_s=5, max_body_bytes=MIB,
            )  # fmt: skip
    assert script.requests == []


# --- through a forward proxy, with TLS ----------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    started = ForwardProxy()
    yield started
    started.close()


async def test_https_through_a_proxy_tunnels_once_and_keeps_the_tunnel_alive(
    simulator: SimulatorFactory, proxy: ForwardProxy, tls_files: TlsFiles
) -> None:
    server = simulator(tls=tls_files.server_context(), images_per_region=5)
    tls = tls_context(ApiConfig(ca_bundle=str(tls_files.cert)), {})
    image_id = str(server.sim.inventory.images[REGION][0]["imageId"])
    async with open_session(concurrency=1, tls=tls) as session:
        client = ApiClient(
            session, server.url, Signer("TESTAK", SECRET_KEY),
            timeout_s=10, max_response_bytes=MIB, proxy=Proxy(proxy.url, "test", "me", "pw"),
        )  # fmt: skip
        for _ in range(3):
            assert (await client.describe_image(REGION, image_id)).image["imageId"] == image_id
    assert len(proxy.tunnels) == 1  # one CONNECT, three requests inside it
    assert proxy.requests == []
    assert proxy.authorizations == ["Basic bWU6cHc="]
    assert server.sim.stats.requests == 3 and server.sim.stats.auth_failures == 0


async def test_a_proxy_refusing_the_tunnel_is_not_a_certificate_or_auth_error(
    tls_files: TlsFiles,
) -> None:
    refusal = Reply(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", close=True)
    async with scripted(refusal) as fake_proxy, open_session(concurrency=1) as session:
        client = ApiClient(
            session, "https://127.0.0.1:9", Signer("AK", "SK"), timeout_s=5,
            max_response_bytes=MIB, proxy=Proxy(fake_proxy.url, "test"),
        )  # fmt: skip
        error = await image_error(client)
    assert (type(error), error.error_status) == (TransientApiError, "HTTP_ERROR")
    assert "the proxy answered the CONNECT with HTTP 502" in error.message
    assert fake_proxy.requests[0][1].startswith(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n")


async def test_the_host_name_is_checked_against_the_certificate(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    named = TlsFiles(tmp_path / "tls", subject_alt_name="DNS:localhost")  # a name, no address
    server = simulator(tls=named.server_context(), images_per_region=5)
    image_id = str(server.sim.inventory.images[REGION][0]["imageId"])
    context = ssl.create_default_context(cafile=str(named.cert))
    by_name = server.url.replace("127.0.0.1", "localhost")
    async with open_session(concurrency=1, tls=context) as session:
        signer = Signer("TESTAK", SECRET_KEY)
        client = ApiClient(session, by_name, signer, timeout_s=5, max_response_bytes=MIB)
        assert (await client.describe_image(REGION, image_id)).image["imageId"] == image_id
        client = ApiClient(session, server.url, signer, timeout_s=5, max_response_bytes=MIB)
        error = await image_error(client, image_id)
    assert (type(error), error.error_status) == (CertificateError, "TLS_CERTIFICATE")
    assert f"the TLS certificate of 127.0.0.1:{server.url.rsplit(':', 1)[1]}" in error.message
    assert "IP address mismatch" in error.message
