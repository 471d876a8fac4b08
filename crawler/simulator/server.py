"""A local stand-in for the JD Cloud VM OpenAPI (describeImage / describeImages).

Faithful to jdcloud-api.md where it matters to a client: the same URLs, the `requestId`
envelope, the gateway's and the service's error bodies, request signing (JDCLOUD3 and JDCLOUD2,
checked by `crawler.simulator.verify`), the per-minute limit per access key with its
`x-jdcloud-*-minute` headers, and an 8 KB URL limit. On top it injects seeded faults (500, 503,
429 with `Retry-After`), latency and missing images, and counts what it saw.

An answer is decided in the order a real request meets it: URL length and route at the gateway,
then the signature, then the per-minute limit, then the injected upstream faults, then the
service itself (region, parameters, the image). Each image's JSON is encoded once at start-up and
spliced into the envelope, so an answer costs one HMAC and a few byte joins.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TextIO

from aiohttp import web
from multidict import MultiMapping

from crawler.errors import ConfigError
from crawler.models import JsonObject, Target
from crawler.signer import SECURITY_TOKEN_HEADER
from crawler.simulator.inventory import ID_ALPHABET, IMAGE_SOURCES, Inventory, build_inventory
from crawler.simulator.verify import parse_authorization, verify_request

DEFAULT_REGIONS = ("cn-north-1", "cn-east-1", "cn-east-2", "cn-south-1")
CONTENT_TYPE = "application/json; charset=utf-8"
REQUEST_ID_HEADER = "x-jdcloud-request-id"
LIMIT_HEADER = "x-jdcloud-limit-minute"
REMAINING_HEADER = "x-jdcloud-remaining-minute"
STATS_PATH = "/_simulator/stats"
MAX_IDS = 100
# aiohttp refuses request lines over 8190 bytes with its own 400; leave room for our 414.
_SERVER_MAX_LINE_BYTES = 1024 * 1024

_IMAGE_PATH = re.compile(r"/v1/regions/([^/?]+)/images/([^/?]+)")
_IMAGES_PATH = re.compile(r"/v1/regions/([^/?]+)/images")
_IDS_KEY = re.compile(r"ids\.([0-9]+)")
_SIGNED_HEADERS = re.compile(r"SignedHeaders=([^,\s]*)")
_EQUALITY_FILTERS = (
    "imageSource",
    "platform",
    "rootDeviceType",
    "status",
    "architecture",
    "launchPermission",
    "bootMode",
)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """What the simulator serves and how badly it behaves.

    Attributes:
        regions: regions that exist; any other answers 400 `Invalid region`.
        images_per_region: existing images per region.
        seed: seeds the inventory, the faults and the request ids.
        latency_ms: added to every answer.
        fail_rate: share of API requests answered 500 or 503 (half each unless set apart).
        rate_500: share answered 500 `HTTP_INTERNAL_SERVER_ERROR`; None = fail_rate / 2.
        rate_503: share answered 503 `HTTP_SERVICE_UNAVAILABLE`; None = fail_rate / 2.
        throttle_rate: share answered 429 `RATE_LIMIT_EXCEEDED` with `Retry-After`.
        retry_after_s: the `Retry-After` of those 429s.
        missing_rate: share of targets that do not exist (404 `NOT_FOUND`), in [0, 1).
        rate_limit_per_minute: requests per access key per window, 0 = no limit.
        rate_window_s: the fixed window of that limit.
        max_faults_per_image: at most this many injected faults in a row for one image.
        access_key: the only access key the simulator knows.
        secret_key: its secret (never in repr).
        max_url_bytes: longer URLs are answered 414 `HTTP_URI_TOO_LONG`.
        session_token: when set, every request must carry this `x-jdcloud-security-token` and
            sign it, as a temporary (STS) credential's requests do (never in repr).
        other_account_keys: (access key, secret) pairs of another account: accepted, but that
            account cannot see this one's private images, which answer 404 `NOT_FOUND` to it.
    """

    regions: tuple[str, ...] = DEFAULT_REGIONS
    images_per_region: int = 250
    seed: int = 0
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    rate_500: float | None = None
    rate_503: float | None = None
    throttle_rate: float = 0.0
    retry_after_s: float = 1.0
    missing_rate: float = 0.0
    rate_limit_per_minute: int = 0
    rate_window_s: float = 60.0
    max_faults_per_image: int | None = None
    access_key: str = "SIMULATORAK"
    secret_key: str = field(default="SIMULATORSK", repr=False)
    max_url_bytes: int = 8192
    session_token: str | None = field(default=None, repr=False)
    other_account_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        for name in ("fail_rate", "throttle_rate", "rate_500", "rate_503"):
            _check_share(name, getattr(self, name))
        if sum(self.fault_rates()) > 1.0:
            raise ConfigError("simulator fault rates add up to more than 1")
        if not 0.0 <= self.missing_rate < 1.0:
            raise ConfigError(f"missing_rate must be in [0, 1), not {self.missing_rate}")
        _check_non_negative(self)
        if not self.regions or not self.access_key or not self.secret_key:
            raise ConfigError("the simulator needs regions, an access key and a secret key")

    def fault_rates(self) -> tuple[float, float, float]:
        """The shares of 500, 503 and 429 answers."""
        half = self.fail_rate / 2
        rate_500 = half if self.rate_500 is None else self.rate_500
        rate_503 = half if self.rate_503 is None else self.rate_503
        return rate_500, rate_503, self.throttle_rate


def _check_share(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, not {value}")


def _check_non_negative(config: SimulatorConfig) -> None:
    numbers = {
        "images_per_region": config.images_per_region,
        "latency_ms": config.latency_ms,
        "retry_after_s": config.retry_after_s,
        "rate_limit_per_minute": config.rate_limit_per_minute,
        "max_url_bytes": config.max_url_bytes,
        "max_faults_per_image": config.max_faults_per_image or 0,
    }
    for name, value in numbers.items():
        if value < 0:
            raise ConfigError(f"{name} must not be negative, not {value}")
    if config.rate_window_s <= 0:
        raise ConfigError(f"rate_window_s must be positive, not {config.rate_window_s}")


@dataclass
class SimulatorStats:
    """What the simulator has seen (API requests only, not `/_simulator/stats`).

    Attributes:
        requests: API requests received.
        by_status: answers per HTTP status.
        attempts: requests naming each target (describeImage, or an id in describeImages).
        auth_failures: requests answered 401.
        faults_injected: 500/503/429 answers drawn from the fault rates.
        rate_limited: 429 answers from the per-minute limit.
    """

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    attempts: Counter[Target] = field(default_factory=Counter)
    auth_failures: int = 0
    faults_injected: int = 0
    rate_limited: int = 0

    def max_attempts(self) -> int:
        """The most requests that named any single target (0 before any)."""
        return max(self.attempts.values(), default=0)

    def as_json(self) -> JsonObject:
        """The stats as a JSON-ready object; attempts keyed `region/image`."""
        return {
            "requests": self.requests,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "auth_failures": self.auth_failures,
            "faults_injected": self.faults_injected,
            "rate_limited": self.rate_limited,
            "max_attempts": self.max_attempts(),
            "attempts": {f"{t.region_id}/{t.image_id}": n for t, n in self.attempts.items()},
        }


@dataclass(frozen=True, slots=True)
class _Reply:
    """An answer before its envelope: `member` is `result` or `error`, `payload` its JSON."""

    status: int
    member: bytes
    payload: bytes
    headers: Mapping[str, str] | None = None


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> _Reply:
    body = {"code": status, "status": code, "message": message}
    return _Reply(status, b"error", _encode(body), headers)


def _encode(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


_NO_ROUTE = _error(404, "NOT_FOUND", "no route and no API found with those values")
_URI_TOO_LONG = _error(414, "HTTP_URI_TOO_LONG", "URI too long")
_FAULT_500 = _error(500, "HTTP_INTERNAL_SERVER_ERROR", "An unexpected error occurred")
_FAULT_503 = _error(503, "HTTP_SERVICE_UNAVAILABLE", "upstream unavailable")
_MINUTE_LIMIT = _error(429, "HTTP_RATE_LIMIT_EXCEEDED", "minute rate limit exceeded, role:ak")
_SOURCE_MISSING = _error(400, "FAILED_PRECONDITION", "Parameter ImageSource missing")
_PAGE_SIZE_RANGE = _error(400, "OUT_OF_RANGE", "PageSize out of range")


class Simulator:
    """The simulated API: an inventory, fault injection, rate limiting and statistics."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Build the inventory and encode every image once.

        Args:
            config: what to serve and which faults to inject.
            clock: seconds, for the per-minute windows.
            rng: draws the faults; default `random.Random(config.seed)`.
            sleep: awaited with `latency_ms / 1000` before each answer.
        """
        self.config = config
        self.inventory: Inventory = build_inventory(
            config.regions, config.images_per_region, config.seed, missing_rate=config.missing_rate
        )
        self.stats = SimulatorStats()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random(config.seed)
        self._ids_rng = random.Random(f"{config.seed}:request-ids")
        self._encoded = {
            region: {str(image["imageId"]): _encode(image) for image in images}
            for region, images in self.inventory.images.items()
        }
        self._fault_rates = config.fault_rates()
        self._faults_on = sum(self._fault_rates) > 0
        self._consecutive_faults: dict[Hashable, int] = {}
        self._throttle = _error(
            429,
            "RATE_LIMIT_EXCEEDED",
            "requests too frequent",
            {"Retry-After": f"{config.retry_after_s:g}"},
        )
        self._by_id = {
            region: {str(image["imageId"]): image for image in images}
            for region, images in self.inventory.images.items()
        }
        self._window_index = -1
        self._window_counts: Counter[str] = Counter()
        # Per region, what another account sees (no private images); rebuilt after a change.
        self._hidden: dict[str, dict[str, bytes]] = {}

    def targets(self) -> Iterator[Target]:
        """Every target, existing and missing, in a fixed order with regions interleaved."""
        return self.inventory.targets()

    def write_targets(self, destination: str | PathLike[str] | TextIO) -> int:
        """Write the targets as a CONTRACT §4 CSV; returns the number of targets written."""
        if isinstance(destination, str | PathLike):
            with Path(destination).open("w", encoding="utf-8", newline="") as out:
                return self._write_targets_to(out)
        return self._write_targets_to(destination)

    def _write_targets_to(self, out: TextIO) -> int:
        out.write("region_id,image_id\n")
        count = 0
        for target in self.targets():
            out.write(f"{target.region_id},{target.image_id}\n")
            count += 1
        return count

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one API request (any method, any path)."""
        self.stats.requests += 1
        body = await request.read() if request.body_exists else b""
        reply = self._answer(request, body)
        self.stats.by_status[reply.status] += 1
        if self.config.latency_ms > 0:
            await self._sleep(self.config.latency_ms / 1000)
        return self._respond(reply)

    async def handle_stats(self, request: web.Request) -> web.Response:
        """`GET /_simulator/stats`: the stats as JSON, unauthenticated."""
        return web.Response(body=_encode(self.stats.as_json()), content_type="application/json")

    def _respond(self, reply: _Reply) -> web.Response:
        request_id = "".join(self._ids_rng.choices(ID_ALPHABET, k=32))
        body = b'{"requestId":"%s","%s":%s}' % (request_id.encode(), reply.member, reply.payload)
        headers = {"Content-Type": CONTENT_TYPE, REQUEST_ID_HEADER: request_id}
        if reply.headers:
            headers.update(reply.headers)
        if self.config.rate_limit_per_minute:
            headers.update(self._limit_headers())
        return web.Response(body=body, status=reply.status, headers=headers)

    def _answer(self, request: web.Request, body: bytes) -> _Reply:
        raw_path = request.raw_path
        if len(raw_path.encode()) > self.config.max_url_bytes:
            return _URI_TOO_LONG
        path, _, query = raw_path.partition("?")
        route = _route(request.method, path)
        if route is None:
            return _NO_ROUTE
        region, image_id = route
        keys = self._count_attempts(region, image_id, request.query)
        failure = self._authenticate(request, path, query, body)
        if failure is not None:
            return failure
        foreign = self._is_other_account(request)
        return (
            self._limit()
            or self._fault(keys)
            or self._serve(region, image_id, request.query, other_account=foreign)
        )

    def _count_attempts(
        self, region: str, image_id: str | None, query: MultiMapping[str]
    ) -> list[Hashable]:
        """Count the request against each target it names; returns the fault-cap keys."""
        if image_id is not None:
            targets = [Target(region, image_id)]
        else:
            targets = [Target(region, i) for i in _ids(query)]
        self.stats.attempts.update(targets)
        if targets:
            return list(targets)
        return [(region, tuple(sorted(query.items())))]

    def _authenticate(
        self, request: web.Request, path: str, query: str, body: bytes
    ) -> _Reply | None:
        message = verify_request(
            method=request.method,
            host=request.host,
            path=path,
            query=query,
            headers=request.headers,
            body=body,
            secret_for=self._secret_for,
        )
        if message is None:
            message = self._check_token(request.headers)
        if message is None:
            return None
        self.stats.auth_failures += 1
        return _error(401, "ACCESS_ERROR", message)

    def _check_token(self, headers: Mapping[str, str]) -> str | None:
        """None when the session token (if one is required) was sent and signed, else why not.

        The gateway's wording for a bad token is not documented; these messages are our own.
        """
        expected = self.config.session_token
        if expected is None:
            return None
        token = headers.get(SECURITY_TOKEN_HEADER)
        if token is None:
            return f"lack of header {SECURITY_TOKEN_HEADER}"
        signed = _SIGNED_HEADERS.search(headers.get("Authorization", ""))
        if signed is None or SECURITY_TOKEN_HEADER not in signed[1].lower().split(";"):
            return f"header {SECURITY_TOKEN_HEADER} is not signed"
        if token.strip() != expected:
            return "invalid or expired security token"
        return None

    def _secret_for(self, access_key: str) -> str | None:
        if access_key == self.config.access_key:
            return self.config.secret_key
        return dict(self.config.other_account_keys).get(access_key)

    def _is_other_account(self, request: web.Request) -> bool:
        if not self.config.other_account_keys:
            return False
        parsed = parse_authorization(request.headers.get("authorization", ""))
        return parsed.access_key != self.config.access_key

    def set_image(self, region: str, image: JsonObject) -> None:
        """Add or replace an image (by its `imageId`) in a region that exists: for tests that
        change the inventory between crawls."""
        image_id = str(image["imageId"])
        self._by_id[region][image_id] = image
        self._encoded[region][image_id] = _encode(image)
        self._hidden.pop(region, None)

    def delete_image(self, region: str, image_id: str) -> None:
        """Remove an image, which then answers 404 `NOT_FOUND` (absent already: nothing)."""
        self._by_id[region].pop(image_id, None)
        self._encoded[region].pop(image_id, None)
        self._hidden.pop(region, None)

    def _other_account_view(self, region: str) -> dict[str, bytes]:
        view = self._hidden.get(region)
        if view is None:
            images = self._by_id[region]
            view = self._hidden[region] = {
                image_id: encoded
                for image_id, encoded in self._encoded[region].items()
                if images[image_id].get("imageSource") != "private"
            }
        return view

    def _limit(self) -> _Reply | None:
        """Count the request in the access key's window; the 429 once it is spent."""
        limit = self.config.rate_limit_per_minute
        if not limit:
            return None
        self._roll_window()
        self._window_counts[self.config.access_key] += 1
        if self._window_counts[self.config.access_key] <= limit:
            return None
        self.stats.rate_limited += 1
        return _MINUTE_LIMIT

    def _roll_window(self) -> None:
        index = math.floor(self._clock() / self.config.rate_window_s)
        if index != self._window_index:
            self._window_index = index
            self._window_counts.clear()

    def _limit_headers(self) -> dict[str, str]:
        self._roll_window()
        limit = self.config.rate_limit_per_minute
        remaining = max(0, limit - self._window_counts[self.config.access_key])
        return {LIMIT_HEADER: str(limit), REMAINING_HEADER: str(remaining)}

    def _fault(self, keys: Sequence[Hashable]) -> _Reply | None:
        """Draw an injected fault, unless one of `keys` has had its fill in a row."""
        if not self._faults_on:
            return None
        fault = self._draw_fault()
        if fault is None or self._capped(keys):
            for key in keys:
                self._consecutive_faults.pop(key, None)
            return None
        for key in keys:
            self._consecutive_faults[key] = self._consecutive_faults.get(key, 0) + 1
        self.stats.faults_injected += 1
        return fault

    def _capped(self, keys: Sequence[Hashable]) -> bool:
        cap = self.config.max_faults_per_image
        if cap is None:
            return False
        return any(self._consecutive_faults.get(key, 0) >= cap for key in keys)

    def _draw_fault(self) -> _Reply | None:
        rate_500, rate_503, rate_429 = self._fault_rates
        draw = self._rng.random()
        if draw < rate_500:
            return _FAULT_500
        if draw < rate_500 + rate_503:
            return _FAULT_503
        if draw < rate_500 + rate_503 + rate_429:
            return self._throttle
        return None

    def _serve(
        self,
        region: str,
        image_id: str | None,
        query: MultiMapping[str],
        *,
        other_account: bool = False,
    ) -> _Reply:
        images = self._encoded.get(region)
        if images is None:
            return _error(400, "INVALID_ARGUMENT", f"Invalid region '{region}'")
        if other_account:
            images = self._other_account_view(region)
        if image_id is not None:
            return _describe_image(images, image_id)
        return self._describe_images(region, images, query)

    def _describe_images(
        self, region: str, images: Mapping[str, bytes], query: MultiMapping[str]
    ) -> _Reply:
        params = _list_params(query)
        if isinstance(params, _Reply):
            return params
        ids, page_number, page_size = params
        candidates = self._by_id[region] if not ids else _pick(self._by_id[region], ids)
        matches = [
            images[i] for i, image in candidates.items() if i in images and _matches(image, query)
        ]
        start = (page_number - 1) * page_size
        page = b",".join(matches[start : start + page_size])
        payload = b'{"images":[%s],"totalCount":%d}' % (page, len(matches))
        return _Reply(200, b"result", payload)


def _route(method: str, path: str) -> tuple[str, str | None] | None:
    """(region, image id) for describeImage, (region, None) for describeImages, else None."""
    if method != "GET":
        return None
    match = _IMAGE_PATH.fullmatch(path)
    if match is not None:
        return match[1], match[2]
    match = _IMAGES_PATH.fullmatch(path)
    if match is not None:
        return match[1], None
    return None


def _describe_image(images: Mapping[str, bytes], image_id: str) -> _Reply:
    encoded = images.get(image_id)
    if encoded is None:
        return _error(404, "NOT_FOUND", f"Image '{image_id}' not found")
    return _Reply(200, b"result", b'{"image":%s}' % encoded)


def _ids(query: MultiMapping[str]) -> list[str]:
    """The `ids.N` values ordered by N (the SDK numbers them from 1)."""
    numbered = []
    for key, value in query.items():
        match = _IDS_KEY.fullmatch(key)
        if match is not None:
            numbered.append((int(match[1]), value))
    return [value for _, value in sorted(numbered)]


def _pick(images: Mapping[str, JsonObject], ids: Sequence[str]) -> dict[str, JsonObject]:
    """The images of `ids` that exist, in the order asked, each once."""
    return {i: images[i] for i in ids if i in images}


def _list_params(query: MultiMapping[str]) -> tuple[list[str], int, int] | _Reply:
    """(ids, pageNumber, pageSize) of a describeImages query, or the 400 it deserves."""
    ids = _ids(query)
    if len(ids) > MAX_IDS:
        return _error(400, "INVALID_ARGUMENT", f"Parameter ids size must be at most {MAX_IDS}")
    source = query.get("imageSource")
    if not ids and not source:
        return _SOURCE_MISSING
    if source and source not in IMAGE_SOURCES:
        return _error(400, "INVALID_ARGUMENT", f"Invalid imageSource '{source}'")
    page_number = _int_param(query, "pageNumber", 1)
    page_size = _int_param(query, "pageSize", 20)
    if page_number is None or page_size is None:
        return _error(400, "INVALID_ARGUMENT", "PageNumber and PageSize must be integers")
    if page_number < 1:
        return _error(400, "OUT_OF_RANGE", "PageNumber out of range")
    if not 10 <= page_size <= 100:
        return _PAGE_SIZE_RANGE
    return ids, page_number, page_size


def _int_param(query: MultiMapping[str], name: str, default: int) -> int | None:
    value = query.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return None


def _matches(image: JsonObject, query: MultiMapping[str]) -> bool:
    for name in _EQUALITY_FILTERS:
        wanted = query.get(name)
        if wanted is not None and image.get(name) != wanted:
            return False
    fuzzy = query.get("imageName")
    return fuzzy is None or fuzzy in str(image.get("name", ""))


SIMULATOR_KEY = web.AppKey("simulator", Simulator)


def create_app(sim: Simulator) -> web.Application:
    """The aiohttp application: `/_simulator/stats`, and every other path answered by `sim`."""
    app = web.Application()
    app[SIMULATOR_KEY] = sim
    app.router.add_get(STATS_PATH, sim.handle_stats)
    app.router.add_route("*", "/{tail:.*}", sim.handle)
    return app


@dataclass
class RunningSimulator:
    """A simulator listening on a loopback port; `close()` stops it."""

    url: str
    sim: Simulator
    _runner: web.AppRunner = field(repr=False)

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        await self._runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def server_tls_context(
    cert_file: str | PathLike[str], key_file: str | PathLike[str]
) -> ssl.SSLContext:
    """A server-side TLS context for serving HTTPS with this certificate chain and key.

    Raises:
        ConfigError: a file cannot be read or the key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--tls-cert/--tls-key: cannot load {cert_file} and {key_file}: {exc}"
        ) from exc
    return context


async def start_simulator(
    sim: Simulator, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None
) -> RunningSimulator:
    """Serve `sim` on `host:port` (0 = a free port) and return once it listens.

    Args:
        sim: the simulator to serve.
        host: the address to listen on.
        port: the port, 0 for a free one.
        tls: serve HTTPS with this server context (see `server_tls_context`), else plain HTTP.

    Returns:
        The running simulator; its `url` is `http://HOST:PORT` (`https://` with `tls`) with the
        real port.
    """
    runner = web.AppRunner(
        create_app(sim),
        access_log=None,
        max_line_size=max(_SERVER_MAX_LINE_BYTES, sim.config.max_url_bytes * 2),
        shutdown_timeout=1.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    scheme = "https" if tls is not None else "http"
    return RunningSimulator(url=_url(scheme, host, site.port), sim=sim, _runner=runner)


async def serve_forever(
    sim: Simulator,
    host: str,
    port: int,
    on_listening: Callable[[str], None],
    stop: asyncio.Event,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve `sim` until `stop` is set; `on_listening` gets `http(s)://HOST:PORT` once bound."""
    running = await start_simulator(sim, host, port, tls=tls)
    try:
        on_listening(running.url)
        await stop.wait()
    finally:
        await running.close()


def _url(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"
