"""`crawler demo`, as `make demo` runs it, and its queries kept in step with the README."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from crawler.cli import Io, main
from crawler.demo import EXAMPLE_QUERIES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_demo_crawls_a_simulator_and_shows_two_queries(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    db = tmp_path / "demo.db"
    assert main(["demo", "--db", str(db), "--images", "400"], Io(stdout=out, stderr=err)) == 0
    text = out.getvalue()
    assert "run 1 succeeded: 400 fetched" in text
    assert "retries" in text
    for title, _ in EXAMPLE_QUERIES:
        assert f"{title}:" in text
    assert "cn-north-1" in text and "fetched" in text.split("How the last run went:")[1]
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM images").fetchone() == (400,)


def test_the_demo_queries_are_cookbook_recipes() -> None:
    readme = README.read_text(encoding="utf-8")
    for title, sql in EXAMPLE_QUERIES:
        assert f"#### {title}" in readme
        assert sql in readme
