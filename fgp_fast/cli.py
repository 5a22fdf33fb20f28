"""The ``fgp`` command line. Each subcommand lives in its own function; errors exit non-zero.

An :class:`~fgp_fast.errors.FGPError` or an ``OSError`` is printed as one line; any other exception
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import FGPError


class CLIError(FGPError):
    """A bad command line: printed without a traceback, exit code 2."""


# Subcommand modules in fgp_fast.commands; each has add_parser(subparsers) that sets ``run``.
COMMANDS = ("flow", "animate", "demo", "eval", "prepare", "train", "serve", "stream")


def _build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="fgp", description="Fast 3D-flow-guided portrait animation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"fgp_fast.commands.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    from .errors import MissingDependencyError

    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (CLIError, MissingDependencyError) as exc:  # a usage or setup problem: say how to fix it
        print(f"fgp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FGPError, OSError) as exc:
        print(f"fgp {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
