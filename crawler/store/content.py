"""An image's whole aggregate as one canonical value: what `image_versions` stores and hashes.

The content of an image is its `images` columns and its `disks`, `attachments` and `tags` rows,
without what the crawler itself keeps: the key (it is the version row's), the bookkeeping columns
(`first_seen_at`, `last_seen_at`, `last_run_id`, `missing_since`), `raw` and `raw_digest`. `raw`
is left out because every column is read from it (so a change that matters shows in a column)
and because keeping it would double the history's size; its key order therefore cannot move the
hash.

    {"image": ["Debian 11", null, "x86_64", ...],
     "disks": {"system:0": ["vda", "cloud", 1, ...], "data:1": [...]},
     "attachments": {"data:1:0": [...]},
     "tags": {"data:1": {"env": "prod"}}}

A row is the array of its column values in the order of `IMAGE_COLUMNS`, `DISK_COLUMNS` and
`ATTACHMENT_COLUMNS` (the tables' order; a column added later goes at the end), a NULL column as
null and trailing NULLs left out, so a position past the end reads as NULL (as `json_extract`
and `->>` read it). Column names are not repeated in every version: with them, the names were 58 %
of the text and history 80 % of the size of `images` (`benchmarks/history_size.py`). Tags are
data keyed by the tag's key. Empty kinds are left out, booleans are 0/1 as the normaliser writes
them and the tables hold them, and the JSON text has sorted keys and no spaces: equal aggregates
give equal bytes, whatever order the rows or the API's keys came in. `content_hash` is the SHA-256
of those bytes. `CONTENT_FORM` numbers the form; migration 0005 rewrote the stored contents of
form 1 (the same, with each row an object of its non-NULL columns by name), and its views
`versioned_images`, `versioned_disks` and `versioned_attachments` read the positions back by name
(a column added here needs them recreated).

`changed_fields` lists how two contents differ, with the paths of CONTRACT.md §7:
`name`, `disks[data:1].disk_type`, `attachments[data:1:0].status`, `tags[system:0].env`.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from crawler import schema
from crawler.models import ImageRows, Row

BOOKKEEPING_COLUMNS = ("first_seen_at", "last_seen_at", "last_run_id", "missing_since")
CONTENT_FORM = 2
# The positions of a row's values in its array. Fixed: every stored hash depends on them, so a
# column added to a table is appended here (an image without it keeps its text and hash).
IMAGE_COLUMNS = (
    "name", "description", "architecture", "os_type", "platform", "os_version", "image_source",
    "status", "progress", "root_device_type", "size_mb", "system_disk_size_gb", "snapshot_id",
    "created_at", "launch_permission", "owner_pin", "login_name", "offline", "uefi_support",
    "imported", "boot_mode", "instance_id", "expired_at",
)  # fmt: skip
DISK_COLUMNS = (
    "device_name", "disk_category", "auto_delete", "mapping_status", "disk_type", "disk_size_gb",
    "disk_id", "az", "name", "description", "status", "snapshot_id", "multi_attachable",
    "encrypted", "enabled", "iops", "throughput", "created_at", "charge_mode", "charge_status",
    "charge_start_at", "charge_expired_at", "charge_retire_at",
)  # fmt: skip
ATTACHMENT_COLUMNS = (
    "attachment_id", "disk_id", "instance_id", "instance_type", "status", "attached_at",
)  # fmt: skip
_DISK_KEY = ("slot", "position")
_ATTACHMENT_KEY = ("slot", "position", "seq")
# Canonical text: sorted keys, no spaces, UTF-8 as is. One encoder, built once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)

# Column order, for listing changed fields in the order of the tables.
_IMAGE_ORDER = {name: rank for rank, name in enumerate(schema.images.columns.keys())}
_DISK_ORDER = {name: rank for rank, name in enumerate(schema.disks.columns.keys())}
_ATTACHMENT_ORDER = {name: rank for rank, name in enumerate(schema.attachments.columns.keys())}
_SLOT_ORDER = {"system": 0, "data": 1}

JsonContent = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Canonical:
    """An image's canonical content: its JSON text and the text's SHA-256 in hex."""

    text: str
    hash: str


def _values(row: Row, columns: tuple[str, ...]) -> list[Any]:
    # Runs for every row the crawler writes: no per-value conversion (the normaliser writes
    # booleans as 0/1 already, as the tables hold them). A column the row lacks is NULL.
    values = [row.get(name) for name in columns]
    while values and values[-1] is None:
        values.pop()
    return values


def _child_key(row: Row, names: tuple[str, ...]) -> str:
    return ":".join(str(row[name]) for name in names)


def content_of(
    image: Row, disks: Iterable[Row], attachments: Iterable[Row], tags: Iterable[Row]
) -> JsonContent:
    """The content of one image from its rows (as normalised, or as read from the tables)."""
    content: JsonContent = {"image": _values(image, IMAGE_COLUMNS)}
    disk_map = {_child_key(row, _DISK_KEY): _values(row, DISK_COLUMNS) for row in disks}
    attachment_map = {
        _child_key(row, _ATTACHMENT_KEY): _values(row, ATTACHMENT_COLUMNS) for row in attachments
    }
    tag_map: dict[str, dict[str, Any]] = {}
    for row in tags:
        tag_map.setdefault(_child_key(row, _DISK_KEY), {})[row["key"]] = row["value"]
    for kind, children in (("disks", disk_map), ("attachments", attachment_map), ("tags", tag_map)):
        if children:
            content[kind] = children
    return content


def canonical(content: Mapping[str, Any]) -> Canonical:
    """The canonical text of `content` and its hash."""
    # orjson with sorted keys writes the same text as `_ENCODER` for what content holds (text,
    # integers, null: the tables' values) about seven times faster, ~13 us of each image, so the
    # hashes of earlier releases' versions still match (tests/test_json_text.py compares the two).
    # Anything it refuses goes through `_ENCODER`, as before.
    try:
        encoded = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        text = _ENCODER.encode(content)
        return Canonical(text, hashlib.sha256(text.encode()).hexdigest())
    # The hash is of the UTF-8 bytes orjson wrote: the text's own encoding, without encoding it.
    return Canonical(encoded.decode(), hashlib.sha256(encoded).hexdigest())


# The content positions of a normalised row, read in C. Every row `normalise_image` builds has
# every column; a row built elsewhere may lack some and takes `content_of`'s path.
_IMAGE_VALUES = operator.itemgetter(*IMAGE_COLUMNS)
_DISK_VALUES = operator.itemgetter(*DISK_COLUMNS)
_ATTACHMENT_VALUES = operator.itemgetter(*ATTACHMENT_COLUMNS)


def _trimmed(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """`values` without its trailing NULLs (a tuple encodes as the same array as a list)."""
    if values[-1] is not None:
        return values
    end = len(values) - 1
    while end and values[end - 1] is None:
        end -= 1
    return values[:end]


def _normalised_content(rows: ImageRows) -> JsonContent:
    """`content_of` for rows that have every column (KeyError otherwise), ~2.5 us an image
    faster: it runs for every image a first crawl writes."""
    content: JsonContent = {"image": _trimmed(_IMAGE_VALUES(rows.image))}
    if rows.disks:
        content["disks"] = {
            f"{row['slot']}:{row['position']}": _trimmed(_DISK_VALUES(row)) for row in rows.disks
        }
    if rows.attachments:
        content["attachments"] = {
            f"{row['slot']}:{row['position']}:{row['seq']}": _trimmed(_ATTACHMENT_VALUES(row))
            for row in rows.attachments
        }
    if rows.tags:
        tag_map: dict[str, dict[str, Any]] = {}
        for row in rows.tags:
            tag_map.setdefault(f"{row['slot']}:{row['position']}", {})[row["key"]] = row["value"]
        content["tags"] = tag_map
    return content


def canonical_rows(rows: ImageRows) -> Canonical:
    """The canonical content of a normalised image."""
    try:
        content = _normalised_content(rows)
    except KeyError:  # rows built by hand, without every column: a column lacking is NULL
        content = content_of(rows.image, rows.disks, rows.attachments, rows.tags)
    return canonical(content)


# --- comparing two contents ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that differs between two versions; None where the field is absent."""

    path: str
    before: Any
    after: Any


def _slot_rank(key: str) -> tuple[Any, ...]:
    slot, *numbers = key.split(":")
    return (_SLOT_ORDER.get(slot, 2), slot, *(int(number) for number in numbers))


def _named(values: Iterable[Any], columns: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    """A row's (column, value) pairs from its array, NULLs left out (absent and NULL are one):
    the array is shorter than the columns by its trailing NULLs."""
    return (
        (name, value) for name, value in zip(columns, values, strict=False) if value is not None
    )


def _flatten(content: Mapping[str, Any]) -> Iterator[tuple[tuple[Any, ...], str, Any]]:
    """(sort key, path, value) of every non-NULL field of a content."""
    for name, value in _named(content.get("image", ()), IMAGE_COLUMNS):
        yield (0, _IMAGE_ORDER.get(name, len(_IMAGE_ORDER)), name), name, value
    for key, values in content.get("disks", {}).items():
        for name, value in _named(values, DISK_COLUMNS):
            rank = (1, *_slot_rank(key), _DISK_ORDER.get(name, len(_DISK_ORDER)), name)
            yield rank, f"disks[{key}].{name}", value
    for key, values in content.get("attachments", {}).items():
        for name, value in _named(values, ATTACHMENT_COLUMNS):
            order = _ATTACHMENT_ORDER.get(name, len(_ATTACHMENT_ORDER))
            yield (2, *_slot_rank(key), order, name), f"attachments[{key}].{name}", value
    for key, tags in content.get("tags", {}).items():
        for tag, value in tags.items():
            yield (3, *_slot_rank(key), tag), f"tags[{key}].{tag}", value


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[FieldChange]:
    """Every field whose value differs, in table and column order; a field only one side has
    is listed with None on the other (a child that appears or goes, column by column)."""
    old = {path: (rank, value) for rank, path, value in _flatten(before)}
    new = {path: (rank, value) for rank, path, value in _flatten(after)}
    changes = []
    for path in old.keys() | new.keys():
        old_value = old[path][1] if path in old else None
        new_value = new[path][1] if path in new else None
        if old_value != new_value or type(old_value) is not type(new_value):
            rank = (old.get(path) or new[path])[0]
            changes.append((rank, FieldChange(path, old_value, new_value)))
    changes.sort(key=lambda pair: pair[0])
    return [change for _, change in changes]
