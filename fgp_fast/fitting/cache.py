"""Fitted parameters cached per input file, keyed by its content hash and the fitting settings.

Location: ``$FGP_FAST_CACHE`` or ``~/.cache/fgp_fast``, under ``fits/``. Reruns on the same
driver skip landmark detection and fitting entirely.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from .result import FitResult

__all__ = ["cache_dir", "cached_fit", "file_digest"]

_VERSION = "2"  # bump when the fitter's output changes for the same inputs


def cache_dir() -> Path:
    root = os.environ.get("FGP_FAST_CACHE") or Path.home() / ".cache" / "fgp_fast"
    return Path(root) / "fits"


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_fit(path: str | os.PathLike, settings_key: str, compute: Callable[[], FitResult],
               enabled: bool = True) -> tuple[FitResult, bool]:
    """-> (fit, came from the cache). ``compute`` runs on a miss and its result is stored."""
    if not enabled:
        return compute(), False
    key = hashlib.sha256(f"{_VERSION}|{file_digest(path)}|{settings_key}".encode()).hexdigest()[:32]
    entry = cache_dir() / f"{key}.npz"
    if entry.is_file():
        try:
            return FitResult.load(entry), True
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is refitted and overwritten
    fit = compute()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fit.save(entry)
    except OSError:
        pass  # an unwritable cache only costs time
    return fit, False
