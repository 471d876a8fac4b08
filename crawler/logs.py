"""Log records on stderr as text or one JSON object per line, each carrying the run id.

A record may carry structured fields (`extra={"fields": {...}}`): JSON lines include them as
keys, so a log shipper gets the run's figures without parsing the message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Protocol, TextIO

LEVELS = ("debug", "info", "warning", "warn", "error")


class Overlay(Protocol):
    """Something drawn on the log's terminal (the progress line) that records must not touch."""

    def clear(self) -> None:
        """Take it off screen before a record is written."""

    def redraw(self) -> None:
        """Put it back after the record."""


class RunContext(logging.Filter):
    """Stamps every record with the current run id (None until the run has one).

    `overlay`, when set, is cleared before each record is written and redrawn after it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.run_id: int | None = None
        self.overlay: Overlay | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, run_id, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", None),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-11-27T03:43:31Z INFO run 12: message`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        run_id = getattr(record, "run_id", None)
        where = f" run {run_id}" if run_id is not None else ""
        text = f"{stamp} {record.levelname}{where}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _OverlayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: TextIO, context: RunContext) -> None:
        super().__init__(stream)
        self._context = context

    def emit(self, record: logging.LogRecord) -> None:
        overlay = self._context.overlay
        if overlay is None:
            super().emit(record)
            return
        overlay.clear()
        try:
            super().emit(record)
        finally:
            overlay.redraw()


def configure_logging(stream: TextIO, *, fmt: str, level: str) -> RunContext:
    """Route the crawler's logs to `stream`; returns the filter that carries the run id.

    `level` is one of `LEVELS`; `warn` means `warning`.
    """
    context = RunContext()
    handler = _OverlayHandler(stream, context)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(context)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "crawler_handler", False):
            root.removeHandler(old)
    handler.crawler_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # Libraries stay at WARNING even at --log-level debug: their debug output is noise here.
    root.setLevel(logging.WARNING)
    logging.getLogger("crawler").setLevel("WARNING" if level == "warn" else level.upper())
    return context
