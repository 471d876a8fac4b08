"""What the person at a terminal and the cron job see: help, errors, summaries, JSON logs,
resume with targets, exit codes, the metrics file and the monitoring commands.

All through the real CLI (in-process) against the simulator on loopback and a real SQLite file.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crawler.cli import Io, build_parser, main, program_name
from crawler.version import crawler_version
from tests.conftest import SimulatorFactory, crawl_environ, write_config
from tests.test_cli import Recorder, crawl, rows, targets_file

# --- --help, --version, flag values ---------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_action_of_every_command_has_help_text() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) >= 11  # crawler and each of its ten commands
    undescribed = [
        f"{prog}: {'/'.join(action.option_strings) or action.dest}"
        for prog, parser in parsers
        for action in parser._actions
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS
    ]
    assert undescribed == []
    hidden_defaults = [
        f"{prog}: {'/'.join(action.option_strings)}"
        for prog, parser in parsers
        for action in parser._actions
        if action.option_strings
        and action.default not in (None, False, argparse.SUPPRESS)
        and "default" not in parser._get_formatter()._get_help_string(action)  # type: ignore[attr-defined]
    ]
    assert hidden_defaults == []


def test_every_subcommand_is_listed_with_help_at_the_top() -> None:
    (subparsers,) = [
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    described = {choice.dest for choice in subparsers._choices_actions if choice.help}
    assert described == set(subparsers.choices)
    assert {"check", "tables", "datasette-metadata", "crawl", "runs", "sql"} <= described


def _help(command: str) -> str:
    return dict(_parsers(build_parser()))[f"crawler {command}"].format_help()


def test_help_shows_defaults_and_the_simulators_keys() -> None:
    crawl_help = _help("crawl")
    assert "(default: text)" in crawl_help and "(default: info)" in crawl_help
    assert "default from the config: 64" in crawl_help
    assert "(default: config.example.toml)" not in crawl_help
    simulate_help = _help("simulate")
    assert "(default: 250)" in simulate_help and "(default: 127.0.0.1)" in simulate_help
    assert "JDCLOUD_ACCESS_KEY" in simulate_help and "JDCLOUD_SECRET_KEY" in simulate_help
    assert "SIMULATORAK" in simulate_help and "SIMULATORSK" in simulate_help
    assert "(default: demo.db)" in _help("demo") and "(default: table)" in _help("sql")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"crawler {crawler_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", crawler_version())


def test_a_bad_number_says_what_is_wrong_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crawl", "--config", "x.toml", "--concurrency", "many"]) == 2
    error = capsys.readouterr().err
    assert "argument --concurrency: 'many' is not a whole number" in error
    assert "_positive_int" not in error and "invalid " not in error
    assert main(["simulate", "--fail-rate", "lots"]) == 2
    assert "'lots' is not a number" in capsys.readouterr().err
    assert main(["check", "--max-age", "soon"]) == 2
    assert "'soon' is not a duration such as 90m, 26h or 2d" in capsys.readouterr().err


def test_log_level_warn_is_accepted_and_means_warning(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=5)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    recorder = Recorder()
    targets = str(targets_file(tmp_path, server.sim))
    assert crawl(config, "--targets", targets, "--log-level", "warn", recorder=recorder) == 0
    assert " INFO " not in recorder.stderr.getvalue()  # the summary record is INFO: not shown
    assert "run 1 succeeded" in recorder.stdout.getvalue()


# --- the targets file's encoding ------------------------------------------------------------


def test_a_gbk_targets_file_exits_2_naming_the_line_and_byte_and_iconv(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=5)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    good = next(iter(server.sim.targets()))
    text = f"region_id,image_id,name\n{good.region_id},{good.image_id},ok\ncn-east-2,img-x,镜像\n"
    targets = tmp_path / "gbk.csv"
    targets.write_bytes(text.encode("gbk"))
    recorder = Recorder()
    assert crawl(config, "--targets", str(targets), recorder=recorder) == 2
    message = recorder.stderr.getvalue()
    offset = text.encode("gbk").index("镜".encode("gbk"))
    assert f"{targets}: line 3 is not UTF-8: byte 0xbe at offset {offset}" in message
    assert f"iconv -f GBK -t UTF-8 {targets}" in message
    assert "Traceback" not in message and server.sim.stats.requests == 0


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
def test_a_utf8_targets_file_with_or_without_a_bom_is_read(
    simulator: SimulatorFactory, tmp_path: Path, bom: bytes
) -> None:
    server = simulator(images_per_region=5)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    good = next(iter(server.sim.targets()))
    targets = tmp_path / "utf8.csv"
    body = f"region_id,image_id,name\r\n{good.region_id},{good.image_id},镜像\r\n"
    targets.write_bytes(bom + body.encode("utf-8"))
    assert crawl(config, "--targets", str(targets)) == 0
    assert rows(db, "SELECT outcome FROM crawl_results") == [("fetched",)]


# --- exit codes -----------------------------------------------------------------------------


def test_a_bad_query_and_resume_of_an_unknown_run_are_usage_errors(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=5)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    assert crawl(config, "--targets", str(targets_file(tmp_path, server.sim))) == 0
    recorder = Recorder()
    assert main(["sql", "SELEC nonsense", "--db", str(db)], recorder.io()) == 2
    assert "syntax error" in recorder.stderr.getvalue()
    assert main(["sql", "DELETE FROM images", "--db", str(db)], recorder.io()) == 2
    recorder = Recorder()
    assert crawl(config, "--resume", "99", recorder=recorder) == 2
    assert "no run 99" in recorder.stderr.getvalue()
    recorder = Recorder()
    assert crawl(config, "--resume", "1", recorder=recorder) == 2
    assert (
        "run 1 is succeeded; only a running, interrupted or failed run"
        in recorder.stderr.getvalue()
    )
    assert main(["sql", "SELECT 1", "--db", str(tmp_path / "absent.db")], Recorder().io()) == 3


@pytest.mark.parametrize("url", ["postgresql://crawler@db.internal/inventory", "mysql://h/db"])
def test_a_database_url_the_crawler_cannot_open_is_a_config_error(tmp_path: Path, url: str) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", db=tmp_path / "x.db")
    for extra in ([], ["--dry-run"]):
        recorder = Recorder()
        assert crawl(config, "--targets", "-", "--db", url, *extra, recorder=recorder) == 2
        message = recorder.stderr.getvalue()
        assert "is not supported; use sqlite+aiosqlite://" in message
        assert "Traceback" not in message and "ModuleNotFoundError" not in message


# --- resume, with and without targets -------------------------------------------------------


def test_resume_with_targets_finishes_the_unfinished_run_else_starts_a_new_one(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=100, latency_ms=20)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, concurrency=2)
    targets = str(targets_file(tmp_path, server.sim))
    recorder = Recorder()
    assert crawl(config, "--resume", "--targets", targets, recorder=recorder) == 0
    assert "no unfinished run, so a new run starts" in recorder.stderr.getvalue()
    assert "started: 400 targets" in recorder.stderr.getvalue()
    assert crawl(config, "--targets", targets, "--deadline", "0.3") == 1
    assert rows(db, "SELECT run_id, status FROM crawl_runs") == [
        (1, "succeeded"),
        (2, "interrupted"),
    ]

    plan = Recorder()
    assert crawl(config, "--resume", "--dry-run", recorder=plan) == 0
    pending = rows(db, "SELECT 400 - count(*) FROM crawl_results WHERE run_id = 2")[0][0]
    assert "--resume would finish run 2" in plan.stdout.getvalue()
    assert f"total: {pending:,} targets" in plan.stdout.getvalue()

    recorder = Recorder()
    assert crawl(config, "--resume", "--targets", targets, "--concurrency", "32",
                 recorder=recorder) == 0  # fmt: skip
    log = recorder.stderr.getvalue()
    assert f"resumed: {pending:,} targets of 400 pending" in log
    assert "started" not in log
    assert "finishing run 2; --targets is read only when there is nothing to resume" in log
    run = rows(db, "SELECT status, fetched, requests, retries FROM crawl_runs WHERE run_id = 2")
    _status, fetched, requests, retries = run[0]
    summary = recorder.stdout.getvalue()
    # The summary is the whole run's, as `crawler runs` shows it, not this session's alone.
    assert f"run 2 succeeded: {fetched} fetched, 0 missing, 0 failed of 400 targets; " in summary
    assert f"{requests:,} requests, {retries:,} retries over all sessions; this session" in summary
    assert rows(db, "SELECT count(*) FROM crawl_runs") == [(2,)]


def test_resume_alone_with_nothing_to_resume_exits_2(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=5)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    for extra in ([], ["--dry-run"]):
        recorder = Recorder()
        assert crawl(config, "--resume", *extra, recorder=recorder) == 2
        assert "no unfinished run to resume (add --targets PATH" in recorder.stderr.getvalue()
    assert server.sim.stats.requests == 0


# --- summaries ------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_at_a_terminal_the_summary_prints_once(simulator: SimulatorFactory, tmp_path: Path) -> None:
    server = simulator(images_per_region=1)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    out, err = Terminal(), Terminal()
    io_ = Io(environ=crawl_environ(), stdout=out, stderr=err)
    targets = str(targets_file(tmp_path, server.sim))
    assert main(["crawl", "--config", str(config), "--targets", targets, "--no-progress"], io_) == 0
    both = out.getvalue() + err.getvalue()
    assert both.count("run 1 succeeded") == 1
    assert "of 4 targets; 4 requests, 0 retries in" in out.getvalue()
    assert "run 1: started: 4 targets" in err.getvalue()  # not "run 1: run 1 started"


def test_one_target_is_one_target(simulator: SimulatorFactory, tmp_path: Path) -> None:
    server = simulator(images_per_region=1, regions=("cn-north-1",))
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    recorder = Recorder()
    assert (
        crawl(config, "--targets", str(targets_file(tmp_path, server.sim)), recorder=recorder) == 0
    )
    assert "of 1 target; 1 request, 0 retries in" in recorder.stdout.getvalue()


def test_after_a_401_the_summary_line_is_printed_and_the_reason_said_once(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=20)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    recorder = Recorder()
    targets = str(targets_file(tmp_path, server.sim))
    assert crawl(config, "--targets", targets, recorder=recorder, secret="wrong") == 3
    summary = recorder.stdout.getvalue()
    assert summary.startswith("run 1 failed: 0 fetched, 0 missing, 1 failed of 80 targets; 1 req")
    assert summary.count("\n") == 1
    everything = summary + recorder.stderr.getvalue()
    assert all(line.count("credentials were rejected") <= 1 for line in everything.splitlines())
    assert "crawler crawl: describeImage" in recorder.stderr.getvalue()  # the error line
    assert "rejected: the credentials were rejected" not in everything


# --- JSON logs ------------------------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_with_json_logs_stderr_is_json_lines_and_the_last_carries_every_figure(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=30, fail_rate=0.2, missing_rate=0.1)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    recorder = Recorder()
    targets = str(targets_file(tmp_path, server.sim))
    assert crawl(config, "--targets", targets, "--log-format", "json", recorder=recorder) == 0
    records = _json_lines(recorder.stderr.getvalue())
    last = records[-1]
    run = rows(tmp_path / "inventory.db", "SELECT status, targets_total, fetched, missing,"
               " failed, requests, retries FROM crawl_runs")[0]  # fmt: skip
    figures = tuple(last[key] for key in ("status", "targets_total", "fetched", "missing",
                                          "failed", "requests", "retries"))  # fmt: skip
    assert figures == run
    assert last["run_id"] == 1 and last["exit_code"] == 0
    assert isinstance(last["duration_s"], float)
    assert recorder.stdout.getvalue().count("\n") == 1
    assert recorder.stdout.getvalue().startswith("run 1 succeeded:")


@pytest.mark.parametrize(
    ("setup", "code", "needle"),
    [
        ("config", 2, "crawl.concurrency"),
        ("targets", 2, "line 2"),
        ("resume", 2, "no unfinished run"),
    ],
)
def test_with_json_logs_errors_before_the_run_are_json_too(
    tmp_path: Path, setup: str, code: int, needle: str
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", db=tmp_path / "x.db")
    if setup == "config":
        config.write_text("[crawl]\nconcurrency = 0\n", encoding="utf-8")
    recorder = Recorder()
    args = ["--resume"] if setup == "resume" else ["--targets", "-"]
    stdin = "region_id,image_id\nnot a region,img-1\n"
    assert crawl(config, *args, "--log-format", "json", recorder=recorder, stdin=stdin) == code
    (record,) = _json_lines(recorder.stderr.getvalue())
    assert record["level"] == "error" and record["exit_code"] == code
    assert needle in str(record["message"])
    assert recorder.stdout.getvalue() == ""


def test_with_json_logs_a_usage_error_is_a_json_line_too() -> None:
    recorder = Recorder()
    argv = ["crawl", "--config", "c.toml", "--log-format", "json", "--concurrency", "0"]
    assert main(argv, recorder.io()) == 2
    (record,) = _json_lines(recorder.stderr.getvalue())
    assert record["exit_code"] == 2
    assert "argument --concurrency: '0' is not a positive whole number" in str(record["message"])


def test_discover_with_json_logs_writes_only_json_to_stderr(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=3)
    config = write_config(tmp_path, server.url, db=tmp_path / "x.db")
    recorder = Recorder()
    out = tmp_path / "targets.csv"
    code = main(["discover", "--config", str(config), "--regions", "cn-north-1",
                 "--output", str(out), "--log-format", "json"], recorder.io())  # fmt: skip
    assert code == 0
    (record,) = _json_lines(recorder.stderr.getvalue())
    assert record["images"] == 3 and "discovered 3 images" in str(record["message"])


# --- crawler runs ---------------------------------------------------------------------------


def test_runs_fits_80_columns_with_utc_times_and_full_messages(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=200, latency_ms=10)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db, concurrency=2)
    targets = str(targets_file(tmp_path, server.sim))
    assert crawl(config, "--targets", targets, "--deadline", "0.2") == 1
    assert crawl(config, "--targets", targets, secret="wrong") == 3
    recorder = Recorder()
    assert main(["runs", "--db", str(db)], recorder.io()) == 0
    lines = recorder.stdout.getvalue().splitlines()
    assert max(len(line) for line in lines[:5]) <= 80, lines
    assert re.search(r"  2  failed\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ", lines[2]), lines
    assert "+00:00" not in recorder.stdout.getvalue()
    message = rows(db, "SELECT message FROM crawl_runs WHERE run_id = 2")[0][0]
    assert len(message) > 80 and f"run 2: {message}" in lines
    wide = Recorder()
    assert main(["runs", "--db", str(db), "--wide"], wide.io()) == 0
    assert "requests" in wide.stdout.getvalue().splitlines()[0]


# --- the metrics file -----------------------------------------------------------------------

METRIC_NAMES = {
    "crawler_last_run_start_timestamp_seconds",
    "crawler_last_run_end_timestamp_seconds",
    "crawler_last_success_timestamp_seconds",
    "crawler_last_run_duration_seconds",
    "crawler_last_run_exit_code",
    "crawler_last_run_id",
    "crawler_last_run_targets",
    "crawler_last_run_requests",
    "crawler_last_run_retries",
    "crawler_last_run_changes",
    "crawler_inventory_images",
    "crawler_build_info",
}
SAMPLE = re.compile(r'^(?P<name>[a-z_]+)(?P<labels>\{[a-z_]+="[^"]*"\})? (?P<value>-?[0-9.e+]+)$')


def read_metrics(path: Path) -> dict[str, float]:
    """Samples by name and labels; checks the textfile format line by line."""
    samples: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ ", line), line
            continue
        match = SAMPLE.match(line)
        assert match, line
        samples[match["name"] + (match["labels"] or "")] = float(match["value"])
    return samples


def test_the_metrics_file_has_the_contracts_names_and_the_runs_figures(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=25, missing_rate=0.2, fail_rate=0.1)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    folder = tmp_path / "textfiles"
    folder.mkdir()
    metrics = folder / "crawler.prom"
    targets = str(targets_file(tmp_path, server.sim))
    before = datetime.now(UTC).timestamp()
    assert crawl(config, "--targets", targets, "--metrics-file", str(metrics)) == 0
    samples = read_metrics(metrics)
    assert {name.split("{")[0] for name in samples} == METRIC_NAMES
    assert not any("img-" in name for name in samples)
    run = rows(db, "SELECT fetched, missing, failed, requests, retries FROM crawl_runs")[0]
    assert (
        samples['crawler_last_run_targets{outcome="fetched"}'],
        samples['crawler_last_run_targets{outcome="missing"}'],
        samples['crawler_last_run_targets{outcome="failed"}'],
        samples["crawler_last_run_requests"],
        samples["crawler_last_run_retries"],
    ) == run
    assert samples["crawler_last_run_exit_code"] == 0 and samples["crawler_last_run_id"] == 1
    assert before <= samples["crawler_last_run_start_timestamp_seconds"]
    assert samples["crawler_last_run_start_timestamp_seconds"] <= samples[
        "crawler_last_success_timestamp_seconds"] <= samples[
        "crawler_last_run_end_timestamp_seconds"]  # fmt: skip
    assert samples['crawler_inventory_images{state="present"}'] == rows(
        db, "SELECT count(*) FROM images WHERE missing_since IS NULL")[0][0]  # fmt: skip
    assert samples[f'crawler_build_info{{version="{crawler_version()}"}}'] == 1
    assert sorted(path.name for path in folder.iterdir()) == ["crawler.prom"]  # no temp left
    # The first run adds every image it fetched; nothing else has happened yet.
    changes = {change: samples[f'crawler_last_run_changes{{change="{change}"}}']
               for change in ("added", "removed", "restored", "changed")}  # fmt: skip
    assert changes == {"added": run[0], "removed": 0, "restored": 0, "changed": 0}


def test_a_failed_run_writes_metrics_without_erasing_the_last_success(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=5)
    config = write_config(tmp_path, server.url, db=tmp_path / "inventory.db")
    metrics = tmp_path / "crawler.prom"
    targets = str(targets_file(tmp_path, server.sim))
    assert crawl(config, "--targets", targets, "--metrics-file", str(metrics)) == 0
    success = read_metrics(metrics)["crawler_last_success_timestamp_seconds"]
    assert crawl(config, "--targets", targets, "--metrics-file", str(metrics), secret="no") == 3
    failed = read_metrics(metrics)
    assert failed["crawler_last_run_exit_code"] == 3 and failed["crawler_last_run_id"] == 2
    assert failed["crawler_last_success_timestamp_seconds"] == success
    # A config error: no run, but the exit code and the version are still written.
    assert crawl(config, "--targets", str(tmp_path / "absent.csv"),
                 "--metrics-file", str(metrics)) == 2  # fmt: skip
    usage = read_metrics(metrics)
    assert usage["crawler_last_run_exit_code"] == 2 and "crawler_last_run_id" not in usage
    assert usage["crawler_last_success_timestamp_seconds"] == success
    assert crawl(config, "--targets", targets, "--metrics-file", str(metrics), "--dry-run") == 0
    assert read_metrics(metrics) == usage  # a dry run is not a run


# --- crawler check, tables, datasette-metadata ----------------------------------------------


def test_check_exits_0_within_the_age_and_1_otherwise(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    db = tmp_path / "inventory.db"
    assert main(["migrate", "--db", str(db)], Recorder().io()) == 0
    recorder = Recorder()
    assert main(["check", "--max-age", "26h", "--db", str(db)], recorder.io()) == 1
    assert recorder.stdout.getvalue() == "STALE: no run has succeeded yet (limit 26h)\n"
    server = simulator(images_per_region=2)
    config = write_config(tmp_path, server.url, db=db)
    assert crawl(config, "--targets", str(targets_file(tmp_path, server.sim))) == 0
    recorder = Recorder()
    assert main(["check", "--max-age", "90m", "--db", str(db)], recorder.io()) == 0
    assert re.fullmatch(r"OK: run 1 succeeded \d+s ago \(.+Z\), within 90m\n",
                        recorder.stdout.getvalue())  # fmt: skip
    old = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE crawl_runs SET finished_at = ?", (old,))
    recorder = Recorder()
    assert main(["check", "--max-age", "2d", "--db", str(db)], recorder.io()) == 1
    assert recorder.stdout.getvalue().startswith("STALE: run 1 succeeded 3d00h ago")
    recorder = Recorder()
    assert main(["check", "--max-age", "2d", "--db", str(tmp_path / "no.db")], recorder.io()) == 1
    assert "does not exist" in recorder.stdout.getvalue()


def test_tables_lists_tables_and_views_with_counts_and_descriptions(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=3)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    assert crawl(config, "--targets", str(targets_file(tmp_path, server.sim))) == 0
    recorder = Recorder()
    assert main(["tables", "--db", str(db)], recorder.io()) == 0
    listing = {line.split()[0]: line for line in recorder.stdout.getvalue().splitlines()[2:-1]}
    assert re.search(r"^images\s+table\s+12  one row per image ever fetched$", listing["images"])
    assert re.search(r"^images_not_ready\s+view\s+\d+  present images whose status", listing[
        "images_not_ready"])  # fmt: skip
    names = rows(db, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                 " AND name NOT LIKE 'sqlite_%'")  # fmt: skip
    assert set(listing) == {name for (name,) in names}
    undescribed = [name for name, line in listing.items()
                   if len(line.split()) < 4 and name != "alembic_version"]  # fmt: skip
    assert undescribed == []


def test_datasette_metadata_describes_tables_hides_bookkeeping_and_has_the_cookbook(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    server = simulator(images_per_region=3)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    assert crawl(config, "--targets", str(targets_file(tmp_path, server.sim))) == 0
    recorder = Recorder()
    assert main(["datasette-metadata", "--db", str(db)], recorder.io()) == 0
    metadata = json.loads(recorder.stdout.getvalue())
    database = metadata["databases"]["inventory"]
    tables = database["tables"]
    assert tables["crawl_targets"] == {"hidden": True}
    assert tables["alembic_version"] == tables["sqlite_sequence"] == {"hidden": True}
    assert tables["images"]["description"] == "one row per image ever fetched"
    assert tables["images"]["columns"]["missing_since"].startswith("when a run first got a def")
    columns = {name for (_, name, *_) in sqlite3.connect(db).execute("PRAGMA table_info(disks)")}
    assert set(tables["disks"]["columns"]) == columns
    queries = database["queries"]
    assert "images_per_region_and_os_type" in queries
    assert len(queries) >= 15
    with sqlite3.connect(db) as connection:
        for name, query in queries.items():
            assert query["title"] and not query["sql"].endswith(";"), name
            connection.execute(query["sql"]).fetchall()  # each canned query runs


def test_the_schema_docs_come_with_the_installed_package_too() -> None:
    import importlib.metadata

    from crawler.schema_docs import parse_docs

    metadata = importlib.metadata.metadata("crawler")
    text = str(metadata.get_payload() or metadata["Description"] or "")  # type: ignore[attr-defined]
    assert "images" in parse_docs(text).tables


# --- the demo's hint ------------------------------------------------------------------------


def test_the_demos_hint_names_a_command_that_runs_from_here(tmp_path: Path) -> None:
    venv_crawler = tmp_path / ".venv" / "bin" / "crawler"
    venv_crawler.parent.mkdir(parents=True)
    venv_crawler.write_text("#!/bin/sh\n", encoding="utf-8")
    venv_crawler.chmod(0o755)
    # `make demo` runs .venv/bin/crawler with a PATH that does not hold it.
    assert program_name(str(venv_crawler), "/usr/bin:/bin") == str(venv_crawler)
    assert program_name(".venv/bin/crawler", "/usr/bin:/bin") in (".venv/bin/crawler",
                                                                  "crawler")  # fmt: skip
    assert program_name(str(venv_crawler), str(venv_crawler.parent)) == "crawler"


def test_a_held_lock_is_a_json_error_and_a_metrics_file_with_exit_75(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    from crawler.store.dialects.sqlite import DatabaseLock

    server = simulator(images_per_region=2)
    db = tmp_path / "inventory.db"
    config = write_config(tmp_path, server.url, db=db)
    metrics = tmp_path / "crawler.prom"
    targets = str(targets_file(tmp_path, server.sim))
    assert crawl(config, "--targets", targets) == 0
    recorder = Recorder()
    with DatabaseLock(db):
        code = crawl(config, "--targets", targets, "--log-format", "json",
                     "--metrics-file", str(metrics), recorder=recorder)  # fmt: skip
    assert code == 75
    (record,) = _json_lines(recorder.stderr.getvalue())
    assert record["level"] == "error" and record["exit_code"] == 75
    samples = read_metrics(metrics)
    assert samples["crawler_last_run_exit_code"] == 75
    assert "crawler_last_success_timestamp_seconds" in samples  # run 1's, from crawl_runs


def test_gbk_on_standard_input_is_named_too(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    config = write_config(tmp_path, "http://127.0.0.1:9", db=tmp_path / "x.db")
    result = subprocess.run(
        [sys.executable, "-m", "crawler", "crawl", "--config", str(config), "--targets", "-",
         "--dry-run"],
        input="region_id,image_id\ncn-north-1,img-镜像\n".encode("gbk"),
        env={**os.environ, **crawl_environ()}, capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert b"<stdin>: line 2 is not UTF-8: byte 0xbe" in result.stderr
