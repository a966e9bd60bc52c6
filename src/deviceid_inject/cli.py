"""The operator's command line: what the same executable does when no CNI_COMMAND is set."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deviceid-inject",
        description="Chained CNI plugin: run by a CNI runtime with CNI_COMMAND set. "
        "Without it, a troubleshooting tool.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    if args.version:
        sys.stdout.write(f"deviceid-inject {__version__}\n")
        return 0
    parser.print_help(sys.stderr)
    return 2
