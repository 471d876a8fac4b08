"""What share of a crawl's CPU samples each part of the per-image path takes, from py-spy.

Record a crawl with py-spy (installable from PyPI; not a project dependency), as raw collapsed
stacks, then read them here:

    py-spy record -r 250 --format raw -o crawl.txt -- .venv/bin/python -m crawler crawl ...
    .venv/bin/python benchmarks/profile_shares.py crawl.txt [other.txt ...]

Each sample goes to the part named by its innermost frame that matches one (rules below, first
match wins per frame): the start-up (imports), the HTTP client (`crawler.http`, aiohttp before
issue 14, and the crawler's client module), request signing, JSON parsing of bodies, normalising
(with `raw` encoding), the scheduler, the store (SQLAlchemy, aiosqlite, sqlite3 and the store
modules), the event loop itself (asyncio), and the rest. py-spy's own idle detection misses
threads blocked on a queue, so samples whose innermost frame is a known wait (the event loop's
`select`, aiosqlite's worker at `tx.get()`, a thread pool worker at `work_queue.get`) are
counted as waiting and left out of the shares: what remains is where the CPU went. Several files
print side by side.
"""

from __future__ import annotations

import concurrent.futures.thread
import inspect
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

# (part, substrings of a frame "function (file:line)"); tried for each frame, innermost first.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up (imports)", ("<frozen importlib", "_find_and_load")),
    ("normalise + raw", ("crawler/normalise.py", "json/encoder.py")),
    ("JSON parse", ("json/decoder.py", "json/__init__.py", "_json_object")),
    ("signing", ("crawler/signer.py", "hashlib", "hmac.py")),
    ("store", ("crawler/store", "sqlalchemy/", "aiosqlite/", "sqlite3", "crawler/migrate")),
    ("HTTP client", ("aiohttp/", "yarl/", "multidict/", "crawler/client.py", "crawler/http/")),
    ("scheduler", ("crawler/scheduler.py", "crawler/pacing.py", "crawler/retry.py", "tenacity/")),
    ("event loop", ("asyncio/", "selectors.py")),
)
OTHER = "other"
WAITING = "waiting"


def _line_of(function: object, text: str) -> str:
    """`name (module/file.py:LINE)` of the line holding `text` in `function`, as py-spy names it."""
    lines, first = inspect.getsourcelines(function)  # type: ignore[arg-type]
    line = first + next(i for i, source in enumerate(lines) if text in source)
    module = inspect.getmodule(function)
    assert module is not None
    # py-spy names a file by its module path (`concurrent/futures/thread.py`, not the last two
    # parts of the path: that missed the thread pool's wait, counted as "other").
    file = module.__name__.replace(".", "/") + ".py"
    return f"{function.__name__} ({file}:{line})"  # type: ignore[attr-defined]


def _waits() -> tuple[str, ...]:
    import aiosqlite.core

    return (
        _line_of(aiosqlite.core._connection_worker_thread, "tx.get()"),
        _line_of(concurrent.futures.thread._worker, "work_queue.get(block=True)"),
    )


WAITS = _waits()


def part_of(stack: str) -> str:
    """The part one collapsed stack (frames outermost first, `;`-separated) belongs to."""
    innermost = stack.rsplit(";", 1)[-1]
    if innermost.startswith("EpollSelector.select (") or innermost in WAITS:
        return WAITING
    for frame in reversed(stack.split(";")):
        for part, needles in RULES:
            if any(needle in frame for needle in needles):
                return part
    return OTHER


def shares(path: Path) -> Counter[str]:
    """Samples per part in one py-spy raw file (`STACK COUNT` per line)."""
    found: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            found[part_of(stack)] += int(count)
    return found


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    tables = {Path(name).name: shares(Path(name)) for name in argv}
    parts = [part for part, _ in RULES] + [OTHER]
    working = {name: sum(found.values()) - found[WAITING] for name, found in tables.items()}
    print(f"{'part (% of working)':<20}" + "".join(f"{name:>18}" for name in tables))
    for part in parts:
        cells = "".join(
            f"{100 * found[part] / max(1, working[name]):>17.1f}%" for name, found in tables.items()
        )
        print(f"{part:<20}{cells}")
    print(f"{'working samples':<20}" + "".join(f"{n:>18}" for n in working.values()))
    print(f"{'waiting samples':<20}" + "".join(f"{t[WAITING]:>18}" for t in tables.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
