"""Query results as a text table, CSV or JSON, for `crawler sql`, `runs` and the demo."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from crawler.app import CrawlReport

FORMATS = ("table", "csv", "json")


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Rows in the named format; `fmt` is one of `FORMATS`."""
    if fmt == "csv":
        return render_csv(columns, rows)
    if fmt == "json":
        return render_json(columns, rows)
    return render_table(columns, rows)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table with a header rule; numbers right-aligned, NULL an empty cell."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(name) for name in columns]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]
    lines = [_line(columns, widths, numeric), "  ".join("-" * width for width in widths)]
    lines += [_line(row, widths, numeric) for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def render_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180 CSV with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue().rstrip("\n")


def render_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """One JSON array of objects keyed by column name."""
    objects = [dict(zip(columns, row, strict=True)) for row in rows]
    return json.dumps(objects, ensure_ascii=False, indent=2, default=str)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _line(values: Sequence[str], widths: Sequence[int], numeric: Sequence[bool]) -> str:
    cells = [
        value.rjust(width) if right else value.ljust(width)
        for value, width, right in zip(values, widths, numeric, strict=True)
    ]
    return "  ".join(cells).rstrip()


def describe_report(report: CrawlReport) -> str:
    """The one-line summary every run ends with."""
    summary, duration_s = report.summary, report.duration_s
    rate = report.stats.requests / duration_s if duration_s > 0 else 0.0
    line = (
        f"run {summary.run_id} {summary.status}: {summary.fetched:,} fetched, "
        f"{summary.missing:,} missing, {summary.failed:,} failed of {summary.targets_total:,} "
        f"targets; {report.stats.requests:,} requests, {report.stats.retries:,} retries "
        f"in {duration_s:.1f} s ({rate:,.0f} requests/s)"
    )
    if summary.message:
        line += f"; {summary.message}"
    return line
