"""The commands that change the database: migrate, accept and prune."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from crawler.cli.databases import config_for, db_url
from crawler.cli.exits import EXIT_OK
from crawler.cli.startup import modules_loaded

if TYPE_CHECKING:
    from crawler.cli.process import Io
    from crawler.store import Store

T = TypeVar("T")


def run_migrate(args: argparse.Namespace, io: Io) -> int:
    """`crawler migrate`."""
    from crawler.store.migrate import upgrade

    modules_loaded()
    url = db_url(args)
    backup = upgrade(url)
    if backup is not None:
        print(f"backed up the database to {backup}", file=io.stdout)
    print(f"{url}: schema is at the newest migration", file=io.stdout)
    return EXIT_OK


def run_accept(args: argparse.Namespace, io: Io) -> int:
    """`crawler accept RUN_ID`: apply the missing marks a held run held back."""
    modules_loaded()
    summary, marked = asyncio.run(
        _locked(db_url(args), lambda store: store.accept_run(args.run_id))
    )
    print(
        f"run {summary.run_id} {summary.status}: {marked:,} images marked missing", file=io.stdout
    )
    return EXIT_OK


def run_prune(args: argparse.Namespace, io: Io) -> int:
    """`crawler prune`: delete old runs' targets and results; runs and history stay."""
    modules_loaded()
    url = db_url(args)
    keep_runs = (
        args.keep_runs if args.keep_runs is not None else config_for(args).retention.keep_runs
    )
    pruned = asyncio.run(_locked(url, lambda store: store.prune(keep_runs, vacuum=args.vacuum)))
    runs = ", ".join(map(str, pruned.run_ids)) or "none"
    print(
        f"kept the newest {keep_runs} runs (0 = all); pruned runs: {runs}"
        f" ({pruned.targets:,} targets, {pruned.results:,} results deleted)"
        + ("; vacuumed" if args.vacuum else ""),
        file=io.stdout,
    )
    return EXIT_OK


async def _locked(url: str, action: Callable[[Store], Awaitable[T]]) -> T:
    # These write: never beside a running crawl (exit 75 if one holds the lock).
    from crawler.store import Store, crawl_lock

    lock = crawl_lock(url)
    with lock if lock is not None else contextlib.nullcontext():
        store = await Store.open(url)
        try:
            return await action(store)
        finally:
            await store.close()
