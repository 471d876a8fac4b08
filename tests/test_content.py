"""The canonical content is exactly the JSON the contract describes, byte for byte.

Every stored `content_hash` depends on this text: if the writer's encoding (whatever encoder
writes it) moved by one byte, every image of an existing database would open a new version on its
next crawl. So the writer's text is compared with the plain standard-library form (sorted keys,
no spaces, UTF-8 as is) over a corpus with text JSON must escape, and the form is pinned.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
from typing import Any
from zoneinfo import ZoneInfo

from crawler import schema
from crawler.models import ImageRows, JsonObject
from crawler.normalise import normalise_image
from crawler.simulator.inventory import build_inventory
from crawler.store import content
from crawler.store.content import canonical_rows, changed_fields, content_of

BEIJING = ZoneInfo("Asia/Shanghai")


def generic(rows: ImageRows) -> tuple[str, str]:
    """The contract's form, written by the standard library alone."""
    content = content_of(rows.image, rows.disks, rows.attachments, rows.tags)
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text, hashlib.sha256(text.encode()).hexdigest()


def fast(rows: ImageRows) -> tuple[str, str]:
    content = canonical_rows(rows)
    return content.text, content.hash


def odd(image: JsonObject) -> JsonObject:
    """`image` with text JSON must escape, non-ASCII, a lone surrogate, a tag without a value,
    twelve data disks (so `data:10` sorts before `data:2`), and attachments on several."""
    image = copy.deepcopy(image)
    image["name"] = 'quote " backslash \\ tab \t newline \n bell \x07 中文 \ud800 end'
    image["desc"] = "emoji \U0001f600 and \u2028 separator"
    image["sizeMB"] = 2**62
    disks = []
    for index in range(12):
        cloud = {
            "diskId": f"vol-{index}",
            "diskType": "ssd.gp1",
            "diskSizeGB": index * 10,
            "tags": [{"key": "b", "value": None}, {"key": "a", "value": f"v{index}"}],
            "attachments": [{"attachmentId": f"at-{index}-{seq}", "status": "attached"}
                            for seq in range(index % 3)],
        }  # fmt: skip
        disks.append({"diskCategory": "cloud", "autoDelete": index % 2 == 0, "cloudDisk": cloud})
    image["dataDisks"] = disks
    return image


def corpus() -> list[tuple[str, JsonObject]]:
    inventory = build_inventory(("cn-north-1", "cn-east-2"), 150, seed=5, missing_rate=0.0)
    pairs = [(region, image) for region, images in inventory.images.items() for image in images]
    return pairs + [(region, odd(image)) for region, image in pairs[:20]]


CORPUS = corpus()


def test_the_writers_text_is_the_generic_canonical_form() -> None:
    different = []
    for region, image in CORPUS:
        rows = normalise_image(region, image, naive_tz=BEIJING)
        if fast(rows) != generic(rows):
            different.append(image["imageId"])
    assert different == []
    assert len(CORPUS) == 320


def test_rows_built_by_hand_give_the_same_form() -> None:
    rows = ImageRows(
        {"region_id": "r", "image_id": "i", "name": "n", "raw": "{}"},
        disks=[{"slot": "data", "position": 1, "disk_type": "ssd"}],
        tags=[{"slot": "data", "position": 1, "key": "env", "value": "prod"}],
    )
    assert fast(rows) == generic(rows)
    assert fast(rows)[0] == (
        '{"disks":{"data:1":[null,null,null,null,"ssd"]},"image":["n"],"tags":{"data:1":{"env":"prod"}}}'
    )


def test_the_canonical_form_is_pinned() -> None:
    # The form every stored hash depends on: sorted keys, no spaces, UTF-8 as is, each row its
    # values in column order with trailing NULLs left out.
    region, image = CORPUS[0]
    small = {
        "imageId": image["imageId"],
        "name": "名字",
        "status": "ready",
        "sizeMB": 40,
        "uefiSupport": True,
        "systemDisk": {"diskCategory": "local", "localDisk": {"diskType": "ssd", "diskSizeGB": 40}},
    }
    text, digest = fast(normalise_image(region, small, naive_tz=BEIJING))
    assert content.CONTENT_FORM == 2  # a new form needs a migration that rewrites the versions
    assert text == (
        '{"disks":{"system:0":[null,"local",null,null,"ssd",40]},'
        '"image":["名字",null,null,null,null,null,null,"ready",null,null,40,null,null,null,null,'
        "null,null,null,1]}"
    )
    assert (
        len(digest) == 64 and digest == generic(normalise_image(region, small, naive_tz=BEIJING))[1]
    )


def test_every_content_column_has_a_fixed_position() -> None:
    # A column added to a table must be appended to its positions, or it would never be compared.
    excluded = {"region_id", "image_id", "slot", "position", "seq", "raw", "raw_digest"}
    excluded.add("answer_digest")  # like raw_digest: what the rows came from
    excluded |= set(content.BOOKKEEPING_COLUMNS)
    for table, positions in (
        (schema.images, content.IMAGE_COLUMNS),
        (schema.disks, content.DISK_COLUMNS),
        (schema.attachments, content.ATTACHMENT_COLUMNS),
    ):
        assert [c.name for c in table.columns if c.name not in excluded] == list(positions)


def form_1(rows: ImageRows) -> dict[str, Any]:
    """The content as form 1 wrote it: every row an object of its non-NULL columns by name."""
    key = {"region_id", "image_id", "slot", "position", "seq"}
    image_excluded = key | {"raw", "raw_digest", *content.BOOKKEEPING_COLUMNS}

    def named(row: dict[str, Any], excluded: set[str]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if v is not None and k not in excluded}

    form: dict[str, Any] = {"image": named(rows.image, image_excluded)}
    disks = {f"{r['slot']}:{r['position']}": named(r, key) for r in rows.disks}
    attachments = {
        f"{r['slot']}:{r['position']}:{r['seq']}": named(r, key) for r in rows.attachments
    }
    tags: dict[str, dict[str, Any]] = {}
    for r in rows.tags:
        tags.setdefault(f"{r['slot']}:{r['position']}", {})[r["key"]] = r["value"]
    for kind, children in (("disks", disks), ("attachments", attachments), ("tags", tags)):
        if children:
            form[kind] = children
    return form


MIGRATION = importlib.import_module("crawler.migrations.versions.0005_positional_content")


def test_migration_0005_turns_form_1_into_what_the_writer_writes_and_back() -> None:
    for region, image in CORPUS:
        rows = normalise_image(region, image, naive_tz=BEIJING)
        written = content_of(rows.image, rows.disks, rows.attachments, rows.tags)
        old = form_1(rows)
        assert MIGRATION.to_form_2(old) == written
        assert MIGRATION.to_form_2(written) is None  # already form 2: left as it is
        assert MIGRATION.to_form_1(written) == old
        assert MIGRATION.to_form_1(old) is None


def test_changed_fields_reads_absent_positions_as_null() -> None:
    # A trailing NULL is left out of the array: a value appearing there and a disk appearing
    # with NULL columns list only the non-NULL fields, as with form 1's absent keys.
    before = content_of(
        {"name": "a"}, [{"slot": "system", "position": 0, "device_name": "vda"}], [], []
    )
    after = content_of(
        {"name": "a", "expired_at": "2027-01-01 00:00:00"},
        [{"slot": "system", "position": 0, "device_name": "vda"},
         {"slot": "data", "position": 1, "disk_type": "ssd", "iops": None}],
        [], [],
    )  # fmt: skip
    assert [(c.path, c.before, c.after) for c in changed_fields(before, after)] == [
        ("expired_at", None, "2027-01-01 00:00:00"),
        ("disks[data:1].disk_type", None, "ssd"),
    ]
    assert changed_fields(after, after) == []
