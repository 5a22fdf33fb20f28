"""The ``fgp`` command line. Each subcommand lives in its own module; errors exit non-zero.

An :class:`~fgp_fast.errors.FGPError` or an ``OSError`` is printed as one line; any other exception
is a bug and keeps its traceback. SIGINT and SIGTERM unwind the command (temporary files are
removed on the way out) and exit with one line and 130 / 143. Library warnings (``logging``) are
printed as one line each; ``--verbose`` adds informational ones and MediaPipe's native log lines.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .errors import FGPError


class CLIError(FGPError):
    """A bad command line: printed without a traceback, exit code 2."""


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that ``with`` blocks clean up (not an Exception:
    nothing may swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Subcommand modules in fgp_fast.commands; each has add_parser(subparsers) that sets ``run``.
COMMANDS = ("flow", "animate", "demo", "eval", "prepare", "train", "serve", "stream")


def _build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="fgp", description="Fast 3D-flow-guided portrait animation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"fgp_fast.commands.{name}").add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="also print informational messages and MediaPipe's native log lines")
    return parser


class _OneLine(logging.Formatter):
    """``fgp animate: warning: message`` on one line."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prefix}: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def _raise_terminated(signum, frame):
    raise Terminated(signum)


class _Session:
    """What ``main`` changes in the process while a command runs, and puts back afterwards."""

    def __init__(self, command: str, verbose: bool):
        self.command, self.verbose = command, verbose

    def __enter__(self):
        from . import landmarks

        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(_OneLine(f"fgp {self.command}"))
        self.logger = logging.getLogger("fgp_fast")
        self.level, self.propagate = self.logger.level, self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO if self.verbose else logging.WARNING)
        self.logger.propagate = False
        self.native = landmarks.set_native_logging(self.verbose)
        self.sigterm = None
        if threading.current_thread() is threading.main_thread():
            self.sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc):
        from . import landmarks

        if self.sigterm is not None:
            signal.signal(signal.SIGTERM, self.sigterm)
        landmarks.set_native_logging(self.native)
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.logger.propagate = self.propagate


def main(argv=None) -> int:
    from .errors import MissingDependencyError

    parser = _build_parser()
    args = parser.parse_args(argv)
    name = f"fgp {args.command}"
    try:
        with _Session(args.command, args.verbose):
            return args.run(args) or 0
    except (CLIError, MissingDependencyError) as exc:  # a usage or setup problem: say how to fix it
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except (FGPError, OSError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as exc:
        print(f"{name}: terminated ({exc})", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
