"""A hostile API server, crawled through the real CLI alongside a few thousand healthy targets.

One behaviour per class of issue 10 (and a few more). Every test starts from a copy of one healthy
crawl of the same targets (made once per module), crawls again with the server hostile, and
checks: the run ends by itself, exits 0 or 1 with no traceback, every healthy target is
`fetched`, every hostile one `failed` (or `missing` for a true NOT_FOUND) with an error_status,
the rows the healthy crawl wrote for hostile targets are unchanged, no key was written that was
not asked for, and every `raw` passes json_valid().

Hostile ids sort right after a healthy one (`img-ok00100h<kind>`), so in the batch strategy each
sits in a describeImages call with ~99 healthy ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from crawler.cli import exit_code_for, main
from crawler.errors import CrawlerError, EndpointUnreachableError, InternalError, StoreError
from crawler.scheduler import Pacing
from crawler.store import crawl_lock
from tests.conftest import write_config
from tests.test_cli import Recorder, crawl, rows

REGIONS = ("cn-north-1", "cn-east-2")
HEALTHY_PER_REGION = 1000
HOSTILE_AT = (100, 500, 900)  # after which healthy ids the hostile ones sit, in each region
OTHER_ID = "img-other"  # crawled by the healthy run only; a mismatched answer names it
MAX_BACKOFF_S = 0.05
DEEP = b"[" * 100_000 + b"]" * 100_000
_HOSTILE_ID = re.compile(r"img-ok[0-9]{5}h([a-z]+)")

# describeImage behaviours: a 200 that is not the answer asked for, and hostile error answers.
SINGLE_KINDS = (
    "deepimage",  # 200 nested 100,000 deep: json.loads raises RecursionError
    "deeperror",  # the same in a 500 error body
    "surrogateerror",  # an error envelope and requestId holding lone surrogates
    "mismatch",  # a 200 whose image is another one (img-other)
    "badkey",  # a 200 whose imageId has a shape the targets file rejects
    "nonstrid",  # a 200 whose imageId is a list
    "retryafter",  # 429 with Retry-After one day ahead
    "retrydate",  # 503 with Retry-After an HTTP date far in the future
    "imagelist",  # result.image is a list
    "errorstring",  # a 404 whose error is a string, not an envelope
    "notfound",  # a true NOT_FOUND envelope: missing, not failed
    "hugemessage",  # a 400 whose message is half a megabyte
    "nullbody",  # a 200 with the JSON literal null
)
# describeImages behaviours; the same ids' own describeImage then fails (or is a mismatch).
BATCH_KINDS = (
    "bshape",  # result.images is an object
    "bentry",  # one entry is a number
    "bdeep",  # the page nested 100,000 deep
    "bnonstr",  # its entry's imageId is a list
    "bextra",  # its entry is replaced by one for img-other, an id not asked for
    "bdup",  # its entry appears twice, differently
    "btotal",  # totalCount is a string
)
# Answers that are odd but usable: the target is fetched, with what cannot be stored made safe.
TOLERATED_KINDS = ("nan", "surrogate")


def healthy_ids(region: str) -> list[str]:
    return [f"img-ok{n:05d}" for n in range(HEALTHY_PER_REGION)]


def hostile_ids(kind: str) -> list[str]:
    if kind in BATCH_KINDS:  # each batch kind in describeImages calls of its own
        start = 50 + 130 * BATCH_KINDS.index(kind)
        return [f"img-ok{n:05d}h{kind}" for n in (start, start + 7, start + 14)]
    return [f"img-ok{n:05d}h{kind}" for n in HOSTILE_AT]


def image(image_id: str, *, name: str | None = None) -> dict[str, Any]:
    return {
        "imageId": image_id,
        "name": name or f"name-{image_id}",
        "osType": "linux",
        "sizeMB": 40960,
        "createTime": "2021-01-28 16:49:05",
        "systemDisk": {"deviceName": "vda", "localDisk": {"diskType": "ssd", "diskSizeGB": 40}},
        "dataDisks": [
            {
                "deviceName": "vdb",
                "cloudDisk": {
                    "diskId": f"vol-{image_id[4:]}",
                    "diskSizeGB": 100,
                    "tags": [{"key": "team", "value": "a"}],
                    "attachments": [{"attachmentId": "att-1", "instanceId": "i-1"}],
                },
            }
        ],
    }


def ok(payload: dict[str, Any]) -> web.Response:
    return web.json_response({"requestId": "r" * 32, "result": payload})


def envelope(code: int, status: str, message: str, **headers: str) -> web.Response:
    body = {"requestId": "e" * 32, "error": {"code": code, "status": status, "message": message}}
    return web.json_response(body, status=code, headers=headers)


def raw(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


class HostileServer:
    """An aiohttp.web app on loopback, on its own thread; healthy until `hostile` is set."""

    def __init__(self) -> None:
        self.hostile = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner = self._call(self._start())
        self.url = f"http://127.0.0.1:{self._port}"

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=30)

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/v1/regions/{region}/images/{image_id}", self.describe_image)
        app.router.add_get("/v1/regions/{region}/images", self.describe_images)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._port = runner.addresses[0][1]
        return runner

    def close(self) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def kind(self, image_id: str) -> str | None:
        match = _HOSTILE_ID.fullmatch(image_id)
        return match.group(1) if match and self.hostile else None

    async def describe_image(self, request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["image_id"]
        return single_answer(self.kind(image_id), image_id)

    async def describe_images(self, request: web.Request) -> web.StreamResponse:
        ids = [value for key, value in request.query.items() if key.startswith("ids.")]
        kinds = {kind for kind in map(self.kind, ids) if kind is not None}
        images: Any = [image(image_id) for image_id in ids]
        total: Any = len(images)
        if "bshape" in kinds:
            images = {"images": images}
        if "bentry" in kinds:
            images.append(42)
        if "bdeep" in kinds:
            return raw(200, b'{"result":{"images":' + DEEP + b"}}")
        if "btotal" in kinds:
            total = "many"
        for entry in list(images) if isinstance(images, list) else []:
            kind = self.kind(entry["imageId"]) if isinstance(entry, dict) else None
            if kind == "bnonstr":
                entry["imageId"] = [entry["imageId"]]
            elif kind == "bextra":
                entry.update(image(OTHER_ID, name="overwritten"))
            elif kind == "bdup":
                images.append({**entry, "name": "a second, different answer"})
        return ok({"images": images, "totalCount": total})


def single_answer(kind: str | None, image_id: str) -> web.StreamResponse:
    """describeImage's answer for one id: healthy, or the behaviour its kind names."""
    if kind is None:
        return ok({"image": image(image_id)})
    answers = {
        "deepimage": lambda: raw(200, b'{"result":{"image":{"imageId":' + DEEP + b"}}}"),
        "deeperror": lambda: raw(500, DEEP),
        "surrogateerror": lambda: raw(
            503,
            b'{"requestId":"\\udfff","error":{"code":503,"status":"BUSY\\ud800",'
            b'"message":"try \\ud800 later"}}',
        ),
        "mismatch": lambda: ok({"image": image(OTHER_ID, name="overwritten")}),
        "badkey": lambda: ok({"image": image("IMG-../../etc")}),
        "nonstrid": lambda: ok({"image": {**image(image_id), "imageId": [image_id]}}),
        "retryafter": lambda: envelope(
            429, "RATE_LIMITED", "slow down", **{"Retry-After": "86400"}
        ),
        "retrydate": lambda: envelope(
            503, "UNAVAILABLE", "later", **{"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}
        ),
        "imagelist": lambda: ok({"image": [image(image_id)]}),
        "errorstring": lambda: web.json_response({"error": "gone"}, status=404),
        "notfound": lambda: envelope(404, "NOT_FOUND", f"image {image_id} does not exist"),
        "hugemessage": lambda: envelope(400, "INVALID_ARGUMENT", "x" * 500_000),
        "nullbody": lambda: raw(200, b"null"),
        "nan": lambda: raw(
            200,
            json.dumps({"result": {"image": image(image_id)}})
            .replace('"sizeMB": 40960', '"sizeMB": NaN, "x": [Infinity, -Infinity, 1e999]')
            .encode(),
        ),
        "surrogate": lambda: raw(
            200,
            json.dumps({"result": {"image": image(image_id, name="a@b")}})
            .replace("a@b", "a\\ud800b")
            .replace('"team"', '"t\\udfffeam"')
            .encode(),
        ),
        "bdeep": lambda: raw(200, b'{"result":{"image":' + DEEP + b"}}"),
        "bextra": lambda: ok({"image": image(OTHER_ID, name="overwritten")}),
    }
    answer = answers.get(kind)
    return answer() if answer is not None else envelope(500, "INTERNAL", "hostile failure")


# --- fixtures ----------------------------------------------------------------------------------


def write_targets(path: Path, ids_by_region: dict[str, list[str]]) -> Path:
    lines = ["region_id,image_id"]
    lines += [f"{region},{image_id}" for region, ids in ids_by_region.items() for image_id in ids]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def all_hostile_ids() -> list[str]:
    kinds = SINGLE_KINDS + BATCH_KINDS + TOLERATED_KINDS
    return [image_id for kind in kinds for image_id in hostile_ids(kind)]


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    running = HostileServer()
    yield running
    running.close()


@pytest.fixture(scope="module")
def baseline(server: HostileServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One healthy crawl of every healthy and hostile id, and img-other."""
    folder = tmp_path_factory.mktemp("baseline")
    db = folder / "baseline.db"
    everything = {region: [*healthy_ids(region), *all_hostile_ids()] for region in REGIONS}
    everything[REGIONS[0]].append(OTHER_ID)
    targets = write_targets(folder / "targets.csv", everything)
    config = write_config(folder, server.url, db=db, max_backoff_s=MAX_BACKOFF_S)
    server.hostile = False
    assert crawl(config, "--targets", str(targets)) == 0
    return db


@pytest.fixture
def hostile_db(baseline: Path, server: HostileServer, tmp_path: Path) -> Iterator[Path]:
    """A copy of the baseline database, with the server hostile while the test runs."""
    db = tmp_path / "inventory.db"
    with sqlite3.connect(baseline) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    server.hostile = True
    yield db
    server.hostile = False


# --- checks ------------------------------------------------------------------------------------


def snapshot(
    db: Path, image_ids: list[str], *, skip: tuple[str, ...] = ()
) -> dict[str, list[tuple[object, ...]]]:
    """Every row of these images, in every inventory table (minus the columns `skip`)."""
    marks = ", ".join("?" * len(image_ids))
    dump = {}
    with sqlite3.connect(db) as connection:
        for table in ("images", "disks", "attachments", "tags"):
            info = connection.execute(f"PRAGMA table_info({table})").fetchall()
            columns = ", ".join(column[1] for column in info if column[1] not in skip)
            sql = (
                f"SELECT {columns} FROM {table} WHERE image_id IN ({marks}) ORDER BY 1, 2, 3, 4, 5"
            )
            dump[table] = connection.execute(sql, image_ids).fetchall()
    return dump


def crawl_hostile(
    server: HostileServer, db: Path, kinds: tuple[str, ...], *extra: str
) -> tuple[int, Recorder, list[str]]:
    """Crawl healthy ids plus three of each kind; returns exit code, output and hostile ids."""
    hostile = [image_id for kind in kinds for image_id in hostile_ids(kind)]
    targets = {region: [*healthy_ids(region), *hostile] for region in REGIONS}
    path = write_targets(db.parent / "targets.csv", targets)
    config = write_config(db.parent, server.url, db=db, max_backoff_s=MAX_BACKOFF_S)
    recorder = Recorder()
    code = crawl(config, "--targets", str(path), *extra, recorder=recorder, fake_sleep=True)
    return code, recorder, hostile


def check_run(
    baseline: Path, db: Path, code: int, recorder: Recorder, hostile: list[str]
) -> dict[str, tuple[object, ...]]:
    """The checks every hostile crawl must pass; returns the hostile targets' results."""
    stderr = recorder.stderr.getvalue()
    assert code in (0, 1), stderr[-3000:]
    assert "Traceback" not in stderr
    # No single wait, whatever Retry-After said, exceeded max_backoff_s.
    assert max(recorder.waits, default=0.0) <= MAX_BACKOFF_S
    run_id = rows(db, "SELECT max(run_id) FROM crawl_runs")[0][0]
    assert rows(db, f"SELECT status FROM crawl_runs WHERE run_id = {run_id}")[0][0] != "running"
    results = {
        (region, image_id): rest
        for region, image_id, *rest in rows(
            db,
            "SELECT region_id, image_id, outcome, error_status, error_message, request_id "
            f"FROM crawl_results WHERE run_id = {run_id}",
        )
    }
    for region in REGIONS:
        for image_id in healthy_ids(region):
            assert results[(region, image_id)][0] == "fetched", (region, image_id)
    hostile_results = {}
    for region in REGIONS:
        for image_id in hostile:
            outcome, error_status, *_ = hostile_results[image_id] = tuple(
                results[(region, image_id)]
            )
            assert outcome in ("failed", "missing"), (image_id, outcome)
            assert error_status, image_id
    # A definitive 404 sets missing_since and clears answer_digest (the same answer back must
    # then restore the image), and only that; anything else leaves the rows alone.
    missing = any(r[0] == "missing" for r in hostile_results.values())
    skip = ("missing_since", "answer_digest") if missing else ()
    touched = [*hostile, OTHER_ID]
    assert snapshot(db, touched, skip=skip) == snapshot(baseline, touched, skip=skip)
    asked = {image_id for (image_id,) in rows(baseline, "SELECT image_id FROM images")}
    assert {image_id for (image_id,) in rows(db, "SELECT image_id FROM images")} <= asked
    assert rows(db, "SELECT count(*) FROM images WHERE NOT json_valid(raw)") == [(0,)]
    # Everything stored is valid UTF-8: sqlite3 would fail to decode it otherwise.
    rows(db, "SELECT * FROM crawl_results")
    return hostile_results


# --- one test per class ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SINGLE_KINDS)
def test_a_hostile_describe_image_answer_stays_with_its_target(
    kind: str, server: HostileServer, baseline: Path, hostile_db: Path
) -> None:
    code, recorder, hostile = crawl_hostile(server, hostile_db, (kind,))
    results = check_run(baseline, hostile_db, code, recorder, hostile)
    expected = {
        "deepimage": "BAD_BODY",
        "nullbody": "BAD_BODY",
        "imagelist": "BAD_BODY",
        "deeperror": "HTTP_500",
        "surrogateerror": "BUSY\ufffd",
        "mismatch": "ID_MISMATCH",
        "badkey": "ID_MISMATCH",
        "nonstrid": "ID_MISMATCH",
        "retryafter": "RATE_LIMITED",
        "retrydate": "UNAVAILABLE",
        "errorstring": "HTTP_404",
        "notfound": "NOT_FOUND",
        "hugemessage": "INVALID_ARGUMENT",
    }[kind]
    assert {result[1] for result in results.values()} == {expected}
    assert {result[0] for result in results.values()} == {
        "missing" if kind == "notfound" else "failed"
    }
    assert code == (0 if kind == "notfound" else 1)
    if kind == "surrogateerror":
        assert {result[3] for result in results.values()} == {"\ufffd"}
        assert all("try \ufffd later" in str(result[2]) for result in results.values())
    if kind == "notfound":
        marks = ", ".join(f"'{image_id}'" for image_id in hostile)
        sql = f"SELECT count(*) FROM images WHERE image_id IN ({marks}) AND missing_since IS NULL"
        assert rows(hostile_db, sql) == [(0,)]
    if kind == "hugemessage":
        assert all(len(str(result[2])) < 1000 for result in results.values())
    if kind != "notfound":
        assert "targets failed since the run began" in recorder.stderr.getvalue()


def test_a_hostile_describe_images_answer_falls_back_and_stays_with_its_targets(
    server: HostileServer, baseline: Path, hostile_db: Path
) -> None:
    code, recorder, hostile = crawl_hostile(server, hostile_db, BATCH_KINDS, "--strategy", "batch")
    results = check_run(baseline, hostile_db, code, recorder, hostile)
    assert code == 1
    by_kind = {
        _HOSTILE_ID.fullmatch(image_id).group(1): result  # type: ignore[union-attr]
        for image_id, result in results.items()
    }
    assert by_kind["bextra"][1] == "ID_MISMATCH"  # its describeImage names img-other too
    assert by_kind["bdeep"][1] == "BAD_BODY"
    stderr = recorder.stderr.getvalue()
    assert "asking image by image" in stderr
    assert re.search("ignored [1-9][0-9]* entries for ids not asked for", stderr)


def test_odd_but_usable_answers_are_stored_safely(
    server: HostileServer, baseline: Path, hostile_db: Path
) -> None:
    recorder = Recorder()
    hostile = [*hostile_ids("nan"), *hostile_ids("surrogate")]
    targets = {region: [*healthy_ids(region), *hostile] for region in REGIONS}
    path = write_targets(hostile_db.parent / "targets.csv", targets)
    config = write_config(hostile_db.parent, server.url, db=hostile_db)
    assert crawl(config, "--targets", str(path), recorder=recorder) == 0
    assert "Traceback" not in recorder.stderr.getvalue()
    assert rows(hostile_db, "SELECT count(*) FROM images WHERE NOT json_valid(raw)") == [(0,)]
    nan_id, surrogate_id = hostile_ids("nan")[0], hostile_ids("surrogate")[0]
    size, x = rows(
        hostile_db,
        "SELECT size_mb, json_extract(raw, '$.x') FROM images "
        f"WHERE image_id = '{nan_id}' AND region_id = 'cn-north-1'",
    )[0]
    assert (size, x) == (None, "[null,null,null]")
    name, raw_text = rows(
        hostile_db, f"SELECT name, raw FROM images WHERE image_id = '{surrogate_id}' LIMIT 1"
    )[0]
    assert name == "a\ufffdb"
    assert "a\\ud800b" in str(raw_text) and "t\\udfffeam" in str(raw_text)
    tag = rows(hostile_db, f"SELECT key FROM tags WHERE image_id = '{surrogate_id}' LIMIT 1")
    assert tag == [("t\ufffdeam",)]


# --- the run's own faults ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_database_refusing_a_batch_ends_the_run_with_the_lock_released(
    server: HostileServer, baseline: Path, hostile_db: Path
) -> None:
    with sqlite3.connect(hostile_db) as connection:
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON crawl_results "
            "WHEN NEW.image_id = 'img-ok00500' "
            "BEGIN SELECT RAISE(ABORT, 'injected write fault'); END"
        )
    server.hostile = False
    recorder = Recorder()
    targets = {region: healthy_ids(region) for region in REGIONS}
    path = write_targets(hostile_db.parent / "targets.csv", targets)
    config = write_config(hostile_db.parent, server.url, db=hostile_db)
    assert crawl(config, "--targets", str(path), recorder=recorder) == 3
    stderr = recorder.stderr.getvalue()
    assert "injected write fault" in stderr
    assert "Traceback" not in stderr
    status, message = rows(
        hostile_db, "SELECT status, message FROM crawl_runs ORDER BY run_id DESC LIMIT 1"
    )[0]
    assert status == "failed"
    assert "injected write fault" in str(message)
    lock = crawl_lock(f"sqlite+aiosqlite:///{hostile_db}")
    assert lock is not None
    with lock:  # released: a second crawl would not exit 75
        pass
    # What was committed is kept; once the database accepts writes, --resume RUN_ID finishes it.
    with sqlite3.connect(hostile_db) as connection:
        connection.execute("DROP TRIGGER refuse")
    run_id = rows(hostile_db, "SELECT max(run_id) FROM crawl_runs")[0][0]
    assert crawl(config, "--resume", str(run_id)) == 0
    outcomes = rows(
        hostile_db,
        f"SELECT outcome, count(*) FROM crawl_results WHERE run_id = {run_id} GROUP BY 1",
    )
    assert outcomes == [("fetched", 2 * HEALTHY_PER_REGION)]


@pytest.mark.timeout(30)
def test_a_dead_endpoint_ends_a_20000_target_crawl_with_exit_3(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ids = [f"img-dead{n:05d}" for n in range(10_000)]
    path = write_targets(tmp_path / "targets.csv", {region: ids for region in REGIONS})
    db = tmp_path / "inventory.db"
    # The shipped defaults: 64 workers, 6 attempts, backoff from 0.5 s up to 60 s.
    config = write_config(
        tmp_path, f"http://127.0.0.1:{port}", db=db, concurrency=64,
        initial_backoff_s=0.5, max_backoff_s=60.0,
    )  # fmt: skip
    recorder = Recorder()
    assert crawl(config, "--targets", str(path), recorder=recorder) == 3
    stderr = recorder.stderr.getvalue()
    assert "endpoint unreachable: describeImage" in stderr
    assert "Traceback" not in stderr
    status, message, total = rows(db, "SELECT status, message, targets_total FROM crawl_runs")[0]
    assert (status, total) == ("failed", 20_000)
    assert str(message).startswith("endpoint unreachable: ")
    assert "the connection failed" in str(message)


class BrokenZone(tzinfo):
    """A time zone that fails when asked its offset: the store's timestamp formatting breaks."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("injected writer bug")

    def dst(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("injected writer bug")


@pytest.mark.timeout(60)
def test_a_writer_bug_ends_the_run_with_exit_70_and_the_lock_released(
    server: HostileServer, hostile_db: Path
) -> None:
    server.hostile = False
    targets = {region: healthy_ids(region) for region in REGIONS}
    path = write_targets(hostile_db.parent / "targets.csv", targets)
    config = write_config(hostile_db.parent, server.url, db=hostile_db)
    recorder = Recorder()
    # Every result's finish time is one the store cannot format: not a StoreError, a bug.
    pacing = Pacing(utc_now=lambda: datetime(2026, 1, 1, tzinfo=BrokenZone()))
    io = dataclasses.replace(recorder.io(), pacing=pacing)
    code = main(["crawl", "--config", str(config), "--targets", str(path), "--no-progress"], io)
    assert code == 70
    stderr = recorder.stderr.getvalue()
    assert (
        "internal error in the writer" in stderr and "RuntimeError: injected writer bug" in stderr
    )
    assert "Traceback" in stderr  # the deliberate 70: the log has the traceback to report
    status, message = rows(
        hostile_db, "SELECT status, message FROM crawl_runs ORDER BY run_id DESC LIMIT 1"
    )[0]
    assert status == "failed"
    assert "injected writer bug" in str(message)
    lock = crawl_lock(f"sqlite+aiosqlite:///{hostile_db}")
    assert lock is not None
    with lock:
        pass


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InternalError("bug"), 70),
        (EndpointUnreachableError("endpoint unreachable: x"), 3),
        (StoreError("disk full"), 3),
    ],
)
def test_exit_codes_of_the_run_s_own_faults(error: CrawlerError, code: int) -> None:
    assert exit_code_for(error) == code


@pytest.mark.timeout(30)
def test_the_deadline_still_wins_over_long_retry_after_waits(
    server: HostileServer, hostile_db: Path
) -> None:
    # Waits of up to a minute each (max_backoff_s = 60 and Retry-After a day): a deadline of 1 s
    # ends the run anyway, resumable.
    hostile = hostile_ids("retryafter") + hostile_ids("retrydate")
    path = write_targets(hostile_db.parent / "targets.csv", {REGIONS[0]: hostile})
    config = write_config(hostile_db.parent, server.url, db=hostile_db, max_backoff_s=60.0)
    recorder = Recorder()
    assert crawl(config, "--targets", str(path), "--deadline", "1", recorder=recorder) == 1
    status, message = rows(
        hostile_db, "SELECT status, message FROM crawl_runs ORDER BY run_id DESC LIMIT 1"
    )[0]
    assert status == "interrupted"
    assert "deadline" in str(message)
