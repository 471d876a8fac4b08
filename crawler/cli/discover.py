"""`crawler discover`: a targets CSV of every visible image."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from crawler.cli.exits import EXIT_OK
from crawler.cli.startup import modules_loaded
from crawler.logs import configure_logging

if TYPE_CHECKING:
    from crawler.cli.process import Io
    from crawler.config import Config
    from crawler.discovery import DiscoveryStats

log = logging.getLogger("crawler.cli")


def run_discover(args: argparse.Namespace, io: Io) -> int:
    """`crawler discover`: a targets CSV of every visible image, written whole or not at all."""
    from crawler.app import discover_targets
    from crawler.config import load_config

    modules_loaded()
    configure_logging(io.stderr, fmt=args.log_format, level=args.log_level)
    config = load_config(Path(args.config))
    regions = [region.strip() for region in args.regions.split(",") if region.strip()]
    sources = [source.strip() for source in args.image_source.split(",") if source.strip()]
    if args.output == "-":
        stats = asyncio.run(
            discover_targets(
                config,
                regions,
                sources,
                io.stdout,
                environ=io.environ,
                pacing=io.pacing,
                profile=args.profile,
            )
        )
    else:
        stats = _discover_to_file(Path(args.output), config, regions, sources, io, args.profile)
    counts = ", ".join(f"{region} {count:,}" for region, count in sorted(stats.by_region.items()))
    line = f"discovered {stats.images:,} images ({counts}) in {stats.requests:,} requests"
    if args.log_format == "json":
        fields = {"images": stats.images, "requests": stats.requests, "by_region": stats.by_region}
        log.info("%s", line, extra={"fields": fields})
    else:
        print(line, file=io.stderr)
    return EXIT_OK


def _discover_to_file(
    path: Path, config: Config, regions: list[str], sources: list[str], io: Io, profile: str | None
) -> DiscoveryStats:
    # Written beside the target and renamed at the end, so a cron job never crawls a list
    # that a failed discovery left half-written.
    from crawler.app import discover_targets

    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            stats = asyncio.run(
                discover_targets(
                    config,
                    regions,
                    sources,
                    out,
                    environ=io.environ,
                    pacing=io.pacing,
                    profile=profile,
                )
            )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return stats
