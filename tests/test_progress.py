"""The progress line an audit user watches."""

from __future__ import annotations

from crawler.progress import format_progress
from crawler.scheduler import CrawlStats


def test_the_line_shows_done_total_rate_eta_and_failures() -> None:
    stats = CrawlStats(total=10_000, fetched=4_000, missing=400, failed=100, retries=37)
    line = format_progress(stats, elapsed_s=9.0)
    assert "4,500/10,000" in line
    assert "45%" in line
    assert "500/s" in line
    assert "ETA 0:11" in line
    assert "failed 100" in line and "retries 37" in line
    assert line.startswith("[" + "#" * 10 + "-" * 14 + "]")


def test_an_empty_run_has_no_eta_yet() -> None:
    line = format_progress(CrawlStats(total=5), elapsed_s=0.0)
    assert "0/5" in line and "ETA --:--" in line
