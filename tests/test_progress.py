"""The progress line an audit user watches."""

from __future__ import annotations

import io

from crawler.progress import ProgressLine, format_progress, terminal_columns
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


def test_the_line_never_reaches_the_last_column_whatever_the_width() -> None:
    stats = CrawlStats(total=1_000_000, fetched=123_456, failed=7_890, retries=99_999)
    for columns in (200, 80, 60, 40, 20, 10):
        line = format_progress(stats, elapsed_s=3.0, columns=columns)
        assert len(line) <= columns - 1, (columns, line)
        assert "131,346/1,000,000" in line or columns < 20
    assert "retries 99,999" in format_progress(stats, elapsed_s=3.0, columns=120)
    assert "retries" not in format_progress(stats, elapsed_s=3.0, columns=60)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_resized_terminal_takes_effect_at_the_next_redraw() -> None:
    widths = iter([120, 50])
    stream = Terminal()
    stats = CrawlStats(total=10_000, fetched=4_000, failed=100, retries=37)
    line = ProgressLine(lambda: stats, stream, clock=lambda: 1.0, columns=lambda _: next(widths))
    line.draw()
    line.draw()
    drawn = stream.getvalue().split("\r\x1b[2K")[1:]
    assert len(drawn[0]) >= 80 and len(drawn[1]) <= 49


def test_clear_and_redraw_bracket_a_log_record_and_finish_leaves_one_line() -> None:
    stream = Terminal()
    stats = CrawlStats(total=3, fetched=1)
    line = ProgressLine(lambda: stats, stream, clock=lambda: 1.0, columns=lambda _: 80)
    line.draw()
    line.clear()
    stream.write("a log record\n")
    line.redraw()
    stats.fetched = 3
    line.finish()
    line.draw()  # after finish: nothing more
    text = stream.getvalue()
    assert "\r\x1b[2Ka log record\n" in text
    assert text.endswith("] 3/3 100% 0/s ETA --:-- failed 0 retries 0\n")
    assert text.count("\n") == 2


def test_terminal_columns_falls_back_to_80_off_a_terminal() -> None:
    assert terminal_columns(io.StringIO()) == 80
