"""Exit codes, and how a command that failed says so (CONTRACT.md §2).

The only module that defines them; the commands take theirs from here.
"""

from __future__ import annotations

import argparse
import logging
import traceback
from typing import TYPE_CHECKING

from crawler.errors import (
    ApiError,
    AuthError,
    CrawlerError,
    EndpointUnreachableError,
    InternalError,
    LockHeldError,
    QueryError,
    RunNotFoundError,
    StoreError,
)

if TYPE_CHECKING:
    from crawler.cli.process import Io

log = logging.getLogger("crawler.cli")

EXIT_OK = 0
EXIT_FAILED_TARGETS = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_HELD = 4  # the mass-deletion guard held back the run's missing marks
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug, please report
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130


def report_bug(args: argparse.Namespace, io: Io, exc: Exception) -> None:
    """The traceback and one line saying it is a bug; one JSON record under JSON logs."""
    message = f"internal error (a bug, please report): {exc!r}"
    if getattr(args, "log_format", "text") == "json":
        fields = {"command": args.command, "exit_code": EXIT_INTERNAL}
        log.error("%s", message, exc_info=exc, extra={"fields": fields})
        return
    traceback.print_exception(exc, file=io.stderr)
    print(f"crawler {args.command}: {message}", file=io.stderr)


def report_error(args: argparse.Namespace, io: Io, error: CrawlerError, code: int) -> None:
    """One line on stderr: plain text, or a JSON log record under `--log-format json`."""
    if getattr(args, "log_format", "text") == "json":
        log.error("%s", error, extra={"fields": {"command": args.command, "exit_code": code}})
    else:
        print(f"crawler {args.command}: {error}", file=io.stderr)


def exit_code_for(error: CrawlerError) -> int:
    """The exit code of a command that ended with `error`."""
    if isinstance(error, LockHeldError):
        return EXIT_LOCKED
    if isinstance(error, QueryError | RunNotFoundError):  # the database is fine; the ask is not
        return EXIT_USAGE
    if isinstance(error, AuthError | StoreError | EndpointUnreachableError):
        return EXIT_FATAL
    if isinstance(error, InternalError):
        return EXIT_INTERNAL
    if isinstance(error, ApiError):  # e.g. a discovery page that failed for good
        return EXIT_FAILED_TARGETS
    return EXIT_USAGE
