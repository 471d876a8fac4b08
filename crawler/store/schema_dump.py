"""Writing `head_schema_sqlite.sql`, the head schema a new SQLite database is created from.

The migrations stay the one owner of the schema: the script is what they leave behind. It is made
by running every migration on an empty database (Alembic, the real path) and dumping that
database: every object's SQL from `sqlite_master` in the order SQLite recorded it (the indexes
SQLite makes for a constraint itself, `sql` NULL, and its own `sqlite_*` tables are left to
SQLite), then every row the migrations left (the `alembic_version` stamp, and the counter
`sqlite_sequence` keeps for `crawl_runs`). Alembic's batch table rebuilds write a table's
constraints in an order that changes from one process to the next (a set of constraint
objects), so each table's constraints are written sorted (`canonical_sql`): the same migrations
always give the same script. Run it after adding or changing a migration; `tests/test_migrate.py`
fails until then:

    make schema              # or: .venv/bin/python -m crawler.store.schema_dump
    .venv/bin/python -m crawler.store.schema_dump --check    # exit 1 if the script is stale
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from crawler.store.migrate import HEAD_REVISION, HEAD_SCHEMA_SQLITE, upgrade

_HEADER = f"""\
-- The crawler's SQLite schema at migration {HEAD_REVISION}: what the migrations leave in an empty
-- database. GENERATED from migrations/versions/ by `make schema` (crawler.store.schema_dump);
-- do not edit. A crawl creates a brand-new database from it in one transaction.
"""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_CONSTRAINT_STARTS = ("CONSTRAINT ", "PRIMARY KEY", "UNIQUE", "CHECK", "FOREIGN KEY")


def _top_level_items(body: str) -> list[str]:
    """`body` split at the commas outside parentheses and quotes, each item stripped."""
    items, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(body):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(body[start:index].strip())
            start = index + 1
    items.append(body[start:].strip())
    return items


def canonical_sql(sql: str) -> str:
    """`sql` with a CREATE TABLE's constraints sorted after its columns (which keep their order).

    A table SQLAlchemy wrote whose constraints are already in that order comes back unchanged.
    """
    if not sql.startswith("CREATE TABLE"):
        return sql
    start, end = sql.index("("), sql.rindex(")")
    items = _top_level_items(sql[start + 1 : end])
    columns = [item for item in items if not item.startswith(_CONSTRAINT_STARTS)]
    constraints = sorted(item for item in items if item.startswith(_CONSTRAINT_STARTS))
    return sql[: start + 1] + "\n\t" + ", \n\t".join(columns + constraints) + "\n" + sql[end:]


def dump_sqlite(path: Path) -> str:
    """The schema script of the SQLite database at `path`: objects in creation order, then rows."""
    with closing(sqlite3.connect(path)) as connection:
        objects = connection.execute(
            "SELECT type, name, sql FROM sqlite_master"
            " WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
        ).fetchall()
        lines = [_HEADER]
        lines.extend(f"{canonical_sql(sql)};\n" for _type, _name, sql in objects)
        tables = [name for kind, name, _sql in objects if kind == "table"]
        if connection.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"
        ).fetchall():
            tables.append("sqlite_sequence")  # made by SQLite with the first AUTOINCREMENT table
        for name in tables:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({_quoted(name)})")]
            values = ", ".join(f"quote({_quoted(column)})" for column in columns)
            order = ", ".join(str(position + 1) for position in range(len(columns)))
            query = f"SELECT {values} FROM {_quoted(name)} ORDER BY {order}"
            for row in connection.execute(query):
                lines.append(f"INSERT INTO {_quoted(name)} VALUES ({', '.join(row)});\n")
    return "".join(lines)


def migrated_script() -> str:
    """The script of a database that every migration was run on, from nothing."""
    with tempfile.TemporaryDirectory(prefix="crawler-schema-") as tmp:
        path = Path(tmp) / "head.db"
        upgrade(f"sqlite:///{path}")  # load_schema=False: the migrations themselves
        return dump_sqlite(path)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is up to date")
    args = parser.parse_args(argv)
    script = migrated_script()
    current = HEAD_SCHEMA_SQLITE.read_text(encoding="utf-8") if HEAD_SCHEMA_SQLITE.exists() else ""
    if args.check:
        if script != current:
            print(f"{HEAD_SCHEMA_SQLITE} is stale: run `make schema`", file=sys.stderr)
            return 1
        return 0
    HEAD_SCHEMA_SQLITE.write_text(script, encoding="utf-8")
    print(f"wrote {HEAD_SCHEMA_SQLITE} (revision {HEAD_REVISION})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
