"""Start-up's garbage-collector tuning: paused while modules load, then frozen and retuned.

Each command imports its own libraries and then calls `modules_loaded` (see crawler.cli).
"""

from __future__ import annotations

import gc

# Net new container objects that trigger a collection of the youngest generation (Python: 700).
YOUNG_COLLECTION_THRESHOLD = 10_000


def pause_collection() -> None:
    # Loading modules allocates a few hundred thousand long-lived objects and no garbage, so the
    # collections it would trigger are wasted work. A command resumes collecting once its modules
    # are loaded (`modules_loaded`); `main`'s `finally` makes sure of it in any case.
    gc.disable()


def modules_loaded() -> None:
    """A command calls this after its own imports: collect again, if start-up paused it.

    What start-up loaded is then frozen (`gc.freeze`): modules, classes and functions live as
    long as the process, so no later collection needs to walk them, nor the one at exit
    (together ~0.06 CPU s per crawl, more as a long crawl collects again and again).
    """
    if not gc.isenabled():
        gc.freeze()
        # A crawl keeps every parsed answer and its rows alive until its batch is written, so at
        # the default 700 the young generation is collected every ~50 images and finds little to
        # free: 0.019 CPU ms per image with the single strategy, 0.007 with batch; at 10,000,
        # 0.005 and 0.004, the peak resident set the same (benchmarks/gc_cost.py). The older
        # generations keep their default thresholds.
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        gc.enable()
