"""The process's surroundings that a command reads and writes."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from crawler.scheduler import Pacing


@dataclasses.dataclass(frozen=True)
class Io:
    """The process's surroundings, passed in so tests can run the real CLI in-process."""

    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    stdin: TextIO = dataclasses.field(default_factory=lambda: sys.stdin)
    stdout: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)
    stderr: TextIO = dataclasses.field(default_factory=lambda: sys.stderr)
    pacing: Pacing | None = None
    argv0: str = dataclasses.field(default_factory=lambda: sys.argv[0])
