"""`crawler diff` and `crawler history` output: JSON lines, CSV or a text table.

JSON lines are CONTRACT.md §7's shape, one object per image:
`{"from_run", "to_run", "region_id", "image_id", "change", "fields": [{"path", "from", "to"}]}`,
with `from_run` null for a baseline (the first run, diffed against nothing). CSV and the table
have one row per changed field, and one row with an empty path for an image added, removed or
restored.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from crawler.models import Change
from crawler.render import render_table

if TYPE_CHECKING:  # types only: `crawler --help` reads the formats without loading the store
    from crawler.store import FieldChange, ImageDiff, RunPair, VersionEntry

DIFF_FORMATS = ("table", "jsonl", "csv")
HISTORY_FORMATS = ("table", "jsonl")
_DIFF_COLUMNS = ["from_run", "to_run", "region_id", "image_id", "change", "path", "from", "to"]


def _fields_json(fields: Iterable[FieldChange]) -> list[dict[str, Any]]:
    return [{"path": f.path, "from": f.before, "to": f.after} for f in fields]


def _json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False)


def diff_lines(pair: RunPair, diffs: Iterable[ImageDiff]) -> Iterable[str]:
    """One JSON object per image."""
    for diff in diffs:
        yield _json_line(
            {
                "from_run": pair.from_run,
                "to_run": pair.to_run,
                "region_id": diff.region_id,
                "image_id": diff.image_id,
                "change": str(diff.change),
                "fields": _fields_json(diff.fields),
            }
        )


def _cell(value: Any) -> Any:
    # Strings as they are; anything else (a number, NULL) as JSON would write it.
    return value if isinstance(value, str) else json.dumps(value)


def _diff_rows(pair: RunPair, diffs: Iterable[ImageDiff]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for diff in diffs:
        start = (pair.from_run, pair.to_run, diff.region_id, diff.image_id, str(diff.change))
        if not diff.fields:
            rows.append((*start, "", "", ""))
        for field in diff.fields:
            rows.append((*start, field.path, _cell(field.before), _cell(field.after)))
    return rows


def describe_pair(pair: RunPair) -> str:
    """The heading of a diff: which runs, or that it is a baseline."""
    if pair.from_run is None:
        return f"baseline: run {pair.to_run} against an empty inventory (every image is added)"
    return f"changes from run {pair.from_run} to run {pair.to_run}"


def describe_counts(diffs: Sequence[ImageDiff]) -> str:
    """`2 added, 0 removed, 1 restored, 5 changed`."""
    counts = Counter(diff.change for diff in diffs)
    return ", ".join(f"{counts[change]:,} {change}" for change in Change)


def render_diff(pair: RunPair, diffs: Sequence[ImageDiff], fmt: str) -> str:
    """`diffs` in one of `DIFF_FORMATS`."""
    if fmt == "jsonl":
        return "\n".join(diff_lines(pair, diffs))
    rows = _diff_rows(pair, diffs)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_DIFF_COLUMNS)
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    table = render_table(_DIFF_COLUMNS[2:], [row[2:] for row in rows])
    return f"{describe_pair(pair)}\n{table}\n{describe_counts(diffs)}"


def render_history(entries: Sequence[VersionEntry], fmt: str) -> str:
    """One image's versions, oldest first, in one of `HISTORY_FORMATS`."""
    if fmt == "jsonl":
        return "\n".join(
            _json_line(
                {
                    "version": entry.version,
                    "valid_from_run": entry.valid_from_run,
                    "valid_to_run": entry.valid_to_run,
                    "status": entry.status,
                    "change": str(entry.change),
                    "run_started_at": entry.run_started_at,
                    "recorded_at": entry.recorded_at,
                    "content_hash": entry.content_hash,
                    "fields": _fields_json(entry.fields),
                }
            )
            for entry in entries
        )
    columns = ["version", "runs", "status", "change", "run_started_at", "path", "from", "to"]
    rows: list[tuple[Any, ...]] = []
    for entry in entries:
        to = "" if entry.valid_to_run is None else entry.valid_to_run
        runs = f"{entry.valid_from_run}-{to}"
        start = (entry.version, runs, entry.status, str(entry.change), entry.run_started_at)
        if not entry.fields:
            rows.append((*start, "", "", ""))
        for field in entry.fields:
            rows.append((*start, field.path, _cell(field.before), _cell(field.after)))
    return render_table(columns, rows)
