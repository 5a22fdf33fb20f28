"""What the subcommands share: the stderr progress bar, output path checks, ``--renderer``."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..cli import CLIError

__all__ = ["ProgressBar", "check_output", "edit_args", "load_renderer"]


class ProgressBar:
    """A ``progress(stage, done, total)`` callback drawing one stderr line per stage."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.stage, self.start, self.last = None, 0.0, 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage != self.stage:
            self.stage, self.start, self.last = stage, now, 0.0
        if done < total and now - self.last < 0.25:  # a few redraws a second are plenty
            return
        self.last = now
        bar = "#" * int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{stage} [{bar:<30}] {done}/{total} {now - self.start:5.1f}s{end}")
        self.stream.flush()


def check_output(path: Path, suffix: str = ".mp4") -> None:
    """A usable output file path: the right suffix, an existing writable folder, not a directory."""
    if path.suffix.lower() != suffix:
        raise CLIError(f"--out must be an {suffix} file, got {path}")
    if path.is_dir():
        raise CLIError(f"--out {path} is a directory; give a {suffix} file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write to {parent}")


def load_renderer(args):
    """The renderer ``--renderer`` (``--weights``, ``--device``) names, or a CLIError saying what is missing."""
    from ..portrait import load_renderer as load

    if args.renderer == "diffusion" and args.weights is None:
        raise CLIError("--renderer diffusion needs --weights DIR: a directory written by "
                       "FGPortraitPipeline.save_pretrained (no trained weights ship with fgp_fast)")
    if args.renderer == "diffusion" and not args.weights.is_dir():
        raise CLIError(f"--weights {args.weights} is not a directory")
    return load(args.renderer, args.weights, args.device)


def edit_args(items: list[str], expression_names: tuple[str, ...]):
    """``--edit``/``--expr`` values in the edit grammar; a bad one is a usage error (exit code 2)."""
    from ..errors import InputError
    from ..motion import parse_edits

    try:
        return parse_edits(items, expression_names)
    except InputError as exc:
        raise CLIError(str(exc)) from None
