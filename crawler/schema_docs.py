"""The README's schema reference and cookbook, read as data for `crawler tables` and Datasette.

The README is the one place where tables, columns, views and the cookbook queries are described;
this module parses it instead of keeping a second copy that could drift. It is read from the
source tree when there is one (a checkout, an editable install) and otherwise from the installed
package's metadata, whose long description is the README (pyproject's `readme`).
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_README = Path(__file__).resolve().parents[1] / "README.md"
_TABLE_HEADING = re.compile(r"^#### `(?P<name>\w+)`: (?P<summary>.+)$")
_NAMES = re.compile(r"`(\w+)`")
_SQL_BLOCK = re.compile(r"```sql\n(?P<sql>.*?)\n```", re.DOTALL)


@dataclass(frozen=True, slots=True)
class TableDoc:
    """A table or view: its one-line summary and its columns' meanings (where documented)."""

    name: str
    summary: str
    columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Recipe:
    """One cookbook query: its heading, the sentence under it (if any) and its SQL."""

    title: str
    description: str
    sql: str


@dataclass(frozen=True, slots=True)
class SchemaDocs:
    """Everything the README says about the database."""

    tables: dict[str, TableDoc]
    recipes: list[Recipe]


def readme_text() -> str:
    """The README of this checkout, else the installed package's long description."""
    if _README.is_file():
        text = _README.read_text(encoding="utf-8")
        if text.startswith("# crawler\n"):  # not some other package's README in site-packages
            return text
    metadata: Any = importlib.metadata.metadata("crawler")  # an email.message.Message
    # Core metadata 2.1+ puts the long description in the body; older tools in a header.
    return str(metadata.get_payload() or metadata["Description"] or "")


def parse_docs(text: str) -> SchemaDocs:
    """The schema reference (`### Schema reference` ... `### Cookbook`) and the cookbook."""
    reference = _section(text, "### Schema reference")
    tables = _parse_tables(reference)
    tables.update(_parse_views(reference))
    return SchemaDocs(tables, _parse_recipes(_section(text, "### Cookbook")))


def _section(text: str, heading: str) -> str:
    """The lines after `heading` up to the next heading of its level or higher."""
    start = text.find("\n" + heading + "\n")
    if start < 0:
        return ""
    body = text[start + len(heading) + 2 :]
    ends = [m.start() for m in re.finditer(r"^#{2,3} ", body, re.MULTILINE)]
    return body[: ends[0]] if ends else body


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _parse_tables(reference: str) -> dict[str, TableDoc]:
    tables: dict[str, TableDoc] = {}
    current: TableDoc | None = None
    for line in reference.splitlines():
        heading = _TABLE_HEADING.match(line)
        if heading:
            current = TableDoc(heading["name"], heading["summary"].strip())
            tables[current.name] = current
        elif line.startswith("#"):
            current = None  # another heading (the views) ends the table's column list
        elif current is not None and line.startswith("| `"):
            cells = _cells(line)
            meaning = cells[2] if len(cells) >= 3 else ""
            for column in _NAMES.findall(cells[0]):
                current.columns[column] = meaning
    return tables


def _parse_views(reference: str) -> dict[str, TableDoc]:
    views: dict[str, TableDoc] = {}
    for line in _section(reference, "#### Views").splitlines():
        if line.startswith("| `"):
            name, summary = _cells(line)[:2]
            views[name.strip("`")] = TableDoc(name.strip("`"), summary)
    return views


def _parse_recipes(cookbook: str) -> list[Recipe]:
    recipes = []
    for part in re.split(r"^#### ", cookbook, flags=re.MULTILINE)[1:]:
        title, _, body = part.partition("\n")
        block = _SQL_BLOCK.search(body)
        if block is None:
            continue
        prose = " ".join(body[: block.start()].split())
        recipes.append(Recipe(title.strip(), prose, block["sql"]))
    return recipes
