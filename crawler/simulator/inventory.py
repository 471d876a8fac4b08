"""A deterministic fake image inventory, shaped like the JD Cloud VM API's `Image` objects.

Everything derives from a seed: the same seed gives the same images, byte for byte, in any process.
Each image has its own `random.Random` seeded from (seed, region, index), so adding a region or
raising `images_per_region` leaves the images already generated unchanged.

The shapes follow jdcloud-api.md §2.2-2.4 and the official response example: every documented
source, platform, status and disk layout occurs, optional fields are sometimes absent, and a small
share of odd-but-real values (a zone-less `createTime`, `sizeMB` 0, `systemDiskSizeGB` as a
string, an empty `chargeExpiredTime`, a repeated tag key, `dataDisks: null`) keeps the consumers
honest.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crawler.models import JsonObject, Target

ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
IMAGE_SOURCES = ("public", "private", "shared", "thirdparty", "community")
CLOUD_DISK_TYPES = ("ssd", "premium-hdd", "ssd.gp1", "ssd.io1", "hdd.std1")
IMAGE_STATUSES = ("ready", "pending", "error", "deleting")

_BEIJING = timedelta(hours=8)
_EPOCH_START = datetime(2018, 1, 1, tzinfo=UTC)
_EPOCH_SPAN_S = 7 * 365 * 86400

# (platform, osType, loginName, ((osVersion, name), ...), weight)
_OS_CATALOGUE: tuple[tuple[str, str, str, tuple[tuple[str, str], ...], int], ...] = (
    (
        "CentOS",
        "linux",
        "root",
        (
            ("6.9", "CentOS 6.9 64位"),
            ("7.6", "CentOS 7.6 64位"),
            ("7.9", "CentOS 7.9 64位"),
            ("8.2", "CentOS 8.2 64位"),
            ("Stream 9", "CentOS Stream 9 64位"),
        ),
        35,
    ),
    (
        "Ubuntu",
        "linux",
        "root",
        (
            ("16.04", "Ubuntu 16.04 64位"),
            ("18.04", "Ubuntu 18.04 64位"),
            ("20.04", "Ubuntu 20.04 64位"),
            ("22.04", "Ubuntu 22.04 64位"),
        ),
        25,
    ),
    (
        "Windows Server",
        "windows",
        "administrator",
        (
            ("2012 R2", "Windows Server 2012 R2 数据中心版 64位中文版"),
            ("2016", "Windows Server 2016 数据中心版 64位中文版"),
            ("2019", "Windows Server 2019 数据中心版 64位英文版"),
            ("2022", "Windows Server 2022 数据中心版 64位中文版"),
        ),
        20,
    ),
    (
        "Other Linux",
        "linux",
        "root",
        (
            ("10.10", "Debian 10.10 64位"),
            ("11.6", "Debian 11.6 64位"),
            ("22.03", "openEuler 22.03 LTS 64位"),
            ("8.6", "Rocky Linux 8.6 64位"),
            ("8.4", "Anolis OS 8.4 64位"),
        ),
        15,
    ),
    (
        "Other Windows",
        "windows",
        "administrator",
        (("10", "Windows 10 专业版 64位"), ("7", "Windows 7 旗舰版 64位")),
        5,
    ),
)
_OS_WEIGHTS = tuple(entry[4] for entry in _OS_CATALOGUE)

_USER_IMAGE_NAMES = (
    "web-server-prod",
    "mysql_base",
    "nginx-1.20",
    "备份镜像",
    "jenkins.agent",
    "k8s-node",
    "redis_cache",
    "测试环境-基础镜像",
    "gitlab-runner",
    "app_v2",
)
_MARKET_NAMES = ("LNMP环境", "宝塔Linux面板", "Docker运行环境", "Java运行环境", "WordPress建站")
_DESCRIPTIONS = (
    "",
    "",
    "",
    "由云主机创建",
    "golden image, do not delete",
    "导入的镜像",
    "nightly build",
)
_TAG_KEYS = ("env", "team", "owner", "project", "cost-center")
_TAG_VALUES = ("prod", "staging", "dev", "infra", "数据平台", "")


@dataclass(frozen=True, slots=True)
class Inventory:
    """Images per region, plus ids per region that deliberately do not exist.

    Attributes:
        seed: the seed everything was derived from.
        regions: the regions, in the order given.
        images: per region, the `Image` objects in creation order.
        missing: per region, image ids that the API must answer 404 for.
    """

    seed: int
    regions: tuple[str, ...]
    images: Mapping[str, tuple[JsonObject, ...]]
    missing: Mapping[str, tuple[str, ...]]

    def targets(self) -> Iterator[Target]:
        """Every pair, existing and missing, shuffled per region, regions interleaved."""
        per_region = [self._region_targets(region) for region in self.regions]
        for row in itertools.zip_longest(*per_region):
            yield from (target for target in row if target is not None)

    def _region_targets(self, region: str) -> list[Target]:
        ids = [str(image["imageId"]) for image in self.images[region]]
        ids.extend(self.missing[region])
        random.Random(f"{self.seed}:{region}:targets").shuffle(ids)
        return [Target(region, image_id) for image_id in ids]

    def __len__(self) -> int:
        """The number of existing images, all regions together."""
        return sum(len(images) for images in self.images.values())


def build_inventory(
    regions: Sequence[str], images_per_region: int, seed: int, *, missing_rate: float = 0.0
) -> Inventory:
    """Generate the inventory for `seed`.

    Args:
        regions: region ids, e.g. `("cn-north-1", "cn-east-2")`.
        images_per_region: existing images in each region.
        seed: any integer; the same seed gives the same inventory.
        missing_rate: the share of each region's targets that do not exist, in [0, 1).

    Returns:
        The inventory.

    Raises:
        ValueError: on a negative count or a `missing_rate` outside [0, 1).
    """
    if images_per_region < 0:
        raise ValueError(f"images_per_region must be >= 0, not {images_per_region}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), not {missing_rate}")
    taken: set[str] = set()
    images = {
        region: tuple(_build_region(region, images_per_region, seed, taken)) for region in regions
    }
    missing = {
        region: _missing_ids(region, missing_count(images_per_region, missing_rate), seed, images)
        for region in regions
    }
    return Inventory(seed=seed, regions=tuple(regions), images=images, missing=missing)


def missing_count(images_per_region: int, missing_rate: float) -> int:
    """How many missing ids make `missing_rate` of a region's targets, given its images."""
    return round(images_per_region * missing_rate / (1.0 - missing_rate))


def _build_region(region: str, count: int, seed: int, taken: set[str]) -> Iterator[JsonObject]:
    for index in range(count):
        rng = random.Random(f"{seed}:{region}:{index}")
        image_id = _unique_id(rng, "img-", taken)
        yield build_image(rng, image_id, region)


def _unique_id(rng: random.Random, prefix: str, taken: set[str]) -> str:
    while True:
        candidate = random_id(rng, prefix)
        if candidate not in taken:
            taken.add(candidate)
            return candidate


def _missing_ids(
    region: str, count: int, seed: int, images: Mapping[str, tuple[JsonObject, ...]]
) -> tuple[str, ...]:
    """Ids that do not exist in `region`; every fifth is a real id of another region."""
    taken = {str(image["imageId"]) for region_images in images.values() for image in region_images}
    elsewhere = [
        str(image["imageId"]) for other, imgs in images.items() if other != region for image in imgs
    ]
    rng = random.Random(f"{seed}:{region}:missing")
    ids: dict[str, None] = {}
    for index in itertools.count():
        if len(ids) >= count:
            break
        if index % 5 == 4 and elsewhere:
            ids[elsewhere[rng.randrange(len(elsewhere))]] = None
        else:
            ids[_unique_id(rng, "img-", taken)] = None
    return tuple(ids)


def random_id(rng: random.Random, prefix: str, length: int = 10) -> str:
    """`prefix` and `length` random lower-case alphanumerics, like `img-m5s0ed7ldz`."""
    return prefix + "".join(rng.choices(ID_ALPHABET, k=length))


def build_image(rng: random.Random, image_id: str, region: str) -> JsonObject:
    """One `Image` object, drawn from `rng`; optional fields are sometimes absent."""
    source = rng.choices(IMAGE_SOURCES, weights=(40, 30, 10, 10, 10))[0]
    image: JsonObject = {"imageId": image_id, "imageSource": source}
    image.update(_os_fields(rng, source))
    image.update(_ownership_fields(rng, source))
    image.update(_state_fields(rng))
    image.update(_disk_fields(rng, region, image))
    image.update(_boot_fields(rng))
    image.update(_origin_fields(rng, source))
    return image


def _os_fields(rng: random.Random, source: str) -> JsonObject:
    platform, os_type, login, versions, _ = rng.choices(_OS_CATALOGUE, weights=_OS_WEIGHTS)[0]
    os_version, name = rng.choice(versions)
    architecture = "x86_64"
    if os_type == "linux":
        architecture = rng.choices(("x86_64", "arm64", "i386"), weights=(85, 13, 2))[0]
    fields: JsonObject = {
        "platform": platform,
        "osType": os_type,
        "osVersion": os_version,
        "architecture": architecture,
        "name": _image_name(rng, source, name, architecture),
    }
    if rng.random() < 0.6:
        fields["loginName"] = login
    return fields


def _image_name(rng: random.Random, source: str, os_name: str, architecture: str) -> str:
    suffix = " ARM版" if architecture == "arm64" else ""
    if source == "public":
        return os_name + suffix
    if source == "thirdparty":
        return f"{rng.choice(_MARKET_NAMES)} ({os_name})"
    return f"{rng.choice(_USER_IMAGE_NAMES)}-{rng.randrange(1, 1000):03d}"


def _ownership_fields(rng: random.Random, source: str) -> JsonObject:
    fields: JsonObject = {}
    if rng.random() < 0.9:
        fields["ownerPin"] = _owner_pin(rng, source)
    if rng.random() < 0.85:
        fields["launchPermission"] = _launch_permission(rng, source)
    if rng.random() < 0.9:
        fields["desc"] = rng.choice(_DESCRIPTIONS)
    return fields


def _owner_pin(rng: random.Random, source: str) -> str:
    if source == "public":
        return "admin"
    if source == "thirdparty":
        return f"jdmarket_isv{rng.randrange(1, 50):02d}"
    return f"jdcloud_user{rng.randrange(10000, 99999)}"


def _launch_permission(rng: random.Random, source: str) -> str:
    if source == "private":
        return rng.choice(("ownerOnly", "ownerOnly", "specifiedUsers"))
    return "specifiedUsers" if source == "shared" else "all"


def _state_fields(rng: random.Random) -> JsonObject:
    status = rng.choices(IMAGE_STATUSES, weights=(85, 6, 5, 4))[0]
    fields: JsonObject = {"status": status, "createTime": api_time(rng, random_instant(rng))}
    if rng.random() < 0.85:
        fields["progress"] = "100" if status == "ready" else str(rng.randrange(0, 100))
    if rng.random() < 0.5:
        fields["offline"] = rng.random() < 0.1
    return fields


def random_instant(rng: random.Random) -> datetime:
    """A UTC instant between 2018 and 2025, to the second."""
    return _EPOCH_START + timedelta(seconds=rng.randrange(_EPOCH_SPAN_S))


def api_time(rng: random.Random, at: datetime) -> str:
    """`at` written as the API does: mostly zone-less Beijing time, else with `Z` or `+08:00`."""
    form = rng.choices(("naive", "zulu", "offset"), weights=(60, 20, 20))[0]
    if form == "zulu":
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")
    beijing = (at + _BEIJING).replace(tzinfo=None)
    if form == "offset":
        return beijing.strftime("%Y-%m-%dT%H:%M:%S+08:00")
    return beijing.strftime("%Y-%m-%d %H:%M:%S")


def utc_time(at: datetime) -> str:
    """`at` as `YYYY-MM-DDTHH:MM:SSZ`, the documented form of `Charge` times."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _disk_fields(rng: random.Random, region: str, image: JsonObject) -> JsonObject:
    root = "localDisk" if rng.random() < 0.2 else "cloudDisk"
    size_gb = rng.choice(
        (40, 40, 40, 50, 100) if image["osType"] == "windows" else (20, 40, 40, 80)
    )
    snapshot_id = random_id(rng, "snapshot-") if root == "cloudDisk" else ""
    fields: JsonObject = {
        "rootDeviceType": root,
        "systemDiskSizeGB": str(size_gb) if rng.random() < 0.03 else size_gb,
        "sizeMB": 0 if rng.random() < 0.1 else rng.randrange(800, size_gb * 1024),
    }
    if root == "cloudDisk" or rng.random() < 0.5:
        fields["snapshotId"] = snapshot_id
    if rng.random() < 0.98:
        fields["systemDisk"] = _system_disk(rng, region, root, size_gb, snapshot_id)
    if rng.random() < 0.7:
        fields["dataDisks"] = _data_disks(rng, region, root)
    elif rng.random() < 0.1:
        fields["dataDisks"] = None
    return fields


def _system_disk(
    rng: random.Random, region: str, root: str, size_gb: int, snapshot_id: str
) -> JsonObject:
    if root == "localDisk":
        return _attachment(rng, "vda", _local_disk(rng, size_gb))
    disk = _cloud_disk(rng, region, size_gb, snapshot_id)
    return _attachment(rng, "vda", disk)


def _data_disks(rng: random.Random, region: str, root: str) -> list[JsonObject]:
    disks = []
    for position in range(rng.choices((0, 1, 2, 3, 4), weights=(30, 30, 20, 10, 10))[0]):
        device = "vd" + "bcdefghi"[position]
        size_gb = rng.choice((20, 50, 100, 200, 500, 1024))
        if root == "localDisk" and rng.random() < 0.5:
            disks.append(_attachment(rng, device, _local_disk(rng, size_gb)))
        else:
            snapshot_id = random_id(rng, "snapshot-") if rng.random() < 0.7 else ""
            disks.append(_attachment(rng, device, _cloud_disk(rng, region, size_gb, snapshot_id)))
    return disks


def _attachment(rng: random.Random, device: str, disk: tuple[str, JsonObject]) -> JsonObject:
    category, body = disk
    attachment: JsonObject = {"diskCategory": category, "autoDelete": rng.random() < 0.8}
    attachment["localDisk" if category == "local" else "cloudDisk"] = body
    if rng.random() < 0.95:
        attachment["deviceName"] = device
    if rng.random() < 0.3:
        attachment["status"] = rng.choices(
            ("attached", "attaching", "detaching", "detached", "error_attach", "error_detach"),
            weights=(80, 4, 4, 4, 4, 4),
        )[0]
    return attachment


def _local_disk(rng: random.Random, size_gb: int) -> tuple[str, JsonObject]:
    return "local", {"diskType": rng.choice(CLOUD_DISK_TYPES), "diskSizeGB": size_gb}


def _cloud_disk(
    rng: random.Random, region: str, size_gb: int, snapshot_id: str
) -> tuple[str, JsonObject]:
    """A minimal disk as in the official example, or (40%) a full `Disk` object."""
    disk: JsonObject = {
        "diskType": rng.choice(CLOUD_DISK_TYPES),
        "diskSizeGB": size_gb,
        "encrypted": rng.random() < 0.15,
        "snapshotId": snapshot_id,
    }
    if rng.random() < 0.5:
        disk["encrypt"] = disk["encrypted"]
    if rng.random() < 0.4:
        disk.update(_full_disk_fields(rng, region, disk))
    return "cloud", disk


def _full_disk_fields(rng: random.Random, region: str, disk: JsonObject) -> JsonObject:
    disk_id = random_id(rng, "vol-")
    status = rng.choices(
        ("in-use", "available", "creating", "error_create"), weights=(60, 30, 5, 5)
    )[0]
    multi = rng.random() < 0.15
    created_at = random_instant(rng)
    fields: JsonObject = {
        "diskId": disk_id,
        "az": region + rng.choice("abc"),
        "name": f"disk-{rng.randrange(1, 10000)}",
        "description": rng.choice(("", "", "system disk", "数据盘")),
        "iops": rng.choice((1800, 3000, 4800, 20000)),
        "throughput": rng.choice((100, 130, 150, 350)),
        "status": status,
        "multiAttachable": multi,
        "createTime": api_time(rng, created_at),
        "charge": _charge(rng, created_at),
        "tags": _tags(rng),
        "attachments": _disk_attachments(rng, disk_id, status, multi, created_at),
    }
    enabled_key = "enabled" if rng.random() < 0.7 else "enable"
    fields[enabled_key] = rng.random() < 0.95
    if rng.random() < 0.2:
        fields["snapshotPolicies"] = []
    return fields


def _charge(rng: random.Random, start_at: datetime) -> JsonObject:
    mode = rng.choices(
        ("postpaid_by_duration", "prepaid_by_duration", "postpaid_by_usage"), weights=(60, 30, 10)
    )[0]
    charge: JsonObject = {
        "chargeMode": mode,
        "chargeStatus": rng.choices(("normal", "overdue", "arrear"), weights=(90, 5, 5))[0],
        "chargeStartTime": utc_time(start_at),
        # Documented: empty for post-paid resources.
        "chargeExpiredTime": "",
    }
    if mode == "prepaid_by_duration":
        charge["chargeExpiredTime"] = utc_time(start_at + timedelta(days=rng.choice((30, 365))))
    if rng.random() < 0.6:
        charge["chargeRetireTime"] = utc_time(start_at + timedelta(days=rng.randrange(30, 800)))
    return charge


def _tags(rng: random.Random) -> list[JsonObject]:
    tags = [
        {"key": rng.choice(_TAG_KEYS), "value": rng.choice(_TAG_VALUES)}
        for _ in range(rng.choices((0, 1, 2, 3), weights=(40, 30, 20, 10))[0])
    ]
    if tags and rng.random() < 0.1:
        # A key repeated with a new value: the last one wins downstream.
        tags.append({"key": tags[0]["key"], "value": "overridden"})
    return tags


def _disk_attachments(
    rng: random.Random, disk_id: str, status: str, multi: bool, disk_created_at: datetime
) -> list[JsonObject]:
    if status != "in-use":
        return []
    count = rng.randrange(1, 4) if multi else 1
    return [_disk_attachment(rng, disk_id, disk_created_at) for _ in range(count)]


def _disk_attachment(rng: random.Random, disk_id: str, disk_created_at: datetime) -> JsonObject:
    attached_at = disk_created_at + timedelta(seconds=rng.randrange(1, 86400 * 30))
    return {
        "attachmentId": random_id(rng, "attach-"),
        "diskId": disk_id,
        "instanceType": rng.choices(("vm", "nc"), weights=(90, 10))[0],
        "instanceId": random_id(rng, "i-"),
        "status": rng.choices(("attached", "attaching", "detaching"), weights=(90, 5, 5))[0],
        "attachTime": api_time(rng, attached_at),
    }


def _boot_fields(rng: random.Random) -> JsonObject:
    uefi = rng.random() < 0.3
    fields: JsonObject = {}
    if rng.random() < 0.7:
        fields["uefiSupport"] = uefi
    if rng.random() < 0.4:
        fields["bootMode"] = "uefi" if uefi else "bios"
    return fields


def _origin_fields(rng: random.Random, source: str) -> JsonObject:
    fields: JsonObject = {}
    if rng.random() < 0.3:
        fields["imported"] = source == "private" and rng.random() < 0.3
    if source == "private" and rng.random() < 0.4:
        fields["instanceId"] = random_id(rng, "i-")
    if rng.random() < 0.3:
        # Empty means the image never expires; a few carry an expiry time.
        fields["expiredTime"] = utc_time(random_instant(rng)) if rng.random() < 0.2 else ""
    if rng.random() < 0.05:
        fields["serviceCode"] = ""
    return fields
