"""The cron job's Prometheus textfile (CONTRACT.md §8), for node_exporter's textfile collector.

Written at the end of every `crawler crawl`, whatever its outcome, to a temporary file in the same
directory and renamed over the old one, so the collector never reads half a file. Metric names are
fixed by the contract. No label carries an image id.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

OUTCOMES = ("fetched", "missing", "failed")
CHANGES = ("added", "removed", "restored", "changed")


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """What one invocation of `crawler crawl` came to; None where it never got that far.

    Attributes:
        start_s, end_s: this invocation's start and end, Unix seconds.
        exit_code: the process's exit code.
        version: the installed crawler's version.
        run_id: the run it worked on.
        outcomes: the run's targets per outcome (the whole run, resumed sessions included).
        requests, retries: the run's totals, likewise.
        last_success_s: finished_at of the latest `succeeded` run in the database, Unix seconds.
        images: the inventory's images per state (`present`, `missing`).
        changes: images per change kind of this run (`added`, ...), once history is recorded;
            None leaves the family out rather than report zeros that were never measured.
    """

    start_s: float
    end_s: float
    exit_code: int
    version: str
    run_id: int | None = None
    outcomes: Mapping[str, int] | None = None
    requests: int | None = None
    retries: int | None = None
    last_success_s: float | None = None
    images: Mapping[str, int] | None = None
    changes: Mapping[str, int] | None = field(default=None)


def format_metrics(metrics: RunMetrics) -> str:
    """The textfile: a HELP and TYPE line per family, then its samples."""
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    def one(name: str, help_text: str, value: float | None) -> None:
        if value is not None:
            gauge(name, help_text, [("", value)])

    def labelled(name: str, help_text: str, label: str, values: Mapping[str, int] | None,
                 keys: tuple[str, ...]) -> None:  # fmt: skip
        if values is not None:
            gauge(name, help_text, [(f'{{{label}="{key}"}}', values.get(key, 0)) for key in keys])

    one("crawler_last_run_start_timestamp_seconds", "When the last crawl started.", metrics.start_s)
    one("crawler_last_run_end_timestamp_seconds", "When the last crawl ended.", metrics.end_s)
    success_help = "When the latest succeeded run finished (from crawl_runs)."
    one("crawler_last_success_timestamp_seconds", success_help, metrics.last_success_s)
    one("crawler_last_run_duration_seconds", "How long the last crawl took.",
        metrics.end_s - metrics.start_s)  # fmt: skip
    one("crawler_last_run_exit_code", "Exit code of the last crawl.", metrics.exit_code)
    one("crawler_last_run_id", "The run the last crawl worked on.", metrics.run_id)
    labelled("crawler_last_run_targets", "Targets of the last run per outcome.", "outcome",
             metrics.outcomes, OUTCOMES)  # fmt: skip
    one("crawler_last_run_requests", "HTTP requests of the last run.", metrics.requests)
    one("crawler_last_run_retries", "Retried attempts of the last run.", metrics.retries)
    labelled("crawler_last_run_changes", "Images per change in the last run.", "change",
             metrics.changes, CHANGES)  # fmt: skip
    labelled("crawler_inventory_images", "Images in the inventory per state.", "state",
             metrics.images, ("present", "missing"))  # fmt: skip
    gauge("crawler_build_info", "The installed crawler; the value is always 1.",
          [(f'{{version="{_label_value(metrics.version)}"}}', 1)])  # fmt: skip
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary file in the same directory, renamed.

    Raises:
        OSError: the directory is missing or not writable.
    """
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; the collector may run as another user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
