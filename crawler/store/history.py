"""History, read: what changed between two runs, one image's timeline, a run's change counts.

All of it is read from `image_versions` alone (CONTRACT.md §7), so it survives the pruning of old
runs' targets and results. An image's state as of run R is the version valid at R: `present`,
`missing`, or none. Between runs A and B an image is `added` (none at A, present at B), `removed`
(present at A, missing or none at B), `restored` (missing at A, present at B) or `changed`
(present at both, with a different content hash); any other pair is no change.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, and_, case, func, literal, or_, select, tuple_, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection

from crawler import schema
from crawler.errors import CrawlerError
from crawler.models import Change, RunStatus, VersionStatus
from crawler.store.content import FieldChange, changed_fields
from crawler.store.database import _translated, database_name
from crawler.store.readers import _readonly_connection

# The runs `crawler diff` picks by default: finished ones whose results can be trusted.
DIFFABLE_STATUSES = (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
_PRESENT = str(VersionStatus.PRESENT)


@dataclass(frozen=True, slots=True)
class ImageDiff:
    """One image that differs between two runs; `fields` is empty unless `changed`."""

    region_id: str
    image_id: str
    change: Change
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True, slots=True)
class RunPair:
    """The runs a diff compares; `from_run` None is the baseline: the state before any run."""

    from_run: int | None
    to_run: int


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One version of an image, with what changed from the version before it."""

    version: int
    valid_from_run: int
    valid_to_run: int | None
    status: str
    change: Change
    run_started_at: str | None
    recorded_at: str
    content_hash: str
    fields: tuple[FieldChange, ...]


def _loads(value: Any) -> dict[str, Any]:
    # JSON text from SQLite; PostgreSQL's driver already decodes jsonb.
    loaded = json.loads(value) if isinstance(value, str | bytes) else value
    assert isinstance(loaded, dict)
    return loaded


def classify(before: str | None, after: str | None, same_content: bool) -> Change | None:
    """The change between two states (a version status, or None for no state)."""
    if before != _PRESENT and after == _PRESENT:
        return Change.ADDED if before is None else Change.RESTORED
    if before == _PRESENT and after != _PRESENT:
        return Change.REMOVED
    if before == _PRESENT and not same_content:
        return Change.CHANGED
    return None


# --- choosing the runs --------------------------------------------------------------------------


async def _run_statuses(conn: AsyncConnection) -> dict[int, str]:
    runs = schema.crawl_runs
    return {
        int(run): str(status)
        for run, status in await conn.execute(select(runs.c.run_id, runs.c.status))
    }


def choose_runs(statuses: dict[int, str], from_run: int | None, to_run: int | None) -> RunPair:
    """The runs to compare: given ones must exist; by default the two newest `succeeded` or
    `partial` runs (before `to_run` for the older one); one such run alone is the baseline.

    Raises:
        CrawlerError: a given run does not exist, or no run can be compared.
    """
    for given in (from_run, to_run):
        if given is not None and given not in statuses:
            raise CrawlerError(f"there is no run {given}")
    finished = sorted(run for run, status in statuses.items() if status in DIFFABLE_STATUSES)
    if to_run is None:
        if not finished:
            raise CrawlerError("no run has finished (succeeded or partial): nothing to compare")
        to_run = finished[-1]
    if from_run is None:
        earlier = [run for run in finished if run < to_run]
        from_run = earlier[-1] if earlier else None
    return RunPair(from_run, to_run)


# --- diff ---------------------------------------------------------------------------------------


def _valid_at(run_id: int) -> Any:
    versions = schema.image_versions
    return and_(
        versions.c.valid_from_run <= run_id,
        or_(versions.c.valid_to_run.is_(None), versions.c.valid_to_run > run_id),
    )


async def diff_runs(
    conn: AsyncConnection, pair: RunPair, *, region_id: str | None = None
) -> AsyncIterator[ImageDiff]:
    """Every image that differs between `pair`'s runs, in key order, streamed."""
    versions = schema.image_versions
    from_run, to_run = pair.from_run or 0, pair.to_run
    began = versions.alias("c")
    # Only an image with a version that began between the two runs can differ. (An uncorrelated
    # IN: with a correlated EXISTS, SQLite may scan the valid_from_run index once per row.)
    candidate = tuple_(versions.c.region_id, versions.c.image_id).in_(
        select(began.c.region_id, began.c.image_id).where(
            began.c.valid_from_run > min(from_run, to_run),
            began.c.valid_from_run <= max(from_run, to_run),
        )
    )
    at_from = _valid_at(from_run) if pair.from_run is not None else literal(False)
    at_to = _valid_at(to_run)
    statement = (
        select(
            versions.c.region_id, versions.c.image_id, versions.c.status,
            versions.c.content_hash, type_coerce(versions.c.content, Text),
            case((at_from, 1), else_=0).label("at_from"), case((at_to, 1), else_=0).label("at_to"),
        )
        .where(candidate, or_(at_from, at_to))
        .order_by(versions.c.region_id, versions.c.image_id, versions.c.version)
    )  # fmt: skip
    if region_id is not None:
        statement = statement.where(versions.c.region_id == region_id)
    pending: list[Any] = []
    async for row in await conn.stream(statement):
        if pending and (pending[0].region_id, pending[0].image_id) != (row.region_id, row.image_id):
            if (found := _compare(pending)) is not None:
                yield found
            pending = []
        pending.append(row)
    if pending and (found := _compare(pending)) is not None:
        yield found


def _compare(rows: Sequence[Any]) -> ImageDiff | None:
    """One image's change, from its versions valid at FROM and at TO (one may be both)."""
    before = next((row for row in rows if row.at_from), None)
    after = next((row for row in rows if row.at_to), None)
    same = before is not None and after is not None and before.content_hash == after.content_hash
    change = classify(before.status if before else None, after.status if after else None, same)
    if change is None:
        return None
    fields: tuple[FieldChange, ...] = ()
    if change is Change.CHANGED:
        assert before is not None and after is not None
        fields = tuple(changed_fields(_loads(before[4]), _loads(after[4])))
    return ImageDiff(rows[0].region_id, rows[0].image_id, change, fields)


# --- one image's timeline, and a run's change counts -------------------------------------------


async def image_history(conn: AsyncConnection, region_id: str, image_id: str) -> list[VersionEntry]:
    """Every version of one image, oldest first, with the fields changed at each."""
    versions, runs = schema.image_versions, schema.crawl_runs
    statement = (
        select(
            versions.c.version, versions.c.valid_from_run, versions.c.valid_to_run,
            versions.c.status, runs.c.started_at, versions.c.recorded_at,
            versions.c.content_hash, type_coerce(versions.c.content, Text),
        )
        .select_from(versions.outerjoin(runs, runs.c.run_id == versions.c.valid_from_run))
        .where(versions.c.region_id == region_id, versions.c.image_id == image_id)
        .order_by(versions.c.version)
    )  # fmt: skip
    entries: list[VersionEntry] = []
    previous: Any = None
    for row in await conn.execute(statement):
        status = previous.status if previous is not None else None
        change = classify(
            status, row.status, previous is not None and previous.content_hash == row.content_hash
        )
        fields: tuple[FieldChange, ...] = ()
        if change is Change.CHANGED or change is Change.RESTORED:
            fields = tuple(changed_fields(_loads(previous[7]), _loads(row[7])))
        entries.append(
            VersionEntry(
                row.version, row.valid_from_run, row.valid_to_run, row.status,
                change or Change.CHANGED, row.started_at, row.recorded_at, row.content_hash,
                fields,
            )
        )  # fmt: skip
        previous = row
    return entries


async def change_counts(conn: AsyncConnection, run_id: int) -> dict[Change, int]:
    """How many images run `run_id` added, removed, restored and changed (every key present)."""
    versions = schema.image_versions
    before = versions.alias("p")
    change = case(
        (before.c.version.is_(None), str(Change.ADDED)),
        (versions.c.status != _PRESENT, str(Change.REMOVED)),
        (before.c.status != _PRESENT, str(Change.RESTORED)),
        else_=str(Change.CHANGED),
    ).label("change")
    statement = (
        select(change, func.count())
        .select_from(
            versions.outerjoin(
                before,
                and_(
                    before.c.region_id == versions.c.region_id,
                    before.c.image_id == versions.c.image_id,
                    before.c.version == versions.c.version - 1,
                ),
            )
        )
        .where(versions.c.valid_from_run == run_id)
        .group_by(change)
    )
    counts = dict.fromkeys(Change, 0)
    for name, count in await conn.execute(statement):
        counts[Change(name)] = int(count)
    return counts


# --- over a read-only connection, for the CLI and the metrics -----------------------------------


async def run_pair(url: str, from_run: int | None, to_run: int | None) -> RunPair:
    """`choose_runs` for the database at `url`."""
    with _translated(database_name(url), "choose the runs to compare"):
        async with _readonly_connection(url) as conn:
            return choose_runs(await _run_statuses(conn), from_run, to_run)


async def read_diff(url: str, pair: RunPair, *, region_id: str | None = None) -> list[ImageDiff]:
    """`diff_runs` over a read-only connection to `url`."""
    with _translated(database_name(url), "compare runs"):
        async with _readonly_connection(url) as conn:
            return [diff async for diff in diff_runs(conn, pair, region_id=region_id)]


async def read_history(url: str, region_id: str, image_id: str) -> list[VersionEntry]:
    """`image_history` over a read-only connection to `url`."""
    with _translated(database_name(url), f"read the history of {region_id}/{image_id}"):
        async with _readonly_connection(url) as conn:
            return await image_history(conn, region_id, image_id)


async def run_changes(url: str, run_id: int) -> dict[Change, int]:
    """`change_counts` over a read-only connection to `url` (for the metrics file)."""
    with _translated(database_name(url), f"count the changes of run {run_id}"):
        async with _readonly_connection(url) as conn:
            return await change_counts(conn, run_id)
