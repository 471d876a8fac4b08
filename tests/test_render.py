"""Query results as a table, CSV and JSON."""

from __future__ import annotations

import json

from crawler.render import render, render_table

COLUMNS = ["region_id", "images", "note"]
ROWS = [("cn-north-1", 12, None), ("cn-east-2", 3, "x" * 100)]


def test_a_table_aligns_text_left_and_numbers_right() -> None:
    lines = render_table(COLUMNS, ROWS).splitlines()
    assert lines[0] == "region_id   images  note"
    assert lines[2].startswith("cn-north-1      12")
    assert lines[3].startswith("cn-east-2        3  xxx")
    assert lines[3].endswith("...")  # long cells are cut
    assert lines[-1] == "(2 rows)"


def test_csv_and_json_keep_every_value() -> None:
    assert render(COLUMNS, ROWS, "csv").splitlines()[1] == "cn-north-1,12,"
    objects = json.loads(render(COLUMNS, ROWS, "json"))
    assert objects[1] == {"region_id": "cn-east-2", "images": 3, "note": "x" * 100}


def test_an_empty_result_still_has_its_header() -> None:
    assert render_table(["a"], []).splitlines() == ["a", "-", "(0 rows)"]
