"""`crawler simulate` and `crawler demo`: the local API simulator, served or crawled."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from crawler.cli.exits import EXIT_OK
from crawler.cli.startup import modules_loaded
from crawler.errors import CrawlerError
from crawler.logs import configure_logging

if TYPE_CHECKING:
    import ssl

    from crawler.cli.process import Io
    from crawler.simulator import Simulator


def run_simulate(args: argparse.Namespace, io: Io) -> int:
    """`crawler simulate`: serve until SIGINT/SIGTERM."""
    from crawler.simulator import Simulator, SimulatorConfig, server_tls_context

    modules_loaded()
    config = SimulatorConfig(
        regions=tuple(args.regions.split(",")),
        images_per_region=args.images_per_region,
        seed=args.seed,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        throttle_rate=args.throttle_rate,
        missing_rate=args.missing_rate,
        rate_limit_per_minute=args.rate_limit_per_minute,
        rate_window_s=args.rate_window_s,
        max_faults_per_image=args.max_faults_per_image,
        access_key=args.access_key or io.environ.get("JDCLOUD_ACCESS_KEY", "SIMULATORAK"),
        secret_key=args.secret_key or io.environ.get("JDCLOUD_SECRET_KEY", "SIMULATORSK"),
        session_token=args.session_token or io.environ.get("JDCLOUD_SESSION_TOKEN") or None,
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CrawlerError("--tls-cert and --tls-key go together")
    tls = server_tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    simulator = Simulator(config)
    if args.write_targets:
        simulator.write_targets(Path(args.write_targets))
    asyncio.run(_simulate(simulator, args.host, args.port, io.stdout, tls))
    return EXIT_OK


async def _simulate(
    simulator: Simulator, host: str, port: int, out: TextIO, tls: ssl.SSLContext | None
) -> None:
    from crawler.simulator import serve_forever

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def announce(url: str) -> None:
        print(f"listening on {url}", file=out, flush=True)

    await serve_forever(simulator, host, port, on_listening=announce, stop=stop, tls=tls)


def run_demo(args: argparse.Namespace, io: Io) -> int:
    """`crawler demo`."""
    from crawler import demo as demo_module

    modules_loaded()
    configure_logging(io.stderr, fmt="text", level="warning")
    program = program_name(io.argv0, io.environ.get("PATH"))
    return asyncio.run(demo_module.run_demo(Path(args.db), args.images, io.stdout, program))


def program_name(argv0: str, path: str | None) -> str:
    """How the user can run this crawler again: `crawler` if that is on PATH, else its path."""
    on_path = shutil.which("crawler", path=path)
    here = Path(argv0)
    if on_path is not None and (here.name != "crawler" or Path(on_path).samefile(here)):
        return "crawler"
    if here.name == "__main__.py":
        return "python -m crawler"
    if here.name == "crawler" and here.exists():
        return str(here) if here.is_absolute() or "/" in argv0 else f"./{argv0}"
    return "crawler"
