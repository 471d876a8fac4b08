"""The `crawler` command line: every command and flag with its help text.

Each command's handler is imported from its module; those modules import their libraries only
when the command runs, so building the parser (and `--help`) loads none.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from crawler.changes import DIFF_FORMATS, HISTORY_FORMATS
from crawler.cli.arguments import (
    duration,
    integer,
    non_negative_float,
    non_negative_int,
    port,
    positive_int,
    share,
)
from crawler.cli.crawl import run_crawl
from crawler.cli.discover import run_discover
from crawler.cli.inventory import (
    run_check,
    run_datasette_metadata,
    run_diff,
    run_history,
    run_runs,
    run_sql,
    run_tables,
)
from crawler.cli.maintenance import run_accept, run_migrate, run_prune
from crawler.cli.simulation import run_demo, run_simulate
from crawler.discovery import IMAGE_SOURCES
from crawler.logs import LEVELS
from crawler.render import FORMATS
from crawler.version import crawler_version

_CONFIG_HELP = "TOML config file (every key is documented in config.example.toml)"
_DB_HELP = (
    "database: an SQLAlchemy URL (sqlite+aiosqlite:///PATH) or a plain SQLite file path; "
    "overrides [database] url"
)
_SIMULATOR_KEYS = """\
The simulator accepts exactly one access key and its secret: --access-key, else the environment
variable JDCLOUD_ACCESS_KEY, else SIMULATORAK; and --secret-key, else JDCLOUD_SECRET_KEY, else
SIMULATORSK (prefer the variable: argv is visible to every user). Point a crawl at it with
[api] endpoint = "http://127.0.0.1:PORT" and the same two variables."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends `(default: X)` to every option that has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


class _VersionAction(argparse.Action):
    """`--version`: reads the installed version only when asked (importlib.metadata scans the
    path's distributions, a few ms that every other command would pay at start-up)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"crawler {crawler_version()}")  # standard output, as argparse's version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The `crawler` command line, every command and flag with its help text."""
    parser = argparse.ArgumentParser(
        prog="crawler",
        description="Async bulk inventory crawler for JD Cloud VM images.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="print the installed version and exit"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of:"
    )
    _add_crawl(commands)
    _add_discover(commands)
    _add_simulate(commands)
    _add_demo(commands)
    _add_db_command(
        commands, "migrate", run_migrate, "bring the database schema to the newest migration"
    )
    runs = _add_db_command(commands, "runs", run_runs, "the last runs with status and counts")
    runs.add_argument("--limit", type=positive_int, default=10, help="how many runs to list")
    runs.add_argument(
        "--wide", action="store_true",
        help="also show finish time, requests, retries and strategy (wider than 80 columns)",
    )  # fmt: skip
    sql = _add_db_command(commands, "sql", run_sql, "a read-only query over the inventory")
    sql.add_argument("query", help="one SQL statement; writes are refused")
    sql.add_argument("--format", choices=FORMATS, default="table", help="output format")
    check = _add_db_command(
        commands, "check", run_check,
        "exit 0 if the latest succeeded run finished within --max-age, else 1 (for monitors)",
    )  # fmt: skip
    check.add_argument(
        "--max-age", type=duration, required=True, metavar="DURATION",
        help="how old the latest success may be: seconds, or a number with s, m, h or d "
        "(90m, 26h, 2d)",
    )  # fmt: skip
    _add_db_command(
        commands, "tables", run_tables, "tables and views with row counts and a description each"
    )
    _add_db_command(
        commands, "datasette-metadata", run_datasette_metadata,
        "print a Datasette metadata file (JSON): descriptions, hidden bookkeeping tables and "
        "the cookbook as canned queries",
    )  # fmt: skip
    _add_history_commands(commands)
    return parser


def _add_history_commands(commands: Any) -> None:
    diff = _add_db_command(commands, "diff", run_diff, "what changed between two runs")
    diff.add_argument(
        "--from", dest="from_run", type=positive_int, metavar="RUN_ID",
        help="the older run (default: the finished run before --to; none: a baseline)",
    )  # fmt: skip
    diff.add_argument(
        "--to", dest="to_run", type=positive_int, metavar="RUN_ID",
        help="the newer run (default: the latest succeeded or partial run)",
    )  # fmt: skip
    diff.add_argument(
        "--format", choices=DIFF_FORMATS, default="table",
        help="table, or jsonl (one object per image) or csv (one row per field) for programs",
    )  # fmt: skip
    diff.add_argument("--region", metavar="REGION_ID", help="only images of this region")
    diff.add_argument(
        "--exit-code", action="store_true", help="exit 1 when anything changed, like git diff"
    )
    history = _add_db_command(
        commands, "history", run_history, "one image's versions as a timeline"
    )
    history.add_argument("region_id", metavar="REGION_ID", help="the image's region id")
    history.add_argument("image_id", metavar="IMAGE_ID", help="the image id, e.g. img-m5s0ed7ldz")
    history.add_argument(
        "--format", choices=HISTORY_FORMATS, default="table",
        help="table, or jsonl (one object per version)",
    )  # fmt: skip
    accept = _add_db_command(
        commands, "accept", run_accept, "apply the missing marks the guard held back for a run"
    )
    accept.add_argument(
        "run_id", type=positive_int, metavar="RUN_ID", help="the held run (see crawler runs)"
    )
    prune = _add_db_command(
        commands, "prune", run_prune, "delete old runs' targets and results; runs, history stay"
    )
    prune.add_argument(
        "--keep-runs", type=non_negative_int, metavar="N",
        help="runs that keep their rows, newest first; 0 = all (default: [retention] keep_runs)",
    )  # fmt: skip
    prune.add_argument("--vacuum", action="store_true", help="then shrink the database file")


def _add_crawl(commands: Any) -> None:
    crawl = commands.add_parser(
        "crawl", help="crawl the targets into the database", formatter_class=_HelpFormatter,
        description="Crawl the targets into the database. Flags override the config file.",
    )  # fmt: skip
    crawl.set_defaults(handler=run_crawl)
    crawl.add_argument("--config", required=True, metavar="PATH", help=_CONFIG_HELP)
    crawl.add_argument(
        "--targets", metavar="PATH",
        help="targets CSV (UTF-8, header naming region_id and image_id), or - for standard "
        "input; overrides [targets] file",
    )  # fmt: skip
    crawl.add_argument("--db", metavar="URL", help=_DB_HELP)
    crawl.add_argument(
        "--resume", nargs="?", const=0, type=positive_int, metavar="RUN_ID",
        help="finish a run: RUN_ID (running, interrupted or failed), else the latest running or "
        "interrupted one. "
        "With --targets: finish the latest unfinished run if there is one, else start a new run "
        "from those targets (what a nightly job wants)",
    )  # fmt: skip
    crawl.add_argument(
        "--join", nargs="?", const=0, type=positive_int, metavar="RUN_ID",
        help="PostgreSQL only: crawl a running run (RUN_ID, else the latest with status running) "
        "as one more worker, from any host, with this config's credentials and limits; exits 0 "
        "when nothing is left to claim, 2 when there is no running run",
    )  # fmt: skip
    crawl.add_argument(
        "--concurrency", type=positive_int, metavar="N",
        help="requests in flight, all regions together; overrides [crawl] concurrency "
        "(default from the config: 64)",
    )  # fmt: skip
    crawl.add_argument(
        "--rate-limit", type=non_negative_float, metavar="PER_S",
        help="client-side cap on requests per second, 0 = none; overrides [crawl] "
        "rate_limit_per_s (default from the config: 0)",
    )  # fmt: skip
    crawl.add_argument(
        "--strategy", choices=("single", "batch"),
        help="single: describeImage per target; batch: describeImages with up to 100 ids per "
        "call; overrides [crawl] strategy (default from the config: single)",
    )  # fmt: skip
    crawl.add_argument(
        "--deadline", type=non_negative_float, metavar="SECONDS",
        help="stop cleanly after this many seconds, resumable with --resume, 0 = none; "
        "overrides [crawl] deadline_s (default from the config: 0)",
    )  # fmt: skip
    crawl.add_argument(
        "--skip-invalid", action="store_true",
        help="report invalid targets-file lines and crawl the rest, instead of exiting 2",
    )  # fmt: skip
    crawl.add_argument(
        "--metrics-file", metavar="PATH",
        help="write a Prometheus textfile (node_exporter textfile collector) at the end of "
        "every run, whatever its outcome; written to a temporary file and renamed",
    )  # fmt: skip
    _add_log_flags(crawl, default_level="info")
    crawl.add_argument(
        "--no-progress", action="store_true",
        help="no progress line (it is shown only when stderr is a terminal and logs are text)",
    )  # fmt: skip
    crawl.add_argument(
        "--dry-run", action="store_true",
        help="validate the config, credentials and targets (or --resume's pending targets) "
        "and print a plan; send nothing",
    )  # fmt: skip
    crawl.add_argument(
        "--accept-missing", action="store_true",
        help="apply this run's missing marks even if the mass-deletion guard would hold them "
        "([crawl] max_missing_fraction, missing_guard_min)",
    )  # fmt: skip
    _add_profile(crawl)


def _add_log_flags(command: argparse.ArgumentParser, *, default_level: str) -> None:
    command.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="stderr as text lines, or as JSON lines only (one object per line, errors "
        "included; stdout keeps the one summary line)",
    )  # fmt: skip
    command.add_argument(
        "--log-level", choices=LEVELS, default=default_level,
        help="the least severe log records written (warn means warning)",
    )  # fmt: skip


def _add_discover(commands: Any) -> None:
    discover = commands.add_parser(
        "discover", help="write a targets CSV of every visible image",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    discover.set_defaults(handler=run_discover)
    discover.add_argument(
        "--config", required=True, metavar="PATH", help=_CONFIG_HELP + "; only [api] is used"
    )
    discover.add_argument(
        "--regions", required=True, metavar="R1,R2", help="comma-separated region ids"
    )
    discover.add_argument(
        "--image-source", default=",".join(IMAGE_SOURCES), metavar="S1,S2",
        help=f"comma-separated image sources to list, of {','.join(IMAGE_SOURCES)}",
    )  # fmt: skip
    discover.add_argument(
        "--output", default="-", metavar="PATH",
        help="targets CSV to write (whole or not at all), or - for standard output",
    )  # fmt: skip
    _add_log_flags(discover, default_level="info")
    _add_profile(discover)


def _add_profile(command: Any) -> None:
    command.add_argument(
        "--profile", metavar="NAME",
        help="take the access and secret key from this JD Cloud CLI profile in ~/.jdc/config "
        "(current: the one named in ~/.jdc/current); wins over [api] profile and the key "
        "variables",
    )  # fmt: skip


def _add_simulate(commands: Any) -> None:
    sim = commands.add_parser(
        "simulate", help="run the local JD Cloud API simulator until stopped",
        formatter_class=_HelpFormatter, epilog=_SIMULATOR_KEYS,
        description="Serve a faithful stand-in for the JD Cloud VM API (describeImage, "
        "describeImages) on loopback, signatures checked and faults injected, until SIGINT or "
        "SIGTERM. The first line printed is `listening on http://HOST:PORT`.",
    )  # fmt: skip
    sim.set_defaults(handler=run_simulate)
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=port, default=0, help="port to listen on, 0 = any free port")
    sim.add_argument(
        "--regions", default="cn-north-1,cn-east-1,cn-east-2,cn-south-1", metavar="R1,R2",
        help="comma-separated regions that exist; any other is answered 400",
    )  # fmt: skip
    sim.add_argument(
        "--images-per-region", type=non_negative_int, default=250, metavar="N",
        help="existing images per region",
    )  # fmt: skip
    sim.add_argument(
        "--seed", type=integer, default=0, metavar="S",
        help="seeds the inventory, the faults and the request ids",
    )  # fmt: skip
    sim.add_argument(
        "--latency-ms", type=non_negative_float, default=0.0, metavar="MS",
        help="added to every answer",
    )  # fmt: skip
    sim.add_argument(
        "--fail-rate", type=share, default=0.0, metavar="F",
        help="share of requests answered 500 or 503 (half each), 0 to 1",
    )  # fmt: skip
    sim.add_argument(
        "--throttle-rate", type=share, default=0.0, metavar="F",
        help="share of requests answered 429 RATE_LIMIT_EXCEEDED with Retry-After, 0 to 1",
    )  # fmt: skip
    sim.add_argument(
        "--missing-rate", type=share, default=0.0, metavar="F",
        help="share of the written targets that do not exist (answered 404 NOT_FOUND)",
    )  # fmt: skip
    sim.add_argument(
        "--max-faults-per-image", type=non_negative_int, metavar="N",
        help="at most this many injected faults in a row for one image (default: no cap)",
    )  # fmt: skip
    sim.add_argument(
        "--rate-limit-per-minute", type=non_negative_int, default=0, metavar="N",
        help="requests per access key per window before 429s, 0 = no limit",
    )  # fmt: skip
    sim.add_argument(
        "--rate-window-s", type=non_negative_float, default=60.0, metavar="SECONDS",
        help="the fixed window of --rate-limit-per-minute",
    )  # fmt: skip
    sim.add_argument(
        "--access-key", metavar="AK",
        help="the one access key accepted (default: $JDCLOUD_ACCESS_KEY, else SIMULATORAK)",
    )  # fmt: skip
    sim.add_argument(
        "--secret-key", metavar="SK",
        help="its secret (default: $JDCLOUD_SECRET_KEY, else SIMULATORSK); prefer the "
        "variable, since argv is visible to all users",
    )  # fmt: skip
    sim.add_argument(
        "--write-targets", metavar="PATH",
        help="write a targets CSV of the simulated images (and the missing ids), then serve",
    )  # fmt: skip
    sim.add_argument(
        "--tls-cert", metavar="PEM",
        help="serve HTTPS with this certificate chain (with --tls-key)",
    )  # fmt: skip
    sim.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    sim.add_argument(
        "--session-token", metavar="TOKEN",
        help="require every request to carry and sign this x-jdcloud-security-token "
        "(default: $JDCLOUD_SESSION_TOKEN, else none); prefer the variable, since argv is "
        "visible to all users",
    )  # fmt: skip


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="crawl a built-in simulator into demo.db", formatter_class=_HelpFormatter,
        description="Start the simulator in-process on a free loopback port, crawl it, print a "
        "summary and two example queries with their results. No account or network needed.",
    )  # fmt: skip
    demo.set_defaults(handler=run_demo)
    demo.add_argument("--db", default="demo.db", metavar="PATH", help="SQLite file to crawl into")
    demo.add_argument(
        "--images", type=positive_int, default=3000, metavar="N",
        help="images the simulator holds, over four regions",
    )  # fmt: skip


def _add_db_command(commands: Any, name: str, handler: Callable[..., int], help_text: str) -> Any:
    command = commands.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    command.set_defaults(handler=handler)
    command.add_argument("--db", metavar="URL", help=_DB_HELP)
    command.add_argument(
        "--config", metavar="PATH",
        help="take the database URL from this config file's [database] url (without --db and "
        "--config: inventory.db)",
    )  # fmt: skip
    return command
