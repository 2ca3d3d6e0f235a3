"""The ``sparcl`` command: picks the memory allocator before torch loads, then runs the CLI."""

from __future__ import annotations

import sys

from sparcl.allocator import reexec_with_allocator


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reexec_with_allocator(argv)  # returns only when no re-exec is needed
    from sparcl.cli import main as cli_main

    return cli_main(argv)
