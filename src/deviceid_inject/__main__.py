"""Entry point: a CNI plugin when CNI_COMMAND is set, an operator's tool otherwise."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    if "CNI_COMMAND" in os.environ:
        from .cni import run

        return run(os.environ, sys.stdin.buffer, sys.stdout, sys.stderr)
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
