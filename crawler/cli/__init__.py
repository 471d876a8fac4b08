"""The `crawler` command: parses flags, runs a command, maps errors to exit codes.

Exit codes (CONTRACT.md §2) are defined in crawler.cli.exits alone. The modules, one job each:
`parser` (every command and flag, with `arguments` for the flags' types), `exits`, `process`
(the `Io` a command runs in), `startup` (the garbage collector during start-up), `databases`
(which database a command opens), and a module per group of commands: `crawl`, `discover`,
`inventory` (runs, sql, diff, history, check, tables, datasette-metadata), `maintenance`
(migrate, accept, prune) and `simulation` (simulate, demo).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
from collections.abc import Callable, Sequence
from io import StringIO

# Only what parsing the command line and mapping errors need is imported here; each command
# imports the rest itself, so `crawler --help`, `runs` and `sql` never load aiohttp, tenacity or
# the scheduler, and nothing loads Alembic unless a database is behind (see crawler.store.migrate).
# benchmarks/startup_cpu.py measures what each command costs to start.
from crawler.cli.exits import EXIT_INTERNAL, exit_code_for, report_bug, report_error
from crawler.cli.parser import build_parser
from crawler.cli.process import Io
from crawler.cli.simulation import program_name
from crawler.cli.startup import pause_collection
from crawler.errors import CrawlerError
from crawler.logs import configure_logging

__all__ = ["Io", "build_parser", "exit_code_for", "main", "program_name"]

log = logging.getLogger("crawler.cli")


def main(argv: Sequence[str] | None = None, io: Io | None = None) -> int:
    """Run one command; returns the process exit code.

    Without `io` this is the process itself (the console script, `python -m crawler`), and
    start-up also tunes the garbage collector for a process that ends when the command does.
    """
    if io is None:
        pause_collection()
    try:
        return _dispatch(sys.argv[1:] if argv is None else list(argv), io or Io())
    finally:
        gc.enable()


def _dispatch(argv: list[str], io: Io) -> int:
    try:
        args = _parse(argv, io)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    handler: Callable[[argparse.Namespace, Io], int] = args.handler
    try:
        return handler(args, io)
    except CrawlerError as error:
        code = exit_code_for(error)
        report_error(args, io, error, code)
        return code
    except Exception as exc:  # a bug outside the run's own handling: say so, exit 70
        report_bug(args, io, exc)
        return EXIT_INTERNAL


def _parse(argv: list[str], io: Io) -> argparse.Namespace:
    """The parsed command line. Under `--log-format json` a usage error is a JSON line too."""
    if not _wants_json(argv):
        return build_parser().parse_args(argv)
    captured = StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            message = captured.getvalue().strip().splitlines()[-1]
            configure_logging(io.stderr, fmt="json", level="error")
            log.error("%s", message, extra={"fields": {"exit_code": int(exc.code)}})
        raise


def _wants_json(argv: list[str]) -> bool:
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    return "--log-format=json" in argv or ("--log-format", "json") in pairs
