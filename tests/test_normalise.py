"""The normaliser: API `image` objects, odd ones included, to rows keyed by column name."""

from __future__ import annotations

import copy
import json
import random
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from crawler import normalise as normaliser
from crawler import schema
from crawler.errors import NormaliseError
from crawler.models import ImageRows
from crawler.normalise import (
    ATTACHMENT_COLUMNS,
    DISK_COLUMNS,
    IMAGE_COLUMNS,
    TAG_COLUMNS,
    normalise_image,
    parse_api_time,
    to_flag,
)
from crawler.simulator.inventory import build_inventory

BEIJING = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")
DOCS_EXAMPLE = Path(__file__).parent / "data" / "docs_describeImages_example.json"
REGION = "cn-north-1"


def docs_images() -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = json.loads(DOCS_EXAMPLE.read_text("utf-8"))["result"]["images"]
    return images


def cloud_data_disk(letter: str, **extra: Any) -> dict[str, Any]:
    """A data disk mapping as describeImage returns it for an image made from an instance."""
    disk = {
        "diskId": f"vol-{letter}1a2b3c4d",
        "az": "cn-north-1a",
        "name": f"data-{letter}",
        "description": "logs",
        "diskType": "ssd.gp1",
        "diskSizeGB": 100,
        "iops": 3000,
        "throughput": 150,
        "status": "in-use",
        "attachments": [
            {
                "attachmentId": f"att-{letter}",
                "diskId": f"vol-{letter}1a2b3c4d",
                "instanceType": "vm",
                "instanceId": "i-9z8y7x6w5v",
                "status": "attached",
                "attachTime": "2021-03-04T05:06:07Z",
            }
        ],
        "snapshotId": "",
        "multiAttachable": False,
        "encrypted": True,
        "enabled": True,
        "createTime": "2021-03-04 13:00:00",
        "charge": {
            "chargeMode": "postpaid_by_duration",
            "chargeStatus": "normal",
            "chargeStartTime": "2021-03-04T05:00:00Z",
            "chargeExpiredTime": "",
            "chargeRetireTime": "2021-04-04T05:00:00+00:00",
        },
        "tags": [{"key": "team", "value": "infra"}],
        "snapshotPolicies": [],
    }
    disk.update(extra)
    return {
        "diskCategory": "cloud",
        "autoDelete": False,
        "deviceName": f"vd{letter}",
        "status": "attached",
        "cloudDisk": disk,
    }


def private_image() -> dict[str, Any]:
    """A private image with a local system disk and four cloud data disks."""
    return {
        "imageId": "img-private01",
        "name": "web-server",
        "platform": "Ubuntu",
        "osVersion": "20.04",
        "architecture": "x86_64",
        "systemDiskSizeGB": "40",
        "imageSource": "private",
        "osType": "linux",
        "status": "ready",
        "createTime": "2021-03-04T13:00:00+08:00",
        "sizeMB": 40960,
        "desc": "built nightly",
        "ownerPin": "jdcloud-user",
        "loginName": "root",
        "launchPermission": "ownerOnly",
        "systemDisk": {
            "diskCategory": "local",
            "autoDelete": True,
            "deviceName": "vda",
            "localDisk": {"diskType": "premium-hdd", "diskSizeGB": 40},
        },
        "dataDisks": [cloud_data_disk(letter) for letter in "bcde"],
        "snapshotId": "",
        "rootDeviceType": "localDisk",
        "progress": "100",
        "offline": False,
        "serviceCode": "vm",
        "imported": True,
        "expiredTime": "",
        "instanceId": "i-9z8y7x6w5v",
        "bootMode": "uefi",
        "uefiSupport": True,
        "chargeInfo": {"serviceCode": "vm", "formula": "x"},
        "someFieldFromTheFuture": {"nested": [1, 2]},
    }


def normalise(image: dict[str, Any], tz: ZoneInfo = BEIJING) -> ImageRows:
    return normalise_image(REGION, image, naive_tz=tz)


def with_field(field: str, value: Any) -> dict[str, Any]:
    image = private_image()
    image[field] = value
    return image


# --- parse_api_time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tz", "expected"),
    [
        ("2021-01-28 16:49:05", BEIJING, "2021-01-28 08:49:05"),  # zone-less: Beijing, UTC+8
        ("2021-01-01 07:59:59", BEIJING, "2020-12-31 23:59:59"),  # crosses midnight and year
        ("2021-01-28 16:49:05", UTC_ZONE, "2021-01-28 16:49:05"),
        ("2021-07-01 12:00:00", NEW_YORK, "2021-07-01 16:00:00"),  # summer time
        ("2021-01-01 12:00:00", NEW_YORK, "2021-01-01 17:00:00"),  # winter time
        ("2021-01-28T16:49:05Z", BEIJING, "2021-01-28 16:49:05"),  # Z: the zone is ignored
        ("2021-01-28T16:49:05+08:00", UTC_ZONE, "2021-01-28 08:49:05"),
        ("2021-01-28T16:49:05+0800", UTC_ZONE, "2021-01-28 08:49:05"),
        ("2021-01-28T03:49:05-05:00", BEIJING, "2021-01-28 08:49:05"),
        ("2021-01-28 16:49:05+08:00", BEIJING, "2021-01-28 08:49:05"),
        ("2021-01-28T08:49:05.999999Z", BEIJING, "2021-01-28 08:49:05"),  # fraction dropped
        ("2021-01-28T16:49Z", BEIJING, "2021-01-28 16:49:00"),
        (" 2021-01-28T16:49:05Z ", BEIJING, "2021-01-28 16:49:05"),
        ("", BEIJING, None),
        ("   ", BEIJING, None),
        ("not a time", BEIJING, None),
        ("2021-01-28", BEIJING, None),  # a date is not an instant
        ("2021-W04-4T10:00:00", BEIJING, None),
        ("2021-02-30 00:00:00", BEIJING, None),
        ("2021-01-28 24:00:00", BEIJING, None),
        ("2021-13-01T00:00:00Z", BEIJING, None),
        ("0001-01-01 00:00:00", BEIJING, None),  # before year 1 in UTC
        ("9999-12-31T23:59:59-05:00", BEIJING, None),  # after year 9999 in UTC
        ("28/01/2021 16:49:05", BEIJING, None),
        (1611823745, BEIJING, None),
        (None, BEIJING, None),
        (["2021-01-28 16:49:05"], BEIJING, None),
    ],
)
def test_parse_api_time(value: Any, tz: ZoneInfo, expected: str | None) -> None:
    assert parse_api_time(value, tz) == expected


# --- image columns ----------------------------------------------------------------------------


def test_private_image_fills_every_image_column() -> None:
    image = private_image()
    assert normalise(image).image == {
        "region_id": REGION,
        "image_id": "img-private01",
        "name": "web-server",
        "description": "built nightly",
        "architecture": "x86_64",
        "os_type": "linux",
        "platform": "Ubuntu",
        "os_version": "20.04",
        "image_source": "private",
        "status": "ready",
        "progress": 100,
        "root_device_type": "localDisk",
        "size_mb": 40960,
        "system_disk_size_gb": 40,
        "snapshot_id": "",
        "created_at": "2021-03-04 05:00:00",
        "launch_permission": "ownerOnly",
        "owner_pin": "jdcloud-user",
        "login_name": "root",
        "offline": 0,
        "uefi_support": 1,
        "imported": 1,
        "boot_mode": "uefi",
        "instance_id": "i-9z8y7x6w5v",
        "expired_at": None,
        "raw": json.dumps(image, ensure_ascii=False, separators=(",", ":")),
    }


@pytest.mark.parametrize(
    ("field", "value", "column", "expected"),
    [
        # integers: text and integral floats convert, anything lossy is NULL
        ("progress", "100", "progress", 100),
        ("progress", " 42 ", "progress", 42),
        ("progress", 100, "progress", 100),
        ("progress", 100.0, "progress", 100),
        ("progress", 40.5, "progress", None),
        ("progress", "40.5", "progress", None),
        ("progress", "100%", "progress", None),
        ("progress", "abc", "progress", None),
        ("progress", "", "progress", None),
        ("progress", "4_0", "progress", None),
        ("progress", "\u0664\u0660", "progress", None),  # Arabic-Indic digits
        ("progress", True, "progress", None),  # a bool is not an int
        ("progress", None, "progress", None),
        ("progress", [100], "progress", None),
        ("sizeMB", "2494", "size_mb", 2494),
        ("sizeMB", 0, "size_mb", 0),
        ("sizeMB", -1, "size_mb", -1),
        ("sizeMB", 2**63 - 1, "size_mb", 2**63 - 1),
        ("sizeMB", 2**63, "size_mb", None),  # does not fit SQLite's INTEGER
        ("sizeMB", "9" * 5000, "size_mb", None),
        ("sizeMB", float("nan"), "size_mb", None),
        ("sizeMB", float("inf"), "size_mb", None),
        ("systemDiskSizeGB", "40", "system_disk_size_gb", 40),
        ("systemDiskSizeGB", 40.0, "system_disk_size_gb", 40),
        # booleans
        ("offline", True, "offline", 1),
        ("offline", False, "offline", 0),
        ("offline", "true", "offline", 1),
        ("offline", "False", "offline", 0),
        ("offline", 1, "offline", 1),
        ("offline", 0, "offline", 0),
        ("offline", 2, "offline", None),
        ("offline", "yes", "offline", None),
        ("offline", "", "offline", None),
        ("uefiSupport", "TRUE", "uefi_support", 1),
        ("imported", None, "imported", None),
        # text: kept as is, numbers as their text, other types NULL
        ("name", "", "name", ""),
        ("name", "CentOS 8.2 64位", "name", "CentOS 8.2 64位"),
        ("osVersion", 8.2, "os_version", "8.2"),
        ("name", 42, "name", "42"),
        ("name", True, "name", None),
        ("name", {"zh": "名字"}, "name", None),
        ("name", ["a"], "name", None),
        ("desc", "", "description", ""),
        # times
        ("createTime", "2021-01-28 16:49:05", "created_at", "2021-01-28 08:49:05"),
        ("createTime", "2021-01-28T16:49:05Z", "created_at", "2021-01-28 16:49:05"),
        ("createTime", "2021-01-28T16:49:05+08:00", "created_at", "2021-01-28 08:49:05"),
        ("createTime", "yesterday", "created_at", None),
        ("createTime", 1611823745, "created_at", None),
        ("expiredTime", "", "expired_at", None),
        ("expiredTime", "2030-01-01T00:00:00Z", "expired_at", "2030-01-01 00:00:00"),
    ],
)
def test_image_field_conversion(field: str, value: Any, column: str, expected: Any) -> None:
    assert normalise(with_field(field, value)).image[column] == expected


def test_missing_optional_fields_give_nulls_and_no_disks() -> None:
    rows = normalise({"imageId": "img-bare"})
    assert rows.image["raw"] == '{"imageId":"img-bare"}'
    assert {column for column, value in rows.image.items() if value is not None} == {
        "region_id",
        "image_id",
        "raw",
    }
    assert (rows.disks, rows.attachments, rows.tags) == ([], [], [])


def test_raw_is_the_object_exactly_as_received() -> None:
    image = {"z": 1, "imageId": "img-order", "名字": "值", "a": [None, 1.5, {"b": False}]}
    raw = normalise(image).image["raw"]
    assert raw == '{"z":1,"imageId":"img-order","名字":"值","a":[null,1.5,{"b":false}]}'


def test_input_is_not_modified() -> None:
    image = private_image()
    before = copy.deepcopy(image)
    normalise(image)
    assert image == before


@pytest.mark.parametrize(
    "image",
    [
        {},
        {"imageId": None},
        {"imageId": ""},
        {"imageId": 42},
        {"imageId": ["img-a"]},
        {"name": "no id", "systemDisk": {"diskCategory": "local"}},
    ],
)
def test_image_without_usable_id_is_rejected(image: dict[str, Any]) -> None:
    with pytest.raises(NormaliseError, match=f"image in {REGION} has no usable imageId"):
        normalise(image)


@pytest.mark.parametrize("image", [["img-a"], "img-a", None])
def test_non_object_image_is_rejected(image: Any) -> None:
    with pytest.raises(NormaliseError, match="not an object"):
        normalise_image(REGION, image, naive_tz=BEIJING)


def test_image_that_cannot_be_json_is_rejected() -> None:
    looped: dict[str, Any] = {"imageId": "img-loop"}
    looped["self"] = looped  # cannot come from a parser, but must not crash the run
    for image in (looped, {"imageId": "img-set", "odd": {1, 2}}):
        with pytest.raises(NormaliseError, match=f"image {REGION}/img-.* is not JSON"):
            normalise(image)


# --- disks, attachments, tags -----------------------------------------------------------------


def test_local_system_disk() -> None:
    system = normalise(private_image()).disks[0]
    assert system == dict.fromkeys(DISK_COLUMNS) | {
        "region_id": REGION,
        "image_id": "img-private01",
        "slot": "system",
        "position": 0,
        "device_name": "vda",
        "disk_category": "local",
        "auto_delete": 1,
        "disk_type": "premium-hdd",
        "disk_size_gb": 40,
    }


def test_cloud_data_disk_with_charge() -> None:
    disk = normalise(private_image()).disks[1]
    assert disk == {
        "region_id": REGION,
        "image_id": "img-private01",
        "slot": "data",
        "position": 0,
        "device_name": "vdb",
        "disk_category": "cloud",
        "auto_delete": 0,
        "mapping_status": "attached",
        "disk_type": "ssd.gp1",
        "disk_size_gb": 100,
        "disk_id": "vol-b1a2b3c4d",
        "az": "cn-north-1a",
        "name": "data-b",
        "description": "logs",
        "status": "in-use",
        "snapshot_id": "",
        "multi_attachable": 0,
        "encrypted": 1,
        "enabled": 1,
        "iops": 3000,
        "throughput": 150,
        "created_at": "2021-03-04 05:00:00",
        "charge_mode": "postpaid_by_duration",
        "charge_status": "normal",
        "charge_start_at": "2021-03-04 05:00:00",
        "charge_expired_at": None,
        "charge_retire_at": "2021-04-04 05:00:00",
    }


def test_four_data_disks_keep_their_array_positions() -> None:
    rows = normalise(private_image())
    assert [(d["slot"], d["position"], d["device_name"]) for d in rows.disks] == [
        ("system", 0, "vda"),
        ("data", 0, "vdb"),
        ("data", 1, "vdc"),
        ("data", 2, "vdd"),
        ("data", 3, "vde"),
    ]
    assert [(a["position"], a["seq"], a["attachment_id"]) for a in rows.attachments] == [
        (0, 0, "att-b"),
        (1, 0, "att-c"),
        (2, 0, "att-d"),
        (3, 0, "att-e"),
    ]
    assert [(t["position"], t["key"], t["value"]) for t in rows.tags] == [
        (position, "team", "infra") for position in range(4)
    ]


def test_attachment_row() -> None:
    assert normalise(private_image()).attachments[0] == {
        "region_id": REGION,
        "image_id": "img-private01",
        "slot": "data",
        "position": 0,
        "seq": 0,
        "attachment_id": "att-b",
        "disk_id": "vol-b1a2b3c4d",
        "instance_id": "i-9z8y7x6w5v",
        "instance_type": "vm",
        "status": "attached",
        "attached_at": "2021-03-04 05:06:07",
    }


def image_with_data_disks(*disks: Any) -> dict[str, Any]:
    image = private_image()
    image["dataDisks"] = list(disks)
    return image


def test_malformed_disk_entries_are_skipped_and_positions_kept() -> None:
    image = image_with_data_disks("vdb", cloud_data_disk("c"), None, 7, cloud_data_disk("f"))
    image["systemDisk"] = ["not", "an", "object"]
    rows = normalise(image)
    assert [(d["slot"], d["position"]) for d in rows.disks] == [("data", 1), ("data", 4)]
    assert [a["position"] for a in rows.attachments] == [1, 4]


@pytest.mark.parametrize("data_disks", [None, {}, "vdb", 3])
def test_data_disks_that_are_not_a_list_are_skipped(data_disks: Any) -> None:
    rows = normalise(with_field("dataDisks", data_disks))
    assert [d["slot"] for d in rows.disks] == ["system"]


def test_odd_attachments_are_skipped_and_seq_is_the_array_index() -> None:
    good = cloud_data_disk("b")["cloudDisk"]["attachments"][0]
    disk = cloud_data_disk("b", attachments=["x", good, None, {"attachmentId": "att-2"}])
    rows = normalise(image_with_data_disks(disk))
    assert [(a["seq"], a["attachment_id"]) for a in rows.attachments] == [
        (1, "att-b"),
        (3, "att-2"),
    ]
    assert rows.attachments[1]["attached_at"] is None


@pytest.mark.parametrize("attachments", [None, {"attachmentId": "a"}, "a"])
def test_attachments_that_are_not_a_list_are_skipped(attachments: Any) -> None:
    rows = normalise(image_with_data_disks(cloud_data_disk("b", attachments=attachments)))
    assert rows.attachments == []


def test_repeated_tag_key_keeps_the_last_value() -> None:
    tags = [
        {"key": "env", "value": "dev"},
        {"key": "team", "value": "infra"},
        {"key": "env", "value": "prod"},
    ]
    rows = normalise(image_with_data_disks(cloud_data_disk("b", tags=tags)))
    assert {t["key"]: t["value"] for t in rows.tags} == {"team": "infra", "env": "prod"}
    assert len(rows.tags) == 2


def test_odd_tags_are_skipped() -> None:
    tags = [
        "env=prod",
        {"value": "no key"},
        {"key": None},
        {"key": "empty"},
        {"key": "n", "value": 5},
    ]
    rows = normalise(image_with_data_disks(cloud_data_disk("b", tags=tags)))
    assert [(t["key"], t["value"]) for t in rows.tags] == [("empty", None), ("n", "5")]


@pytest.mark.parametrize("tags", [None, {"env": "prod"}, "env=prod"])
def test_tags_that_are_not_a_list_are_skipped(tags: Any) -> None:
    assert normalise(image_with_data_disks(cloud_data_disk("b", tags=tags))).tags == []


def test_disk_size_comes_from_whichever_disk_is_present() -> None:
    local = {"diskCategory": "local", "localDisk": {"diskType": "ssd", "diskSizeGB": "40"}}
    cloud = {"diskCategory": "cloud", "cloudDisk": {"diskType": "ssd.io1", "diskSizeGB": 60}}
    rows = normalise(image_with_data_disks(local, cloud))
    assert [(d["disk_type"], d["disk_size_gb"]) for d in rows.disks[1:]] == [
        ("ssd", 40),
        ("ssd.io1", 60),
    ]


@pytest.mark.parametrize(
    ("category", "expected"),
    [("local", ("ssd", 40)), ("cloud", ("ssd.io1", 60)), (None, ("ssd.io1", 60))],
)
def test_with_both_disks_the_category_decides(
    category: str | None, expected: tuple[Any, ...]
) -> None:
    mapping = {
        "diskCategory": category,
        "localDisk": {"diskType": "ssd", "diskSizeGB": 40},
        "cloudDisk": {"diskType": "ssd.io1", "diskSizeGB": 60},
    }
    disk = normalise(image_with_data_disks(mapping)).disks[1]
    assert (disk["disk_type"], disk["disk_size_gb"]) == expected


@pytest.mark.parametrize(
    ("fields", "encrypted", "enabled"),
    [
        ({"encrypted": True, "encrypt": False, "enabled": False, "enable": True}, 1, 0),
        ({"encrypt": True, "enable": False}, 1, 0),
        ({"encrypted": "maybe", "encrypt": "true"}, 1, None),
        ({}, None, None),
    ],
)
def test_flags_spelt_two_ways(fields: dict[str, Any], encrypted: Any, enabled: Any) -> None:
    mapping = {"diskCategory": "cloud", "cloudDisk": fields}
    disk = normalise(image_with_data_disks(mapping)).disks[1]
    assert (disk["encrypted"], disk["enabled"]) == (encrypted, enabled)


@pytest.mark.parametrize("cloud_disk", [None, "vol-1", [], {}])
def test_cloud_disk_that_is_absent_or_odd_gives_a_bare_disk_row(cloud_disk: Any) -> None:
    mapping = {"diskCategory": "cloud", "deviceName": "vdb", "cloudDisk": cloud_disk}
    rows = normalise(image_with_data_disks(mapping))
    assert rows.disks[1] == dict.fromkeys(DISK_COLUMNS) | {
        "region_id": REGION,
        "image_id": "img-private01",
        "slot": "data",
        "position": 0,
        "device_name": "vdb",
        "disk_category": "cloud",
    }
    assert rows.attachments == rows.tags == []


def test_odd_charge_and_disk_values() -> None:
    disk = cloud_data_disk(
        "b",
        diskSizeGB="100",
        iops=3000.5,
        throughput="fast",
        createTime="2021-03-04",
        charge="prepaid",
    )
    row = normalise(image_with_data_disks(disk)).disks[1]
    assert (row["disk_size_gb"], row["iops"], row["throughput"], row["created_at"]) == (
        100,
        None,
        None,
        None,
    )
    assert row["charge_mode"] is row["charge_start_at"] is None


# --- shape of the rows ------------------------------------------------------------------------


def every_kind_of_image() -> Iterator[dict[str, Any]]:
    yield from docs_images()
    yield private_image()
    yield {"imageId": "img-bare"}
    yield image_with_data_disks({}, cloud_data_disk("c", attachments=None, tags=None))


def test_rows_always_have_exactly_the_declared_columns() -> None:
    for image in every_kind_of_image():
        rows = normalise(image)
        assert tuple(rows.image) == IMAGE_COLUMNS
        assert all(tuple(row) == DISK_COLUMNS for row in rows.disks)
        assert all(tuple(row) == ATTACHMENT_COLUMNS for row in rows.attachments)
        assert all(tuple(row) == TAG_COLUMNS for row in rows.tags)


def test_declared_columns_are_the_tables_columns() -> None:
    # The store's: raw_digest comes with the rows (FetchedImage.digest), answer_digest with the
    # result (TargetResult.answer_digest), not in them.
    bookkeeping = {"first_seen_at", "last_seen_at", "last_run_id", "missing_since", "raw_digest"}
    bookkeeping.add("answer_digest")
    assert set(IMAGE_COLUMNS) == set(schema.images.c.keys()) - bookkeeping
    assert len(IMAGE_COLUMNS) == len(set(IMAGE_COLUMNS))
    assert sorted(DISK_COLUMNS) == sorted(schema.disks.c.keys())
    assert sorted(ATTACHMENT_COLUMNS) == sorted(schema.attachments.c.keys())
    assert sorted(TAG_COLUMNS) == sorted(schema.tags.c.keys())


# --- the official docs' example ---------------------------------------------------------------

# Every field of the docs' example and where it lands (besides `raw`, which keeps everything).
DOCS_IMAGE_FIELDS = {
    "architecture": "architecture",
    "createTime": "created_at",
    "desc": "description",
    "imageId": "image_id",
    "imageSource": "image_source",
    "launchPermission": "launch_permission",
    "name": "name",
    "osType": "os_type",
    "osVersion": "os_version",
    "ownerPin": "owner_pin",
    "platform": "platform",
    "progress": "progress",
    "rootDeviceType": "root_device_type",
    "sizeMB": "size_mb",
    "snapshotId": "snapshot_id",
    "status": "status",
    "systemDiskSizeGB": "system_disk_size_gb",
    "uefiSupport": "uefi_support",
}
DOCS_SYSTEM_DISK_FIELDS = {
    "autoDelete": "auto_delete",
    "deviceName": "device_name",
    "diskCategory": "disk_category",
    "cloudDisk.diskSizeGB": "disk_size_gb",
    "cloudDisk.diskType": "disk_type",
    "cloudDisk.encrypt": "encrypted",
    "cloudDisk.encrypted": "encrypted",
    "cloudDisk.snapshotId": "snapshot_id",
}


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), value


def as_stored(value: Any) -> Any:
    """What a lossless column holds for an API value in the docs example."""
    if isinstance(value, bool):
        return int(value)
    if value == "100":
        return 100
    return value


def test_docs_example_first_image() -> None:
    rows = normalise(docs_images()[0])
    assert rows.image["created_at"] == "2021-01-28 08:49:05"
    assert rows.image["progress"] == 100
    assert rows.image["uefi_support"] == 0
    assert rows.image["description"] == ""
    assert [(d["slot"], d["disk_type"], d["disk_size_gb"], d["encrypted"]) for d in rows.disks] == [
        ("system", "ssd.gp1", 40, 0)
    ]


@pytest.mark.parametrize("image", docs_images(), ids=lambda image: str(image["imageId"]))
def test_docs_example_normalises_without_loss(image: dict[str, Any]) -> None:
    rows = normalise(image)
    assert json.loads(rows.image["raw"]) == image
    (system,) = rows.disks
    for path, value in leaves(image):
        if path.startswith("systemDisk."):
            column = DOCS_SYSTEM_DISK_FIELDS[path.removeprefix("systemDisk.")]
            assert system[column] == as_stored(value), path
        elif path == "createTime":
            assert rows.image["created_at"] == parse_api_time(value, BEIJING)
        else:
            assert rows.image[DOCS_IMAGE_FIELDS[path]] == as_stored(value), path


def strict_json_valid(text: str) -> bool:
    """What SQLite's json_valid() asks: JSON without NaN/Infinity, encodable as UTF-8."""
    with sqlite3.connect(":memory:") as connection:
        return bool(connection.execute("SELECT json_valid(?)", (text,)).fetchone()[0])


@pytest.mark.parametrize(
    "body",
    [
        '{"imageId":"img-nan","sizeMB":NaN,"progress":Infinity,"x":[-Infinity]}',
        '{"imageId":"img-nan","sizeMB":1e999,"progress":-1e999,"x":{"y":1e400}}',
    ],
)
def test_values_strict_json_cannot_hold_become_null_in_raw(body: str) -> None:
    rows = normalise(json.loads(body))
    assert (rows.image["size_mb"], rows.image["progress"]) == (None, None)
    assert strict_json_valid(rows.image["raw"])
    assert None in json.loads(rows.image["raw"]).values()


def test_lone_surrogates_become_u_fffd_in_columns_and_stay_escaped_in_raw() -> None:
    body = (
        '{"imageId":"img-sur","name":"a\\ud800b","desc":"名字",'
        '"dataDisks":[{"cloudDisk":{"name":"\\udfff","tags":[{"key":"k\\ud800","value":"v"}]}}]}'
    )
    rows = normalise(json.loads(body))
    assert rows.image["name"] == "a\ufffdb"
    assert rows.image["description"] == "名字"
    assert rows.disks[0]["name"] == "\ufffd"
    assert rows.tags[0]["key"] == "k\ufffd"
    raw = rows.image["raw"]
    raw.encode("utf-8")  # storable
    assert "\\ud800" in raw and "\\udfff" in raw
    assert json.loads(raw) == json.loads(body)  # nothing lost
    assert strict_json_valid(raw)


# --- the fast forms agree with the plain ones -------------------------------------------------


def isoformat_time(value: Any, tz: ZoneInfo) -> str | None:
    """`parse_api_time` as it was before its shortcuts: every time checked by the full pattern
    and written by isoformat."""
    if not isinstance(value, str) or not normaliser._TIME_TEXT.fullmatch(value := value.strip()):
        return None
    try:
        at = datetime.fromisoformat(value)
        offset = at.utcoffset() if at.tzinfo is not None else tz.utcoffset(at)
        assert offset is not None
        return (at - offset).isoformat(" ", "seconds")[:19]
    except (ValueError, OverflowError):
        return None


def test_the_time_shortcuts_give_what_the_pattern_and_isoformat_gave() -> None:
    rng = random.Random(7)
    zones = [BEIJING, NEW_YORK, UTC_ZONE, ZoneInfo("Asia/Kolkata"), ZoneInfo("Pacific/Kiritimati")]
    suffixes = ["", "", "Z", "+08:00", "-05:00", "+0530", "+14", "-23:59", "+00:00", " "]
    parsed = 0
    for _ in range(20_000):
        year = rng.choice([1, 1900, 1969, 2021, 9999, rng.randint(1, 9999)])
        text = f"{year:04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}"
        text += f"{rng.choice('T ')}{rng.randint(0, 25):02d}:{rng.randint(0, 60):02d}"
        if rng.random() < 0.85:
            text += f":{rng.randint(0, 61):02d}"
        if rng.random() < 0.2:
            text += "." + "123456"[: rng.randint(1, 6)]
        text += rng.choice(suffixes)
        if rng.random() < 0.3:  # one character of it something else (the shapes' near misses)
            spot = rng.randrange(len(text))
            text = text[:spot] + rng.choice("+- ,.:TZW\u0663x0") + text[spot + 1 :]
        zone = rng.choice(zones)
        assert parse_api_time(text, zone) == isoformat_time(text, zone), (text, zone)
        parsed += isoformat_time(text, zone) is not None
    assert parsed > 8_000  # most are valid times, across days, offsets and years 1 and 9999
    for text in (
        "2021-01-28",
        "2021-W04-4 16:49:05",
        "20210128T164905",
        "2021-01-28 16:49:05,5",
        "2021-01-28x16:49:05",
        "2021-01-28 16:49:05+08:00:00",
        "2021-01-28 16:49:05+08",
    ):
        assert parse_api_time(text, BEIJING) == isoformat_time(text, BEIJING), text  # fmt: skip


def field_by_field(image: dict[str, Any]) -> ImageRows:
    """The rows as the normaliser built them before it walked each object's own fields: every
    column read by name from its object (`dict.get`), the flags' documented name first."""

    def fill(row: dict[str, Any], source: Any, fields: Any, times: Any = ()) -> None:
        for column, field, convert in fields:
            row[column] = convert(source.get(field))
        for column, field in times:
            row[column] = parse_api_time(source.get(field), BEIJING)

    def obj(value: Any) -> Any:
        return value if isinstance(value, dict) else None

    image_id = image["imageId"]
    row: dict[str, Any] = {"region_id": REGION, "image_id": image_id}
    fill(row, image, normaliser._IMAGE_FIELDS, normaliser._IMAGE_TIMES)
    row["raw"] = normalise_image(REGION, image, naive_tz=BEIJING).image["raw"]
    rows = ImageRows(image=row)
    mappings = [("system", 0, obj(image.get("systemDisk")))]
    data = image.get("dataDisks")
    mappings += [("data", i, obj(m)) for i, m in enumerate(data if isinstance(data, list) else [])]
    for slot, position, mapping in mappings:
        if mapping is None:
            continue
        key = {"region_id": REGION, "image_id": image_id, "slot": slot, "position": position}
        local, cloud = obj(mapping.get("localDisk")), obj(mapping.get("cloudDisk"))
        local_sized = local is not None and (
            cloud is None or mapping.get("diskCategory") == "local"
        )
        sized = local if local_sized else cloud
        disk = dict(key)
        fill(disk, mapping, normaliser._MAPPING_FIELDS)
        fill(disk, sized or {}, normaliser._SIZE_FIELDS)
        cloud = cloud or {}
        fill(disk, cloud, normaliser._CLOUD_FIELDS, normaliser._CLOUD_TIMES)
        charge = obj(cloud.get("charge")) or {}
        fill(disk, charge, normaliser._CHARGE_FIELDS, normaliser._CHARGE_TIMES)
        for column, names in normaliser._CLOUD_FLAGS:
            flags = [to_flag(cloud.get(name)) for name in names]
            disk[column] = next((flag for flag in flags if flag is not None), None)
        rows.disks.append(disk)
        entries = cloud.get("attachments")
        for seq, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict):
                attachment = {**key, "seq": seq}
                fill(attachment, entry, normaliser._ATTACHMENT_FIELDS, normaliser._ATTACHMENT_TIMES)
                rows.attachments.append(attachment)
    rows.tags.extend(normalise_image(REGION, image, naive_tz=BEIJING).tags)  # built as before
    return rows


def scrambled(image: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """`image` with fields dropped, set to null or to values of other types, at every level."""
    odd = [None, "", "abc", "40", 40, 40.5, True, False, "true", [], {}, "2021-01-28 16:49:05"]

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if rng.random() < 0.15:
                    continue
                out[key] = rng.choice(odd) if rng.random() < 0.2 else walk(item)
            if rng.random() < 0.3:  # the other spellings of the flags, and a local disk
                out[rng.choice(["encrypt", "enable", "encrypted", "localDisk"])] = rng.choice(
                    [True, "0", None, {"diskType": "local", "diskSizeGB": "80"}]
                )
            return out
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    out = walk(copy.deepcopy(image))
    out["imageId"] = image["imageId"]
    return out


def test_rows_are_what_reading_every_field_by_name_gives() -> None:
    inventory = build_inventory(("cn-north-1",), 150, seed=11, missing_rate=0.0)
    images = [*inventory.images["cn-north-1"], *docs_images()]
    rng = random.Random(3)
    images += [scrambled(image, rng) for image in images for _ in range(3)]
    for image in images:
        assert normalise_image(REGION, image, naive_tz=BEIJING) == field_by_field(image), image
