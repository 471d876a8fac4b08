"""Query results as a text table, CSV or JSON, for `crawler sql`, `runs` and the demo;
the run's summary line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from crawler.app import CrawlReport
from crawler.store import RunSummary

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


def plural(number: int, noun: str, plural_noun: str | None = None) -> str:
    """`1 target`, `2,500 targets`, `1 retry`, `3 retries`."""
    word = noun if number == 1 else (plural_noun or noun + "s")
    return f"{number:,} {word}"


def describe_report(report: CrawlReport) -> str:
    """The one-line summary every run ends with: the whole run's figures, as `crawler runs`."""
    run, duration_s = report.summary, report.duration_s
    line = (
        f"run {run.run_id} {run.status}: {run.fetched:,} fetched, {run.missing:,} missing, "
        f"{run.failed:,} failed of {plural(run.targets_total, 'target')}; "
        f"{plural(run.requests, 'request')}, {plural(run.retries, 'retry', 'retries')}"
    )
    session_rate = report.stats.requests / duration_s if duration_s > 0 else 0.0
    if report.resumed:
        line += (
            f" over all sessions; this session {plural(report.stats.requests, 'request')} "
            f"in {duration_s:.1f} s ({session_rate:,.0f} requests/s)"
        )
    else:
        line += f" in {duration_s:.1f} s ({session_rate:,.0f} requests/s)"
    if run.message:
        line += f"; {run.message}"
    return line


def report_fields(report: CrawlReport, exit_code: int) -> dict[str, Any]:
    """The summary's figures as JSON log fields (the run's last record)."""
    run = report.summary
    return {
        "event": "run_finished",
        "status": str(run.status),
        "exit_code": exit_code,
        "targets_total": run.targets_total,
        "fetched": run.fetched,
        "missing": run.missing,
        "failed": run.failed,
        "requests": run.requests,
        "retries": run.retries,
        "duration_s": round(report.duration_s, 3),
        "resumed": report.resumed,
        "session_requests": report.stats.requests,
        "session_retries": report.stats.retries,
        "stopped_by": report.stopped_by,
        "reason": run.message,
    }


def render_runs(runs: Sequence[RunSummary], *, wide: bool = False) -> str:
    """`crawler runs`: a table within 80 columns, then each run's message in full.

    `wide` adds the finish time, requests, retries and strategy.
    """
    columns = ["run", "status", "started (UTC)", "took", "targets", "fetched", "missing"]
    columns.append("failed")
    if wide:
        columns += ["finished (UTC)", "requests", "retries", "strategy"]
    rows = []
    for run in runs:
        took = _took(run)
        row: list[Any] = [run.run_id, str(run.status), _utc(run.started_at), took]
        row += [run.targets_total, run.fetched, run.missing, run.failed]
        if wide:
            row += [_utc(run.finished_at), run.requests, run.retries, run.strategy]
        rows.append(tuple(row))
    lines = [render_table(columns, rows)]
    lines += [f"run {run.run_id}: {run.message}" for run in runs if run.message]
    return "\n".join(lines)


def _utc(at: datetime | None) -> str | None:
    return None if at is None else at.strftime("%Y-%m-%d %H:%M:%S")


def _took(run: RunSummary) -> str | None:
    if run.finished_at is None:
        return None
    seconds = max(0, int((run.finished_at - run.started_at).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
