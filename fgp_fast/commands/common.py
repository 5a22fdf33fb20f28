"""What the subcommands share: the stderr progress bar, output path checks, ``--renderer``."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..cli import CLIError

__all__ = ["ProgressBar", "check_fps", "check_output", "edit_args", "load_renderer", "output_dir", "refuse_same_file"]


class ProgressBar:
    """A ``progress(stage, done, total)`` callback drawing one stderr line per stage (only on a
    terminal: a log file or pipe gets no carriage-return bars)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.stage, self.start, self.last = None, 0.0, 0.0
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
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


def refuse_same_file(out: Path | None, out_flag: str = "out", **inputs: Path | None) -> None:
    """CLIError when ``out`` is the same file as one of the inputs (by path, symlink or hard link),
    which writing it would destroy. ``inputs`` are named by their flag: ``driver=args.driver``."""
    if out is None:
        return
    for flag, path in inputs.items():
        if path is None:
            continue
        try:
            same = os.path.samefile(out, path)
        except OSError:  # one of them does not exist (yet): they cannot be one file
            continue
        if same:
            raise CLIError(f"--{out_flag} {out} is the same file as --{flag.replace('_', '-')} {path}; "
                           f"writing it would destroy the input")


def check_fps(fps: float | None) -> None:
    if fps is not None and not 0 < fps <= 1000:  # also NaN
        raise CLIError(f"--fps must be a frame rate in (0, 1000], got {fps}")


@contextmanager
def output_dir(path: Path) -> Iterator[Path]:
    """Create ``path`` (and missing parents) for a command's outputs; if the command fails, the
    folders created here are removed again when they are still empty."""
    created = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output directory {path}: {exc}") from None
    try:
        yield path
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
