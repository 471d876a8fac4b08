"""The simulator, over real HTTP on 127.0.0.1, with requests signed like the official SDK's."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from crawler.errors import ConfigError
from crawler.models import JsonObject, Target
from crawler.signer import Signer
from crawler.simulator import (
    RunningSimulator,
    Simulator,
    SimulatorConfig,
    serve_forever,
    start_simulator,
)

REQUEST_ID = re.compile(r"[a-z0-9]{32}")
REGION = "cn-north-1"
SDK_USER_AGENT = "JdcloudSdkPython/1.2.9 vm/1.6.1"
NONCE = "00000000-0000-4000-8000-000000000000"


@dataclass
class Answer:
    status: int
    body: JsonObject
    headers: Mapping[str, str]

    @property
    def error(self) -> JsonObject:
        error: JsonObject = self.body["error"]
        return error


@dataclass
class Api:
    """A signed client for one running simulator."""

    running: RunningSimulator
    session: aiohttp.ClientSession
    signer: Signer = field(default_factory=lambda: Signer("SIMULATORAK", "SIMULATORSK"))

    @property
    def sim(self) -> Simulator:
        return self.running.sim

    async def get(
        self,
        path: str,
        query: str = "",
        *,
        signer: Signer | None = None,
        region: str = REGION,
        tamper: Callable[[dict[str, str]], None] | None = None,
    ) -> Answer:
        url = URL(self.running.url + path + (f"?{query}" if query else ""), encoded=True)
        headers = (signer or self.signer).sign(
            method="GET",
            host=f"{url.host}:{url.port}",
            path=path,
            query=query,
            region=region,
            at=datetime.now(UTC),
            nonce=NONCE,
        )
        headers["User-Agent"] = SDK_USER_AGENT
        if tamper is not None:
            tamper(headers)
        return await self.raw_get(url, headers)

    async def raw_get(self, url: URL | str, headers: Mapping[str, str] | None = None) -> Answer:
        async with self.session.get(url, headers=headers) as response:
            body = json.loads(await response.read())
            return Answer(response.status, body, dict(response.headers))

    async def image(self, image_id: str, region: str = REGION) -> Answer:
        return await self.get(f"/v1/regions/{region}/images/{image_id}", region=region)

    async def images(self, query: str, region: str = REGION) -> Answer:
        return await self.get(f"/v1/regions/{region}/images", query, region=region)


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api() -> AsyncIterator[ApiFactory]:
    """Start simulators on demand; all are closed after the test."""
    running: list[RunningSimulator] = []
    session = aiohttp.ClientSession()

    async def make(config: SimulatorConfig | None = None, **options: Any) -> Api:
        sim = Simulator(
            config or SimulatorConfig(images_per_region=40, missing_rate=0.2), **options
        )
        running.append(await start_simulator(sim))
        return Api(running[-1], session)

    yield make
    await session.close()
    for one in running:
        await one.close()


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()


def first_image(api: Api, region: str = REGION, **wanted: str) -> JsonObject:
    images = api.sim.inventory.images[region]
    return next(i for i in images if all(i.get(k) == v for k, v in wanted.items()))


async def test_describe_image_answers_the_image_in_the_envelope(api: Api) -> None:
    image = first_image(api)
    answer = await api.image(image["imageId"])
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert REQUEST_ID.fullmatch(answer.body["requestId"])
    assert answer.headers["x-jdcloud-request-id"] == answer.body["requestId"]
    assert answer.body == {"requestId": answer.body["requestId"], "result": {"image": image}}


async def test_request_ids_differ_between_answers(api: Api) -> None:
    image_id = first_image(api)["imageId"]
    first, second = await api.image(image_id), await api.image(image_id)
    assert first.body["requestId"] != second.body["requestId"]


async def test_describe_images_pages_through_a_source(api: Api) -> None:
    public = [i for i in api.sim.inventory.images[REGION] if i["imageSource"] == "public"]
    assert len(public) > 10
    seen: list[JsonObject] = []
    for page_number in (1, 2):
        answer = await api.images(f"imageSource=public&pageNumber={page_number}&pageSize=10")
        assert answer.status == 200
        assert answer.body["result"]["totalCount"] == len(public)
        seen.extend(answer.body["result"]["images"])
    assert seen == public[:20]


async def test_describe_images_defaults_to_page_one_of_twenty(make_api: ApiFactory) -> None:
    api = await make_api(SimulatorConfig(images_per_region=200))
    answer = await api.images("imageSource=private")
    private = [i for i in api.sim.inventory.images[REGION] if i["imageSource"] == "private"]
    assert answer.body["result"]["images"] == private[:20]
    assert answer.body["result"]["totalCount"] == len(private) > 20


async def test_describe_images_by_ids_leaves_out_missing_ones(api: Api) -> None:
    images = api.sim.inventory.images[REGION]
    missing = api.sim.inventory.missing[REGION][0]
    query = f"ids.1={images[3]['imageId']}&ids.2={missing}&ids.3={images[1]['imageId']}"
    answer = await api.images(query + "&pageSize=100")
    assert answer.status == 200
    assert answer.body["result"] == {"images": [images[3], images[1]], "totalCount": 2}


async def test_describe_images_filters_by_platform(api: Api) -> None:
    answer = await api.images("imageSource=public&platform=CentOS&pageSize=100")
    got = answer.body["result"]["images"]
    assert got
    assert {(i["imageSource"], i["platform"]) for i in got} == {("public", "CentOS")}


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("pageSize=50", "FAILED_PRECONDITION", "Parameter ImageSource missing"),
        ("imageSource=public&pageSize=9", "OUT_OF_RANGE", "PageSize out of range"),
        ("imageSource=public&pageSize=101", "OUT_OF_RANGE", "PageSize out of range"),
        ("imageSource=public&pageNumber=0", "OUT_OF_RANGE", "PageNumber out of range"),
        ("imageSource=public&pageNumber=x", "INVALID_ARGUMENT", "must be integers"),
        ("imageSource=mine", "INVALID_ARGUMENT", "Invalid imageSource 'mine'"),
        ("&".join(f"ids.{n}=img-{n:010d}" for n in range(1, 102)), "INVALID_ARGUMENT", "ids"),
    ],
)
async def test_describe_images_refuses_bad_parameters(
    api: Api, query: str, status: str, message: str
) -> None:
    answer = await api.images(query)
    assert answer.status == 400
    assert answer.error["code"] == 400
    assert answer.error["status"] == status
    assert message in answer.error["message"]
    assert answer.headers["x-jdcloud-request-id"] == answer.body["requestId"]


async def test_an_unknown_region_is_an_invalid_argument(api: Api) -> None:
    answer = await api.image("img-aaaaaaaaaa", region="ap-southeast-1")
    assert answer.status == 400
    assert answer.error == {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": "Invalid region 'ap-southeast-1'",
    }


async def test_a_missing_image_and_a_missing_route_are_told_apart(api: Api) -> None:
    missing = api.sim.inventory.missing[REGION][0]
    image = await api.image(missing)
    assert image.status == 404
    assert image.error == {
        "code": 404,
        "status": "NOT_FOUND",
        "message": f"Image '{missing}' not found",
    }
    for path in ("/v2/regions/cn-north-1/images/img-aaaaaaaaaa", "/v1/regions/cn-north-1/disks"):
        route = await api.get(path)
        assert route.status == 404
        assert route.error == {
            "code": 404,
            "status": "NOT_FOUND",
            "message": "no route and no API found with those values",
        }
    assert api.sim.stats.by_status[404] == 3


async def test_a_url_over_8_kb_is_answered_414(api: Api) -> None:
    padding = "x" * 9000
    answer = await api.images(f"imageSource=public&imageName={padding}")
    assert answer.status == 414
    assert answer.error["status"] == "HTTP_URI_TOO_LONG"
    unsigned = await api.raw_get(f"{api.running.url}/v1/regions/{REGION}/images?q={padding}")
    assert unsigned.status == 414
    assert api.sim.stats.auth_failures == 0


def wrong_signature(headers: dict[str, str]) -> None:
    signature = headers["Authorization"][-64:]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    headers["Authorization"] = headers["Authorization"][:-64] + flipped


@pytest.mark.parametrize(
    ("signer", "tamper", "message"),
    [
        (None, wrong_signature, "sign result is not same"),
        (Signer("SIMULATORAK", "WRONGSECRET"), None, "sign result is not same"),
        (Signer("NOSUCHKEY", "SIMULATORSK"), None, "Invalid accessKey"),
        (None, lambda h: h.pop("x-jdcloud-date"), "lack of header x-jdcloud-date"),
        (None, lambda h: h.pop("Authorization"), "lack of header authorization"),
    ],
)
async def test_bad_credentials_are_refused_with_401(
    api: Api,
    signer: Signer | None,
    tamper: Callable[[dict[str, str]], None] | None,
    message: str,
) -> None:
    answer = await api.get(
        f"/v1/regions/{REGION}/images/{first_image(api)['imageId']}", signer=signer, tamper=tamper
    )
    assert answer.status == 401
    assert answer.error["code"] == 401
    assert answer.error["status"] == "ACCESS_ERROR"
    assert message in answer.error["message"]
    assert api.sim.stats.auth_failures == 1


async def test_a_signature_for_another_path_is_refused(api: Api) -> None:
    image_id = first_image(api)["imageId"]

    def other_path(headers: dict[str, str]) -> None:
        headers.update(
            api.signer.sign(
                method="GET",
                host=URL(api.running.url).raw_authority,
                path=f"/v1/regions/{REGION}/images/img-0000000000",
                query="",
                region=REGION,
                at=datetime.now(UTC),
                nonce=NONCE,
            )
        )

    answer = await api.get(f"/v1/regions/{REGION}/images/{image_id}", tamper=other_path)
    assert answer.status == 401


@pytest.mark.parametrize(
    "signer",
    [
        Signer("SIMULATORAK", "SIMULATORSK", version="JDCLOUD2"),
        Signer("SIMULATORAK", "SIMULATORSK", sign_date_nonce=True),
        Signer("SIMULATORAK", "SIMULATORSK", version="JDCLOUD2", sign_date_nonce=True),
    ],
)
async def test_every_signature_variant_is_accepted(api: Api, signer: Signer) -> None:
    image_id = first_image(api)["imageId"]
    answer = await api.get(f"/v1/regions/{REGION}/images/{image_id}", signer=signer)
    assert answer.status == 200
    listing = await api.get(f"/v1/regions/{REGION}/images", f"ids.1={image_id}", signer=signer)
    assert listing.body["result"]["totalCount"] == 1


SESSION_TOKEN = "sts+token/0123=="


def _with_token(token: str) -> Callable[[dict[str, str]], None]:
    def add(headers: dict[str, str]) -> None:
        headers["x-jdcloud-security-token"] = token  # sent, but not among SignedHeaders

    return add


@pytest.mark.parametrize(
    ("signer", "tamper", "message"),
    [
        (Signer("SIMULATORAK", "SIMULATORSK", session_token=SESSION_TOKEN), None, None),
        (
            Signer("SIMULATORAK", "SIMULATORSK", sign_date_nonce=True, session_token=SESSION_TOKEN),
            None,
            None,
        ),
        (Signer("SIMULATORAK", "SIMULATORSK"), None, "lack of header x-jdcloud-security-token"),
        (
            Signer("SIMULATORAK", "SIMULATORSK"),
            _with_token(SESSION_TOKEN),
            "header x-jdcloud-security-token is not signed",
        ),
        (
            Signer("SIMULATORAK", "SIMULATORSK", session_token="sts+other/9=="),
            None,
            "invalid or expired security token",
        ),
    ],
    ids=["signed", "signed-with-date-nonce", "absent", "unsigned", "wrong"],
)
async def test_a_required_session_token_must_be_sent_and_signed(
    make_api: ApiFactory,
    signer: Signer,
    tamper: Callable[[dict[str, str]], None] | None,
    message: str | None,
) -> None:
    api = await make_api(SimulatorConfig(images_per_region=5, session_token=SESSION_TOKEN))
    answer = await api.get(
        f"/v1/regions/{REGION}/images/{first_image(api)['imageId']}", signer=signer, tamper=tamper
    )
    if message is None:
        assert answer.status == 200
        assert api.sim.stats.auth_failures == 0
    else:
        assert (answer.status, answer.error["status"]) == (401, "ACCESS_ERROR")
        assert answer.error["message"].startswith(message)
        assert api.sim.stats.auth_failures == 1


def test_the_session_token_is_not_in_the_config_repr() -> None:
    assert SESSION_TOKEN not in repr(SimulatorConfig(session_token=SESSION_TOKEN))


@pytest.mark.parametrize(
    ("config", "status", "error_status"),
    [
        (SimulatorConfig(rate_500=1.0), 500, "HTTP_INTERNAL_SERVER_ERROR"),
        (SimulatorConfig(rate_503=1.0), 503, "HTTP_SERVICE_UNAVAILABLE"),
        (SimulatorConfig(throttle_rate=1.0, retry_after_s=0.5), 429, "RATE_LIMIT_EXCEEDED"),
    ],
)
async def test_faults_at_rate_one_give_their_status(
    make_api: ApiFactory, config: SimulatorConfig, status: int, error_status: str
) -> None:
    api = await make_api(config)
    answer = await api.image(first_image(api)["imageId"])
    assert answer.status == status
    assert answer.error["code"] == status
    assert answer.error["status"] == error_status
    assert REQUEST_ID.fullmatch(answer.body["requestId"])
    if status == 429:
        assert answer.headers["Retry-After"] == "0.5"
    assert api.sim.stats.faults_injected == 1


async def test_fail_rate_splits_between_500_and_503(make_api: ApiFactory) -> None:
    api = await make_api(SimulatorConfig(images_per_region=10, fail_rate=1.0))
    image_id = first_image(api)["imageId"]
    statuses = {(await api.image(image_id)).status for _ in range(40)}
    assert statuses == {500, 503}


async def test_auth_is_checked_before_faults(make_api: ApiFactory) -> None:
    api = await make_api(SimulatorConfig(images_per_region=10, fail_rate=1.0))
    answer = await api.get(
        f"/v1/regions/{REGION}/images/{first_image(api)['imageId']}", tamper=wrong_signature
    )
    assert answer.status == 401
    assert api.sim.stats.faults_injected == 0


async def test_faults_are_the_same_for_the_same_seed(make_api: ApiFactory) -> None:
    config = SimulatorConfig(images_per_region=10, fail_rate=0.3, throttle_rate=0.2, seed=5)
    runs = []
    for _ in range(2):
        api = await make_api(config)
        image_id = first_image(api)["imageId"]
        runs.append([(await api.image(image_id)).status for _ in range(30)])
    assert runs[0] == runs[1]
    assert {200, 429} <= set(runs[0])


async def test_max_faults_per_image_caps_faults_in_a_row(make_api: ApiFactory) -> None:
    api = await make_api(
        SimulatorConfig(images_per_region=10, fail_rate=1.0, max_faults_per_image=2)
    )
    images = api.sim.inventory.images[REGION]
    statuses = [(await api.image(images[0]["imageId"])).status for _ in range(3)]
    assert statuses[2] == 200 and set(statuses[:2]) <= {500, 503}
    assert (await api.image(images[1]["imageId"])).status in {500, 503}
    ids = "&".join(f"ids.{n}={i['imageId']}" for n, i in enumerate(images[:3], start=1))
    # A batch faults while every id in it is under the cap: images[1] reaches 2 on the first.
    batch = [(await api.images(ids)).status for _ in range(3)]
    assert batch[0] in {500, 503} and batch[1] == 200 and batch[2] in {500, 503}
    assert api.sim.stats.max_attempts() == 6


async def test_latency_is_slept_before_each_answer(make_api: ApiFactory) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    api = await make_api(SimulatorConfig(images_per_region=5, latency_ms=50), sleep=sleep)
    await api.image(first_image(api)["imageId"])
    await api.get("/nowhere")
    assert slept == [0.05, 0.05]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_minute_limit_counts_down_and_resets(make_api: ApiFactory) -> None:
    clock = FakeClock()
    config = SimulatorConfig(images_per_region=5, rate_limit_per_minute=3, rate_window_s=60)
    api = await make_api(config, clock=clock)
    image_id = first_image(api)["imageId"]
    answers = [await api.image(image_id) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-jdcloud-remaining-minute"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["x-jdcloud-limit-minute"] for a in answers} == {"3"}
    assert answers[3].error == {
        "code": 429,
        "status": "HTTP_RATE_LIMIT_EXCEEDED",
        "message": "minute rate limit exceeded, role:ak",
    }
    clock.now += 60
    renewed = await api.image(image_id)
    assert renewed.status == 200
    assert renewed.headers["x-jdcloud-remaining-minute"] == "2"
    assert api.sim.stats.rate_limited == 1


async def test_no_limit_headers_without_a_limit(api: Api) -> None:
    answer = await api.image(first_image(api)["imageId"])
    assert "x-jdcloud-limit-minute" not in answer.headers


async def test_stats_count_requests_statuses_and_attempts(api: Api) -> None:
    image_id = first_image(api)["imageId"]
    missing = api.sim.inventory.missing[REGION][0]
    await api.image(image_id)
    await api.image(image_id)
    await api.image(missing)
    await api.images(f"ids.1={image_id}&ids.2={missing}")
    await api.get(f"/v1/regions/{REGION}/images/{image_id}", tamper=wrong_signature)
    stats = api.sim.stats
    assert stats.requests == 5
    assert stats.by_status == {200: 3, 404: 1, 401: 1}
    assert stats.attempts[Target(REGION, image_id)] == 4
    assert stats.attempts[Target(REGION, missing)] == 2
    assert stats.auth_failures == 1
    assert stats.max_attempts() == 4
    served = await api.raw_get(f"{api.running.url}/_simulator/stats")
    assert served.status == 200
    assert served.body == stats.as_json()
    assert served.body["attempts"][f"{REGION}/{image_id}"] == 4
    assert api.sim.stats.requests == 5  # the stats page is not an API request


async def test_write_targets_writes_every_target(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "targets.csv"
    count = api.sim.write_targets(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "region_id,image_id"
    assert count == len(lines) - 1 == 4 * (40 + 10)
    pairs = [tuple(line.split(",")) for line in lines[1:]]
    assert [p[0] for p in pairs[:4]] == list(SimulatorConfig().regions)
    inventory = api.sim.inventory
    expected = {(r, i["imageId"]) for r in inventory.regions for i in inventory.images[r]}
    expected |= {(r, i) for r in inventory.regions for i in inventory.missing[r]}
    assert set(pairs) == expected
    text = io.StringIO()
    api.sim.write_targets(text)
    assert text.getvalue() == path.read_text(encoding="utf-8")


async def test_serve_forever_reports_its_url_and_stops(api: Api) -> None:
    stop, listening = asyncio.Event(), asyncio.Event()
    urls: list[str] = []

    def on_listening(url: str) -> None:
        urls.append(url)
        listening.set()

    sim = Simulator(SimulatorConfig(images_per_region=3))
    task = asyncio.create_task(serve_forever(sim, "127.0.0.1", 0, on_listening, stop))
    await asyncio.wait_for(listening.wait(), timeout=10)
    assert re.fullmatch(r"http://127\.0\.0\.1:[0-9]+", urls[0])
    assert urls[0] != "http://127.0.0.1:0"
    stats = await api.raw_get(f"{urls[0]}/_simulator/stats")
    assert stats.body["requests"] == 0
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.raw_get(f"{urls[0]}/_simulator/stats")


@pytest.mark.parametrize(
    "options",
    [
        {"fail_rate": 1.5},
        {"fail_rate": 0.8, "throttle_rate": 0.5},
        {"missing_rate": 1.0},
        {"rate_window_s": 0},
        {"latency_ms": -1},
        {"regions": ()},
    ],
)
def test_bad_simulator_config_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SimulatorConfig(**options)


def test_the_secret_is_not_in_the_config_repr() -> None:
    assert "HIDDEN" not in repr(SimulatorConfig(secret_key="HIDDEN"))
