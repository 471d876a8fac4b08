"""The installed crawler's version, for `crawler --version` and the metrics file."""

from __future__ import annotations


def crawler_version() -> str:
    """The version pip installed (pyproject's `version`), or `unknown` when run uninstalled."""
    # Imported here: importlib.metadata brings email, zipfile and csv along (~8 ms of import
    # time), which only `--version` and a metrics file need.
    import importlib.metadata

    try:
        return importlib.metadata.version("crawler")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
