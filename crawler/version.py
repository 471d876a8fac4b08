"""The installed crawler's version, for `crawler --version` and the metrics file."""

from __future__ import annotations

import importlib.metadata


def crawler_version() -> str:
    """The version pip installed (pyproject's `version`), or `unknown` when run uninstalled."""
    try:
        return importlib.metadata.version("crawler")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
