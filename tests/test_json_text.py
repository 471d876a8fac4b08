"""`raw` and the canonical content are written by orjson: the same text the json encoders wrote.

The canonical text is hashed into `image_versions`; a byte of difference would make every image
a new version on the first crawl after an upgrade. So both are compared with the standard
library's encoders they replaced (kept as the fallback) on the simulator's inventory, the docs'
real example and odd values, and what orjson refuses is shown to take the old path.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from crawler.normalise import _RAW_ENCODER, _RAW_ESCAPING_ENCODER, normalise_image
from crawler.simulator.inventory import build_image
from crawler.store.content import _ENCODER, canonical, canonical_rows, content_of

BEIJING = ZoneInfo("Asia/Shanghai")
REGIONS = ("cn-north-1", "cn-east-2")
DOCS_EXAMPLE = Path(__file__).parent / "data" / "docs_describeImages_example.json"
ODD_TEXT = 'quote " backslash \\ controls \n\r\t\b\f\x00\x01\x1f\x7f \u2028\u2029 \ufeff é 中 😀'


def simulator_images(count: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(7)
    return [
        (region, build_image(rng, f"img-{n:010d}", region))
        for n in range(count)
        for region in REGIONS
    ]


def docs_images() -> list[tuple[str, dict[str, Any]]]:
    images = json.loads(DOCS_EXAMPLE.read_text("utf-8"))["result"]["images"]
    return [("cn-north-1", image) for image in images]


def odd_image() -> dict[str, Any]:
    return {
        "imageId": "img-odd0000001",
        "name": ODD_TEXT,
        "description": ODD_TEXT[::-1],
        "sizeMB": 2**63 - 1,
        "systemDiskSizeGB": -(2**63),
        "progress": "100",
        "nested": {"list": [None, True, False, 0, -1, "", {}, []], ODD_TEXT: ODD_TEXT},
        "dataDisks": [{"diskSizeGB": 20, "cloudDisk": {"tags": [{"key": "k", "value": "v"}]}}],
    }


@pytest.mark.parametrize("source", ["simulator", "docs", "odd"])
def test_raw_and_canonical_text_are_what_the_json_encoders_wrote(source: str) -> None:
    images = {
        "simulator": lambda: simulator_images(150),
        "docs": docs_images,
        "odd": lambda: [("cn-north-1", odd_image())],
    }[source]()
    for region, image in images:
        rows = normalise_image(region, image, naive_tz=BEIJING)
        assert rows.image["raw"] == _RAW_ENCODER.encode(image)
        content = content_of(rows.image, rows.disks, rows.attachments, rows.tags)
        assert canonical_rows(rows).text == _ENCODER.encode(content)


def test_values_orjson_refuses_take_the_json_encoders_path() -> None:
    beyond_64_bits = {"imageId": "img-big0000001", "sizeMB": 2**64 + 1, "name": "n"}
    rows = normalise_image("cn-north-1", beyond_64_bits, naive_tz=BEIJING)
    assert rows.image["raw"] == _RAW_ENCODER.encode(beyond_64_bits)
    assert '"sizeMB":18446744073709551617' in rows.image["raw"]
    surrogate = {"imageId": "img-sur0000001", "name": "a\ud800b"}
    rows = normalise_image("cn-north-1", surrogate, naive_tz=BEIJING)
    assert rows.image["raw"] == _RAW_ESCAPING_ENCODER.encode(surrogate)
    assert "\\ud800" in rows.image["raw"]
    assert rows.image["name"] == "a\ufffdb"
    big = {"image": {"size_mb": 2**64 + 1}}
    assert canonical(big).text == _ENCODER.encode(big)


def test_nan_and_infinities_are_null_in_raw_as_before() -> None:
    image = {"imageId": "img-nan0000001", "a": float("nan"), "b": [float("inf"), -float("inf")]}
    rows = normalise_image("cn-north-1", image, naive_tz=BEIJING)
    assert rows.image["raw"] == '{"imageId":"img-nan0000001","a":null,"b":[null,null]}'
