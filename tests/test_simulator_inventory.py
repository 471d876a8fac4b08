"""The fake inventory: deterministic, unique ids, and the variety real images have."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crawler.models import JsonObject
from crawler.simulator.inventory import Inventory, build_inventory, missing_count

REGIONS = ("cn-north-1", "cn-east-1", "cn-east-2", "cn-south-1")
EXAMPLE = Path(__file__).parent / "data" / "docs_describeImages_example.json"
IMAGE_ID = re.compile(r"img-[a-z0-9]{10}")
NAIVE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
ZULU_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
OFFSET_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00")
DOCUMENTED_IMAGE_KEYS = {
    "imageId",
    "name",
    "platform",
    "osVersion",
    "architecture",
    "systemDiskSizeGB",
    "imageSource",
    "osType",
    "status",
    "createTime",
    "sizeMB",
    "desc",
    "ownerPin",
    "loginName",
    "launchPermission",
    "systemDisk",
    "dataDisks",
    "snapshotId",
    "rootDeviceType",
    "progress",
    "offline",
    "serviceCode",
    "imported",
    "expiredTime",
    "instanceId",
    "bootMode",
    "uefiSupport",
}


def encoded(inventory: Inventory) -> bytes:
    return json.dumps(
        {"images": inventory.images, "missing": inventory.missing}, sort_keys=True
    ).encode()


@pytest.fixture(scope="module")
def images() -> list[JsonObject]:
    inventory = build_inventory(REGIONS, 100, seed=7)
    return [image for region in REGIONS for image in inventory.images[region]]


def disks(images: list[JsonObject]) -> Iterator[JsonObject]:
    """Every disk mapping (system and data) of every image."""
    for image in images:
        if "systemDisk" in image:
            yield image["systemDisk"]
        yield from image.get("dataDisks") or []


def cloud_disks(images: list[JsonObject]) -> list[JsonObject]:
    return [d["cloudDisk"] for d in disks(images) if d["diskCategory"] == "cloud"]


def values(images: list[JsonObject], key: str) -> set[Any]:
    return {image.get(key, "<absent>") for image in images if not isinstance(image.get(key), list)}


def test_same_seed_gives_the_same_bytes() -> None:
    first = build_inventory(REGIONS, 50, seed=1, missing_rate=0.2)
    second = build_inventory(REGIONS, 50, seed=1, missing_rate=0.2)
    assert encoded(first) == encoded(second)
    assert list(first.targets()) == list(second.targets())


def test_a_different_seed_gives_different_images() -> None:
    first = build_inventory(REGIONS, 50, seed=1)
    second = build_inventory(REGIONS, 50, seed=2)
    assert encoded(first) != encoded(second)
    first_ids = {i["imageId"] for r in REGIONS for i in first.images[r]}
    assert not first_ids & {i["imageId"] for r in REGIONS for i in second.images[r]}


def test_a_region_does_not_depend_on_the_others() -> None:
    alone = build_inventory(("cn-east-2",), 20, seed=3)
    together = build_inventory(REGIONS, 30, seed=3)
    assert together.images["cn-east-2"][:20] == alone.images["cn-east-2"]


def test_image_ids_are_unique_and_well_formed() -> None:
    inventory = build_inventory(REGIONS, 300, seed=0, missing_rate=0.1)
    ids = [str(i["imageId"]) for r in REGIONS for i in inventory.images[r]]
    assert len(ids) == len(set(ids)) == 1200 == len(inventory)
    assert all(IMAGE_ID.fullmatch(i) for i in ids)
    missing = [i for r in REGIONS for i in inventory.missing[r]]
    assert all(IMAGE_ID.fullmatch(i) for i in missing)


def test_missing_ids_do_not_exist_in_their_region() -> None:
    inventory = build_inventory(REGIONS, 100, seed=0, missing_rate=0.2)
    for region in REGIONS:
        existing = {i["imageId"] for i in inventory.images[region]}
        assert len(inventory.missing[region]) == missing_count(100, 0.2) == 25
        assert not existing & set(inventory.missing[region])
    # Some missing ids are real ids of another region: asked in the wrong region.
    everywhere = {i["imageId"] for r in REGIONS for i in inventory.images[r]}
    assert everywhere & {i for r in REGIONS for i in inventory.missing[r]}


def test_targets_hold_every_pair_once_with_regions_interleaved() -> None:
    inventory = build_inventory(REGIONS, 40, seed=0, missing_rate=0.2)
    targets = list(inventory.targets())
    assert len(targets) == len(set(targets)) == 4 * (40 + 10)
    assert [t.region_id for t in targets[:8]] == list(REGIONS) * 2
    missing = {(r, i) for r in REGIONS for i in inventory.missing[r]}
    positions = [n for n, t in enumerate(targets) if (t.region_id, t.image_id) in missing]
    assert positions[0] < len(targets) // 2  # shuffled in, not all at the end


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images_per_region": -1}, "images_per_region"),
        ({"missing_rate": 1.0}, "missing_rate"),
        ({"missing_rate": -0.1}, "missing_rate"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"images_per_region": 10, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        build_inventory(REGIONS, **arguments)


def test_images_use_the_documented_names_and_the_examples_shape(images: list[JsonObject]) -> None:
    example = json.loads(EXAMPLE.read_text(encoding="utf-8"))["result"]["images"]
    generated_keys = {key for image in images for key in image}
    assert generated_keys <= DOCUMENTED_IMAGE_KEYS
    assert {key for image in example for key in image} <= generated_keys
    example_disk_keys = set(example[0]["systemDisk"]["cloudDisk"])
    assert any(set(disk) == example_disk_keys for disk in cloud_disks(images))


def test_images_vary_like_real_ones(images: list[JsonObject]) -> None:
    assert values(images, "imageSource") == {
        "public",
        "private",
        "shared",
        "thirdparty",
        "community",
    }
    assert values(images, "osType") == {"linux", "windows"}
    assert {"CentOS", "Ubuntu", "Windows Server", "Other Linux", "Other Windows"} == values(
        images, "platform"
    )
    assert {"x86_64", "arm64"} <= values(images, "architecture")
    assert values(images, "status") == {"ready", "pending", "error", "deleting"}
    assert values(images, "rootDeviceType") == {"localDisk", "cloudDisk"}
    assert {"100", "<absent>"} <= values(images, "progress")
    assert 0 in values(images, "sizeMB")
    assert any(isinstance(image["systemDiskSizeGB"], str) for image in images)
    assert any(not str(image["name"]).isascii() for image in images)


def test_times_come_in_the_three_forms(images: list[JsonObject]) -> None:
    times = [str(image["createTime"]) for image in images]
    for form in (NAIVE_TIME, ZULU_TIME, OFFSET_TIME):
        assert any(form.fullmatch(t) for t in times), form.pattern
    assert all(any(f.fullmatch(t) for f in (NAIVE_TIME, ZULU_TIME, OFFSET_TIME)) for t in times)


@pytest.mark.parametrize(
    "key",
    [
        "desc",
        "ownerPin",
        "launchPermission",
        "uefiSupport",
        "offline",
        "loginName",
        "bootMode",
        "dataDisks",
        "progress",
        "systemDisk",
        "snapshotId",
    ],
)
def test_optional_fields_are_sometimes_absent_and_sometimes_present(
    images: list[JsonObject], key: str
) -> None:
    present = sum(key in image for image in images)
    assert 0 < present < len(images)


def test_data_disks_come_in_every_count_and_as_null(images: list[JsonObject]) -> None:
    counts = {len(image["dataDisks"]) for image in images if image.get("dataDisks") is not None}
    assert counts == {0, 1, 2, 3, 4}
    assert any("dataDisks" in image and image["dataDisks"] is None for image in images)


def test_disks_come_local_and_cloud_with_every_type(images: list[JsonObject]) -> None:
    mappings = list(disks(images))
    assert {d["diskCategory"] for d in mappings} == {"local", "cloud"}
    local = [d["localDisk"] for d in mappings if d["diskCategory"] == "local"]
    assert all(set(disk) == {"diskType", "diskSizeGB"} for disk in local)
    types = {"ssd", "premium-hdd", "ssd.gp1", "ssd.io1", "hdd.std1"}
    assert {d["diskType"] for d in cloud_disks(images)} == types
    assert {m["status"] for m in mappings if "status" in m} >= {"attached", "detached"}
    assert any("deviceName" not in m for m in mappings)


def test_full_cloud_disks_carry_charge_tags_and_attachments(images: list[JsonObject]) -> None:
    full = [d for d in cloud_disks(images) if "diskId" in d]
    assert full
    assert all(re.fullmatch(r"cn-[a-z]+-[0-9][abc]", str(d["az"])) for d in full)
    charges = [d["charge"] for d in full]
    starts = [c["chargeStartTime"] for c in charges]
    assert all(ZULU_TIME.fullmatch(s) for s in starts)
    assert "" in {c["chargeExpiredTime"] for c in charges}
    assert any("chargeRetireTime" in c for c in charges)
    assert any(not d["tags"] for d in full) and any(d["tags"] for d in full)
    repeated = [d for d in full if len({t["key"] for t in d["tags"]}) < len(d["tags"])]
    assert repeated
    attached = [d for d in full if d["attachments"]]
    assert any(len(d["attachments"]) > 1 for d in attached)
    assert all(a["diskId"] == d["diskId"] for d in attached for a in d["attachments"])
    assert any("enabled" in d for d in full) and any("enable" in d for d in full)
    assert any("encrypt" in d for d in full) and any("encrypt" not in d for d in full)
