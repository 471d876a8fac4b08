"""The unchanged re-crawl's fast path: an answer with the stored `raw_digest` builds no rows.

A fetch reaches the store checked and encoded (`prepare_image`), its rows not built. The store
builds them only when the image's stored digest differs or its current version is not `present`.
A `build` that raises stands in for "rows were built": the store turns that into the target's
failure, so a fast path that is not taken shows up as a failed outcome. Every test runs on SQLite
and on PostgreSQL (where `raw` is jsonb, and the digest must still be of the crawler's own text).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from crawler.models import FetchedImage, ImageRows, JsonObject, Outcome, RunStatus, TargetResult
from crawler.normalise import NORMALISER_VERSION, normalise_image, prepare_image, raw_digest
from crawler.simulator.inventory import Inventory, build_inventory
from crawler.store import Store
from tests.test_store import (
    NAIVE_TZ,
    REGIONS,
    Clock,
    at,
    dump_all,
    execute,
    fetched,
    image_row,
    missing,
    query,
    rich_image,
    target_of,
)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(db_url, clock=Clock())
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return build_inventory(REGIONS, 30, seed=11, missing_rate=0.1)


VERSIONS = "SELECT version, valid_from_run, valid_to_run, status FROM image_versions ORDER BY 1"


class BuiltAnyway(AssertionError):
    """Raised by a `build` the fast path should never have called."""


def _refuse_to_build(_fetched: FetchedImage) -> ImageRows:
    raise BuiltAnyway("rows were built")


def unbuildable(result: TargetResult) -> TargetResult:
    """`result` with rows that fail if they are ever built."""
    assert isinstance(result.rows, FetchedImage)
    return dataclasses.replace(
        result, rows=dataclasses.replace(result.rows, rows_from=_refuse_to_build)
    )


def outcome_of(db_url: str, run_id: int, image_id: str) -> tuple[Any, ...]:
    sql = (
        "SELECT outcome, error_status, error_message FROM crawl_results"
        " WHERE run_id = :run AND image_id = :image"
    )
    return query(db_url, sql, run=run_id, image=image_id)[0]


def reordered(image: JsonObject) -> JsonObject:
    """The same image with its keys in the opposite order (another `raw`, the same content)."""
    return dict(reversed(list(image.items())))


async def test_an_unchanged_answer_builds_no_rows_and_moves_only_the_bookkeeping(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])
    await store.finish_run(first, RunStatus.SUCCEEDED, requests=1, retries=0)
    tables = ("disks", "attachments", "tags", "image_versions")
    before, row_before = dump_all(db_url, tables), image_row(db_url, target)
    # What is stored is the digest of the crawler's own encoding, whatever the database gives
    # back for `raw` (jsonb reorders keys on PostgreSQL).
    assert row_before["raw_digest"] == prepare_image(region, image, naive_tz=NAIVE_TZ).digest

    second = await store.create_run([target], strategy="single")
    await store.write_results(second, [unbuildable(fetched(region, image, at(2)))])

    assert outcome_of(db_url, second, target.image_id) == ("fetched", None, None)
    assert dump_all(db_url, tables) == before
    row = image_row(db_url, target)
    assert (row["last_seen_at"], row["last_run_id"]) == ("2024-05-01 08:02:00.000000", second)
    unmoved = {"last_seen_at", "last_run_id"}
    assert {k: v for k, v in row.items() if k not in unmoved} == {
        k: v for k, v in row_before.items() if k not in unmoved
    }


async def test_another_raw_with_the_same_content_is_compared_and_then_kept(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])

    second = await store.create_run([target], strategy="single")
    again = fetched(region, reordered(image), at(2))
    await store.write_results(second, [again])
    # Compared by content: no version, and the new answer's raw and digest are kept...
    assert query(db_url, VERSIONS) == [(1, first, None, "present")]
    assert isinstance(again.rows, FetchedImage)
    assert image_row(db_url, target)["raw_digest"] == again.rows.digest
    # ...so the same answer the night after takes the fast path.
    third = await store.create_run([target], strategy="single")
    await store.write_results(third, [unbuildable(fetched(region, reordered(image), at(3)))])
    assert outcome_of(db_url, third, target.image_id) == ("fetched", None, None)
    assert image_row(db_url, target)["last_run_id"] == third


async def test_a_missing_image_back_with_the_same_answer_opens_a_present_version(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    target = target_of(region, image)
    runs = []
    for result in [
        fetched(region, image, at(1)),
        missing(target, at(2)),
        fetched(region, image, at(3)),
    ]:
        runs.append(await store.create_run([target], strategy="single"))
        await store.write_results(runs[-1], [result])
        await store.finish_run(runs[-1], RunStatus.SUCCEEDED, requests=1, retries=0)
    assert query(db_url, VERSIONS) == [
        (1, runs[0], runs[1], "present"),
        (2, runs[1], runs[2], "missing"),
        (3, runs[2], None, "present"),
    ]
    assert image_row(db_url, target)["missing_since"] is None


async def test_another_naive_time_zone_takes_the_full_comparison(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    region, image = rich_image(inventory)
    assert " " in str(image["createTime"])  # written without an offset: read in naive_tz
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])

    second = await store.create_run([target], strategy="single")
    rows = prepare_image(region, image, naive_tz=UTC)
    assert rows.digest != raw_digest(rows.raw.encode(), NAIVE_TZ)
    result = TargetResult(target, Outcome.FETCHED, 1, at(2), http_status=200, rows=rows)
    await store.write_results(second, [result])

    assert query(db_url, VERSIONS) == [(1, first, second, "present"), (2, second, None, "present")]
    assert image_row(db_url, target)["raw_digest"] == rows.digest


async def test_rows_that_cannot_be_built_fail_that_target_only(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    (region, image), (other_region, other) = inventory_pair(inventory)
    targets = [target_of(region, image), target_of(other_region, other)]
    run_id = await store.create_run(targets, strategy="single")
    broken = unbuildable(fetched(region, image, at(1)))
    await store.write_results(run_id, [broken, fetched(other_region, other, at(1))])

    outcome, status, message = outcome_of(db_url, run_id, targets[0].image_id)
    assert (outcome, status) == ("failed", "INTERNAL_ERROR")
    assert "BuiltAnyway: rows were built" in message and targets[0].image_id in message
    assert outcome_of(db_url, run_id, targets[1].image_id) == ("fetched", None, None)
    assert query(db_url, "SELECT image_id FROM images") == [(targets[1].image_id,)]
    summary = await store.finish_run(run_id, RunStatus.PARTIAL, requests=2, retries=0)
    assert (summary.fetched, summary.failed) == (1, 1)


def inventory_pair(images: Inventory) -> list[tuple[str, JsonObject]]:
    region = next(iter(images.images))
    return [(region, image) for image in images.images[region][:2]]


def rows_fingerprint() -> str:
    """SHA-256 of the rows the normaliser makes of fixed inputs: the docs' example and simulator
    images, with and without an offset-less time."""
    docs = Path(__file__).parent / "data" / "docs_describeImages_example.json"
    images = json.loads(docs.read_text("utf-8"))["result"]["images"]
    images += build_inventory(REGIONS, 10, seed=23, missing_rate=0.0).images[REGIONS[0]]
    rows = [normalise_image("cn-north-1", image, naive_tz=NAIVE_TZ) for image in images]
    text = json.dumps([dataclasses.asdict(row) for row in rows], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_normaliser_version_moves_with_its_rows() -> None:
    # A stored raw_digest vouches for the rows the normaliser made when it was stored. If the
    # same answers now give other rows (a new column, a converter changed), every image must be
    # normalised and compared again on its next crawl: raise NORMALISER_VERSION, then record the
    # new fingerprint here. Failing here without that means a stale fast path for every image.
    # (2: the same rows; raised with the content form 2 of migration 0005, so that the first
    # crawl after that upgrade compares every image with its rewritten hash once.)
    assert (NORMALISER_VERSION, rows_fingerprint()) == (2, ROWS_FINGERPRINT)


ROWS_FINGERPRINT = "201154bc9310b77503b6d6844d404fe68893c495a1feab1d9adad350d54de668"


async def test_an_image_stored_without_a_digest_is_compared_once_then_takes_the_fast_path(
    store: Store, inventory: Inventory, db_url: str
) -> None:
    # As after migration 0004: the images row has no raw_digest yet.
    region, image = rich_image(inventory)
    target = target_of(region, image)
    first = await store.create_run([target], strategy="single")
    await store.write_results(first, [fetched(region, image, at(1))])
    await store.finish_run(first, RunStatus.SUCCEEDED, requests=1, retries=0)
    execute(db_url, "UPDATE images SET raw_digest = NULL")

    second = await store.create_run([target], strategy="single")
    await store.write_results(second, [fetched(region, image, at(2))])
    assert query(db_url, VERSIONS) == [(1, first, None, "present")]
    assert image_row(db_url, target)["raw_digest"] is not None
    third = await store.create_run([target], strategy="single")
    await store.write_results(third, [unbuildable(fetched(region, image, at(3)))])
    assert outcome_of(db_url, third, target.image_id) == ("fetched", None, None)
