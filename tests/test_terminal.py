"""The progress line on a real pseudo-terminal of 80 columns, through the real CLI.

The crawl runs as a subprocess whose stdin, stdout and stderr are a pty sized 80x24; its output is
replayed on a tiny terminal model (carriage return, erase-line, newline, wrap at 80 columns) to
see what the user's screen holds.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.conftest import SimulatorFactory, crawl_environ, write_config

COLUMNS = 80
NARROW = 50  # the window after the user narrows it mid-crawl
BAR_START = "[#"  # also "[-" before the first target is done
ERASE_LINE = "\x1b[2K"


class Screen:
    """What a terminal of `columns` shows after the given output (scrollback included)."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.done: list[str] = []  # lines the cursor has left
        self.current = ""
        self.col = 0
        self.wrapped_bars = 0  # progress lines that overflowed the width and wrapped

    def feed(self, text: str) -> None:
        text = text.replace(ERASE_LINE, "\x00")
        col = self.col
        for char in text:
            if char == "\r":
                col = 0
            elif char == "\n":
                self.done.append(self.current)
                self.current, col = "", 0
            elif char == "\x00":
                self.current = ""
            else:
                if col >= self.columns:
                    self.wrapped_bars += self.current.startswith(("[#", "[-"))
                    self.done.append(self.current)
                    self.current, col = "", 0
                self.current = self.current[:col] + char + self.current[col + 1 :]
                col += 1
        self.col = col

    @property
    def lines(self) -> list[str]:
        return [*self.done, self.current]


def _run_on_pty(
    args: list[str], env: dict[str, str], *, interrupt_after_bars: int, narrow_after_bars: int
) -> tuple[str, int]:
    """Run the command on an 80x24 pty, narrowed to `NARROW` columns after some bar redraws,
    and SIGINT after more; returns the output and how much of it came before the resize."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    process = subprocess.Popen(
        args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    output = b""
    interrupted = False
    narrowed_at = -1
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the pty
                    break
                if not chunk:
                    break
                output += chunk
            redraws = output.count(ERASE_LINE.encode())
            if narrowed_at < 0 and redraws >= narrow_after_bars:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, NARROW, 0, 0))
                narrowed_at = len(output)
            if not interrupted and redraws >= interrupt_after_bars:
                process.send_signal(signal.SIGINT)
                interrupted = True
            if process.poll() is not None and not ready:
                break
    finally:
        os.close(master)
        process.wait(timeout=30)
    assert interrupted, output.decode(errors="replace")
    assert process.returncode == 130, output.decode(errors="replace")
    before = len(output[:narrowed_at].decode("utf-8", errors="replace"))
    return output.decode("utf-8", errors="replace"), before


def test_the_progress_line_fits_80_columns_and_never_shares_a_line_with_a_log_record(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # Many images with latency and a narrow concurrency: a crawl of some seconds, with retries
    # (so the wide "retries N" field is shown) and a SIGINT in the middle.
    server = simulator(images_per_region=400, latency_ms=20.0, fail_rate=0.1, seed=3)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, concurrency=4)
    targets = tmp_path / "targets.csv"
    server.sim.write_targets(targets)
    env = {**crawl_environ(), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm"}
    command = [sys.executable, "-m", "crawler", "crawl", "--config", str(config)]
    text, narrowed_at = _run_on_pty(
        [*command, "--targets", str(targets)], env, narrow_after_bars=6, interrupt_after_bars=12
    )
    screen = Screen(COLUMNS)
    screen.feed(text[:narrowed_at])
    narrow = Screen(NARROW)
    narrow.feed(text[narrowed_at:].split(ERASE_LINE, 2)[-1])  # skip a redraw already under way
    assert narrow.wrapped_bars == 0, text[narrowed_at:]
    screen.feed(text[narrowed_at:])
    assert screen.wrapped_bars == 0, text
    bars = [line for line in screen.lines if line.startswith(("[#", "[-"))]
    assert len(bars) == 1, screen.lines  # one final progress line, not one per redraw
    assert len(bars[0]) < NARROW, bars  # drawn after the resize, to the new width
    logs = [line for line in screen.lines if " WARNING" in line or " INFO" in line]
    assert any("stopping the run (signal)" in line for line in logs), screen.lines
    assert all("[#" not in line and "[-" not in line for line in logs), logs
    summaries = [line for line in screen.lines if line.startswith("run 1 interrupted:")]
    assert len(summaries) == 1, screen.lines  # stdout only: not logged again at a terminal
    # Between redraws, the raw output never put a log record right after bar text.
    for piece in text.split(ERASE_LINE):
        if " WARNING" in piece or " INFO" in piece:
            assert not piece.lstrip("\r").startswith(("[#", "[-")), piece
