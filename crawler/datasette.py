"""`crawler datasette-metadata`: the schema reference and cookbook as Datasette metadata.

Datasette (https://datasette.io) shows a table's and a column's description from its metadata
file and offers each canned query as a page of its own: `datasette inventory.db -m metadata.json`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crawler.schema_docs import SchemaDocs

# Bookkeeping (the crawler's and SQLite's own): needed by them, noise in a browser of the inventory.
HIDDEN_TABLES = ("alembic_version", "crawl_targets", "sqlite_sequence")


def datasette_metadata(docs: SchemaDocs, database: str, present: Sequence[str]) -> dict[str, Any]:
    """The metadata for the database file `database` holding the tables and views `present`."""
    tables: dict[str, Any] = {name: {"hidden": True} for name in HIDDEN_TABLES}
    for name in present:
        if name in docs.tables and name not in HIDDEN_TABLES:
            doc = docs.tables[name]
            entry: dict[str, Any] = {"description": doc.summary}
            if doc.columns:
                entry["columns"] = dict(doc.columns)
            tables[name] = entry
    queries = {
        _slug(recipe.title): {
            "title": recipe.title,
            "description": recipe.description,
            "sql": recipe.sql.strip().rstrip(";"),
        }
        for recipe in docs.recipes
    }
    return {
        "title": "JD Cloud VM image inventory",
        "description": "Written by crawler; every table, column and query is described in "
        "its README's schema reference and cookbook.",
        "databases": {Path(database).stem: {"tables": tables, "queries": queries}},
    }


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
