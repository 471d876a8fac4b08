"""The unchanged answer: a describeImage body that is the stored one but for its requestId.

Such an answer is neither parsed nor checked nor normalised: the store only moves the image's
`last_seen_at` and `last_run_id`. These tests show the shortcut is taken exactly then, and not for
an answer whose bytes differ, whose shape is unexpected, or whose image changed in the database
in the meantime: with the real simulator on loopback, the real CLI and a real database (SQLite,
and PostgreSQL through the `db_url` fixture). The crawler's rows are made to disagree with the
answer on purpose (`raw` and `raw_digest` overwritten in the database): only a crawl that never
read the answer leaves them so, any other path writes the answer's `raw` back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from crawler.client import ApiClient, answer_digest, answer_image, open_session
from crawler.models import (
    ImageResponse,
    KnownAnswer,
    Outcome,
    RunStatus,
    Target,
    TargetResult,
    UnchangedAnswer,
)
from crawler.normalise import prepare_image
from crawler.signer import Signer
from crawler.simulator import RunningSimulator, Simulator, SimulatorConfig, start_simulator
from crawler.store import Store
from crawler.store.migrate import sync_url
from tests.conftest import SimulatorFactory, write_config
from tests.test_cli import crawl, targets_file
from tests.test_store import NAIVE_TZ, Clock, at

SALT = b"crawler-answer test\n"
AK, SK = "UNCHANGEDAK", "UNCHANGEDSK"
REGION = "cn-north-1"
IMAGE = b'{"imageId":"img-abc","name":"Debian 11","dataDisks":[]}'
TAMPERED = {"tampered": True}


def digest_of(body: bytes, salt: bytes = SALT) -> tuple[bytes, str] | None:
    return answer_digest(hashlib.sha256(salt), body)


def first_member(request_id: str, image: bytes = IMAGE) -> bytes:
    return b'{"requestId":"%s","result":{"image":%s}}' % (request_id.encode(), image)


def last_member(request_id: str, image: bytes = IMAGE) -> bytes:
    return b'{"result":{"image":%s},"requestId":"%s"}' % (image, request_id.encode())


# --- where the requestId is cut out ------------------------------------------------------------


def test_the_same_answer_with_another_request_id_has_the_same_digest() -> None:
    one, two = digest_of(first_member("c2hmmaan8w06w19q")), digest_of(first_member("0f7ft2d"))
    assert one is not None and two is not None
    assert one[0] == two[0] and (one[1], two[1]) == ("c2hmmaan8w06w19q", "0f7ft2d")
    # As a gateway writes it, last; and with JSON's blanks around it, as the API's docs show it.
    last = [digest_of(last_member(rid)) for rid in ("ce6ttm6ir2hu3mut", "5dfbb22e")]
    assert last[0] is not None and last[1] is not None and last[0][0] == last[1][0]
    assert last[0][0] != one[0]  # another shape of the same result: not the same answer
    pretty = [b'\n{\n  "requestId" : "%s",\n  "result": {"image": {}}}\n' % r for r in (b"a", b"b")]
    blank_a, blank_b = digest_of(pretty[0]), digest_of(pretty[1])
    assert blank_a is not None and blank_b is not None and blank_a[0] == blank_b[0]
    assert (blank_a[1], blank_b[1]) == ("a", "b")


def test_the_docs_example_answer_has_a_digest_and_its_request_id() -> None:
    body = (Path(__file__).parent / "data" / "docs_describeImages_example.json").read_bytes()
    cut = digest_of(body)
    assert cut is not None and cut[1] == json.loads(body)["requestId"]


def test_any_other_difference_makes_another_digest() -> None:
    base = digest_of(first_member("r1"))
    assert base is not None
    for image in (
        IMAGE.replace(b"img-abc", b"img-abd"),
        IMAGE.replace(b"Debian 11", b"Debian 12"),
        IMAGE.replace(b'"dataDisks":[]', b'"dataDisks":[ ]'),
    ):
        other = digest_of(first_member("r1", image))
        assert other is not None and other[0] != base[0]
    salted = digest_of(first_member("r1"), salt=b"another normaliser")
    assert salted is not None and salted[0] != base[0]


@pytest.mark.parametrize(
    "body",
    [
        b'{"result":{"image":{}},"requestId":"a","more":1}',  # neither first nor last
        b'{"requestId":"a","result":{"image":{}},"requestId":"b"}',  # twice
        b'{"result":{"requestId":"a","image":{}}}',  # not the answer's own
        b'{"result":{"image":{"requestId":"a"}}}',
        b'{"requestId":"a\\"b","result":{}}',  # an escape in the id
        b'{"requestId":"\\u0061","result":{}}',
        b'{"requestId":"","result":{}}',  # empty, too long, not a string
        b'{"requestId":"' + b"a" * 129 + b'","result":{}}',
        b'{"requestId":12,"result":{}}',
        b'{"result":{"image":{}}}',  # none at all
        b'{\x0c"requestId":"a","result":{}}',  # a blank JSON does not allow
        b'\xef\xbb\xbf{"requestId":"a","result":{}}',  # a byte order mark
        b'[{"requestId":"a"}]',
    ],
)
def test_an_answer_of_another_shape_has_no_digest(body: bytes) -> None:
    assert digest_of(body) is None


# --- the client, against the simulator ---------------------------------------------------------


@pytest.fixture
async def served() -> AsyncIterator[tuple[Simulator, RunningSimulator]]:
    sim = Simulator(
        SimulatorConfig(access_key=AK, secret_key=SK, regions=(REGION,), images_per_region=4)
    )
    running = await start_simulator(sim)
    try:
        yield sim, running
    finally:
        await running.close()


def client_of(session: Any, url: str, salt: bytes | None = SALT) -> ApiClient:
    signer = Signer(AK, SK)
    return ApiClient(
        session, url, signer, timeout_s=10.0, max_response_bytes=1 << 20, answer_salt=salt
    )


async def test_the_client_gives_the_stored_answer_back_unparsed_and_any_other_parsed(
    served: tuple[Simulator, RunningSimulator],
) -> None:
    sim, running = served
    image = sim.inventory.images[REGION][0]
    image_id = str(image["imageId"])
    async with open_session(concurrency=2) as session:
        client = client_of(session, running.url)
        first = await client.describe_image(REGION, image_id)
        assert isinstance(first, ImageResponse) and first.answer_digest is not None

        again = await client.describe_image(REGION, image_id, known_digest=first.answer_digest)
        assert isinstance(again, KnownAnswer)
        assert again.digest == first.answer_digest and again.request_id != first.request_id
        assert again.parse(again.body) == first.image == image

        stranger = await client.describe_image(REGION, image_id, known_digest=bytes(16))
        assert isinstance(stranger, ImageResponse) and stranger.answer_digest == again.digest

        sim.set_image(REGION, {**image, "name": "renamed"})
        changed = await client.describe_image(REGION, image_id, known_digest=again.digest)
        assert isinstance(changed, ImageResponse) and changed.image["name"] == "renamed"
        assert changed.answer_digest not in (None, again.digest)

        unsalted = client_of(session, running.url, salt=None)
        plain = await unsalted.describe_image(REGION, image_id, known_digest=changed.answer_digest)
        assert isinstance(plain, ImageResponse) and plain.answer_digest is None


# --- the store: an image changed since its targets were read -----------------------------------


async def test_an_image_written_since_its_targets_were_read_is_parsed_after_all(
    served: tuple[Simulator, RunningSimulator], db_url: str
) -> None:
    sim, running = served
    images = sim.inventory.images[REGION][:2]
    targets = [Target(REGION, str(image["imageId"])) for image in images]
    normalise = partial(prepare_image, naive_tz=NAIVE_TZ)
    store = await Store.open(db_url, clock=Clock())
    try:
        async with open_session(concurrency=2) as session:
            client = client_of(session, running.url)
            first_run = await store.create_run(targets, strategy="single")
            results = []
            for target in targets:
                answer = await client.describe_image(target.region_id, target.image_id)
                assert isinstance(answer, ImageResponse)
                rows, digest = normalise(target.region_id, answer.image), answer.answer_digest
                result = TargetResult(
                    target, Outcome.FETCHED, 1, at(1), http_status=200, rows=rows,
                    answer_digest=digest,
                )  # fmt: skip
                results.append(result)
            await store.write_results(first_run, results)
            await store.finish_run(first_run, RunStatus.SUCCEEDED, requests=2, retries=0)

            run = await store.create_run(targets, strategy="single")
            pending = await store.pending_targets(run, REGION, after_image_id=None, limit=10)
            assert [t.answer_digest for t in pending] == [r.answer_digest for r in results]
            known = []
            for target in pending:
                answer = await client.describe_image(
                    target.region_id, target.image_id, known_digest=target.answer_digest
                )
                assert isinstance(answer, KnownAnswer)
                known.append((target, answer))
            # Meanwhile the second image is written by someone else (another answer's digest),
            # and its raw no longer is the answer's.
            tamper(db_url, targets[1], answer_digest=bytes(16))

            def unchanged(target: Target, answer: KnownAnswer, parse: Any) -> TargetResult:
                rows = UnchangedAnswer(
                    target.region_id, target.image_id, answer.digest, answer.body, parse,
                    normalise,
                )  # fmt: skip
                return TargetResult(
                    target, Outcome.FETCHED, 1, at(2), http_status=200,
                    request_id=answer.request_id, rows=rows, answer_digest=answer.digest,
                )  # fmt: skip

            # The first must be touched without its answer being parsed at all.
            await store.write_results(
                run,
                [unchanged(*known[0], parse=_refuse_to_parse), unchanged(*known[1], answer_image)],
            )
    finally:
        await store.close()
    kept, rewritten = image_of(db_url, targets[0]), image_of(db_url, targets[1])
    assert raw_of(kept) == images[0] and kept["last_run_id"] == run
    assert raw_of(rewritten) == images[1] and rewritten["last_run_id"] == run
    assert bytes(rewritten["answer_digest"]) == known[1][1].digest
    answered = answer_image(known[1][1].body)  # the simulator's own key order
    assert bytes(rewritten["raw_digest"]) == normalise(REGION, answered).digest
    assert outcomes(db_url, run) == {t.image_id: ("fetched", None) for t in targets}
    assert version_count(db_url) == 2  # content unchanged: no new version for either


def _refuse_to_parse(_body: bytes) -> Any:
    raise AssertionError("the answer was parsed")


# --- end to end: the CLI against the simulator -------------------------------------------------


def engine_of(db_url: str) -> Any:
    return create_engine(sync_url(db_url), poolclass=NullPool)


def image_of(db_url: str, target: Target) -> dict[str, Any]:
    engine = engine_of(db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT * FROM images WHERE region_id = :r AND image_id = :i"),
                {"r": target.region_id, "i": target.image_id},
            ).one()
    finally:
        engine.dispose()
    return dict(row._mapping)


def raw_of(row: dict[str, Any]) -> Any:
    """`raw` as a value: text on SQLite, jsonb (read as the value) on PostgreSQL."""
    raw = row["raw"]
    return json.loads(raw) if isinstance(raw, str) else raw


def tamper(db_url: str, target: Target, **digests: bytes | None) -> None:
    """Make the stored raw disagree with every answer; set the digests given."""
    sets = ", ".join(f"{name} = :{name}" for name in ("raw", "raw_digest", *digests))
    engine = engine_of(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(f"UPDATE images SET {sets} WHERE region_id = :r AND image_id = :i"),
                {"raw": json.dumps(TAMPERED), "raw_digest": bytes(16), **digests,
                 "r": target.region_id, "i": target.image_id},
            )  # fmt: skip
    finally:
        engine.dispose()


def outcomes(db_url: str, run_id: int) -> dict[str, tuple[str, str | None]]:
    engine = engine_of(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT image_id, outcome, error_status FROM crawl_results WHERE run_id = :r"),
                {"r": run_id},
            ).all()
    finally:
        engine.dispose()
    return {image_id: (outcome, error) for image_id, outcome, error in rows}


def version_count(db_url: str, target: Target | None = None) -> int:
    where = "" if target is None else " WHERE region_id = :r AND image_id = :i"
    params = {} if target is None else {"r": target.region_id, "i": target.image_id}
    engine = engine_of(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM image_versions" + where), params)
                       .scalar_one())  # fmt: skip
    finally:
        engine.dispose()


def children(db_url: str) -> list[tuple[Any, ...]]:
    engine = engine_of(db_url)
    try:
        with engine.connect() as conn:
            return [
                (table, *row)
                for table in ("disks", "attachments", "tags")
                for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4")).all()
            ]
    finally:
        engine.dispose()


def test_an_unchanged_recrawl_reads_no_answer_and_a_different_one_is_read(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(regions=(REGION,), images_per_region=6, seed=5)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0
    images = {str(image["imageId"]): image for image in server.sim.inventory.images[REGION]}
    same, stranger, unknown, changed, *untouched = (Target(REGION, i) for i in sorted(images))
    before = {target: image_of(db_url, target) for target in (same, stranger, unknown, changed)}
    assert all(row["answer_digest"] is not None for row in before.values())

    tamper(db_url, same)  # its answer digest kept: the answer is recognised, the rows kept
    tamper(db_url, stranger, answer_digest=bytes(16))  # another digest: the answer is read
    tamper(db_url, unknown, answer_digest=None)  # none: likewise
    server.sim.set_image(REGION, {**images[changed.image_id], "name": "renamed"})
    kids = children(db_url)
    assert crawl(config, "--targets", str(targets)) == 0

    # Recognised: nothing of the answer was read (the tampered raw is still there), only the
    # bookkeeping moved, and the run has the answer's own request id. (On PostgreSQL the digest
    # comes with each target's claim, on SQLite with the store's pages of targets.)
    row = image_of(db_url, same)
    assert raw_of(row) == TAMPERED and bytes(row["raw_digest"]) == bytes(16)
    assert row["last_run_id"] == 2 and row["last_seen_at"] > before[same]["last_seen_at"]
    assert row["answer_digest"] == before[same]["answer_digest"]
    # Read: the answer's raw is back and the digests are the answer's again; no new version.
    for target in (stranger, unknown):
        row = image_of(db_url, target)
        assert raw_of(row) == images[target.image_id], target
        assert row["raw_digest"] == before[target]["raw_digest"]
        assert row["answer_digest"] == before[target]["answer_digest"]
        assert row["last_run_id"] == 2
    for target in (same, stranger, unknown, *untouched):
        assert version_count(db_url, target) == 1
    # Changed: a new version, its new name, a new answer digest.
    row = image_of(db_url, changed)
    assert row["name"] == "renamed" and version_count(db_url, changed) == 2
    assert row["answer_digest"] not in (None, before[changed]["answer_digest"])
    assert children(db_url) == kids  # a rename: no child row rewritten, of any image
    assert set(outcomes(db_url, 2).values()) == {("fetched", None)}
    assert len({request_ids(db_url, run)[same.image_id] for run in (1, 2)}) == 2


def request_ids(db_url: str, run_id: int) -> dict[str, str]:
    engine = engine_of(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT image_id, request_id FROM crawl_results WHERE run_id = :r"),
                {"r": run_id},
            ).all()
    finally:
        engine.dispose()
    return {image_id: request_id for image_id, request_id in rows}


def test_missing_forgets_the_answer_and_the_same_answer_back_opens_a_present_version(
    simulator: SimulatorFactory, tmp_path: Path, db_url: str
) -> None:
    server = simulator(regions=(REGION,), images_per_region=4, seed=7)
    config = write_config(tmp_path, server.url, db=tmp_path / "unused.db", database_url=db_url)
    targets = targets_file(tmp_path, server.sim)
    assert crawl(config, "--targets", str(targets)) == 0
    image = server.sim.inventory.images[REGION][0]
    target = Target(REGION, str(image["imageId"]))
    digest = image_of(db_url, target)["answer_digest"]

    server.sim.delete_image(REGION, target.image_id)
    assert crawl(config, "--targets", str(targets)) == 0
    row = image_of(db_url, target)
    assert row["missing_since"] is not None and row["answer_digest"] is None

    server.sim.set_image(REGION, image)  # back, byte for byte the answer of run 1
    assert crawl(config, "--targets", str(targets)) == 0
    row = image_of(db_url, target)
    assert row["missing_since"] is None and row["answer_digest"] == digest
    engine = engine_of(db_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(
                text(
                    "SELECT version, valid_from_run, valid_to_run, status FROM image_versions"
                    " WHERE region_id = :r AND image_id = :i ORDER BY version"
                ),
                {"r": target.region_id, "i": target.image_id},
            ).all()
    finally:
        engine.dispose()
    assert [tuple(v) for v in versions] == [
        (1, 1, 2, "present"), (2, 2, 3, "missing"), (3, 3, None, "present"),
    ]  # fmt: skip
