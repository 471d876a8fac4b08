"""Bringing a database's schema to the newest migration (the only module that drives Alembic).

The migrations live in the `migrations/` directory of the repository, installed as the package
`crawler.migrations`; `script_location()` finds them in either place. Upgrading an existing
database file that is behind head first copies it beside itself as `NAME.bak-YYYYMMDDTHHMMSSZ`
(the dialect says which databases are files and how to copy one consistently).

Migrations run on a synchronous connection (an async URL such as `sqlite+aiosqlite:///x.db` is
migrated through the sync `sqlite` driver), inside one transaction, so a failed upgrade leaves the
database as it was. The functions block; call them from async code with `asyncio.to_thread`.

Alembic is imported only when a database is behind `HEAD_REVISION` (or a revision is asked of the
migration scripts): a crawl of an up-to-date database reads `alembic_version` with one query and
skips Alembic's ~0.07 CPU s import. `tests/test_migrate.py` checks that `HEAD_REVISION` is the
scripts' real head, so the two cannot drift apart.

A crawl of a brand-new SQLite database (`upgrade(..., load_schema=True)`, what `Store.open` asks
for) skips Alembic too, as Rails' `db:schema:load` does: when the file holds no table, view, index
or trigger at all (an empty `sqlite_master`, checked inside the write transaction), the head
schema is created in one transaction from `head_schema_sqlite.sql`, a script generated from the
migrations themselves (`make schema`, `crawler.store.schema_dump`), stamped at `HEAD_REVISION`.
`tests/test_migrate.py` fails when the script and the migrations disagree. Any other database
(anything in it, PostgreSQL, `crawler migrate`, downgrades) goes through the migrations as before.
"""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from crawler.errors import StoreError
from crawler.store.dialects import dialect_for

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

# The newest migration's revision, known without reading the scripts (see the module docstring).
HEAD_REVISION = "0007"

# Library failures that mean "this database cannot be migrated", translated to StoreError once;
# Alembic's own are added by `_failures` once Alembic is imported.
_BASE_FAILURES: tuple[type[Exception], ...] = (SQLAlchemyError, OSError)


def _failures() -> tuple[type[Exception], ...]:
    if "alembic" not in sys.modules:  # nothing of Alembic's can have been raised
        return _BASE_FAILURES
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    return (*_BASE_FAILURES, CommandError, RevisionError)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Database:
    """A database URL resolved once: the sync URL, a printable name, the database file if any."""

    url: URL
    name: str
    path: Path | None


def sync_url(url: str | URL) -> URL:
    """The URL with its async driver swapped for the sync one that migrations run on.

    Raises:
        StoreError: `url` is not a database URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {exc}") from exc
    return dialect_for(parsed).sync_url(parsed)


def _resolve(url: str | URL) -> _Database:
    parsed = sync_url(url)
    path = dialect_for(parsed).database_file(parsed)
    name = str(path) if path is not None else parsed.render_as_string(hide_password=True)
    return _Database(parsed, name, path)


def migration_engine(url: str | URL) -> Engine:
    """A sync engine for migrating `url`, DDL inside real transactions; the caller disposes."""
    parsed = sync_url(url)
    engine = create_engine(parsed, poolclass=NullPool)
    dialect_for(parsed).prepare_migration_engine(engine)
    return engine


def script_location() -> str:
    """The directory holding `env.py` and `versions/`: installed package, else the repository.

    Raises:
        StoreError: neither is there.
    """
    spec = importlib.util.find_spec("crawler.migrations")
    if spec is not None and spec.submodule_search_locations:
        return str(next(iter(spec.submodule_search_locations)))
    # Running from a checkout: `migrations/` sits beside the `crawler/` package.
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return str(checkout)
    raise StoreError("the crawler's migrations are not installed (no crawler.migrations)")


def alembic_config() -> Config:
    """An Alembic config for the crawler's migrations, built without any ini file."""
    from alembic.config import Config

    config = Config()
    # `%` would start a configparser interpolation.
    config.set_main_option("script_location", script_location().replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration's revision id.

    Raises:
        StoreError: the migrations cannot be read or have no single head.
    """
    from alembic.script import ScriptDirectory

    try:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    except _failures() as exc:
        raise StoreError(f"cannot read the crawler's migrations: {exc}") from exc
    if head is None:
        raise StoreError("the crawler's migrations have no revisions")
    return head


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return {revision.revision for revision in script.walk_revisions()}


HEAD_SCHEMA_SQLITE = Path(__file__).with_name("head_schema_sqlite.sql")


def script_statements(script: str) -> list[str]:
    """The statements of an SQL script, each whole (a trigger's body included); comments dropped."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        if not pending and (not line.strip() or line.lstrip().startswith("--")):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise StoreError(f"the schema script ends inside a statement: {pending.strip()[:80]!r}")
    return statements


def _load_head_schema(database: _Database) -> bool:
    """Create the head schema from the generated script if the database is empty; True if done.

    Empty means nothing at all in `sqlite_master`, read after BEGIN IMMEDIATE so that no other
    migrator can add anything in between; any object there leaves the database to Alembic.
    """
    if database.url.get_backend_name() != "sqlite":
        return False  # PostgreSQL keeps the migrations' path (no generated script for it)
    statements = script_statements(HEAD_SCHEMA_SQLITE.read_text(encoding="utf-8"))
    engine = migration_engine(database.url)  # BEGIN IMMEDIATE, foreign keys off, busy timeout
    try:
        with engine.begin() as connection:
            if connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar() != 0:
                return False
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()
    logger.debug("created the schema at revision %s in %s", HEAD_REVISION, database.name)
    return True


@contextmanager
def _translated(database: _Database, doing: str) -> Iterator[None]:
    try:
        yield
    except _failures() as exc:  # evaluated only once something was raised
        raise StoreError(f"cannot {doing} database {database.name}: {exc}") from exc


def _read_revision(database: _Database) -> str | None:
    if database.path is not None and not database.path.exists():
        return None  # connecting would create the file
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(database.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _at_head(database: _Database) -> bool:
    """True when `alembic_version` holds exactly `HEAD_REVISION`; read without Alembic.

    Anything else (no file, no table, several rows, another revision) is left to Alembic.
    """
    if database.path is not None and not database.path.is_file():
        return False
    engine = create_engine(database.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except SQLAlchemyError:  # e.g. no alembic_version table yet
        return False
    finally:
        engine.dispose()
    return [tuple(row) for row in rows] == [(HEAD_REVISION,)]


def current_revision(url: str) -> str | None:
    """The revision `url` is at, or None for a new or unmigrated database.

    Raises:
        StoreError: the database cannot be read.
    """
    database = _resolve(url)
    with _translated(database, "read the revision of"):
        return _read_revision(database)


def _free_backup_path(path: Path, at: datetime, backup_dir: Path | None) -> Path:
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = (backup_dir or path.parent) / f"{path.name}.bak-{stamp}"
    suffix = 1
    while candidate.exists():  # never overwrite an earlier backup from the same second
        candidate = candidate.with_name(f"{path.name}.bak-{stamp}-{suffix}")
        suffix += 1
    return candidate


def _backup_if_behind(
    database: _Database, current: str | None, clock: Callable[[], datetime], backup_dir: Path | None
) -> Path | None:
    path = database.path
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return None  # nothing there yet worth keeping
    if current == head_revision():
        return None
    target = _free_backup_path(path, clock(), backup_dir)
    dialect_for(database.url).backup(path, target)
    logger.info("backed up %s (revision %s) to %s before migrating", path, current, target)
    return target


def _check_known(database: _Database, current: str | None) -> None:
    if current is not None and current not in _known_revisions():
        raise StoreError(
            f"database {database.name} is at revision {current}, which this crawler does not"
            f" know (head is {head_revision()}); was it migrated by a newer version?"
        )


def _run(database: _Database, action: Callable[[Config], None]) -> None:
    config = alembic_config()
    engine = migration_engine(database.url)
    try:
        with engine.begin() as connection:
            # env.py migrates on this connection, inside this transaction.
            config.attributes["connection"] = connection
            action(config)
    finally:
        engine.dispose()


def upgrade(
    url: str,
    *,
    clock: Callable[[], datetime] = _utc_now,
    backup_dir: Path | None = None,
    load_schema: bool = False,
) -> Path | None:
    """Bring the database at `url` to the newest migration.

    An existing SQLite file behind head is first backed up as `NAME.bak-YYYYMMDDTHHMMSSZ`
    (time from `clock`, in UTC) in `backup_dir`, by default beside the file.

    Args:
        url: an SQLAlchemy URL; async drivers are accepted.
        clock: the time for the backup's name.
        backup_dir: where backups go instead of beside the database.
        load_schema: an SQLite database with nothing in it gets the head schema from the
            generated script instead of running every migration (see the module docstring).

    Returns:
        The backup's path, or None when none was needed (new, non-file or up-to-date database).

    Raises:
        StoreError: the database cannot be opened, backed up or migrated, or is at a revision
            this crawler does not know.
    """
    database = _resolve(url)
    with _translated(database, "upgrade"):
        if _at_head(database):
            return None
        if load_schema and (_load_head_schema(database) or _at_head(database)):
            return None  # the script made it, or another process did while this one waited
        current = _read_revision(database)
        _check_known(database, current)
        backup = _backup_if_behind(database, current, clock, backup_dir)
        from alembic import command

        _run(database, lambda config: command.upgrade(config, "head"))
    return backup


def downgrade(url: str, revision: str) -> None:
    """Take the database at `url` down to `revision` (`base` removes every table).

    Raises:
        StoreError: the database cannot be migrated or `revision` is unknown.
    """
    from alembic import command

    database = _resolve(url)
    with _translated(database, f"downgrade to {revision}"):
        _run(database, lambda config: command.downgrade(config, revision))
