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
from crawler.store import migrate, schema_dump

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
        for table in schema.metadata_for("sqlite").sorted_tables:
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


def test_the_known_head_is_alembics_own_head() -> None:
    # `upgrade` trusts HEAD_REVISION to skip Alembic on an up-to-date database; a new migration
    # without a new HEAD_REVISION would leave databases behind, so this must fail first.
    assert migrate.head_revision() == migrate.HEAD_REVISION


def test_a_database_at_the_known_head_is_checked_without_alembic(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    program = (
        "import sys; from crawler.store import migrate; "
        f"print(migrate.upgrade({url(path)!r}), 'alembic' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.split() == ["None", "False"]


def test_a_database_behind_the_known_head_is_upgraded_through_alembic(tmp_path: Path) -> None:
    # The fast check must never take "some revision" for "the head".
    path = tmp_path / "inventory.db"
    migrate.upgrade(url(path))
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = 'not-a-revision'")
    with pytest.raises(StoreError, match="not-a-revision, which this crawler does not know"):
        migrate.upgrade(url(path))


# --- 0006: SQLite's crawl_results keeps its finish time as microseconds ---------------------------

FINISH_TIMES = (
    "2024-01-02 03:04:05.000000",
    "2024-01-02 03:04:05.123456",
    "1999-12-31 23:59:59.999999",
    "2026-12-01 14:30:00.000001",
)
RESULTS = "SELECT image_id, finished_at, datetime(finished_at) FROM crawl_results ORDER BY image_id"


def at_0005_with_results(path: Path, times: tuple[str, ...] = FINISH_TIMES) -> None:
    """A database at 0005 whose crawl_results hold `times` as text, as that release wrote them."""
    migrate.upgrade(url(path))
    migrate.downgrade(url(path), "0005")
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(
            "INSERT INTO crawl_runs (started_at, status) VALUES ('2024-01-02 03:04:05.000000',"
            " 'failed')"
        )
        connection.executemany(
            "INSERT INTO crawl_results (run_id, region_id, image_id, outcome, attempts,"
            " request_id, finished_at) VALUES (1, 'cn-north-1', ?, 'failed', 3, 'req', ?)",
            [(f"img-{n}", finished) for n, finished in enumerate(times)],
        )


def test_0006_keeps_every_finish_time_to_the_microsecond_and_back(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    at_0005_with_results(path)
    before = query(path, RESULTS)
    assert [row[1] for row in before] == list(FINISH_TIMES)
    views = objects(path, "view")
    failures = query(path, "SELECT * FROM latest_run_failures ORDER BY image_id")
    assert len(failures) == len(FINISH_TIMES)

    migrate.upgrade(url(path))
    assert query(path, RESULTS) == before  # the text, and datetime() of it, as they were
    stored = query(path, "SELECT finished_us FROM crawl_results ORDER BY image_id")
    assert stored[1] == (1704164645123456,)  # 2024-01-02 03:04:05.123456 UTC
    assert query(path, "SELECT * FROM latest_run_failures ORDER BY image_id") == failures
    assert objects(path, "view") == views
    sql = query(path, "SELECT sql FROM sqlite_master WHERE name = 'crawl_results'")[0][0]
    assert isinstance(sql, str) and sql.rstrip().endswith("WITHOUT ROWID")
    with closing(sqlite3.connect(path)) as connection, connection:  # the run's cascade is kept
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("DELETE FROM crawl_runs")
    assert query(path, RESULTS) == []


def test_0006_downgrade_gives_the_text_back(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    at_0005_with_results(path)
    before = query(path, RESULTS)
    migrate.upgrade(url(path))
    migrate.downgrade(url(path), "0005")
    assert query(path, RESULTS) == before
    columns = [row[1] for row in query(path, "PRAGMA table_xinfo(crawl_results)")]
    assert "finished_us" not in columns


def test_0006_refuses_a_finish_time_it_would_read_back_differently(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    at_0005_with_results(path, ("2024-01-02 03:04:05.123456", "2024-01-02T03:04:05Z"))
    before = query(path, RESULTS)
    with pytest.raises(StoreError, match=r"img-1: finished_at '2024-01-02T03:04:05Z' would read"):
        migrate.upgrade(url(path))
    assert migrate.current_revision(url(path)) == "0005"
    assert query(path, RESULTS) == before


# --- a new database from the generated head schema (no Alembic) -------------------------------


def schema_facts(path: Path) -> dict[str, object]:
    """Everything about a database's schema that SQLite reports, and every row in it."""
    with closing(sqlite3.connect(path)) as connection:
        # A batch rebuild writes a table's constraints in an order of its own, different from one
        # process to the next: compared sorted (`canonical_sql`), columns kept in their order.
        master = [
            (kind, name, table, None if sql is None else schema_dump.canonical_sql(sql))
            for kind, name, table, sql in connection.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            )
        ]
        facts: dict[str, object] = {
            "master": master,
            "user_version": connection.execute("PRAGMA user_version").fetchall(),
        }
        for kind, name, _table, _sql in master:
            quoted = '"' + name.replace('"', '""') + '"'
            if kind == "table":
                facts[f"columns {name}"] = connection.execute(
                    f"PRAGMA table_xinfo({quoted})"
                ).fetchall()
                facts[f"indexes {name}"] = connection.execute(
                    f"PRAGMA index_list({quoted})"
                ).fetchall()
                facts[f"foreign keys {name}"] = connection.execute(
                    f"PRAGMA foreign_key_list({quoted})"
                ).fetchall()
                facts[f"rows {name}"] = sorted(
                    connection.execute(f"SELECT * FROM {quoted}").fetchall(), key=repr
                )
            elif kind == "index":
                facts[f"index {name}"] = connection.execute(
                    f"PRAGMA index_xinfo({quoted})"
                ).fetchall()
            elif kind == "view":
                facts[f"view columns {name}"] = connection.execute(
                    f"PRAGMA table_xinfo({quoted})"
                ).fetchall()
        facts["integrity"] = connection.execute("PRAGMA integrity_check").fetchall()
    return facts


def test_the_checked_in_head_schema_is_what_the_migrations_make() -> None:
    # Fails after a migration is added or changed until `make schema` regenerates the script.
    assert schema_dump.migrated_script() == migrate.HEAD_SCHEMA_SQLITE.read_text(encoding="utf-8")


def test_a_database_from_the_head_schema_equals_one_from_the_migrations(tmp_path: Path) -> None:
    migrated, loaded = tmp_path / "migrated.db", tmp_path / "loaded.db"
    migrate.upgrade(url(migrated))
    assert migrate.upgrade(url(loaded), load_schema=True) is None
    assert objects(migrated, "table") >= {"images", "crawl_runs", "alembic_version"}
    assert objects(migrated, "view")  # the comparison covers the views' definitions too
    assert schema_facts(loaded) == schema_facts(migrated)
    assert migrate.current_revision(url(loaded)) == migrate.HEAD_REVISION


def test_a_new_database_is_created_from_the_head_schema_without_alembic(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    program = (
        "import sys; from crawler.store import migrate; "
        f"print(migrate.upgrade({url(path)!r}, load_schema=True), 'alembic' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.split() == ["None", "False"]
    assert query(path, "SELECT version_num FROM alembic_version") == [(migrate.HEAD_REVISION,)]


def test_a_database_with_anything_in_it_is_never_loaded_from_the_script(tmp_path: Path) -> None:
    # One table of the user's own: the migrations' path, which backs the file up first.
    path = tmp_path / "inventory.db"
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE marker (note TEXT)")
        connection.execute("INSERT INTO marker VALUES ('kept')")
    program = (
        "import sys; from crawler.store import migrate; "
        f"print(migrate.upgrade({url(path)!r}, load_schema=True) is not None,"
        " 'alembic' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.split() == ["True", "True"]
    assert query(path, "SELECT note FROM marker") == [("kept",)]
    assert query(path, "SELECT version_num FROM alembic_version") == [(migrate.HEAD_REVISION,)]


def test_a_database_behind_head_is_still_migrated_with_load_schema(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    at_base(path)  # only the marker table left: not empty
    assert migrate.upgrade(url(path), clock=clock_at(AT), load_schema=True) is not None
    assert schema_facts(path)["rows marker"] == [("before the upgrade",)]


def test_canonical_sql_sorts_only_a_tables_constraints() -> None:
    table = (
        "CREATE TABLE t (\n\tb TEXT DEFAULT 'x, y', \n\ta INTEGER CHECK (a IN (1, 2)), "
        "\n\tCONSTRAINT pk_t PRIMARY KEY (a, b), \n\tCONSTRAINT ck_t CHECK (b <> ','))"
    )
    assert schema_dump.canonical_sql(table) == (
        "CREATE TABLE t (\n\tb TEXT DEFAULT 'x, y', \n\ta INTEGER CHECK (a IN (1, 2)), "
        "\n\tCONSTRAINT ck_t CHECK (b <> ','), \n\tCONSTRAINT pk_t PRIMARY KEY (a, b)\n)"
    )
    assert (
        schema_dump.canonical_sql("CREATE VIEW v AS SELECT 1, 2") == "CREATE VIEW v AS SELECT 1, 2"
    )


def test_script_statements_keep_a_trigger_body_whole() -> None:
    script = (
        "-- a comment\nCREATE TABLE t (a);\n\n"
        "CREATE TRIGGER t_ai AFTER INSERT ON t BEGIN\n  UPDATE t SET a = 1;\nEND;\n"
    )
    assert migrate.script_statements(script) == [
        "CREATE TABLE t (a);",
        "CREATE TRIGGER t_ai AFTER INSERT ON t BEGIN\n  UPDATE t SET a = 1;\nEND;",
    ]
    with pytest.raises(StoreError, match="ends inside a statement"):
        migrate.script_statements("CREATE TABLE t (a")
