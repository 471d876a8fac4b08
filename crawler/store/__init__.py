"""The inventory database: runs, their targets and results, the images and their history.

One job per module, dependencies pointing down (pyproject.toml's import-linter contracts):

- `ledger`: `Store`, what a crawl writes through: runs, targets, pending work, finishing.
- `writer`: one batch of outcomes written in one transaction; `statements`: its compiled SQL.
- `readers`: read-only queries for `crawler runs` and `crawler sql`; `monitoring`: those for
  `--resume --dry-run`, the metrics file, `crawler check` and `crawler tables`.
- `content`: an image's canonical content and hash; `versions`: the history the writer and the
  end of a run write (and the mass-deletion guard); `history`: diff, timelines, change counts.
- `retention`: pruning old runs' targets and results.
- `migrate`: Alembic, bringing a database to the newest schema (backup first).
- `database`: naming a database, translating library failures, its dialect and crawl lock.
- `summaries`, `timestamps`: `RunSummary`; the UTC text timestamps the store writes.
- `dialects`: everything one database does its own way (`dialects/sqlite.py`).
"""

from crawler.store.content import FieldChange
from crawler.store.database import crawl_lock, database_name
from crawler.store.history import (
    ImageDiff,
    RunPair,
    VersionEntry,
    read_diff,
    read_history,
    run_changes,
    run_pair,
)
from crawler.store.ledger import Store
from crawler.store.monitoring import (
    MonitoringFacts,
    monitoring_facts,
    table_counts,
    unfinished_run_pending,
)
from crawler.store.readers import query_readonly, recent_runs
from crawler.store.retention import Pruned
from crawler.store.summaries import RunSummary
from crawler.store.timestamps import format_utc, parse_utc, utc_now
from crawler.store.versions import MissingGuard

__all__ = [
    "FieldChange",
    "ImageDiff",
    "MissingGuard",
    "MonitoringFacts",
    "Pruned",
    "RunPair",
    "RunSummary",
    "Store",
    "VersionEntry",
    "crawl_lock",
    "database_name",
    "format_utc",
    "monitoring_facts",
    "parse_utc",
    "query_readonly",
    "read_diff",
    "read_history",
    "recent_runs",
    "run_changes",
    "run_pair",
    "table_counts",
    "unfinished_run_pending",
    "utc_now",
]
