"""Fill frames where the face was lost: hold the last tracked frame, then blend into the next one."""
from __future__ import annotations

import numpy as np

from .result import FitResult
from ..errors import InputError

__all__ = ["fill_gaps"]


def fill_gaps(fit: FitResult, blend: int = 6) -> tuple[FitResult, int]:
    """-> (fit with every frame set, number of frames filled). Needs at least one tracked frame.

    Inside a gap the parameters hold the frame before it and, over its last ``blend`` frames, ease
    linearly into the frame after it, so tracking resumes without a jump. Gaps at either end hold
    the nearest tracked frame.
    """
    tracked = np.asarray(fit.tracked, bool)
    if not tracked.any():
        raise InputError("no tracked frame to fill from")
    idx = np.flatnonzero(tracked)
    arrays = {k: getattr(fit, k).copy() for k in ("expression", "rotation", "translation")}
    for t in np.flatnonzero(~tracked):
        before, after = idx[idx < t], idx[idx > t]
        if not len(before) or not len(after):
            src = after[0] if not len(before) else before[-1]
            for a in arrays.values():
                a[t] = a[src]
            continue
        a0, a1 = before[-1], after[0]
        ramp = min(blend, a1 - a0 - 1)
        w = max(0.0, (t - (a1 - ramp - 1)) / (ramp + 1))  # 0 while holding, -> 1 at a1
        for a in arrays.values():
            a[t] = (1 - w) * a[a0] + w * a[a1]
    return fit.replace(**arrays), int((~tracked).sum())
