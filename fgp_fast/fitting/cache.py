"""Fitted parameters cached per input file, keyed by its content hash and the fitting settings.

Location: ``$FGP_FAST_CACHE`` or ``~/.cache/fgp_fast``, under ``fits/``. Reruns on the same
driver skip landmark detection and fitting entirely. An entry carries its frame count and a
checksum of its arrays (``FitResult.save``); a damaged or mismatched one (empty, truncated,
bit-flipped, another frame count, NaN) is reported in one warning line, deleted and refitted.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

from ..errors import DataError
from .result import FitResult

__all__ = ["cache_dir", "cached_fit", "file_digest"]

_VERSION = "2"  # bump when the fitter's output or the entry format changes for the same inputs
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("FGP_FAST_CACHE") or Path.home() / ".cache" / "fgp_fast"
    return Path(root) / "fits"


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load(entry: Path, frames: int | None) -> FitResult:
    """The entry's fit, or DataError saying what is wrong with it."""
    try:
        fit = FitResult.load(entry)
    except OSError as exc:
        raise DataError(f"unreadable ({exc})") from None
    if frames is not None and len(fit) != frames:
        raise DataError(f"it holds {len(fit)} frames, the input has {frames}")
    return fit


def cached_fit(path: str | os.PathLike, settings_key: str, compute: Callable[[], FitResult],
               enabled: bool = True, frames: int | None = None) -> tuple[FitResult, bool]:
    """-> (fit, came from the cache). ``compute`` runs on a miss and its result is stored;
    ``frames``: the input's frame count, which a cached entry must match."""
    if not enabled:
        return compute(), False
    key = hashlib.sha256(f"{_VERSION}|{file_digest(path)}|{settings_key}".encode()).hexdigest()[:32]
    entry = cache_dir() / f"{key}.npz"
    if entry.is_file():
        try:
            return _load(entry, frames), True
        except DataError as exc:
            log.warning("fit cache entry %s for %s is damaged (%s); discarding it and refitting",
                        entry, path, str(exc).replace("\n", " "))
            entry.unlink(missing_ok=True)
    fit = compute()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fit.save(entry)
    except OSError:
        pass  # an unwritable cache only costs time
    return fit, False
