"""An API `image` object to database rows (pure, and lean: it runs for every image crawled).

Each record kind has a table of (column, API field, converter). A converter returns None for a
missing value or one of the wrong type that cannot be converted without loss: `"40"` and `40.0`
become 40, but `"abc"` and `40.5` give NULL in an integer column; `true`, `"true"`, 1 and `"1"`
become 1 in a boolean column; a bool is not a number. Times become UTC `YYYY-MM-DD HH:MM:SS`
(see `parse_api_time`). The whole object is kept in `images.raw`, so nothing is lost: fields
without a column (`chargeInfo`, `serviceCode`, `snapshotPolicies`, new ones) stay there.

A malformed part (a `systemDisk` or `dataDisks` entry that is not an object, `tags` that are not
a list) is skipped; only an image without a usable `imageId` is rejected.

`raw` is always strict JSON (SQLite's `json_valid()` passes): `NaN`, `Infinity`, `-Infinity` and
numbers beyond float range (which parse as infinities) appear there as `null`. Text that UTF-8
cannot hold (a lone surrogate, from a `\\ud800` escape) is written as U+FFFD in the columns,
while `raw` keeps it as the JSON escape `\\ud800`, so nothing is lost.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from types import MappingProxyType
from typing import Any

import orjson

from crawler.errors import NormaliseError
from crawler.models import FetchedImage, ImageRows, Row

Converter = Callable[[Any], Any]
Fields = tuple[tuple[str, str, Converter], ...]
TimeFields = tuple[tuple[str, str], ...]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# ASCII digits only: int() alone would also take " 4_0" or Arabic-Indic digits; at most 19 digits
# keeps int() away from its digit limit (larger values do not fit SQLite's INTEGER anyway).
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
_FLAG_TEXT = {"true": 1, "false": 0, "1": 1, "0": 0}
# What datetime.fromisoformat would accept, minus its ISO week dates, ordinals and bare dates.
_TIME_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
)

# Offsets of a whole number of hours, and the hours as written (`parse_api_time`).
_WHOLE_HOURS = {timedelta(hours=hours): hours for hours in range(-23, 24)}
_HOUR_TEXT = tuple(f"{hour:02d}" for hour in range(24))

DISK_KEY_COLUMNS = ("region_id", "image_id", "slot", "position")
# Part of every `raw_digest`: raise it whenever the same `raw` would give different rows (a new
# column, a converter changed), so that the next crawl builds and compares every image's rows
# again instead of trusting the digests stored by the previous code. (2: the same rows, raised
# with content form 2, migration 0005, so each image is compared once with its rewritten hash.)
NORMALISER_VERSION = 2
# Bytes of SHA-256 kept as `images.raw_digest`: it only tells "same input as last time", and 128
# bits make a false match (which would skip one image's comparison) practically impossible.
RAW_DIGEST_BYTES = 16
# One encoder for every `raw`: json.dumps with arguments builds a new one per call. An image parsed
# from JSON cannot contain itself, so the circular-reference check (a third of the time) is skipped;
# a self-referencing mapping passed in by hand ends in RecursionError, reported as NormaliseError.
_RAW_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
)
# The rare image with a lone surrogate: ASCII with escapes, so `raw` keeps `\ud800` as written.
_RAW_ESCAPING_ENCODER = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, separators=(",", ":"), check_circular=False
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def scrub_text(text: str) -> str:
    """`text` with every lone surrogate (text UTF-8 cannot hold) replaced by U+FFFD."""
    if text.isascii():  # the common case, and cheap
        return text
    return _SURROGATE.sub(_REPLACEMENT, text)


def _finite(value: Any) -> Any:
    """A copy of a parsed JSON value with NaN and the infinities replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def to_text(value: Any) -> str | None:
    """A string as is; a number (not a bool) as its decimal text; anything else None."""
    if value is None or type(value) is str:  # the common cases first: this runs per field
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def to_int(value: Any) -> int | None:
    """An integer that fits SQLite's INTEGER, from an int, an integral float or decimal text."""
    if value is None or isinstance(value, bool):
        return None  # JSON true is not the number 1
    if isinstance(value, str):
        if _INT_TEXT.fullmatch(value := value.strip()) is None:
            return None
        value = int(value)
    elif isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    elif not isinstance(value, int):
        return None
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def to_flag(value: Any) -> int | None:
    """1 or 0 from a bool, the numbers 1 and 0, or the text true/false/1/0 (any case)."""
    if value is None or isinstance(value, bool):
        return value if value is None else int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        return _FLAG_TEXT.get(value.strip().lower())
    return None


def parse_api_time(value: Any, naive_tz: tzinfo) -> str | None:
    """An API time as UTC `YYYY-MM-DD HH:MM:SS` (fractions of a second dropped).

    Accepts ISO-8601 with `Z` or an offset, and `YYYY-MM-DD HH:MM:SS` without one, which is read
    in `naive_tz` (JD Cloud writes `createTime` in Beijing time). Anything else, the empty
    string included, gives None.
    """
    if value is None or not isinstance(value, str):
        return None
    value = value.strip()
    # The usual shapes (to the second, alone, with Z or with an offset) are told by their
    # separators, and fromisoformat reads only ASCII digits at the others; the full pattern,
    # 2.5x as costly, is for the rest.
    size = len(value)
    usual = (
        (size == 19 or (size == 20 and value[19] == "Z")
         or (size == 25 and value[19] in "+-" and value[22] == ":"))
        and value[4] == "-" and value[7] == "-" and value[10] in "T "
        and value[13] == ":" and value[16] == ":"
    )  # fmt: skip
    if not usual and not _TIME_TEXT.fullmatch(value):
        return None
    try:
        at = datetime.fromisoformat(value)
        # Subtracting the offset is what astimezone(UTC) does, without building two more aware
        # datetimes: this runs several times per image. A naive time takes naive_tz's offset at
        # that wall-clock time (fold=0, as replace(tzinfo=naive_tz) would).
        offset = at.utcoffset() if at.tzinfo is not None else naive_tz.utcoffset(at)
        if offset is None:  # a tzinfo that does not know its offset: let astimezone decide
            return at.replace(tzinfo=naive_tz).astimezone(UTC).isoformat(" ", "seconds")[:19]
        # The usual time, to the second in a whole-hour zone (Beijing's, or Z): its UTC text is
        # the written one with only the hour moved, unless that changes the day. isoformat costs
        # ~0.3 us, three times this, and an image has about four times.
        hours = _WHOLE_HOURS.get(offset)
        if hours is not None and value[16:17] == ":" and 0 <= (hour := at.hour - hours) < 24:
            return f"{value[:10]} {_HOUR_TEXT[hour]}{value[13:19]}"
        # isoformat pads the year to 4 digits, so the first 19 characters drop any "+00:00".
        return (at - offset).isoformat(" ", "seconds")[:19]
    except (ValueError, OverflowError):  # 2021-02-30, 24:00, or beyond year 1..9999 in UTC
        return None


_IMAGE_FIELDS: Fields = (
    ("name", "name", to_text),
    ("description", "desc", to_text),
    ("architecture", "architecture", to_text),
    ("os_type", "osType", to_text),
    ("platform", "platform", to_text),
    ("os_version", "osVersion", to_text),
    ("image_source", "imageSource", to_text),
    ("status", "status", to_text),
    ("progress", "progress", to_int),
    ("root_device_type", "rootDeviceType", to_text),
    ("size_mb", "sizeMB", to_int),
    ("system_disk_size_gb", "systemDiskSizeGB", to_int),
    ("snapshot_id", "snapshotId", to_text),
    ("launch_permission", "launchPermission", to_text),
    ("owner_pin", "ownerPin", to_text),
    ("login_name", "loginName", to_text),
    ("offline", "offline", to_flag),
    ("uefi_support", "uefiSupport", to_flag),
    ("imported", "imported", to_flag),
    ("boot_mode", "bootMode", to_text),
    ("instance_id", "instanceId", to_text),
)
_IMAGE_TIMES: TimeFields = (("created_at", "createTime"), ("expired_at", "expiredTime"))

# InstanceDiskAttachment: the image's disk mapping itself.
_MAPPING_FIELDS: Fields = (
    ("device_name", "deviceName", to_text),
    ("disk_category", "diskCategory", to_text),
    ("auto_delete", "autoDelete", to_flag),
    ("mapping_status", "status", to_text),
)
# Both localDisk and cloudDisk carry these.
_SIZE_FIELDS: Fields = (("disk_type", "diskType", to_text), ("disk_size_gb", "diskSizeGB", to_int))
_CLOUD_FIELDS: Fields = (
    ("disk_id", "diskId", to_text),
    ("az", "az", to_text),
    ("name", "name", to_text),
    ("description", "description", to_text),
    ("status", "status", to_text),
    ("snapshot_id", "snapshotId", to_text),
    ("multi_attachable", "multiAttachable", to_flag),
    ("iops", "iops", to_int),
    ("throughput", "throughput", to_int),
)
_CLOUD_TIMES: TimeFields = (("created_at", "createTime"),)
_CHARGE_FIELDS: Fields = (
    ("charge_mode", "chargeMode", to_text),
    ("charge_status", "chargeStatus", to_text),
)
_CHARGE_TIMES: TimeFields = (
    ("charge_start_at", "chargeStartTime"),
    ("charge_expired_at", "chargeExpiredTime"),
    ("charge_retire_at", "chargeRetireTime"),
)
# Flags the API has spelt two ways: the documented name first, then the one seen in examples.
_CLOUD_FLAGS = (("encrypted", ("encrypted", "encrypt")), ("enabled", ("enabled", "enable")))
_ATTACHMENT_FIELDS: Fields = (
    ("attachment_id", "attachmentId", to_text),
    ("disk_id", "diskId", to_text),
    ("instance_id", "instanceId", to_text),
    ("instance_type", "instanceType", to_text),
    ("status", "status", to_text),
)
_ATTACHMENT_TIMES: TimeFields = (("attached_at", "attachTime"),)


def _columns(*tables: Fields | TimeFields) -> tuple[str, ...]:
    return tuple(entry[0] for table in tables for entry in table)


IMAGE_COLUMNS: tuple[str, ...] = (
    "region_id",
    "image_id",
    *_columns(_IMAGE_FIELDS, _IMAGE_TIMES),
    "raw",
)
"""The images columns `normalise_image` fills; the store adds first/last seen, run, missing."""
DISK_COLUMNS: tuple[str, ...] = (
    DISK_KEY_COLUMNS
    + _columns(
        _MAPPING_FIELDS, _SIZE_FIELDS, _CLOUD_FIELDS, _CLOUD_TIMES, _CHARGE_FIELDS, _CHARGE_TIMES
    )
    + tuple(column for column, _ in _CLOUD_FLAGS)
)
ATTACHMENT_COLUMNS: tuple[str, ...] = (
    *DISK_KEY_COLUMNS,
    "seq",
    *_columns(_ATTACHMENT_FIELDS, _ATTACHMENT_TIMES),
)
TAG_COLUMNS: tuple[str, ...] = (*DISK_KEY_COLUMNS, "key", "value")


# Each source object's fields by API name, with their column and converter (a time's converter is
# `parse_api_time`, which takes the zone too). `_fill` walks the fields an object has rather than
# every field it could have: the API leaves most out (a cloud disk in the documentation's example
# has 5 of its 14), and the row starts with every column NULL (`_IMAGE_TEMPLATE` and the others).
FieldMap = dict[str, tuple[str, Callable[..., Any]]]


def _field_map(fields: Fields, times: TimeFields = ()) -> FieldMap:
    found: FieldMap = {field: (column, convert) for column, field, convert in fields}
    found |= {field: (column, parse_api_time) for column, field in times}
    assert len(found) == len(fields) + len(times)  # one column per API field of one object
    return found


_IMAGE_MAP = _field_map(_IMAGE_FIELDS, _IMAGE_TIMES)
_MAPPING_MAP = _field_map(_MAPPING_FIELDS)
_SIZE_MAP = _field_map(_SIZE_FIELDS)
# Flags by their documented name here; the other spelling is read only where that gave none.
_CLOUD_MAP = _field_map(
    _CLOUD_FIELDS + tuple((column, names[0], to_flag) for column, names in _CLOUD_FLAGS),
    _CLOUD_TIMES,
)
_SIZED_CLOUD_MAP = _CLOUD_MAP | _SIZE_MAP  # the cloud disk that holds type and size
_FLAG_ALIASES = tuple((column, alias) for column, names in _CLOUD_FLAGS for alias in names[1:])
_CHARGE_MAP = _field_map(_CHARGE_FIELDS, _CHARGE_TIMES)
_ATTACHMENT_MAP = _field_map(_ATTACHMENT_FIELDS, _ATTACHMENT_TIMES)
# Rows begin as a copy of one of these: every column NULL, in the table's order.
_IMAGE_TEMPLATE: Row = dict.fromkeys(IMAGE_COLUMNS)
_DISK_TEMPLATE: Row = dict.fromkeys(DISK_COLUMNS)
_ATTACHMENT_TEMPLATE: Row = dict.fromkeys(ATTACHMENT_COLUMNS)


def _fill(row: Row, source: Mapping[str, Any], fields: FieldMap, tz: tzinfo) -> None:
    """Set the column of every field `source` has; the others keep the row's NULL."""
    for field, value in source.items():
        if value is None:
            continue
        spec = fields.get(field)
        if spec is None:  # a field without a column (kept in raw)
            continue
        column, convert = spec
        # About 60 fields per image, most of them text already: skip the call for those.
        if convert is to_text:
            row[column] = value if type(value) is str else to_text(value)
        elif convert is parse_api_time:
            row[column] = parse_api_time(value, tz)
        else:
            row[column] = convert(value)


def _is_object(value: Any) -> bool:
    # A parsed answer's objects are dicts: `type() is` first, as the ABC check costs ~10x more.
    return type(value) is dict or isinstance(value, Mapping)


def _object(value: Any) -> Mapping[str, Any] | None:
    return value if _is_object(value) else None


def _sized(
    category: Any, local: Mapping[str, Any] | None, cloud: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The disk object holding type and size: the one present; with both, the one the mapping's
    diskCategory names (cloud unless it says local); None with neither."""
    if local is not None and (cloud is None or category == "local"):
        return local
    return cloud


def _disk_row(key: Row, mapping: Mapping[str, Any], tz: tzinfo) -> tuple[Row, Mapping[str, Any]]:
    """The disks row of one mapping, and its cloud disk (empty when it has none)."""
    local = _object(mapping.get("localDisk"))
    cloud = _object(mapping.get("cloudDisk"))
    row = _DISK_TEMPLATE.copy()
    row.update(key)
    _fill(row, mapping, _MAPPING_MAP, tz)
    sized = _sized(mapping.get("diskCategory"), local, cloud)
    if sized is not None and sized is not cloud:
        _fill(row, sized, _SIZE_MAP, tz)
    if cloud is None:
        return row, _EMPTY
    _fill(row, cloud, _SIZED_CLOUD_MAP if sized is cloud else _CLOUD_MAP, tz)
    for column, alias in _FLAG_ALIASES:
        if row[column] is None:
            row[column] = to_flag(cloud.get(alias))
    charge = _object(cloud.get("charge"))
    if charge is not None:
        _fill(row, charge, _CHARGE_MAP, tz)
    return row, cloud


def _attachment_rows(key: Row, cloud: Mapping[str, Any], tz: tzinfo) -> list[Row]:
    entries = cloud.get("attachments")
    if not isinstance(entries, list):
        return []
    rows = []
    for seq, entry in enumerate(entries):
        if _is_object(entry):
            row = _ATTACHMENT_TEMPLATE.copy()
            row.update(key)
            row["seq"] = seq
            _fill(row, entry, _ATTACHMENT_MAP, tz)
            rows.append(row)
    return rows


def _tag_rows(key: Row, cloud: Mapping[str, Any]) -> list[Row]:
    entries = cloud.get("tags")
    if not isinstance(entries, list):
        return []
    values: dict[str, str | None] = {}
    for entry in entries:
        if _is_object(entry) and (name := to_text(entry.get("key"))) is not None:
            values.pop(name, None)  # a repeated key keeps the last value, in its last place
            values[name] = to_text(entry.get("value"))
    return [{**key, "key": name, "value": value} for name, value in values.items()]


def _disk_mappings(image: Mapping[str, Any]) -> list[tuple[str, int, Mapping[str, Any]]]:
    """(slot, position, mapping) of every disk mapping that is an object."""
    found: list[tuple[str, int, Mapping[str, Any]]] = []
    system = _object(image.get("systemDisk"))
    if system is not None:
        found.append(("system", 0, system))
    data = image.get("dataDisks")
    if isinstance(data, list):
        found.extend(
            ("data", index, entry) for index, entry in enumerate(data) if _is_object(entry)
        )
    return found


def _raw(region_id: str, image_id: str, image: Mapping[str, Any]) -> tuple[str, bytes, bool]:
    """The image as strict JSON text, that text in UTF-8, and whether the image held text
    UTF-8 cannot encode."""
    # orjson writes what `_RAW_ENCODER` writes (compact, UTF-8 as is, NaN and the infinities as
    # null as `_finite` makes them; a float with an exponent spelled the shortest way, 1e-7 for
    # 1e-07) about eight times faster, ~10 us of each image, and as UTF-8 bytes already. What it
    # refuses (an integer beyond 64 bits, a lone surrogate, a value that is not JSON) takes the
    # path below, as before.
    try:
        encoded = orjson.dumps(image)
    except orjson.JSONEncodeError:
        pass
    else:
        return encoded.decode(), encoded, False
    try:
        try:
            raw = _RAW_ENCODER.encode(image)
        except ValueError:  # NaN or an infinity: strict JSON has no spelling for them
            raw = _RAW_ENCODER.encode(_finite(image))
        try:
            return raw, raw.encode("utf-8"), False
        except UnicodeEncodeError:
            raw = _RAW_ESCAPING_ENCODER.encode(_finite(image))
            return raw, raw.encode("ascii"), True
    except (TypeError, ValueError, RecursionError) as exc:
        raise NormaliseError(f"image {region_id}/{image_id} is not JSON: {exc}") from exc


@functools.lru_cache(maxsize=8)
def _settings_hash(naive_tz: tzinfo) -> Any:
    """SHA-256 fed with what besides `raw` decides the rows: the normaliser's version and zone."""
    return hashlib.sha256(f"crawler-normalise {NORMALISER_VERSION} {naive_tz}\n".encode())


def raw_digest(raw_utf8: bytes, naive_tz: tzinfo) -> bytes:
    """`images.raw_digest` of an image whose `raw` is `raw_utf8`, normalised in `naive_tz`."""
    digest = _settings_hash(naive_tz).copy()
    digest.update(raw_utf8)
    return bytes(digest.digest()[:RAW_DIGEST_BYTES])


def _scrub_rows(rows: ImageRows) -> None:
    """Replace lone surrogates in every text value (and tag key) of the rows, raw excepted."""
    for row in (rows.image, *rows.disks, *rows.attachments, *rows.tags):
        for column, value in row.items():
            if type(value) is str and column != "raw":
                row[column] = scrub_text(value)


def _image_id(region_id: str, image: Any) -> str:
    if not isinstance(image, Mapping):
        raise NormaliseError(f"an image in {region_id} is a {type(image).__name__}, not an object")
    image_id = image.get("imageId")
    if not isinstance(image_id, str) or not image_id:
        got = type(image_id).__name__ if image_id != "" else "empty string"
        raise NormaliseError(f"an image in {region_id} has no usable imageId (got {got})")
    return image_id


def prepare_image(region_id: str, image: Mapping[str, Any], *, naive_tz: tzinfo) -> FetchedImage:
    """Check one API `image` object and encode its `raw`; its rows are built on demand.

    Everything that can reject an image runs here, so that a bad answer fails its own target
    where it was fetched; what is left (`FetchedImage.build`) cannot fail for the answer's sake.

    Args:
        region_id: the region the image was fetched from.
        image: the `image` object exactly as parsed from the response.
        naive_tz: the zone of API times written without an offset.

    Raises:
        NormaliseError: `image` is not an object, has no usable `imageId`, or is not JSON.
    """
    image_id = _image_id(region_id, image)
    raw, raw_utf8, unencodable = _raw(region_id, image_id, image)
    digest = raw_digest(raw_utf8, naive_tz)
    return FetchedImage(region_id, image_id, raw, digest, image, unencodable, naive_tz, _rows)


def normalise_image(region_id: str, image: Mapping[str, Any], *, naive_tz: tzinfo) -> ImageRows:
    """Turn one API `image` object into rows for images, disks, attachments and tags.

    Args:
        region_id: the region the image was fetched from.
        image: the `image` object exactly as parsed from the response.
        naive_tz: the zone of API times written without an offset.

    Returns:
        Rows keyed by column name: every row of a kind has exactly the keys of `IMAGE_COLUMNS`,
        `DISK_COLUMNS`, `ATTACHMENT_COLUMNS` or `TAG_COLUMNS`.

    Raises:
        NormaliseError: `image` is not an object or has no usable `imageId`.
    """
    return prepare_image(region_id, image, naive_tz=naive_tz).build()


def _rows(fetched: FetchedImage) -> ImageRows:
    """The rows of an image `prepare_image` has checked and encoded."""
    region_id, image_id, image = fetched.region_id, fetched.image_id, fetched.image
    raw, naive_tz = fetched.raw, fetched.naive_tz
    row = _IMAGE_TEMPLATE.copy()
    row["region_id"] = region_id
    row["image_id"] = image_id
    _fill(row, image, _IMAGE_MAP, naive_tz)
    row["raw"] = raw
    rows = ImageRows(image=row)
    for slot, position, mapping in _disk_mappings(image):
        key = {"region_id": region_id, "image_id": image_id, "slot": slot, "position": position}
        disk, cloud = _disk_row(key, mapping, naive_tz)
        rows.disks.append(disk)
        rows.attachments.extend(_attachment_rows(key, cloud, naive_tz))
        rows.tags.extend(_tag_rows(key, cloud))
    # Every text in the rows came from the image, so raw's encoding has already looked at all of
    # it: only then is a second pass needed.
    if fetched.unencodable:
        _scrub_rows(rows)
    return rows
