"""Which database a database command opens: --db, else --config's [database] url, else
inventory.db."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crawler.config import Config


def db_url(args: argparse.Namespace) -> str:
    from crawler.config import database_url

    if args.db is not None:
        return database_url(args.db)
    return config_for(args).database.url


def config_for(args: argparse.Namespace) -> Config:
    from crawler.config import default_config, load_config

    return load_config(Path(args.config)) if args.config else default_config()
