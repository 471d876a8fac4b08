"""The Alembic migrations on a real PostgreSQL server (a new database per test).

The same revisions that build the SQLite schema build this one; PostgreSQL gets 64-bit counters
and `raw` as jsonb, so the JSON operators work in psql.
"""

from __future__ import annotations

import json

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

from crawler import schema
from crawler.store import migrate


def _engine(url: str):  # type: ignore[no-untyped-def]
    return create_engine(migrate.sync_url(url), poolclass=NullPool)


def test_upgrade_builds_the_schema_the_table_definitions_describe(postgres_url: str) -> None:
    assert migrate.current_revision(postgres_url) is None
    assert migrate.upgrade(postgres_url) is None  # no backup: not an SQLite file
    assert migrate.current_revision(postgres_url) == migrate.head_revision()
    engine = _engine(postgres_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, schema.metadata)
            # The claim indexes are PostgreSQL's own (0003): not in the shared table definitions.
            extra = {diff[1].name for diff in differences if diff[0] == "remove_index"}
            assert extra == {"ix_crawl_targets_open", "ix_crawl_targets_leased"}
            assert [diff for diff in differences if diff[0] != "remove_index"] == []
            views = inspect(connection).get_view_names()
        assert sorted(views) == sorted(schema.VIEW_NAMES)
    finally:
        engine.dispose()


def test_raw_is_jsonb_and_counters_are_64_bit(postgres_url: str) -> None:
    migrate.upgrade(postgres_url)
    engine = _engine(postgres_url)
    try:
        with engine.begin() as connection:
            types = dict(
                connection.exec_driver_sql(
                    "SELECT table_name || '.' || column_name, data_type"
                    " FROM information_schema.columns WHERE table_schema = 'public'"
                ).all()
            )
            raw = json.dumps({"imageId": "img-a", "name": "centos", "size": 2**40})
            connection.exec_driver_sql(
                "INSERT INTO images (region_id, image_id, raw) VALUES (%s, %s, %s)",
                ("cn-north-1", "img-a", raw),
            )
            name = connection.exec_driver_sql("SELECT raw->>'name' FROM images").scalar()
            connection.exec_driver_sql(
                "INSERT INTO crawl_runs (started_at, status, requests) VALUES ('x', 'running', %s)",
                (2**40,),
            )
            requests = connection.exec_driver_sql("SELECT requests FROM crawl_runs").scalar()
    finally:
        engine.dispose()
    assert types["images.raw"] == "jsonb"
    assert types["images.size_mb"] == "bigint"
    assert types["crawl_runs.requests"] == "bigint"
    assert types["crawl_runs.retries"] == "bigint"
    assert name == "centos"
    assert requests == 2**40


def test_every_view_runs_on_an_empty_database(postgres_url: str) -> None:
    migrate.upgrade(postgres_url)
    engine = _engine(postgres_url)
    try:
        with engine.connect() as connection:
            for view in schema.VIEW_NAMES:
                assert connection.exec_driver_sql(f"SELECT * FROM {view}").all() == []
    finally:
        engine.dispose()


def test_downgrade_to_base_then_upgrade_again(postgres_url: str) -> None:
    migrate.upgrade(postgres_url)
    migrate.downgrade(postgres_url, "base")
    engine = _engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert inspect(connection).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()
    migrate.upgrade(postgres_url)
    assert migrate.current_revision(postgres_url) == migrate.head_revision()
