"""Alembic environment for the crawler's migrations.

Two ways in:

- `crawler.store.migrate` (used by `crawler migrate` and `crawler crawl`) hands over an open
  connection, already inside a transaction, as `config.attributes["connection"]`.
- The `alembic` command line, from the repository root (`[tool.alembic]` in pyproject.toml): the
  database is `-x url=...`, else the `sqlalchemy.url` option, else `sqlite:///inventory.db`, e.g.
  `.venv/bin/alembic -x url=sqlite+aiosqlite:///demo.db upgrade head`. Async URLs are migrated
  through their sync driver, inside one transaction.
"""

from __future__ import annotations

import logging
from typing import Any

from alembic import context
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from crawler.schema import metadata
from crawler.store.migrate import migration_engine, sync_url

DEFAULT_URL = "sqlite:///inventory.db"


def _url() -> str:
    given = context.get_x_argument(as_dictionary=True).get("url")
    if given:
        return given
    try:
        configured = context.config.get_main_option("sqlalchemy.url")
    except CommandError:  # configured by pyproject.toml alone: no ini file to hold the URL
        configured = None
    return configured or DEFAULT_URL


def _configure(**options: Any) -> None:
    # Batch mode: SQLite can alter a table only by rebuilding it.
    context.configure(target_metadata=metadata, render_as_batch=True, **options)


def run_offline() -> None:
    """Write the migration SQL (`alembic upgrade head --sql`) instead of running it."""
    _configure(url=sync_url(_url()), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate on the connection `crawler.store.migrate` passed in, else on one of our own."""
    given = context.config.attributes.get("connection")
    if given is not None:
        _run_on(given)
        return
    # Only the CLI gets here; let it print "Running upgrade ..." as Alembic's own template does.
    logging.basicConfig(level=logging.INFO, format="%(levelname)-5.5s [%(name)s] %(message)s")
    engine = migration_engine(_url())
    try:
        with engine.begin() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
