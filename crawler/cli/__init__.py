"""The `crawler` command (being split into this package; see crawler.cli.parser)."""

from crawler.cli.parser import Io, build_parser, exit_code_for, main, program_name

__all__ = ["Io", "build_parser", "exit_code_for", "main", "program_name"]
