"""Tests for `crawler.client`: one attempt, classified, against real servers on loopback.

Two kinds of server: the project's simulator (signing, 200/404/401/429/5xx, paging), and small
purpose-built aiohttp (or raw asyncio) servers for what the simulator never does: gateway
no-route 404s, quotas, HTML error pages, bad and oversized bodies, slow and vanishing servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web

from crawler.client import USER_AGENT, ApiClient, _parse_endpoint, new_nonce, open_session
from crawler.errors import (
    ApiError,
    AuthError,
    BadBodyError,
    ConfigError,
    ImageNotFoundError,
    PermanentApiError,
    RateLimitedError,
    RouteNotFoundError,
    TransientApiError,
)
from crawler.http import ConnectionFailed, HttpSession
from crawler.models import Target
from crawler.signer import Signer, format_date
from crawler.simulator import RunningSimulator, Simulator, SimulatorConfig, start_simulator
from crawler.simulator.verify import verify_request

AK = "SIMULATORAK"
SK = "SIMULATORSK"
REGION = "cn-north-1"
IMAGE = "img-m5s0ed7ldz"
MIB = 1024 * 1024
FIXED_AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
FIXED_NONCE = "00000000-0000-4000-8000-000000000000"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as a stub server received it."""

    path_qs: str
    path: str
    query: str
    host: str
    headers: dict[str, str]
    peer_port: int


@dataclass
class Stub:
    """A purpose-built server: its URL and every request it received."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Stub]:
    """Serve `handler` for every path on 127.0.0.1, a free port, recording each request."""
    stub = Stub()

    async def recording(request: web.Request) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        stub.seen.append(
            Seen(
                request.raw_path,
                path,
                query,
                request.host,
                dict(request.headers),
                peer[1] if peer else 0,
            )
        )
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recording)
    # Cancel a handler whose client hung up, so a sleeping handler cannot hold up clean-up.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stub.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield stub
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_raw(reply: bytes, *, hold_open: bool = False) -> AsyncIterator[str]:
    """A raw TCP server that answers any request with `reply` bytes, then hangs up.

    With `hold_open` it waits for the client to hang up first, so a client that tried to read
    the rest of a declared body would wait until its own timeout.
    """
    done: list[asyncio.Event] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        finished = asyncio.Event()
        done.append(finished)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            if hold_open:
                await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            finished.set()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()
        for finished in done:
            await asyncio.wait_for(finished.wait(), 5)


@contextlib.asynccontextmanager
async def simulate(**settings: Any) -> AsyncIterator[RunningSimulator]:
    """The project's simulator with `settings`, on a free loopback port."""
    sim = Simulator(
        SimulatorConfig(regions=(REGION, "cn-east-2"), images_per_region=30, **settings)
    )
    running = await start_simulator(sim)
    try:
        yield running
    finally:
        await running.close()


def json_reply(status: int, doc: object, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(doc, status=status, headers=headers)

    return handler


def raw_reply(status: int, body: bytes, content_type: str, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    return handler


def envelope(status: int, code: str, message: str, request_id: str | None = "rid-body") -> object:
    doc: dict[str, object] = {"error": {"code": status, "status": code, "message": message}}
    if request_id is not None:
        doc["requestId"] = request_id
    return doc


def image_doc(image_id: str = IMAGE, request_id: str = "rid-ok") -> dict[str, object]:
    return {"requestId": request_id, "result": {"image": {"imageId": image_id, "name": "n"}}}


# --- clients -----------------------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[HttpSession]:
    async with open_session(concurrency=8) as opened:
        yield opened


def make_client(
    session: HttpSession,
    url: str,
    *,
    secret_key: str = SK,
    timeout_s: float = 10.0,
    max_response_bytes: int = MIB,
    clock: Callable[[], datetime] | None = None,
    nonce: Callable[[], str] | None = None,
) -> ApiClient:
    optional: dict[str, Any] = {}
    if clock is not None:
        optional["clock"] = clock
    if nonce is not None:
        optional["nonce"] = nonce
    return ApiClient(
        session,
        url,
        Signer(AK, secret_key),
        timeout_s=timeout_s,
        max_response_bytes=max_response_bytes,
        **optional,
    )


async def image_error(client: ApiClient, image_id: str = IMAGE) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await client.describe_image(REGION, image_id)
    return caught.value


def existing(running: RunningSimulator, count: int, region: str = REGION) -> list[str]:
    return [str(image["imageId"]) for image in running.sim.inventory.images[region][:count]]


# --- the session -------------------------------------------------------------------------------


async def test_open_session_opens_no_more_connections_than_the_concurrency() -> None:
    in_flight: list[int] = [0]
    most: list[int] = [0]

    async def slow(request: web.Request) -> web.StreamResponse:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0.05)
        in_flight[0] -= 1
        return web.json_response(image_doc(), headers={"Set-Cookie": "a=b"})

    async with open_session(concurrency=3) as opened, serve(slow) as stub:
        assert (opened.concurrency, opened.user_agent) == (3, USER_AGENT)
        client = make_client(opened, stub.url)
        await asyncio.gather(*(client.describe_image(REGION, IMAGE) for _ in range(12)))
    assert most[0] == 3
    assert len({seen.peer_port for seen in stub.seen}) == 3  # each reused, none beyond three
    assert all("Cookie" not in seen.headers for seen in stub.seen)


def test_new_nonce_is_a_fresh_uuid4_string() -> None:
    nonces = [new_nonce() for _ in range(2000)]
    assert len(set(nonces)) == len(nonces)
    for nonce in nonces:
        parsed = uuid.UUID(nonce)
        assert str(parsed) == nonce
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


async def test_open_session_refuses_no_concurrency() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        open_session(concurrency=0)


async def test_requests_reuse_one_keep_alive_connection(session: HttpSession) -> None:
    async with serve(json_reply(200, image_doc())) as stub:
        client = make_client(session, stub.url)
        for _ in range(5):
            await client.describe_image(REGION, IMAGE)
    assert len({seen.peer_port for seen in stub.seen}) == 1
    assert client.requests_sent == 5


# --- against the simulator ---------------------------------------------------------------------


async def test_describe_image_returns_the_image(session: HttpSession) -> None:
    async with simulate() as running:
        image_id = existing(running, 1)[0]
        client = make_client(session, running.url)
        response = await client.describe_image(REGION, image_id)
    assert response.image == running.sim.inventory.images[REGION][0]
    assert response.http_status == 200
    assert response.request_id is not None and len(response.request_id) == 32
    assert response.remaining_minute is None
    assert client.requests_sent == 1
    assert running.sim.stats.auth_failures == 0


# Bodies are parsed by orjson where it reads exactly what json.loads reads, else by json.loads:
# each of these answers must come back as json.loads reads it (an integer beyond 64 bits exact,
# not the float orjson would make of it; NaN, infinities, lone surrogates, UTF-16, deep lists).
READ_AS_JSON_READS = [
    b'{"result":{"image":{"imageId":"%s","sizeMB":18446744073709551617,"n":-9223372036854775809}}}',
    b'{"result":{"image":{"imageId":"%s","id":"12345678901234567890","f":1e-7}}}',
    b'{"result":{"image":{"imageId":"%s","a":NaN,"b":-Infinity,"c":1e400}}}',
    b'{"result":{"image":{"imageId":"%s","name":"a\\ud800b"}}}',
    b'{"result":{"image":{"imageId":"%s","x":' + b"[" * 500 + b"]" * 500 + b"}}}",
    b'\xef\xbb\xbf{"result":{"image":{"imageId":"%s"}}}',
]


@pytest.mark.parametrize("body", READ_AS_JSON_READS)
async def test_bodies_are_read_exactly_as_json_loads_reads_them(
    session: HttpSession, body: bytes
) -> None:
    body = body.replace(b"%s", IMAGE.encode())
    expected = json.loads(body)["result"]["image"]
    async with serve(raw_reply(200, body, JSON_TYPE)) as stub:
        response = await make_client(session, stub.url).describe_image(REGION, IMAGE)
    assert repr(response.image) == repr(expected)  # repr: NaN is not equal to itself
    utf16 = json.dumps({"result": {"image": {"imageId": IMAGE}}}).encode("utf-16")
    async with serve(raw_reply(200, utf16, JSON_TYPE)) as stub:
        response = await make_client(session, stub.url).describe_image(REGION, IMAGE)
    assert response.image == {"imageId": IMAGE}


async def test_simulator_accepts_date_and_nonce_signed(session: HttpSession) -> None:
    async with simulate() as running:
        image_id = existing(running, 1)[0]
        signer = Signer(AK, SK, version="JDCLOUD2")
        client = ApiClient(session, running.url + "/", signer, timeout_s=5, max_response_bytes=MIB)
        response = await client.describe_image(REGION, image_id)
    assert response.image["imageId"] == image_id


async def test_missing_image_is_image_not_found(session: HttpSession) -> None:
    async with simulate(missing_rate=0.5) as running:
        missing = running.sim.inventory.missing[REGION][0]
        error = await image_error(make_client(session, running.url), missing)
    assert type(error) is ImageNotFoundError
    assert (error.http_status, error.error_status) == (404, "NOT_FOUND")
    assert f"{REGION}/{missing}" in error.message
    assert error.request_id is not None


async def test_wrong_secret_is_auth_error_without_secrets(session: HttpSession) -> None:
    async with simulate() as running:
        client = make_client(session, running.url, secret_key="WRONGSECRETKEY")
        error = await image_error(client)
    assert type(error) is AuthError
    assert (error.http_status, error.error_status) == (401, "ACCESS_ERROR")
    assert "credentials were rejected" in error.message
    assert "sign result is not same" in error.message
    for text in (error.message, str(error), repr(error), repr(client)):
        assert "WRONGSECRETKEY" not in text
        assert "Signature=" not in text
        assert re.search(r"[0-9a-f]{64}", text) is None


async def test_throttle_is_rate_limited_with_retry_after(session: HttpSession) -> None:
    async with simulate(throttle_rate=1.0, retry_after_s=2.5) as running:
        error = await image_error(make_client(session, running.url), existing(running, 1)[0])
    assert type(error) is RateLimitedError
    assert (error.http_status, error.error_status) == (429, "RATE_LIMIT_EXCEEDED")
    assert error.retry_after_s == 2.5


async def test_minute_limit_reports_remaining_then_rate_limits(
    session: HttpSession,
) -> None:
    async with simulate(rate_limit_per_minute=3) as running:
        client = make_client(session, running.url)
        image_id = existing(running, 1)[0]
        remaining = [
            (await client.describe_image(REGION, image_id)).remaining_minute for _ in "abc"
        ]
        error = await image_error(client, image_id)
    assert remaining == [2, 1, 0]
    assert type(error) is RateLimitedError
    assert (error.error_status, error.remaining_minute) == ("HTTP_RATE_LIMIT_EXCEEDED", 0)


@pytest.mark.parametrize(
    ("settings", "status", "error_status"),
    [
        ({"rate_500": 1.0}, 500, "HTTP_INTERNAL_SERVER_ERROR"),
        ({"rate_503": 1.0}, 503, "HTTP_SERVICE_UNAVAILABLE"),
    ],
)
async def test_server_faults_are_transient(
    session: HttpSession, settings: dict[str, float], status: int, error_status: str
) -> None:
    async with simulate(**settings) as running:
        error = await image_error(make_client(session, running.url), existing(running, 1)[0])
    assert type(error) is TransientApiError
    assert (error.http_status, error.error_status) == (status, error_status)
    assert error.request_id is not None


async def test_describe_images_by_ids_skips_missing(session: HttpSession) -> None:
    async with simulate(missing_rate=0.5) as running:
        wanted = [*existing(running, 3), running.sim.inventory.missing[REGION][0]]
        page = await make_client(session, running.url).describe_images(REGION, ids=wanted)
        served = running.sim.stats.attempts
    assert [image["imageId"] for image in page.images] == wanted[:3]
    assert page.total_count == 3
    assert page.request_id is not None
    assert all(served[Target(REGION, image_id)] == 1 for image_id in wanted)


async def test_describe_images_pages_through_a_source(session: HttpSession) -> None:
    async with simulate() as running:
        client = make_client(session, running.url)
        public = [i for i in running.sim.inventory.images[REGION] if i["imageSource"] == "public"]
        pages = [
            await client.describe_images(REGION, image_source="public", page_number=n, page_size=10)
            for n in range(1, len(public) // 10 + 3)
        ]
    assert len(public) > 10  # so that it takes more than one page
    assert {page.total_count for page in pages} == {len(public)}
    assert [image for page in pages for image in page.images] == public
    assert pages[-1].images == []


async def test_describe_images_refused_parameter_is_permanent(
    session: HttpSession,
) -> None:
    async with simulate() as running:
        client = make_client(session, running.url)
        with pytest.raises(PermanentApiError) as caught:
            await client.describe_images(REGION, image_source="public", page_size=5)
    assert type(caught.value) is PermanentApiError
    assert (caught.value.http_status, caught.value.error_status) == (400, "OUT_OF_RANGE")
    assert f"describeImages {REGION}" in caught.value.message


# --- the request on the wire -------------------------------------------------------------------


async def test_request_is_signed_for_the_host_it_is_sent_to(
    session: HttpSession,
) -> None:
    async with serve(json_reply(200, image_doc())) as stub:
        client = make_client(session, stub.url, clock=lambda: FIXED_AT, nonce=lambda: FIXED_NONCE)
        await client.describe_image(REGION, IMAGE)
    seen = stub.seen[0]
    assert seen.path_qs == f"/v1/regions/{REGION}/images/{IMAGE}"
    assert seen.host == stub.url.removeprefix("http://")
    assert seen.headers["User-Agent"] == USER_AGENT
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["x-jdcloud-date"] == format_date(FIXED_AT) == "20240102T030405Z"
    assert seen.headers["x-jdcloud-nonce"] == FIXED_NONCE
    assert "Cookie" not in seen.headers
    assert verify(seen) is None


def verify(seen: Seen, secret_key: str = SK) -> str | None:
    return verify_request(
        method="GET",
        host=seen.host,
        path=seen.path,
        query=seen.query,
        headers=seen.headers,
        body=b"",
        secret_for=lambda access_key: secret_key if access_key == AK else None,
    )


async def test_describe_images_query_is_built_and_signed(session: HttpSession) -> None:
    doc = {"requestId": "r", "result": {"images": [], "totalCount": 0}}
    async with serve(json_reply(200, doc)) as stub:
        client = make_client(session, stub.url)
        page = await client.describe_images(
            "cn-east-2", ids=["img-b", "img-a"], image_source="public", page_number=2, page_size=50
        )
    assert (page.images, page.total_count) == ([], 0)
    seen = stub.seen[0]
    assert seen.path == "/v1/regions/cn-east-2/images"
    assert seen.query == "ids.1=img-b&ids.2=img-a&imageSource=public&pageNumber=2&pageSize=50"
    assert verify(seen) is None


@pytest.mark.parametrize(
    "call",
    [
        pytest.param({"region_id": "cn-north-1/../x", "image_id": IMAGE}, id="region-path"),
        pytest.param({"region_id": "CN-NORTH-1", "image_id": IMAGE}, id="region-case"),
        pytest.param({"region_id": "", "image_id": IMAGE}, id="region-empty"),
        pytest.param({"region_id": REGION, "image_id": "img-ABC"}, id="image-case"),
        pytest.param({"region_id": REGION, "image_id": "img-a?b=c"}, id="image-query"),
        pytest.param({"region_id": REGION, "image_id": "img-a\n"}, id="image-newline"),
        pytest.param({"region_id": REGION, "image_id": "img-" + "a" * 65}, id="image-long"),
        pytest.param({"region_id": REGION, "image_id": "img-%2e%2e"}, id="image-escape"),
        pytest.param({"region_id": REGION, "ids": ["img-a", "img-A"]}, id="ids-case"),
        pytest.param({"region_id": REGION, "ids": "img-a"}, id="ids-string"),
        pytest.param({"region_id": REGION, "ids": [f"img-{n}" for n in range(101)]}, id="ids-101"),
        pytest.param({"region_id": REGION, "image_source": "a&b=c"}, id="source-query"),
        pytest.param(
            {"region_id": REGION, "image_source": "public", "page_number": 0}, id="page-0"
        ),
        pytest.param({"region_id": REGION, "ids": ["img-a"], "page_number": True}, id="page-bool"),
        pytest.param({"region_id": REGION, "ids": ["img-a"], "page_size": "10"}, id="size-str"),
        pytest.param({"region_id": REGION, "ids": ["img-a"], "page_size": 101}, id="size-101"),
    ],
)
async def test_invalid_arguments_are_refused_before_sending(
    session: HttpSession, call: dict[str, Any]
) -> None:
    async with serve(json_reply(200, image_doc())) as stub:
        client = make_client(session, stub.url)
        with pytest.raises(PermanentApiError) as caught:
            if "image_id" in call:
                await client.describe_image(**call)
            else:
                await client.describe_images(**call)
    assert type(caught.value) is PermanentApiError
    assert "no request was sent" in caught.value.message
    assert (stub.seen, client.requests_sent) == ([], 0)


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://vm.jdcloud-api.com",
        "https://vm.jdcloud-api.com/v1",
        "https://vm.jdcloud-api.com?x=1",
        "https://user:pw@vm.jdcloud-api.com",
        "vm.jdcloud-api.com",
        "http://127.0.0.1:99999",
    ],
)
async def test_endpoint_must_be_a_bare_origin(session: HttpSession, endpoint: str) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        make_client(session, endpoint)


@pytest.mark.parametrize(
    ("endpoint", "parts"),
    [
        ("https://vm.jdcloud-api.com", ("https", "vm.jdcloud-api.com", "vm.jdcloud-api.com")),
        ("https://VM.jdcloud-api.com/", ("https", "vm.jdcloud-api.com", "vm.jdcloud-api.com")),
        ("http://127.0.0.1:8080", ("http", "127.0.0.1:8080", "127.0.0.1:8080")),
        # The SDK drops 80 and 443 from the signed host whatever the scheme, so the Host sent
        # must drop them too, though the connection still goes to that port.
        ("http://127.0.0.1:443", ("http", "127.0.0.1:443", "127.0.0.1")),
        (
            "https://vm.jdcloud-api.com:443",
            ("https", "vm.jdcloud-api.com:443", "vm.jdcloud-api.com"),
        ),
        ("http://[::1]:8080", ("http", "[::1]:8080", "[::1]:8080")),
    ],
)
def test_endpoint_gives_the_wire_authority_and_the_signed_host(
    endpoint: str, parts: tuple[str, str, str]
) -> None:
    assert _parse_endpoint(endpoint) == parts


# --- classification by purpose-built servers ---------------------------------------------------

NO_ROUTE = "no route and no API found with those values"
HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"

DEEP = b"[" * 200_000 + b"]" * 200_000
JSON_TYPE = "application/json"
CLASSIFIED = [
    pytest.param(
        json_reply(404, envelope(404, "NOT_FOUND", NO_ROUTE)),
        RouteNotFoundError, 404, "NOT_FOUND",
        id="404-no-route",
    ),
    pytest.param(
        raw_reply(404, b"404: Not Found", "text/plain"),
        RouteNotFoundError, 404, "HTTP_404",
        id="404-no-envelope",
    ),
    pytest.param(
        json_reply(404, envelope(404, "HTTP_NOT_FOUND", "gone")),
        RouteNotFoundError, 404, "HTTP_NOT_FOUND",
        id="404-unknown-status",
    ),
    pytest.param(
        json_reply(404, envelope(404, "RESOURCE_NOT_EXIST", f"image {IMAGE} does not exist")),
        ImageNotFoundError, 404, "RESOURCE_NOT_EXIST",
        id="404-resource-not-exist",
    ),
    pytest.param(
        json_reply(429, envelope(429, "QUOTA_EXCEEDED", "Image quota limit exceeded")),
        PermanentApiError, 429, "QUOTA_EXCEEDED",
        id="429-quota",
    ),
    pytest.param(
        json_reply(429, envelope(429, "HTTP_RATE_LIMIT_EXCEEDED", "minute rate limit exceeded")),
        RateLimitedError, 429, "HTTP_RATE_LIMIT_EXCEEDED",
        id="429-gateway-limit",
    ),
    pytest.param(
        raw_reply(429, b"", "text/plain"),
        RateLimitedError, 429, "HTTP_429",
        id="429-no-body",
    ),
    pytest.param(
        json_reply(403, envelope(403, "HTTP_FORBIDDEN", "Your IP address is not allowed")),
        AuthError, 403, "HTTP_FORBIDDEN",
        id="403",
    ),
    pytest.param(
        raw_reply(502, HTML, "text/html"),
        TransientApiError, 502, "HTTP_502",
        id="502-html",
    ),
    pytest.param(
        json_reply(504, envelope(504, "HTTP_SERVER_TIMING_OUT", "upstream timing out")),
        TransientApiError, 504, "HTTP_SERVER_TIMING_OUT",
        id="504",
    ),
    pytest.param(
        json_reply(400, envelope(400, "INVALID_ARGUMENT", "Invalid region 'xx'")),
        PermanentApiError, 400, "INVALID_ARGUMENT",
        id="400",
    ),
    pytest.param(
        json_reply(413, envelope(413, "HTTP_REQUEST_ENTITY_TOO_LARGE", "Payload too large")),
        PermanentApiError, 413, "HTTP_REQUEST_ENTITY_TOO_LARGE",
        id="413",
    ),
    pytest.param(
        json_reply(414, envelope(414, "HTTP_URI_TOO_LONG", "URI too long")),
        PermanentApiError, 414, "HTTP_URI_TOO_LONG",
        id="414",
    ),
    pytest.param(
        json_reply(501, envelope(501, "NOT_IMPLEMENTED", "no")),
        PermanentApiError, 501, "NOT_IMPLEMENTED",
        id="501",
    ),
    pytest.param(
        raw_reply(200, b"<html>maintenance</html>", "text/html"),
        BadBodyError, 200, "BAD_BODY",
        id="200-html",
    ),
    pytest.param(
        raw_reply(200, b"", "application/json"),
        BadBodyError, 200, "BAD_BODY",
        id="200-empty",
    ),
    pytest.param(
        json_reply(200, [image_doc()]),
        BadBodyError, 200, "BAD_BODY",
        id="200-json-list",
    ),
    pytest.param(
        json_reply(200, {"requestId": "r", "result": {}}),
        BadBodyError, 200, "BAD_BODY",
        id="200-no-image",
    ),
    pytest.param(
        json_reply(200, {"requestId": "r", "result": {"image": "img"}}),
        BadBodyError, 200, "BAD_BODY",
        id="200-image-not-object",
    ),
    pytest.param(
        raw_reply(200, b'{"requestId":"r","result":{"image":{"im', "application/json"),
        BadBodyError, 200, "BAD_BODY",
        id="200-cut-json",
    ),
    pytest.param(
        raw_reply(200, b'{"result":{"image":{}}}\xff', "application/json"),
        BadBodyError, 200, "BAD_BODY",
        id="200-not-utf8",
    ),
    # json.loads raises RecursionError, not ValueError, on deep nesting: still a classified body.
    pytest.param(
        raw_reply(200, b'{"result":{"image":' + DEEP + b"}}", JSON_TYPE),
        BadBodyError, 200, "BAD_BODY",
        id="200-deep-nesting",
    ),
    pytest.param(
        raw_reply(500, DEEP, JSON_TYPE),
        TransientApiError, 500, "HTTP_500",
        id="500-deep-nesting",
    ),
    pytest.param(
        raw_reply(400, b'{"error":{"code":400,"status":"BAD\\ud800"}}', JSON_TYPE),
        PermanentApiError, 400, "BAD\ufffd",
        id="400-lone-surrogate-status",
    ),
    pytest.param(
        raw_reply(200, b'{"result":{"image":{"x":' + b"9" * 5000 + b"}}}", JSON_TYPE),
        BadBodyError, 200, "BAD_BODY",
        id="200-integer-over-digit-limit",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("handler", "cls", "status", "error_status"), CLASSIFIED)
async def test_responses_are_classified(
    session: HttpSession,
    handler: Handler,
    cls: type[ApiError],
    status: int,
    error_status: str,
) -> None:
    async with serve(handler) as stub:
        error = await image_error(make_client(session, stub.url))
    assert type(error) is cls
    assert (error.http_status, error.error_status) == (status, error_status)
    assert f"describeImage {REGION}/{IMAGE}" in error.message


async def test_auth_error_names_the_gateway_message(session: HttpSession) -> None:
    handler = json_reply(403, envelope(403, "HTTP_FORBIDDEN", "api is disabled"))
    async with serve(handler) as stub:
        error = await image_error(make_client(session, stub.url))
    assert "credentials were rejected" in error.message
    assert "api is disabled" in error.message
    assert error.request_id == "rid-body"


async def test_the_session_token_is_sent_signed_and_never_echoed(
    session: HttpSession,
) -> None:
    token = "sts/" + "Zm9v+" * 80 + "=="  # long: a cut message must not keep a piece of it
    handler = json_reply(401, envelope(401, "ACCESS_ERROR", f"token {token} expired"))
    async with serve(handler) as stub:
        client = ApiClient(
            session, stub.url, Signer(AK, SK, session_token=token),
            timeout_s=10.0, max_response_bytes=MIB,
        )  # fmt: skip
        error = await image_error(client)
    assert type(error) is AuthError
    (seen,) = stub.seen
    assert seen.headers["x-jdcloud-security-token"] == token
    assert "x-jdcloud-security-token" in seen.headers["Authorization"]
    assert "Zm9v+Zm9v" not in error.message and "[redacted]" in error.message


async def test_gateway_message_is_cleaned(session: HttpSession) -> None:
    echoed = "bad Signature=" + "ab" * 32 + ", key " + "c" * 40 + "\nnext line " + "x" * 500
    async with serve(json_reply(400, envelope(400, "INVALID_ARGUMENT", echoed))) as stub:
        error = await image_error(make_client(session, stub.url))
    assert "ab" * 32 not in error.message
    assert "c" * 40 not in error.message
    assert "\n" not in error.message
    assert len(error.message) < 500


async def test_describe_images_404_is_not_image_not_found(session: HttpSession) -> None:
    async with serve(json_reply(404, envelope(404, "NOT_FOUND", "region gone"))) as stub:
        with pytest.raises(PermanentApiError) as caught:
            await make_client(session, stub.url).describe_images(REGION, ids=[IMAGE])
    assert type(caught.value) is PermanentApiError


@pytest.mark.parametrize(
    ("result", "images", "total"),
    [
        ({"images": None, "totalCount": 0}, [], 0),
        ({"images": [{"imageId": IMAGE}]}, [{"imageId": IMAGE}], 1),
    ],
)
async def test_describe_images_tolerates_null_list_and_no_total(
    session: HttpSession, result: dict[str, Any], images: list[Any], total: int
) -> None:
    async with serve(json_reply(200, {"requestId": "r", "result": result})) as stub:
        page = await make_client(session, stub.url).describe_images(REGION, ids=[IMAGE])
    assert (page.images, page.total_count) == (images, total)


@pytest.mark.parametrize(
    "result",
    [None, {"images": {}}, {"images": ["img-a"]}, {"images": [], "totalCount": "3"}],
)
async def test_describe_images_bad_result_is_bad_body(session: HttpSession, result: object) -> None:
    async with serve(json_reply(200, {"requestId": "r", "result": result})) as stub:
        with pytest.raises(TransientApiError) as caught:
            await make_client(session, stub.url).describe_images(REGION, ids=[IMAGE])
    assert caught.value.error_status == "BAD_BODY"


# --- request ids, Retry-After, remaining-minute ------------------------------------------------


async def test_request_id_falls_back_to_the_header(session: HttpSession) -> None:
    no_id = envelope(404, "NOT_FOUND", "gone", request_id=None)
    handler = json_reply(404, no_id, **{"x-jdcloud-request-id": "rid-header"})
    async with serve(handler) as stub:
        error = await image_error(make_client(session, stub.url))
    assert error.request_id == "rid-header"


async def test_body_request_id_wins_over_the_header(session: HttpSession) -> None:
    handler = json_reply(200, image_doc(request_id="rid-body"), **{"x-jdcloud-request-id": "h"})
    async with serve(handler) as stub:
        response = await make_client(session, stub.url).describe_image(REGION, IMAGE)
    assert response.request_id == "rid-body"


async def test_success_without_body_request_id_uses_the_header(
    session: HttpSession,
) -> None:
    doc = {"result": {"image": {"imageId": IMAGE}}}
    headers = {"x-jdcloud-request-id": "rid-header", "x-jdcloud-remaining-minute": "998"}
    async with serve(json_reply(200, doc, **headers)) as stub:
        response = await make_client(session, stub.url).describe_image(REGION, IMAGE)
    assert (response.request_id, response.remaining_minute) == ("rid-header", 998)


@pytest.mark.parametrize(
    ("retry_after", "expected_s"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        (format_datetime(FIXED_AT + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(FIXED_AT - timedelta(seconds=30), usegmt=True), 0.0),
        ("soon", None),
        ("nan", None),
    ],
)
async def test_retry_after_is_read_as_seconds_or_a_date(
    session: HttpSession, retry_after: str, expected_s: float | None
) -> None:
    limited = envelope(429, "HTTP_RATE_LIMIT_EXCEEDED", "minute rate limit exceeded")
    headers = {"Retry-After": retry_after, "x-jdcloud-remaining-minute": "0"}
    async with serve(json_reply(429, limited, **headers)) as stub:
        error = await image_error(make_client(session, stub.url, clock=lambda: FIXED_AT))
    assert type(error) is RateLimitedError
    assert error.retry_after_s == expected_s
    assert error.remaining_minute == 0


async def test_unreadable_remaining_minute_is_none(session: HttpSession) -> None:
    handler = json_reply(200, image_doc(), **{"x-jdcloud-remaining-minute": "lots"})
    async with serve(handler) as stub:
        response = await make_client(session, stub.url).describe_image(REGION, IMAGE)
    assert response.remaining_minute is None


# --- bodies and their size ---------------------------------------------------------------------

BODY = json.dumps(image_doc()).encode()


def chunked_reply(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        half = len(body) // 2
        await response.write(body[:half])
        await response.write(body[half:])
        await response.write_eof()
        return response

    return handler


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("slack", "fits"), [(0, True), (-1, False)], ids=["at-cap", "over-cap"])
async def test_body_size_cap_is_exact(
    session: HttpSession, chunked: bool, slack: int, fits: bool
) -> None:
    handler = chunked_reply(BODY) if chunked else raw_reply(200, BODY, "application/json")
    async with serve(handler) as stub:
        client = make_client(session, stub.url, max_response_bytes=len(BODY) + slack)
        if fits:
            assert (await client.describe_image(REGION, IMAGE)).image["imageId"] == IMAGE
            return
        error = await image_error(client)
    assert type(error) is PermanentApiError
    assert (error.http_status, error.error_status) == (200, "RESPONSE_TOO_LARGE")


async def test_endless_stream_is_cut_off_early(session: HttpSession) -> None:
    total = 50 * MIB
    sent: list[int] = []
    finished = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        count, chunk = 0, b" " * 65536
        try:
            while count < total:
                await response.write(chunk)
                count += len(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client hung up, as it should
        finally:
            sent.append(count)
            finished.set()
        return response

    async with serve(endless) as stub:
        error = await image_error(make_client(session, stub.url, max_response_bytes=MIB))
        await asyncio.wait_for(finished.wait(), 30)
    assert (error.error_status, type(error)) == ("RESPONSE_TOO_LARGE", PermanentApiError)
    assert sent[0] < total // 2


async def test_declared_huge_body_is_refused_unread(session: HttpSession) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n"
    reply = head + b"x-jdcloud-request-id: rid-huge\r\n\r\n" + BODY
    async with serve_raw(reply, hold_open=True) as url:
        error = await image_error(make_client(session, url, timeout_s=30))
    assert (error.error_status, type(error)) == ("RESPONSE_TOO_LARGE", PermanentApiError)
    assert "declares 1000000000000 bytes" in error.message
    assert error.request_id == "rid-huge"


@pytest.mark.parametrize(("size", "fits"), [(1000, True), (2 * MIB, False)])
async def test_compressed_body_is_capped_after_inflating(
    session: HttpSession, size: int, fits: bool
) -> None:
    doc = image_doc()
    doc["padding"] = "a" * size
    packed = gzip.compress(json.dumps(doc).encode())
    handler = raw_reply(200, packed, "application/json", **{"Content-Encoding": "gzip"})
    async with serve(handler) as stub:
        client = make_client(session, stub.url, max_response_bytes=MIB)
        if fits:
            assert (await client.describe_image(REGION, IMAGE)).request_id == "rid-ok"
            return
        error = await image_error(client)
    assert error.error_status == "RESPONSE_TOO_LARGE"


# --- transport failures ------------------------------------------------------------------------


async def test_truncated_body_is_transient(session: HttpSession) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n"
    async with serve_raw(head + b"x-jdcloud-request-id: rid-cut\r\n\r\n" + BODY[:20]) as url:
        error = await image_error(make_client(session, url))
    assert type(error) is TransientApiError
    assert (error.http_status, error.error_status) == (200, "PAYLOAD_ERROR")
    assert error.request_id == "rid-cut"


async def test_server_hanging_up_is_transient(session: HttpSession) -> None:
    async with serve_raw(b"") as url:
        error = await image_error(make_client(session, url))
    assert type(error) is TransientApiError
    assert (error.http_status, error.error_status) == (None, "CONNECTION_ERROR")


async def test_slow_server_times_out(session: HttpSession) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        return web.Response()

    async with serve(slow) as stub:
        error = await image_error(make_client(session, stub.url, timeout_s=0.2))
    assert type(error) is TransientApiError
    assert (error.http_status, error.error_status) == (None, "TIMEOUT")
    assert f"{REGION}/{IMAGE}" in error.message


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_connection_refused_is_transient(session: HttpSession) -> None:
    client = make_client(session, f"http://127.0.0.1:{closed_port()}")
    error = await image_error(client)
    assert type(error) is TransientApiError
    assert (error.http_status, error.error_status) == (None, "CONNECTION_ERROR")
    assert isinstance(error.__cause__, ConnectionFailed)
    assert client.requests_sent == 1


async def test_undecodable_header_bytes_never_reach_a_stored_text(
    session: HttpSession,
) -> None:
    """A request id header with bytes that are not UTF-8 arrives as surrogates: scrubbed."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"error":{"code":500,"status":"INTERNAL","message":"m\\ud800"}}'
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            b"x-jdcloud-request-id: req-\xff\xfe\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        error = await image_error(make_client(session, f"http://127.0.0.1:{port}"))
    finally:
        server.close()
        await server.wait_closed()
    assert type(error) is TransientApiError
    for text in (error.request_id, error.message, error.error_status):
        assert text is not None
        text.encode("utf-8")  # storable as it is
    assert error.request_id is not None and error.request_id.startswith("req-")
    assert "m\ufffd" in error.message
