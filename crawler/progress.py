"""The audit user's progress line: done/total, rate, ETA and failures, redrawn in place.

The line never wraps: it is fitted to the terminal's width, read again at every redraw so a
resized window takes effect at the next one. Log records are written between a `clear` and a
`redraw` (see `logs.Overlay`), so a record never shares a line with the bar, and `finish` leaves
exactly one final line on screen.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TextIO

from crawler.scheduler import CrawlStats

BAR_WIDTH = 24
MIN_BAR_WIDTH = 8
FALLBACK_COLUMNS = 80
_CLEAR_LINE = "\r\x1b[2K"


def format_progress(stats: CrawlStats, elapsed_s: float, columns: int = 1_000) -> str:
    """One line such as `[#####-----] 4,500/10,000 45% 1,234/s ETA 0:04 failed 12 retries 3`.

    It is at most `columns - 1` characters (a line that fills the last column makes some
    terminals wrap): the bar shrinks first, then the trailing fields are dropped.
    """
    total = max(stats.total, 1)
    share = min(1.0, stats.done / total)
    rate = stats.done / elapsed_s if elapsed_s > 0 else 0.0
    eta = _clock_text((stats.total - stats.done) / rate) if rate > 0 else "--:--"
    fields = [
        f"{stats.done:,}/{stats.total:,}",
        f"{share:4.0%}",
        f"{rate:,.0f}/s",
        f"ETA {eta}",
        f"failed {stats.failed:,}",
        f"retries {stats.retries:,}",
    ]
    room = columns - 1
    while True:
        rest = " ".join(fields)
        bar_width = min(BAR_WIDTH, room - len(rest) - 3)
        if bar_width >= MIN_BAR_WIDTH or len(fields) == 1:
            break
        fields.pop()
    if bar_width < MIN_BAR_WIDTH:  # a terminal too narrow even for the bar: the count alone
        return rest[:room]
    filled = int(share * bar_width)
    return f"[{'#' * filled}{'-' * (bar_width - filled)}] {rest}"


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to, or `FALLBACK_COLUMNS`."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or FALLBACK_COLUMNS
    except (OSError, ValueError, AttributeError):
        return FALLBACK_COLUMNS


class ProgressLine:
    """The bar on the terminal's last line; implements `logs.Overlay`."""

    def __init__(
        self,
        stats: Callable[[], CrawlStats | None],
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[TextIO], int] = terminal_columns,
    ) -> None:
        self._stats = stats
        self._stream = stream
        self._clock = clock
        self._columns = columns
        self._started = clock()
        self._shown = False  # whether the bar is on screen now
        self._finished = False

    def draw(self) -> None:
        """Replace the bar on screen with the current state."""
        stats = self._stats()
        if stats is None or self._finished:
            return
        text = format_progress(stats, self._clock() - self._started, self._columns(self._stream))
        self._stream.write(_CLEAR_LINE + text)
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Take the bar off screen, leaving the cursor at the start of an empty line."""
        if self._shown:
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()
            self._shown = False

    def redraw(self) -> None:
        """Put the bar back after a log record."""
        self.draw()

    def finish(self) -> None:
        """Draw the final state once more and end its line; later draws do nothing."""
        self.draw()
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
        self._shown = False
        self._finished = True


async def show_progress(line: ProgressLine, *, interval_s: float = 0.25) -> None:
    """Redraw `line` until cancelled; the final state stays on screen as one line."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            line.draw()
    finally:
        line.finish()


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
