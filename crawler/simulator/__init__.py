"""The local stand-in for the JD Cloud API: a fake inventory and the server that answers for it.

Only tests, `crawler simulate`, the demo and the benchmarks use it; no core module may import it
(an import-linter contract in pyproject.toml checks).
"""

from crawler.simulator.inventory import Inventory, build_inventory, missing_count
from crawler.simulator.server import (
    DEFAULT_REGIONS,
    RunningSimulator,
    Simulator,
    SimulatorConfig,
    SimulatorStats,
    serve_forever,
    server_tls_context,
    start_simulator,
)

__all__ = [
    "DEFAULT_REGIONS",
    "Inventory",
    "RunningSimulator",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "build_inventory",
    "missing_count",
    "serve_forever",
    "server_tls_context",
    "start_simulator",
]
