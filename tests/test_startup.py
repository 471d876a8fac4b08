"""Start-up: each command imports only what it needs (issue 14; the CPU it costs is measured by
benchmarks/startup_cpu.py). Checked in a fresh interpreter per command, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crawler.store import migrate

# Run a command in-process in a fresh interpreter, then say which of these it had imported.
_PROGRAM = """
import contextlib, io, json, sys
from crawler.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
heavy = (
    "aiohttp", "yarl", "alembic", "sqlalchemy", "tenacity", "crawler.scheduler", "crawler.simulator"
)
print(json.dumps({"code": code, "loaded": [name for name in heavy if name in sys.modules]}))
"""


def loaded_by(*argv: str, cwd: Path) -> tuple[int, list[str]]:
    completed = subprocess.run(
        [sys.executable, "-c", _PROGRAM, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={"JDCLOUD_ACCESS_KEY": "AK", "JDCLOUD_SECRET_KEY": "SK", "PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    return answer["code"], answer["loaded"]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def test_help_loads_no_library(tmp_path: Path) -> None:
    assert loaded_by("--help", cwd=tmp_path) == (0, [])
    assert loaded_by("crawl", "--help", cwd=tmp_path) == (0, [])


@pytest.mark.parametrize("command", [["runs"], ["sql", "SELECT count(*) FROM images"]])
def test_reading_commands_load_the_database_library_only(
    database: Path, command: list[str]
) -> None:
    assert loaded_by(*command, "--db", str(database), cwd=database.parent) == (0, ["sqlalchemy"])


def test_a_crawl_on_an_up_to_date_database_loads_neither_aiohttp_alembic_nor_tenacity(
    database: Path,
) -> None:
    config = database.parent / "crawler.toml"
    config.write_text('[api]\nendpoint = "http://127.0.0.1:9"\n', encoding="utf-8")
    targets = database.parent / "targets.csv"
    targets.write_text("region_id,image_id\n", encoding="utf-8")
    argv = ("crawl", "--config", str(config), "--targets", str(targets), "--db", str(database))
    code, loaded = loaded_by(*argv, cwd=database.parent)
    assert code == 0
    # tenacity comes with the first retry (tests/test_retry.py retries through it); aiohttp is
    # the simulator's server only, the crawl speaks HTTP through crawler.http.
    assert loaded == ["sqlalchemy", "crawler.scheduler"]


def _empty_crawl(tmp_path: Path, database: Path) -> tuple[int, list[str]]:
    config = tmp_path / "crawler.toml"
    config.write_text('[api]\nendpoint = "http://127.0.0.1:9"\n', encoding="utf-8")
    targets = tmp_path / "targets.csv"
    targets.write_text("region_id,image_id\n", encoding="utf-8")
    argv = ("crawl", "--config", str(config), "--targets", str(targets), "--db", str(database))
    return loaded_by(*argv, cwd=tmp_path)


def test_a_crawl_on_a_new_database_creates_the_head_schema_without_alembic(
    tmp_path: Path,
) -> None:
    database = tmp_path / "new.db"
    code, loaded = _empty_crawl(tmp_path, database)
    assert code == 0
    assert "alembic" not in loaded  # the generated head schema (crawler.store.schema_dump)
    assert migrate.current_revision(f"sqlite:///{database}") == migrate.HEAD_REVISION


def test_a_crawl_on_a_database_behind_head_migrates_it_through_alembic(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    migrate.upgrade(f"sqlite:///{database}")
    migrate.downgrade(f"sqlite:///{database}", "0004")
    code, loaded = _empty_crawl(tmp_path, database)
    assert code == 0
    assert "alembic" in loaded
    assert migrate.current_revision(f"sqlite:///{database}") == migrate.HEAD_REVISION
