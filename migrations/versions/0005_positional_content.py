"""`image_versions.content` in form 2: each row an array of its values, not an object by name.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:30:00

Form 1 wrote every row as an object of its non-NULL columns by name, so the column names were 58 %
of each version's text and history about 80 % of the size of `images` on the first run. Form 2
(`crawler.store.content`) writes a row as the array of its values in a fixed column order, NULL
as null and trailing NULLs left out; tags stay an object keyed by the tag's key. Every version is
rewritten into form 2, its `content_hash` with it, so an unchanged image re-crawled after the
upgrade writes no version. The column orders are copied here (not imported), so that this
revision keeps meaning form 2 whatever a later form does; the JSON text rule (sorted keys, no
spaces, UTF-8 as is) is `crawler.store.content.canonical`'s, which has not changed. A version
already in form 2 (written by 0002's backfill, which uses the current code) is left as it is.

On SQLite the rewritten rows are shorter in place, and the space they free stays in their pages
until `crawler prune --vacuum`. On PostgreSQL `content` stays jsonb.

The views `versioned_images`, `versioned_disks` and `versioned_attachments` read the positions
back by name, one row per version (and per disk or attachment of it), for SQL users: the same
columns and types as the tables, with the version's key, runs and status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

from crawler.store.content import canonical

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# Form 2's positions, as `crawler.store.content` had them when this revision was written.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "image": (
        "name", "description", "architecture", "os_type", "platform", "os_version",
        "image_source", "status", "progress", "root_device_type", "size_mb",
        "system_disk_size_gb", "snapshot_id", "created_at", "launch_permission", "owner_pin",
        "login_name", "offline", "uefi_support", "imported", "boot_mode", "instance_id",
        "expired_at",
    ),
    "disks": (
        "device_name", "disk_category", "auto_delete", "mapping_status", "disk_type",
        "disk_size_gb", "disk_id", "az", "name", "description", "status", "snapshot_id",
        "multi_attachable", "encrypted", "enabled", "iops", "throughput", "created_at",
        "charge_mode", "charge_status", "charge_start_at", "charge_expired_at", "charge_retire_at",
    ),
    "attachments": (
        "attachment_id", "disk_id", "instance_id", "instance_type", "status", "attached_at",
    ),
}  # fmt: skip
# Integer columns (the rest are text), for PostgreSQL's casts from `->>`'s text; size_mb is bigint.
_INTEGERS = {
    "progress", "size_mb", "system_disk_size_gb", "offline", "uefi_support", "imported",
    "auto_delete", "disk_size_gb", "multi_attachable", "encrypted", "enabled", "iops",
    "throughput",
}  # fmt: skip
# Each view and the kind of row it reads.
_VIEWS = {
    "versioned_images": "image",
    "versioned_disks": "disks",
    "versioned_attachments": "attachments",
}
_CHILD_KEY = {"disks": "disk", "attachments": "attachment"}
# Versions read and rewritten per step: bounded memory for any history.
_CHUNK = 2_000
_VERSIONS = sa.table(
    "image_versions",
    sa.column("region_id"), sa.column("image_id"), sa.column("version"),
    sa.column("content_hash"), sa.column("content"),
)  # fmt: skip


def _to_values(row: dict[str, Any], columns: tuple[str, ...]) -> list[Any]:
    unknown = set(row) - set(columns)
    if unknown:  # form 1 never held another column: refuse rather than drop a value
        raise ValueError(f"image_versions content has columns form 2 has no place for: {unknown}")
    values = [row.get(name) for name in columns]
    while values and values[-1] is None:
        values.pop()
    return values


def _to_named(values: list[Any], columns: tuple[str, ...]) -> dict[str, Any]:
    return {name: value for name, value in zip(columns, values, strict=False) if value is not None}


def to_form_2(content: dict[str, Any]) -> dict[str, Any] | None:
    """`content` in form 2, or None if it is in form 2 already."""
    if not isinstance(content.get("image"), dict):
        return None
    converted: dict[str, Any] = {"image": _to_values(content["image"], _COLUMNS["image"])}
    for kind in ("disks", "attachments"):
        if content.get(kind):
            converted[kind] = {
                key: _to_values(row, _COLUMNS[kind]) for key, row in content[kind].items()
            }
    if content.get("tags"):
        converted["tags"] = content["tags"]
    return converted


def to_form_1(content: dict[str, Any]) -> dict[str, Any] | None:
    """`content` in form 1, or None if it is in form 1 already."""
    if not isinstance(content.get("image"), list):
        return None
    converted: dict[str, Any] = {"image": _to_named(content["image"], _COLUMNS["image"])}
    for kind in ("disks", "attachments"):
        if content.get(kind):
            converted[kind] = {
                key: _to_named(values, _COLUMNS[kind]) for key, values in content[kind].items()
            }
    if content.get("tags"):
        converted["tags"] = content["tags"]
    return converted


def _chunks(bind: sa.Connection) -> Iterator[list[Any]]:
    """Every version, in key order, a chunk at a time (keyset paging: the key never changes)."""
    key = sa.tuple_(_VERSIONS.c.region_id, _VERSIONS.c.image_id, _VERSIONS.c.version)
    after: tuple[str, str, int] | None = None
    while True:
        query = sa.select(
            _VERSIONS.c.region_id, _VERSIONS.c.image_id, _VERSIONS.c.version, _VERSIONS.c.content
        )
        if after is not None:
            query = query.where(key > sa.tuple_(*(sa.literal(part) for part in after)))
        query = query.order_by(_VERSIONS.c.region_id, _VERSIONS.c.image_id, _VERSIONS.c.version)
        rows = list(bind.execute(query.limit(_CHUNK)))
        if not rows:
            return
        yield rows
        after = (rows[-1].region_id, rows[-1].image_id, rows[-1].version)


def _rewrite(convert: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    bind = op.get_bind()
    update = (
        sa.update(_VERSIONS)
        .where(
            _VERSIONS.c.region_id == sa.bindparam("b_region_id"),
            _VERSIONS.c.image_id == sa.bindparam("b_image_id"),
            _VERSIONS.c.version == sa.bindparam("b_version"),
        )
        .values(content=sa.bindparam("b_content"), content_hash=sa.bindparam("b_hash"))
    )
    for rows in _chunks(bind):
        changes = []
        for row in rows:
            # JSON text from SQLite; PostgreSQL's driver already decodes jsonb.
            stored = json.loads(row.content) if isinstance(row.content, str) else row.content
            converted = convert(stored)
            if converted is None:
                continue
            text = canonical(converted)
            changes.append(
                {
                    "b_region_id": row.region_id, "b_image_id": row.image_id,
                    "b_version": row.version, "b_content": text.text, "b_hash": text.hash,
                }
            )  # fmt: skip
        if changes:
            bind.execute(update, changes)


def _value(dialect: str, kind: str, position: int, column: str) -> str:
    if dialect == "postgresql":
        array = "v.content->'image'" if kind == "image" else "c.value"
        cast = {"size_mb": "::bigint"}.get(column, "::integer" if column in _INTEGERS else "")
        return f"({array}->>{position}){cast} AS {column}"
    if kind == "image":
        return f"json_extract(v.content, '$.image[{position}]') AS {column}"
    return f"json_extract(c.value, '$[{position}]') AS {column}"


def view_sql(dialect: str, name: str) -> str:
    """The SELECT of one of the views, in `dialect`'s JSON functions."""
    kind = _VIEWS[name]
    head = "v.region_id, v.image_id, v.version, v.valid_from_run, v.valid_to_run"
    head += ", v.status AS version_status"  # `status` is a column of images, disks and attachments
    source = ""
    if kind != "image":
        head += f", c.key AS {_CHILD_KEY[kind]}"
        source = (
            f" CROSS JOIN LATERAL jsonb_each(v.content->'{kind}') AS c"
            if dialect == "postgresql"
            else f" JOIN json_each(v.content, '$.{kind}') AS c"
        )
    values = ", ".join(
        _value(dialect, kind, position, column) for position, column in enumerate(_COLUMNS[kind])
    )
    return f"SELECT {head}, {values} FROM image_versions AS v{source}"


def upgrade() -> None:
    _rewrite(to_form_2)
    dialect = op.get_context().dialect.name
    for name in _VIEWS:
        op.execute(f"CREATE VIEW {name} AS {view_sql(dialect, name)}")


def downgrade() -> None:
    for name in reversed(_VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    _rewrite(to_form_1)
