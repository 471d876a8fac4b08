"""The audit user's progress bar: done/total, rate, ETA and failures, redrawn in place."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TextIO

from crawler.scheduler import CrawlStats

BAR_WIDTH = 24


def format_progress(stats: CrawlStats, elapsed_s: float) -> str:
    """One line such as `[#####-----] 4,500/10,000 45% 1,234/s ETA 0:04 failed 12`."""
    total = max(stats.total, 1)
    share = min(1.0, stats.done / total)
    filled = int(share * BAR_WIDTH)
    rate = stats.done / elapsed_s if elapsed_s > 0 else 0.0
    eta = _clock_text((stats.total - stats.done) / rate) if rate > 0 else "--:--"
    return (
        f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {stats.done:,}/{stats.total:,} "
        f"{share:4.0%} {rate:,.0f}/s ETA {eta} failed {stats.failed:,} retries {stats.retries:,}"
    )


async def show_progress(
    stats: Callable[[], CrawlStats | None],
    stream: TextIO,
    *,
    interval_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Redraw the bar until cancelled; the final state stays on screen."""
    started = clock()
    try:
        while True:
            await asyncio.sleep(interval_s)
            _draw(stats(), stream, clock() - started)
    finally:
        _draw(stats(), stream, clock() - started)
        stream.write("\n")
        stream.flush()


def _draw(stats: CrawlStats | None, stream: TextIO, elapsed_s: float) -> None:
    if stats is not None:
        stream.write("\r\x1b[2K" + format_progress(stats, elapsed_s))
        stream.flush()


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
