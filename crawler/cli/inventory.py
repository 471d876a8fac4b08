"""The commands that read the inventory: runs, sql, diff, history, check, tables and
datasette-metadata."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from crawler.cli.databases import db_url
from crawler.cli.exits import EXIT_FAILED_TARGETS, EXIT_OK
from crawler.cli.startup import modules_loaded
from crawler.errors import CrawlerError, StoreError
from crawler.freshness import describe_freshness
from crawler.render import render, render_runs, render_table

if TYPE_CHECKING:
    from crawler.cli.process import Io


def run_runs(args: argparse.Namespace, io: Io) -> int:
    """`crawler runs`: a table that fits 80 columns, then each run's message in full."""
    from crawler.store import recent_runs

    modules_loaded()
    runs = asyncio.run(recent_runs(db_url(args), limit=args.limit))
    print(render_runs(runs, wide=args.wide), file=io.stdout)
    return EXIT_OK


def run_sql(args: argparse.Namespace, io: Io) -> int:
    """`crawler sql`."""
    from crawler.store import query_readonly

    modules_loaded()
    columns, rows = asyncio.run(query_readonly(db_url(args), args.query))
    print(render(columns, rows, args.format), file=io.stdout)
    return EXIT_OK


def run_diff(args: argparse.Namespace, io: Io) -> int:
    """`crawler diff`: exit 0, or with --exit-code 1 when anything changed."""
    from crawler.changes import describe_counts, describe_pair, render_diff
    from crawler.store import read_diff, run_pair

    modules_loaded()
    url = db_url(args)
    pair = asyncio.run(run_pair(url, args.from_run, args.to_run))
    diffs = asyncio.run(read_diff(url, pair, region_id=args.region))
    text = render_diff(pair, diffs, args.format)
    if text:
        print(text, file=io.stdout)
    if args.format != "table":  # the table says it itself; keep jsonl and csv pure data
        print(f"{describe_pair(pair)}: {describe_counts(diffs)}", file=io.stderr)
    return EXIT_FAILED_TARGETS if args.exit_code and diffs else EXIT_OK


def run_history(args: argparse.Namespace, io: Io) -> int:
    """`crawler history REGION_ID IMAGE_ID`."""
    from crawler.changes import render_history
    from crawler.store import read_history

    modules_loaded()
    entries = asyncio.run(read_history(db_url(args), args.region_id, args.image_id))
    if not entries:
        raise CrawlerError(f"no history for {args.region_id}/{args.image_id} in this database")
    print(render_history(entries, args.format), file=io.stdout)
    return EXIT_OK


def run_check(args: argparse.Namespace, io: Io) -> int:
    """`crawler check`: 0 when the latest succeeded run finished within --max-age, else 1."""
    from crawler.store import monitoring_facts

    modules_loaded()
    url = db_url(args)
    try:
        facts = asyncio.run(monitoring_facts(url))
    except StoreError as error:
        print(f"STALE: {error}", file=io.stdout)
        return EXIT_FAILED_TARGETS
    ok, line = describe_freshness(facts, args.max_age, datetime.now(UTC))
    print(line, file=io.stdout)
    return EXIT_OK if ok else EXIT_FAILED_TARGETS


def run_tables(args: argparse.Namespace, io: Io) -> int:
    """`crawler tables`: every table and view with its row count and what it holds."""
    from crawler.schema_docs import parse_docs, readme_text
    from crawler.store import table_counts

    modules_loaded()
    counted = asyncio.run(table_counts(db_url(args)))
    docs = parse_docs(readme_text())
    rows = [
        (name, kind, count, docs.tables[name].summary if name in docs.tables else "")
        for name, kind, count in counted
    ]
    print(render_table(["name", "type", "rows", "description"], rows), file=io.stdout)
    return EXIT_OK


def run_datasette_metadata(args: argparse.Namespace, io: Io) -> int:
    """`crawler datasette-metadata`: a Datasette metadata file (JSON) on stdout."""
    from crawler.datasette import datasette_metadata
    from crawler.schema_docs import parse_docs, readme_text
    from crawler.store import database_name, table_counts

    modules_loaded()
    url = db_url(args)
    present = [name for name, _kind, _rows in asyncio.run(table_counts(url))]
    metadata = datasette_metadata(parse_docs(readme_text()), database_name(url), present)
    print(json.dumps(metadata, ensure_ascii=False, indent=2), file=io.stdout)
    return EXIT_OK
