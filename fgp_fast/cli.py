"""The ``fgp`` command line. Each subcommand lives in its own function; errors exit non-zero."""
from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


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
    from .landmarks import MediaPipeMissingError

    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (CLIError, MediaPipeMissingError) as exc:  # a missing MediaPipe is a setup problem: say how to fix it
        print(f"fgp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fgp {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
