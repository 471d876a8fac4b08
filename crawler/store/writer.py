"""The inventory writer: one batch of outcomes turned into rows and written in one transaction.

A reader sees an image either with all of its old children or all of its new ones. An image
whose content is unchanged keeps its rows (only `last_seen_at` and `last_run_id` move); the
others are rewritten and open a version (`crawler.store.versions`). A `missing` outcome is only
recorded here: the marks are applied at the end of the run, for the whole run at once.

The fast path of an unchanged re-crawl: a fetched image arrives checked and encoded but without
rows (`FetchedImage`). When its `raw_digest` equals the one stored with the image and the image's
current version is `present`, it would give the same rows again, so none are built: the image is
touched and that is all. Otherwise its rows are built here and compared by content as before; an
unchanged content from a different `raw` (keys in another order) stores the new `raw` and digest.

Shorter still, the unchanged path of a describeImage answer: when its `answer_digest` (the body
without its requestId) equals the one read with the run's targets, it arrives unparsed
(`UnchangedAnswer`) and is touched by one statement that also checks, row by row, that the image
still has that digest and is not missing: no lookup, no rows. An image the statement did not
touch (written or marked missing since the targets were read) has its answer parsed and
normalised here and takes the path above. Every write of an image's rows stores the digest of
the answer they came from, or NULL; `crawler.store.versions.apply_missing` clears it.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from crawler import schema
from crawler.models import (
    FetchedImage,
    ImageRows,
    Outcome,
    TargetResult,
    UnchangedAnswer,
    VersionStatus,
)
from crawler.store.statements import CHILD_KEYS, _Statement, _WriteStatements
from crawler.store.timestamps import format_utc
from crawler.store.versions import ImageKey, current_versions, plan_versions

log = logging.getLogger(__name__)
_PRESENT = str(VersionStatus.PRESENT)
_MESSAGE_MAX_CHARS = 300
RowsT = TypeVar("RowsT", ImageRows, ImageRows | FetchedImage)


@dataclass(slots=True)
class _Batch:
    """One `write_results` call turned into parameter tuples, table by table."""

    statements: _WriteStatements
    run_id: int
    # Fetched images by their rows' own key, so that the children rewritten are exactly those
    # of the images row upserted, and an image given twice is written once. Rows not built yet
    # are a FetchedImage until `record_versions` decides. The fetch's time (as stored) is kept
    # apart, in `seen_at`: a (rows, time) pair per image would be one more object kept alive
    # per image for the garbage collector to walk until the batch is written.
    fetched: dict[ImageKey, ImageRows | FetchedImage] = field(default_factory=dict)
    seen_at: dict[ImageKey, str] = field(default_factory=dict)
    digests: dict[ImageKey, bytes] = field(default_factory=dict)
    # The answer digests to store with the fetched images' rows (absent: NULL).
    answers: dict[ImageKey, bytes] = field(default_factory=dict)
    # The images whose answer is the one stored (`UnchangedAnswer`): touched, if still so.
    known: dict[ImageKey, UnchangedAnswer] = field(default_factory=dict)
    # By target: a result replaced (rows that could not be built) replaces its tuple.
    results: dict[ImageKey, tuple[Any, ...]] = field(default_factory=dict)
    # The results of the images whose rows are not built yet, by the images' key.
    outcomes: dict[ImageKey, TargetResult] = field(default_factory=dict)
    # The fetched images stored before (they have a current version): their children are
    # rewritten in place (`rewrite_children`).
    stored: list[ImageKey] = field(default_factory=list)

    @classmethod
    def build(
        cls, statements: _WriteStatements, run_id: int, results: Sequence[TargetResult]
    ) -> _Batch:
        batch = cls(statements, run_id)
        # A target twice in one batch: the later result wins, as a later batch would.
        for result in {result.target: result for result in results}.values():
            batch.add(result)
        return batch

    def add(self, result: TargetResult) -> None:
        """Queue one result's rows."""
        at = format_utc(result.finished_at)
        target = result.target
        if result.outcome is Outcome.FETCHED:
            rows = _rows_of(result)
            if isinstance(rows, UnchangedAnswer):
                key = (rows.region_id, rows.image_id)
                self.known[key] = rows
                self.outcomes[key] = result
                self.fetched.pop(key, None)  # a target twice: the later result wins
            else:
                key = self.queue(rows, result)
                self.known.pop(key, None)
                if result.answer_digest is not None:
                    self.answers[key] = result.answer_digest
            self.seen_at[key] = at
        self.results[(target.region_id, target.image_id)] = _result_params(
            self.run_id, result, self.statements.result_time(result.finished_at)
        )

    def queue(self, rows: ImageRows | FetchedImage, result: TargetResult) -> ImageKey:
        """Queue a fetched image's rows (built or not yet) under their own key."""
        if isinstance(rows, FetchedImage):
            key = (rows.region_id, rows.image_id)
            self.digests[key] = rows.digest
            self.outcomes[key] = result
        else:
            key = (rows.image["region_id"], rows.image["image_id"])
        self.fetched[key] = rows
        return key

    def image_params(self) -> list[tuple[Any, ...]]:
        """The images rows, with the store's bookkeeping columns."""
        statements, run_id, digests = self.statements, self.run_id, self.digests
        head, names, seen = statements.image_head_values, statements.image_head, self.seen_at
        answers = self.answers
        params = []
        for key, rows in self.fetched.items():
            assert isinstance(rows, ImageRows)  # record_versions built every one still here
            image = rows.image
            try:
                values = head(image)
            except KeyError:  # rows from elsewhere than `normalise_image`: a column lacking is NULL
                values = tuple(map(image.get, names))
            # first_seen_at is written only by an insert: the upsert keeps an existing value.
            # In IMAGE_TAIL_PARAMS' order: first and last seen, run, missing_since, raw, digests.
            at = seen[key]
            raw, digest, answer = image["raw"], digests.get(key), answers.get(key)
            params.append((*values, at, at, run_id, None, raw, digest, answer))
        return params

    def children(self, statement: _Statement, kind: str) -> list[tuple[Any, ...]]:
        """The `disks`, `attachments` or `tags` rows of every fetched image not stored before."""
        if self.stored:
            stored = set(self.stored)
            images = [rows for key, rows in self.fetched.items() if key not in stored]
        else:  # a first crawl's batch
            images = list(self.fetched.values())
        return statement.rows([row for rows in images for row in getattr(rows, kind)])

    async def write(self, conn: AsyncConnection) -> None:
        """Parents before children; a changed image's children are rewritten in place."""
        statements = self.statements
        if self.known:
            await self.touch_known(conn)
        await self.record_versions(conn)
        await statements.image_upsert.run_many(conn, self.image_params())
        if self.stored:
            await self.rewrite_children(conn)
        for statement, kind in (
            (statements.disk_insert, "disks"),
            (statements.attachment_insert, "attachments"),
            (statements.tag_insert, "tags"),
        ):
            await statement.run_many(conn, self.children(statement, kind))
        await statements.result_upsert.run_many(conn, list(self.results.values()))

    async def rewrite_children(self, conn: AsyncConnection) -> None:
        """The children of the images stored before, rewritten in place: each row upserted by
        its own key and the rows whose key is gone deleted, rather than all deleted and inserted
        again. SQLite gives a re-inserted row a new rowid at the end of its table and leaves its
        old place empty, so the file grew by every changed image's children each night; an
        updated row keeps its rowid and its place. Disks go first: deleting one deletes its
        attachments and tags (the foreign keys cascade), so those are not looked for after."""
        statements, stored = self.statements, self.stored
        images = [self.fetched[key] for key in stored]
        for kind, upsert, delete in (
            ("disks", statements.disk_upsert, statements.disk_delete),
            ("attachments", statements.attachment_upsert, statements.attachment_delete),
            ("tags", statements.tag_upsert, statements.tag_delete),
        ):
            rows = [row for rows in images for row in getattr(rows, kind)]
            key_of = operator.itemgetter(*CHILD_KEYS[kind])
            kept = set(map(key_of, rows))
            was = await _stored_child_keys(conn, kind, stored)
            await delete.run_many(conn, [key for key in was if key not in kept])
            await upsert.run_many(conn, upsert.rows(rows))

    async def touch_known(self, conn: AsyncConnection) -> None:
        """Touch the images whose answer is the one stored, in one statement that checks each
        still has that answer's digest and is not missing. Should any not have been touched,
        their answers' rows are built and queued with the other fetched images."""
        run_id, seen, known = self.run_id, self.seen_at, self.known
        params = [(seen[key], run_id, *key, answer.digest) for key, answer in known.items()]
        touched = await _run_counted(conn, self.statements.image_touch_known, params)
        if touched == len(params):
            return
        still = await _stored_answer_digests(conn, list(known))
        for key, answer in known.items():
            if still.get(key) == answer.digest:
                continue  # touched
            log.info("%s/%s changed in the database since its run began", *key)
            rows = self.rows_of(key, answer.build)
            if rows is not None:
                self.queue(rows, self.outcomes[key])
                self.answers[key] = answer.digest

    async def record_versions(self, conn: AsyncConnection) -> None:
        """Open the fetched images' new versions; touch the unchanged ones and drop them from
        `fetched`, so that their rows are not rewritten."""
        statements, run_id, seen = self.statements, self.run_id, self.seen_at
        current = await current_versions(conn, statements, list(self.fetched))
        touched, refreshed = [], []
        built: dict[ImageKey, ImageRows] = {}
        for key, rows in self.fetched.items():
            if isinstance(rows, ImageRows):
                built[key] = rows
                continue
            was = current.get(key)
            if was is not None and was.status == _PRESENT and was.raw_digest == rows.digest:
                # the fast path: nothing is built
                touched.append((seen[key], run_id, self.answers.get(key), *key))
                continue
            made = self.rows_of(key, rows.build)
            if made is not None:
                built[key] = made
        plan = plan_versions(statements, run_id, built, seen, current)
        for key in plan.unchanged:
            rows = built.pop(key)
            digest, answer = self.digests.get(key), self.answers.get(key)
            if digest is not None and digest != current[key].raw_digest:
                refreshed.append((seen[key], run_id, rows.image["raw"], digest, answer, *key))
            else:
                touched.append((seen[key], run_id, answer, *key))
        self.fetched = dict(built)
        # An image without a current version was never written (its images row, children and
        # first version are written together, and 0002 gave every older image one), so it has
        # no children to rewrite: a first crawl only inserts them.
        self.stored = [key for key in built if key in current]
        await statements.image_touch.run_many(conn, touched)
        await statements.image_refresh.run_many(conn, refreshed)
        await statements.version_delete.run_many(conn, plan.deletes)
        await statements.version_close.run_many(conn, plan.closes)
        await statements.version_insert.run_many(conn, plan.inserts)

    def rows_of(self, key: ImageKey, build: Callable[[], RowsT]) -> RowsT | None:
        """The image's rows, from `build`; a bug that keeps them from being built fails that
        target only, as it would have where the image was fetched: its result says so and
        nothing else moves."""
        try:
            return build()
        except Exception as exc:
            result = self.outcomes[key]
            what = f"{key[0]}/{key[1]}"
            log.error("internal error while normalising %s", what, exc_info=exc)
            message = f"{what}: internal error (a bug, please report): {type(exc).__name__}: {exc}"
            failed = dataclasses.replace(
                result, outcome=Outcome.FAILED, error_status="INTERNAL_ERROR",
                error_message=message[:_MESSAGE_MAX_CHARS], rows=None,
            )  # fmt: skip
            target = (result.target.region_id, result.target.image_id)
            self.results[target] = _result_params(
                self.run_id, failed, self.statements.result_time(result.finished_at)
            )
            self.digests.pop(key, None)
            self.answers.pop(key, None)
            return None


async def _stored_child_keys(
    conn: AsyncConnection, kind: str, images: Sequence[ImageKey]
) -> list[tuple[Any, ...]]:
    """The keys of the `kind` rows stored for `images`, one query per region (the primary key's
    (region_id, image_id) prefix finds them)."""
    table = schema.metadata.tables[kind]
    columns = [table.c[name] for name in CHILD_KEYS[kind]]
    by_region: dict[str, list[str]] = {}
    for region_id, image_id in images:
        by_region.setdefault(region_id, []).append(image_id)
    found: list[tuple[Any, ...]] = []
    for region_id, image_ids in by_region.items():
        query = select(*columns).where(
            table.c.region_id == region_id, table.c.image_id.in_(image_ids)
        )
        found += [tuple(row) for row in await conn.execute(query)]
    return found


async def _run_counted(
    conn: AsyncConnection, statement: _Statement, params: list[tuple[Any, ...]]
) -> int:
    """Run a write statement for every tuple of `params`; returns how many rows it changed (the
    DB-API's rowcount of an executemany is the sum over its rows, as is the batch form's)."""
    if statement.bulk is not None:
        arrays = tuple(map(list, zip(*params, strict=True)))
        return int((await conn.exec_driver_sql(statement.bulk, arrays)).rowcount)
    return int((await conn.exec_driver_sql(statement.sql, params)).rowcount)


async def _stored_answer_digests(
    conn: AsyncConnection, images: Sequence[ImageKey]
) -> dict[ImageKey, bytes]:
    """The `answer_digest` of each of `images` that has one and is not missing."""
    table = schema.images
    by_region: dict[str, list[str]] = {}
    for region_id, image_id in images:
        by_region.setdefault(region_id, []).append(image_id)
    found: dict[ImageKey, bytes] = {}
    for region_id, image_ids in by_region.items():
        query = select(table.c.image_id, table.c.answer_digest).where(
            table.c.region_id == region_id,
            table.c.image_id.in_(image_ids),
            table.c.answer_digest.is_not(None),
            table.c.missing_since.is_(None),
        )
        for image_id, digest in await conn.execute(query):
            found[(region_id, image_id)] = bytes(digest)
    return found


def _rows_of(result: TargetResult) -> ImageRows | FetchedImage | UnchangedAnswer:
    if result.rows is None:
        target = result.target
        raise ValueError(f"{target.region_id}/{target.image_id}: fetched without rows")
    return result.rows


def _result_params(run_id: int, result: TargetResult, finished: Any) -> tuple[Any, ...]:
    """The crawl_results upsert's parameters, in `RESULT_PARAMS` order; `finished` is the finish
    time as the database stores it (`_WriteStatements.result_time`)."""
    target = result.target
    return (
        run_id, target.region_id, target.image_id, str(result.outcome), result.http_status,
        result.error_status, result.error_message, result.attempts, result.request_id,
        finished,
    )  # fmt: skip
