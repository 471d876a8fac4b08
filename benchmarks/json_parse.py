"""Parsing answer bodies: json.loads beside orjson.loads, on the simulator's own answers.

A describeImage body (one image) and a describeImages body (100 images), built by the
simulator's inventory code exactly as it serves them. Each parser runs `--rounds` times, the
parsers interleaved within a round; the figure is the median microseconds per body and per
image. `orjson + guard` is orjson with the check it would need to be a drop-in replacement:
orjson reads an integer beyond 64 bits as a float without an error (json.loads keeps it exact),
so a body holding a run of 19 or more digits would have to be parsed by json.loads instead.

    .venv/bin/python benchmarks/json_parse.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence

import orjson
from harness import median

from crawler.simulator.inventory import build_image

_DIGITS = bytes(48 if 48 <= byte <= 57 else 46 for byte in range(256))
_LONG_RUN = b"0" * 19


def guarded_orjson(body: bytes) -> object:
    """orjson, unless the body has a digit run that could be an integer beyond 64 bits."""
    if _LONG_RUN in body.translate(_DIGITS):
        return json.loads(body)
    return orjson.loads(body)


def bodies() -> dict[str, tuple[bytes, int]]:
    """The two bodies and how many images each holds."""
    rng = random.Random(0)
    images = [build_image(rng, f"img-{n:010d}", "cn-north-1") for n in range(100)]
    single = {"requestId": "c" * 32, "result": {"image": images[0]}}
    page = {"requestId": "c" * 32, "result": {"images": images, "totalCount": len(images)}}
    return {
        "describeImage": (json.dumps(single, ensure_ascii=False).encode(), 1),
        "describeImages": (json.dumps(page, ensure_ascii=False).encode(), len(images)),
    }


def per_call_us(parse: Callable[[bytes], object], body: bytes, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        parse(body)
    return 1e6 * (time.perf_counter() - started) / calls


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    args = parser.parse_args(argv)
    parsers: dict[str, Callable[[bytes], object]] = {
        "json.loads": json.loads,
        "orjson.loads": orjson.loads,
        "orjson + guard": guarded_orjson,
    }
    for name, (body, images) in bodies().items():
        assert all(parse(body) == json.loads(body) for parse in parsers.values())
        calls = 2000 if images == 1 else 40
        found: dict[str, list[float]] = {label: [] for label in parsers}
        for _ in range(args.rounds):
            for label, parse in parsers.items():
                found[label].append(per_call_us(parse, body, calls))
        print(f"{name}: {len(body):,} bytes, {images} image(s), median of {args.rounds} rounds")
        base = median(found["json.loads"])
        for label, values in found.items():
            mid = median(values)
            print(
                f"  {label:<15} {mid:9.1f} us per body ({min(values):.1f}-{max(values):.1f}),"
                f" {mid / images:6.2f} us per image, {mid / base:.2f}x json.loads"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
