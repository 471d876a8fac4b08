"""History, written: the versions a batch of fetched images opens, and a run's missing marks.

An image's state as of run R is its `image_versions` row with `valid_from_run <= R` and
(`valid_to_run` NULL or `> R`); the current one has `valid_to_run` NULL. A fetched image whose
canonical content (`crawler.store.content`) equals its current `present` version's writes no
version and keeps its rows: the writer only moves its `last_seen_at` and `last_run_id`. Any other
fetch closes the current version at this run and opens the next.

Missing marks are applied once per run, at its end (`apply_missing`), so that the mass-deletion
guard (`MissingGuard`) can look at the whole run first: each image newly found missing closes its
`present` version and opens a `missing` one holding the same content, and gets `missing_since`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from crawler import schema
from crawler.models import ImageRows, Outcome, VersionStatus
from crawler.store.content import canonical_rows
from crawler.store.statements import _WriteStatements

ImageKey = tuple[str, str]
# Keys per `IN` list when reading current versions: far below any database's parameter limit.
_KEYS_PER_QUERY = 512
_PRESENT, _MISSING = str(VersionStatus.PRESENT), str(VersionStatus.MISSING)


@dataclass(frozen=True, slots=True)
class CurrentVersion:
    """The open version of an image."""

    version: int
    status: str
    content_hash: str
    valid_from_run: int
    # The image's `raw_digest` (None before it has one): equal to a fetch's, nothing is built.
    raw_digest: bytes | None


async def current_versions(
    conn: AsyncConnection, statements: _WriteStatements, keys: Sequence[ImageKey]
) -> dict[ImageKey, CurrentVersion]:
    """The current version of each image in `keys` that has one, with the image's raw_digest."""
    by_region: dict[str, list[str]] = {}
    for region_id, image_id in keys:
        by_region.setdefault(region_id, []).append(image_id)
    found: dict[ImageKey, CurrentVersion] = {}
    # One region per query, so that the primary key's (region_id, image_id) prefix finds each
    # image: a row-value IN list would scan the whole table on SQLite.
    for region_id, image_ids in by_region.items():
        for start in range(0, len(image_ids), _KEYS_PER_QUERY):
            chunk = image_ids[start : start + _KEYS_PER_QUERY]
            # Compiled once per padded length (a power of two) rather than once per batch: the
            # padding repeats the last id, which matches nothing new.
            size = 1 << (len(chunk) - 1).bit_length()
            lookup = statements.shaped(("current_versions", size), partial(_lookup, size))
            assert lookup.names[0] == "region_id"  # then the ids, in order
            params = (region_id, *chunk, *[chunk[-1]] * (size - len(chunk)))
            rows: list[tuple[Any, ...]] = [
                tuple(row) for row in await conn.exec_driver_sql(lookup.sql, params)
            ]
            for image_id, version, status, content_hash, valid_from_run, digest in rows:
                found[(region_id, image_id)] = CurrentVersion(
                    version, status, content_hash, valid_from_run, digest
                )
    return found


def _lookup(size: int) -> Any:
    """The current versions (and raw digests) of `size` images of one region."""
    versions, images = schema.image_versions, schema.images
    ids = [bindparam(f"id_{index}", type_=versions.c.image_id.type) for index in range(size)]
    columns = (
        versions.c.image_id, versions.c.version, versions.c.status,
        versions.c.content_hash, versions.c.valid_from_run, images.c.raw_digest,
    )  # fmt: skip
    return (
        select(*columns)
        .join_from(versions, images, _same_image(versions, images))
        .where(
            versions.c.region_id == bindparam("region_id"),
            versions.c.image_id.in_(ids),
            versions.c.valid_to_run.is_(None),
        )
    )


@dataclass(slots=True)
class VersionPlan:
    """What one batch writes to `image_versions`, as parameter tuples, and what it leaves."""

    unchanged: list[ImageKey] = field(default_factory=list)
    deletes: list[tuple[Any, ...]] = field(default_factory=list)
    closes: list[tuple[Any, ...]] = field(default_factory=list)
    inserts: list[tuple[Any, ...]] = field(default_factory=list)


def plan_versions(
    statements: _WriteStatements,
    run_id: int,
    fetched: Mapping[ImageKey, ImageRows],
    seen_at: Mapping[ImageKey, str],
    current: Mapping[ImageKey, CurrentVersion],
) -> VersionPlan:
    """Compare each fetched image with its current version; `seen_at` holds each fetch's time
    as stored."""
    plan = VersionPlan()
    for key, rows in fetched.items():
        content, at = canonical_rows(rows), seen_at[key]
        was = current.get(key)
        if was is not None and was.status == _PRESENT and was.content_hash == content.hash:
            plan.unchanged.append(key)
            continue
        version = 1
        if was is not None:
            where = {"k_region_id": key[0], "k_image_id": key[1], "k_version": was.version}
            if was.valid_from_run == run_id:  # fetched twice in one run: the later fetch wins
                plan.deletes.append(statements.version_delete.values(where))
                version = was.version
            else:
                plan.closes.append(statements.version_close.values({**where, "k_run_id": run_id}))
                version = was.version + 1
        # In VERSION_PARAMS' order: the key, the runs it is valid in, status, content, time.
        plan.inserts.append(
            (key[0], key[1], version, run_id, None, _PRESENT, content.hash, content.text, at)
        )
    return plan


# --- the end of a run: missing marks and the guard ---------------------------------------------


@dataclass(frozen=True, slots=True)
class MissingGuard:
    """`[crawl] max_missing_fraction` and `missing_guard_min`, and `--accept-missing`."""

    max_fraction: float = 0.2
    min_count: int = 50
    accept: bool = False

    def holds(self, newly_missing: int, present_before: int) -> bool:
        """Whether a run that would newly mark `newly_missing` of its `present_before` images
        missing must hold its marks back."""
        if self.accept or self.max_fraction >= 1:
            return False
        return (
            newly_missing >= self.min_count and newly_missing > self.max_fraction * present_before
        )

    def held_message(self, run_id: int, counts: MissingCounts) -> str:
        """What a held run's summary and log say: how many, and how to apply them."""
        newly, present = counts.newly_missing, counts.present_before
        share = newly / present if present else 1.0
        return (
            f"held back {newly:,} missing marks: {newly:,} of the {present:,} images present"
            f" before this run answered 404 ({share:.0%}, over max_missing_fraction"
            f" {self.max_fraction:g}); wrong credentials or account? If they are really gone,"
            f" apply with `crawler accept {run_id}` (or crawl with --accept-missing)"
        )


@dataclass(frozen=True, slots=True)
class MissingCounts:
    """A run's targets that were present before it, and how many of those it found missing.

    `present_before` is counted only when `newly_missing` is not 0 (else it is 0): with nothing
    newly missing the guard has nothing to weigh, and the count reads every result of the run.
    """

    present_before: int
    newly_missing: int


def _same_image(table: Any, other: Any) -> ColumnElement[bool]:
    return and_(table.c.region_id == other.c.region_id, table.c.image_id == other.c.image_id)


def _key(table: Any) -> Any:
    return tuple_(table.c.region_id, table.c.image_id)


def _newly_missing(run_id: int) -> Any:
    """The run's `missing` results whose image is still present and not seen after the run,
    joined with that image's current version (`v`) and result (`r`)."""
    results, images = schema.crawl_results, schema.images
    current = schema.image_versions.alias("v")
    return (
        select(current, results.c.finished_at)
        .select_from(results)
        .join(current, _same_image(current, results))
        .join(images, _same_image(images, results))
        .where(
            results.c.run_id == run_id,
            results.c.outcome == str(Outcome.MISSING),
            current.c.valid_to_run.is_(None),
            current.c.status == _PRESENT,
            # A later run that fetched it (an `accept` of an older run) knows better.
            or_(images.c.last_run_id.is_(None), images.c.last_run_id <= run_id),
        )
    )


async def missing_counts(conn: AsyncConnection, run_id: int) -> MissingCounts:
    """What the guard weighs for `run_id`."""
    results, versions = schema.crawl_results, schema.image_versions
    present = select(versions.c.region_id, versions.c.image_id).where(
        versions.c.status == _PRESENT,
        versions.c.valid_from_run < run_id,
        or_(versions.c.valid_to_run.is_(None), versions.c.valid_to_run >= run_id),
    )
    present_before = (
        select(func.count())
        .select_from(results)
        .where(results.c.run_id == run_id, _key(results).in_(present))
    )
    newly = select(func.count()).select_from(_newly_missing(run_id).subquery())
    newly_missing = int((await conn.execute(newly)).scalar_one())
    if newly_missing == 0:
        return MissingCounts(0, 0)
    return MissingCounts(int((await conn.execute(present_before)).scalar_one()), newly_missing)


async def apply_missing(conn: AsyncConnection, run_id: int, recorded_at: str) -> int:
    """Mark missing every image `run_id` newly found missing; returns how many."""
    versions, images, results = schema.image_versions, schema.images, schema.crawl_results
    found = _newly_missing(run_id).subquery()
    columns = [column.name for column in versions.columns]
    opened = select(
        found.c.region_id, found.c.image_id, found.c.version + 1, literal(run_id),
        literal(None), literal(_MISSING), found.c.content_hash, found.c.content,
        literal(recorded_at),
    )  # fmt: skip
    # SQLAlchemy promises rowcount for UPDATE and DELETE only; psycopg's INSERT ... SELECT gives -1
    # unless asked to keep it.
    opening = insert(versions).from_select(columns, opened)
    marked = (await conn.execute(opening.execution_options(preserve_rowcount=True))).rowcount
    if not marked:  # the usual night: the statements below would each read a whole table
        return 0
    # Close the present versions just succeeded by a missing one opened in this run. The keys
    # come from one uncorrelated subquery: a correlated EXISTS lets SQLite's planner pick the
    # valid_from_run index, which every version of this run shares (a scan per row).
    new = versions.alias("m")
    opened_here = select(new.c.region_id, new.c.image_id).where(
        new.c.valid_from_run == run_id, new.c.status == _MISSING, new.c.valid_to_run.is_(None)
    )
    await conn.execute(
        update(versions)
        .where(
            versions.c.valid_to_run.is_(None),
            versions.c.status == _PRESENT,
            _key(versions).in_(opened_here),
        )
        .values(valid_to_run=run_id)
    )
    found_at = (
        select(results.c.finished_at)
        .where(_same_image(results, images), results.c.run_id == run_id)
        .scalar_subquery()
    )
    await conn.execute(
        update(images)
        .where(images.c.missing_since.is_(None), _key(images).in_(opened_here))
        .values(missing_since=found_at)
    )
    # The answer its rows were made from is no longer the image's state: the same answer back
    # must open a present version, so it takes the whole path (`crawler.store.writer`).
    await conn.execute(
        update(images)
        .where(images.c.answer_digest.is_not(None), _key(images).in_(opened_here))
        .values(answer_digest=None)
    )
    return int(marked)
