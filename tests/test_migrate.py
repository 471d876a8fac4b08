"""Migrating real SQLite files: upgrade, downgrade, backups, revisions, errors, the Alembic CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

from crawler import schema
from crawler.errors import StoreError
from crawler.store import migrate

REPO_ROOT = Path(__file__).resolve().parent.parent
AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def clock_at(at: datetime) -> Callable[[], datetime]:
    return lambda: at


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(sql).fetchall()


def objects(path: Path, kind: str) -> set[str]:
    rows = query(path, f"SELECT name FROM sqlite_master WHERE type = '{kind}'")
    return {str(name) for (name,) in rows if not str(name).startswith("sqlite_")}


def backups(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if ".bak-" in path.name)


def at_base(path: Path) -> None:
    """A database that exists but is behind head: migrated, then taken back to base."""
    migrate.upgrade(url(path))
    migrate.downgrade(url(path), "base")
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE marker (note TEXT)")
        connection.execute("INSERT INTO marker VALUES ('before the upgrade')")


def test_upgrade_creates_every_table_column_index_and_view(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) == {*schema.metadata.tables, "alembic_version"}
        for table in schema.metadata.sorted_tables:
            columns = [column["name"] for column in inspector.get_columns(table.name)]
            assert columns == list(table.c.keys())
            indexes = {index["name"] for index in inspector.get_indexes(table.name)}
            assert indexes == {index.name for index in table.indexes}
        assert set(inspector.get_view_names()) == set(schema.VIEW_NAMES)
    finally:
        engine.dispose()
    for view in schema.VIEW_NAMES:
        assert query(path, f"SELECT * FROM {view}") == []


def test_expected_indexes_exist(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    sql = "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    indexed = {(str(table), str(name)) for table, name in query(path, sql)}
    assert indexed >= {
        ("images", "ix_images_image_source"),
        ("images", "ix_images_status"),
        ("images", "ix_images_os_type_platform"),
        ("images", "ix_images_missing_since"),
        ("images", "ix_images_last_run_id"),
        ("disks", "ix_disks_disk_type"),
        ("disks", "ix_disks_disk_id"),
        ("attachments", "ix_attachments_instance_id"),
        ("tags", "ix_tags_key_value"),
        ("image_versions", "ix_image_versions_valid_from_run"),
    }
    # Gone in 0002: the key of crawl_results starts with run_id already.
    assert ("crawl_results", "ix_crawl_results_run_id_outcome") not in indexed


def test_the_per_run_tables_are_without_rowid_and_downgrade_puts_them_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    sql = "SELECT name, sql FROM sqlite_master WHERE name IN ('crawl_targets', 'crawl_results')"
    assert all(text.rstrip().endswith("WITHOUT ROWID") for _, text in query(path, sql))
    migrate.downgrade(url(path), "0001")
    assert not any("WITHOUT ROWID" in text for _, text in query(path, sql))
    indexes = query(path, "SELECT name FROM sqlite_master WHERE type = 'index'")
    assert ("ix_crawl_results_run_id_outcome",) in indexes
    assert ("image_versions",) not in query(path, "SELECT name FROM sqlite_master")


@pytest.mark.parametrize("scheme", ["sqlite+aiosqlite", "sqlite"])
def test_a_new_database_is_created_at_head_without_a_backup(tmp_path: Path, scheme: str) -> None:
    path = tmp_path / "inventory.db"
    assert migrate.upgrade(f"{scheme}:///{path}", clock=clock_at(AT)) is None
    assert migrate.current_revision(f"{scheme}:///{path}") == migrate.head_revision()
    assert backups(tmp_path) == []


def test_an_empty_file_is_new_and_gets_no_backup(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    path.touch()
    assert migrate.upgrade(url(path)) is None
    assert backups(tmp_path) == []


def test_an_up_to_date_database_gets_no_backup(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    assert migrate.upgrade(url(path), clock=clock_at(AT)) is None
    assert backups(tmp_path) == []


def test_a_database_behind_head_is_backed_up_first(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    at_base(path)
    backup = migrate.upgrade(url(path), clock=clock_at(AT))
    assert backup == tmp_path / "inventory.db.bak-20240102T030405Z"
    assert backups(tmp_path) == [backup.name]
    # The copy is the database as it was: the marker, no inventory tables, no revision.
    assert query(backup, "SELECT note FROM marker") == [("before the upgrade",)]
    assert "images" not in objects(backup, "table")
    assert migrate.current_revision(url(backup)) is None
    assert migrate.current_revision(url(path)) == migrate.head_revision()
    assert query(path, "SELECT note FROM marker") == [("before the upgrade",)]


def test_a_database_without_alembic_version_is_behind(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    assert migrate.upgrade(url(path), clock=clock_at(AT)) is not None
    assert backups(tmp_path) == ["other.db.bak-20240102T030405Z"]


def test_backup_names_use_utc_and_never_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    beijing_noon = datetime(2024, 1, 2, 11, 4, 5, tzinfo=timezone(timedelta(hours=8)))
    first = tmp_path / "inventory.db.bak-20240102T030405Z"
    first.write_text("an earlier backup")
    at_base(path)
    backup = migrate.upgrade(url(path), clock=clock_at(beijing_noon))
    assert backup == tmp_path / "inventory.db.bak-20240102T030405Z-1"
    assert first.read_text() == "an earlier backup"


def test_backup_dir(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    elsewhere = tmp_path / "backups"
    elsewhere.mkdir()
    at_base(path)
    backup = migrate.upgrade(url(path), clock=clock_at(AT), backup_dir=elsewhere)
    assert backup == elsewhere / "inventory.db.bak-20240102T030405Z"
    assert backups(tmp_path) == []


def test_downgrade_to_base_then_upgrade_again(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    migrate.downgrade(url(path), "base")
    assert migrate.current_revision(url(path)) is None
    assert objects(path, "table") == {"alembic_version"}
    assert objects(path, "view") == objects(path, "index") == set()
    migrate.upgrade(url(path))
    assert migrate.current_revision(url(path)) == migrate.head_revision()
    assert objects(path, "view") == set(schema.VIEW_NAMES)
    assert objects(path, "table") == {*schema.metadata.tables, "alembic_version"}


def test_a_failed_upgrade_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    at_base(path)
    # A table in the way of the last view: the upgrade fails after creating every table.
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE newly_missing_images (x)")
    before = objects(path, "table")
    with pytest.raises(StoreError, match=rf"cannot upgrade database {path}.*newly_missing_images"):
        migrate.upgrade(url(path), clock=clock_at(AT))
    assert objects(path, "table") == before
    assert objects(path, "view") == set()
    assert migrate.current_revision(url(path)) is None
    assert backups(tmp_path) == ["inventory.db.bak-20240102T030405Z"]


def test_current_revision_of_a_missing_file_is_none_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    assert migrate.current_revision(url(path)) is None
    assert not path.exists()


def test_a_revision_from_a_newer_crawler_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(StoreError, match=rf"database {path} is at revision 0099"):
        migrate.upgrade(url(path))
    assert backups(tmp_path) == []


def test_an_unopenable_database_is_a_store_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "inventory.db"
    with pytest.raises(StoreError, match=f"cannot upgrade database {path}"):
        migrate.upgrade(url(path))


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, but long enough to have a header " * 10)
    with pytest.raises(StoreError, match=f"database {path}"):
        migrate.upgrade(url(path))
    with pytest.raises(StoreError, match=f"database {path}"):
        migrate.current_revision(url(path))


def test_an_unknown_downgrade_target_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    with pytest.raises(StoreError, match="cannot downgrade to nonsense"):
        migrate.downgrade(url(path), "nonsense")


def test_a_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        migrate.upgrade("inventory.db")


def test_sync_url_swaps_the_async_driver() -> None:
    assert migrate.sync_url("sqlite+aiosqlite:///x.db").drivername == "sqlite"
    assert migrate.sync_url("sqlite:///x.db").drivername == "sqlite"


def test_script_location_holds_the_environment() -> None:
    location = Path(migrate.script_location())
    assert (location / "env.py").is_file()
    assert (location / "versions" / "0001_initial.py").is_file()


def test_alembic_cli_from_the_repository_root(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={url(path)}", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Running upgrade  -> 0001" in completed.stderr
    assert "Running upgrade 0002 -> 0003" in completed.stderr
    assert migrate.current_revision(url(path)) == migrate.head_revision()
