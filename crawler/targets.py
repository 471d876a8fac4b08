"""Reading and validating the targets CSV (CONTRACT.md §4) as a stream.

The file is never held in memory: `TargetsReader` yields valid targets one by one and keeps only
the first `MAX_REPORTED` bad lines (and a count of the rest). Duplicates are folded by the store
(the primary key of `crawl_targets`), not here, so a million pairs cost no memory.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from crawler.errors import TargetsError
from crawler.models import Target

REGION_ID_RE = re.compile(r"^[a-z]{2}-[a-z]+-[0-9]+$")
IMAGE_ID_RE = re.compile(r"^img-[a-z0-9]{1,64}$")
REQUIRED_COLUMNS = ("region_id", "image_id")
MAX_REPORTED = 100


def is_valid_region_id(value: str) -> bool:
    """True when `value` is a region id the API can be asked about."""
    return REGION_ID_RE.fullmatch(value) is not None


def is_valid_image_id(value: str) -> bool:
    """True when `value` is an image id that is safe to put in a URL path."""
    return IMAGE_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """One rejected line of a targets file."""

    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.reason}"


def check_pair(region_id: str, image_id: str) -> str | None:
    """Why a (region, image) pair is invalid, or None when it is valid."""
    if not is_valid_region_id(region_id):
        return f"region_id {region_id!r} does not match {REGION_ID_RE.pattern}"
    if not is_valid_image_id(image_id):
        return f"image_id {image_id!r} does not match {IMAGE_ID_RE.pattern}"
    return None


class TargetsReader:
    """Iterates the valid targets of one CSV stream, remembering the invalid lines.

    When iteration ends and invalid lines were seen, it raises `TargetsError` listing them, unless
    `skip_invalid` is set; then they stay in `invalid` for the caller to report.
    """

    def __init__(self, stream: Iterable[str], source: str, *, skip_invalid: bool = False) -> None:
        self.source = source
        self.skip_invalid = skip_invalid
        self.invalid: list[InvalidLine] = []
        self.invalid_count = 0
        self.valid_count = 0
        self._stream = stream

    def __iter__(self) -> Iterator[Target]:
        rows = csv.reader(self._stream)
        region_col, image_col = self._read_header(rows)
        for fields in rows:
            target = self._parse(fields, rows.line_num, region_col, image_col)
            if target is not None:
                self.valid_count += 1
                yield target
        if self.invalid_count and not self.skip_invalid:
            raise TargetsError(self.describe_invalid())

    def describe_invalid(self) -> str:
        """A message naming the file and each bad line (the first `MAX_REPORTED` of them)."""
        lines = [f"{self.source}: {self.invalid_count} invalid line(s):"]
        lines += [f"  {bad}" for bad in self.invalid]
        hidden = self.invalid_count - len(self.invalid)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)

    def _read_header(self, rows: Iterator[list[str]]) -> tuple[int, int]:
        for fields in rows:
            if _is_skippable(fields):
                continue
            names = [name.strip().lstrip("\ufeff").lower() for name in fields]
            missing = [col for col in REQUIRED_COLUMNS if col not in names]
            if missing:
                raise TargetsError(
                    f"{self.source}: the header row must name the columns region_id and image_id"
                    f" (missing: {', '.join(missing)}; found: {', '.join(names) or 'nothing'})"
                )
            return names.index("region_id"), names.index("image_id")
        raise TargetsError(f"{self.source}: no header row (expected region_id,image_id)")

    def _parse(
        self, fields: list[str], line_number: int, region_col: int, image_col: int
    ) -> Target | None:
        if _is_skippable(fields):
            return None
        if max(region_col, image_col) >= len(fields):
            self._reject(line_number, f"expected at least {max(region_col, image_col) + 1} columns")
            return None
        region_id, image_id = fields[region_col].strip(), fields[image_col].strip()
        reason = check_pair(region_id, image_id)
        if reason is not None:
            self._reject(line_number, reason)
            return None
        return Target(region_id, image_id)

    def _reject(self, line_number: int, reason: str) -> None:
        self.invalid_count += 1
        if len(self.invalid) < MAX_REPORTED:
            self.invalid.append(InvalidLine(line_number, reason))


def decoded_lines(stream: BinaryIO, source: str) -> Iterator[str]:
    """The lines of a UTF-8 byte stream (a leading BOM dropped), decoded one line at a time.

    Decoding line by line, rather than through a buffered text wrapper, is what lets the error
    name the line and the byte: spreadsheets often save CSV as GBK, which is not UTF-8.

    Raises:
        TargetsError: a line is not UTF-8; names the file, the line, the byte and a fix.
    """
    offset = 0
    for line_number, raw in enumerate(stream, start=1):
        if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
            offset, raw = len(codecs.BOM_UTF8), raw[len(codecs.BOM_UTF8) :]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = raw[exc.start]
            raise TargetsError(
                f"{source}: line {line_number} is not UTF-8: byte 0x{byte:02x} at offset "
                f"{offset + exc.start} of the file (byte {exc.start + 1} of the line). Save the "
                f"file as UTF-8, or convert it, e.g. from a spreadsheet's GBK: "
                f"iconv -f GBK -t UTF-8 {source} > targets-utf8.csv"
            ) from exc
        offset += len(raw)


def _is_skippable(fields: list[str]) -> bool:
    """Blank lines and `#` comments are skipped (CONTRACT.md §4)."""
    if not any(field.strip() for field in fields):
        return True
    return fields[0].lstrip().startswith("#")
