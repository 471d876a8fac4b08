"""The write path's statements: built with SQLAlchemy Core, compiled once per store.

The write path is the crawler's hot loop (tens of thousands of rows a second). Its statements are
built from `crawler.schema` (upserts through the dialect), compiled once per store, and executed
with `executemany` over plain tuples: SQLAlchemy's per-row parameter processing would otherwise
cost more than the database's own work.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ClauseElement, and_, bindparam, delete, func, insert, true, update
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler

from crawler import schema
from crawler.models import Row
from crawler.store.dialects import Dialect
from crawler.store.timestamps import format_utc, utc_micros

_IMAGE_KEY = ("region_id", "image_id")
_TARGET_KEY = ("run_id", "region_id", "image_id")
# The parameters of the statements the writer fills as tuples, in one pass, without a dict per
# row first: each compiled statement is checked against these (`_WriteStatements.compile`).
RESULT_PARAMS = (
    "run_id", "region_id", "image_id", "outcome", "http_status", "error_status",
    "error_message", "attempts", "request_id", "finished_at",
)  # fmt: skip
VERSION_PARAMS = (
    "region_id", "image_id", "version", "valid_from_run", "valid_to_run", "status",
    "content_hash", "content", "recorded_at",
)  # fmt: skip
# Each child table's own key (its primary key), in the order its delete statement takes it.
CHILD_KEYS: dict[str, tuple[str, ...]] = {
    "disks": ("region_id", "image_id", "slot", "position"),
    "attachments": ("region_id", "image_id", "slot", "position", "seq"),
    "tags": ("region_id", "image_id", "slot", "position", "key"),
}
# The images upsert ends with the store's own columns and raw; the normaliser's columns before.
IMAGE_TAIL_PARAMS = (
    "first_seen_at", "last_seen_at", "last_run_id", "missing_since", "raw", "raw_digest",
    "answer_digest",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Statement:
    """A Core statement compiled once: its SQL and the column behind each `?`, in order.

    `bulk`, where the database has one (`Dialect.bulk_sql`), is the same statement taking one
    array per column, so that a batch is one statement rather than one per row; without it the
    rows go through `store_dialect.execute_many` (or SQLAlchemy's `exec_driver_sql`).
    """

    sql: str
    names: tuple[str, ...]
    values: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    bulk: str | None = None
    store_dialect: Dialect | None = None

    @classmethod
    def compile(
        cls, statement: ClauseElement, dialect: SADialect, store_dialect: Dialect | None = None
    ) -> _Statement:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ())
        assert len(names) > 1  # itemgetter of one name would give a bare value, not a tuple
        bulk = None
        if store_dialect is not None:
            types = [compiled.dialect.type_compiler_instance.process(compiled.binds[n].type)
                     for n in names]  # fmt: skip
            bulk = store_dialect.bulk_sql(compiled.string, types)
        # itemgetter builds a row's tuple in C: this runs for every row the crawler writes.
        return cls(compiled.string, names, operator.itemgetter(*names), bulk, store_dialect)

    def rows(self, rows: Sequence[Row]) -> list[tuple[Any, ...]]:
        """Each row's values in parameter order; a column a row lacks is NULL."""
        try:
            return list(map(self.values, rows))
        except KeyError:  # rows from elsewhere than `normalise_image`, which fills every column
            return [tuple(map(row.get, self.names)) for row in rows]

    def row(self, row: Row) -> tuple[Any, ...]:
        """One row's values in parameter order; a column it lacks is NULL."""
        try:
            return self.values(row)
        except KeyError:
            return tuple(map(row.get, self.names))

    async def run_many(self, conn: AsyncConnection, params: list[tuple[Any, ...]]) -> None:
        """One executemany, or one bulk statement; nothing at all for no rows."""
        if not params:
            return
        if self.bulk is None:
            if self.store_dialect is None:
                await conn.exec_driver_sql(self.sql, params)
            else:
                await self.store_dialect.execute_many(conn, self.sql, params)
        else:  # the rows turned into columns: one array per parameter
            await conn.exec_driver_sql(self.bulk, tuple(map(list, zip(*params, strict=True))))


def _key_match(table: Any, names: Sequence[str]) -> Any:
    # Bind names differ from column names: UPDATE reserves a column's own name for its SET value.
    return [table.c[name] == bindparam(f"k_{name}") for name in names]


def _image_upsert(dialect: Dialect) -> ClauseElement:
    # first_seen_at keeps the first fetch's time
    return dialect.upsert(schema.images, _IMAGE_KEY, kept=("first_seen_at",))


def _result_upsert(dialect: Dialect, dialect_name: str) -> ClauseElement:
    # The table as this database stores it: on SQLite its finish time is `finished_us`, and the
    # generated `finished_at` is neither inserted nor updated.
    table = schema.results_table(dialect_name)
    stored: dict[str, Any] = {c.name: bindparam(c.name) for c in table.c if c.computed is None}
    return dialect.upsert(table, ("run_id", "region_id", "image_id")).values(stored)


def _child_delete(kind: str) -> ClauseElement:
    table = schema.metadata.tables[kind]
    return delete(table).where(*_key_match(table, CHILD_KEYS[kind]))


def _image_touch() -> ClauseElement:
    # An unchanged image: only its bookkeeping moves, its children are left as they are. The
    # answer's digest replaces the stored one when it has one (the same rows, from an answer
    # whose bytes differ: the next one like it then needs no parsing).
    images = schema.images
    digest = bindparam("k_answer_digest", type_=images.c.answer_digest.type)
    return (
        update(images)
        .where(*_key_match(images, _IMAGE_KEY))
        .values(
            last_seen_at=bindparam("k_at"),
            last_run_id=bindparam("k_run_id"),
            answer_digest=func.coalesce(digest, images.c.answer_digest),
        )
    )


def _image_touch_known() -> ClauseElement:
    # An image whose answer is the one its rows were made from (`UnchangedAnswer`): touched
    # only while it still has that answer's digest and is not missing, checked here rather than
    # read first; the writer counts the rows touched. The check is one `(...) IS true` term so
    # that only the key can lead the plan: as plain terms, PostgreSQL, with the images table's
    # statistics young (`missing_since IS NULL` then estimated at 0.5 % of its rows), hash-joined
    # each batch with a bitmap scan of every present image through `ix_images_missing_since`:
    # ~5-7 ms per batch of 90 at 10,000 images and growing with the table, against ~2 ms by
    # the primary key (EXPLAIN ANALYZE; 841 against 350 ms of statement time per 10,000-image
    # re-crawl, pg_stat_statements).
    images = schema.images
    digest = bindparam("k_answer_digest", type_=images.c.answer_digest.type)
    return (
        update(images)
        .where(
            *_key_match(images, _IMAGE_KEY),
            and_(images.c.answer_digest == digest, images.c.missing_since.is_(None)).is_(true()),
        )
        .values(last_seen_at=bindparam("k_at"), last_run_id=bindparam("k_run_id"))
    )


def _image_refresh() -> ClauseElement:
    # Unchanged content from a different `raw` (keys in another order, a field without a column):
    # the row keeps the latest answer and its digest, so that the next fetch takes the fast path.
    images = schema.images
    return (
        update(images)
        .where(*_key_match(images, _IMAGE_KEY))
        .values(
            last_seen_at=bindparam("k_at"),
            last_run_id=bindparam("k_run_id"),
            raw=bindparam("k_raw", type_=images.c.raw.type),
            raw_digest=bindparam("k_raw_digest", type_=images.c.raw_digest.type),
            answer_digest=bindparam("k_answer_digest", type_=images.c.answer_digest.type),
        )
    )


def _version_close() -> ClauseElement:
    versions = schema.image_versions
    return (
        update(versions)
        .where(*_key_match(versions, (*_IMAGE_KEY, "version")))
        .values(valid_to_run=bindparam("k_run_id"))
    )


@dataclass(frozen=True, slots=True)
class _WriteStatements:
    """The statements `write_results` runs, compiled for one dialect."""

    image_upsert: _Statement
    disk_insert: _Statement
    attachment_insert: _Statement
    tag_insert: _Statement
    # A changed image's children are rewritten in place (`crawler.store.writer`): upserted by
    # their own key, and those whose key is gone deleted by it (CHILD_KEYS' order).
    disk_upsert: _Statement
    attachment_upsert: _Statement
    tag_upsert: _Statement
    disk_delete: _Statement
    attachment_delete: _Statement
    tag_delete: _Statement
    image_touch: _Statement
    image_touch_known: _Statement
    image_refresh: _Statement
    version_insert: _Statement
    version_close: _Statement
    version_delete: _Statement
    result_upsert: _Statement
    # A result's finish time as `result_upsert` takes it (`format_utc`, or `utc_micros` where
    # the database stores microseconds: `crawler.schema.results_table`).
    result_time: Callable[[datetime], Any]
    target_insert: _Statement
    # The images upsert's parameters before IMAGE_TAIL_PARAMS, from a normalised images row.
    image_head: tuple[str, ...]
    image_head_values: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    dialect: SADialect
    # Statements whose shape depends on the batch (an IN list of N keys), compiled on first use.
    _shaped: dict[Hashable, _Statement] = field(default_factory=dict)

    def shaped(self, key: Hashable, build: Callable[[], ClauseElement]) -> _Statement:
        """The statement `build` makes, compiled once for this store under `key`."""
        statement = self._shaped.get(key)
        if statement is None:
            statement = self._shaped[key] = _Statement.compile(build(), self.dialect)
        return statement

    @classmethod
    def compile(cls, store_dialect: Dialect, dialect: SADialect) -> _WriteStatements:
        def build(statement: ClauseElement) -> _Statement:
            return _Statement.compile(statement, dialect, store_dialect)

        disks, versions = schema.disks, schema.image_versions
        image_upsert = build(_image_upsert(store_dialect))
        image_head = image_upsert.names[: -len(IMAGE_TAIL_PARAMS)]
        statements = cls(
            image_upsert=image_upsert,
            disk_insert=build(insert(disks)),
            attachment_insert=build(insert(schema.attachments)),
            tag_insert=build(insert(schema.tags)),
            disk_upsert=build(store_dialect.upsert(disks, CHILD_KEYS["disks"])),
            attachment_upsert=build(
                store_dialect.upsert(schema.attachments, CHILD_KEYS["attachments"])
            ),
            tag_upsert=build(store_dialect.upsert(schema.tags, CHILD_KEYS["tags"])),
            disk_delete=build(_child_delete("disks")),
            attachment_delete=build(_child_delete("attachments")),
            tag_delete=build(_child_delete("tags")),
            image_touch=build(_image_touch()),
            image_touch_known=build(_image_touch_known()),
            image_refresh=build(_image_refresh()),
            version_insert=build(insert(versions)),
            version_close=build(_version_close()),
            version_delete=build(
                delete(versions).where(*_key_match(versions, (*_IMAGE_KEY, "version")))
            ),
            result_upsert=build(_result_upsert(store_dialect, dialect.name)),
            result_time=(
                utc_micros if "finished_us" in schema.results_table(dialect.name).c else format_utc
            ),
            target_insert=build(
                store_dialect.insert_or_ignore(schema.crawl_targets, _TARGET_KEY).values(
                    {name: bindparam(name) for name in _TARGET_KEY}
                )  # only the key: the other columns are leases (crawler.claims)
            ),
            image_head=image_head,
            image_head_values=operator.itemgetter(*image_head),
            dialect=dialect,
        )
        # These two take plain key tuples rather than rows: the order must be as written here.
        assert statements.target_insert.names == ("run_id", "region_id", "image_id")
        assert statements.image_touch.names == (
            "k_at", "k_run_id", "k_answer_digest", "k_region_id", "k_image_id",
        )  # fmt: skip
        assert statements.image_touch_known.names == (
            "k_at", "k_run_id", "k_region_id", "k_image_id", "k_answer_digest",
        )  # fmt: skip
        assert statements.image_refresh.names == (
            "k_at", "k_run_id", "k_raw", "k_raw_digest", "k_answer_digest", "k_region_id",
            "k_image_id",
        )  # fmt: skip
        assert statements.version_close.names == (
            "k_run_id",
            "k_region_id",
            "k_image_id",
            "k_version",
        )
        assert statements.version_delete.names == ("k_region_id", "k_image_id", "k_version")
        for kind, statement in (
            ("disks", statements.disk_delete),
            ("attachments", statements.attachment_delete),
            ("tags", statements.tag_delete),
        ):
            assert statement.names == tuple(f"k_{name}" for name in CHILD_KEYS[kind])
        assert statements.result_upsert.names[:-1] == RESULT_PARAMS[:-1]
        assert statements.result_upsert.names[-1] in (RESULT_PARAMS[-1], "finished_us")
        assert statements.version_insert.names == VERSION_PARAMS
        assert image_upsert.names[-len(IMAGE_TAIL_PARAMS) :] == IMAGE_TAIL_PARAMS
        return statements
