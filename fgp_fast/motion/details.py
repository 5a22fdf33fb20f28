"""What a driver frame adds beyond its head pose and expression: its eyes' gaze and its inner mouth.

One path for ``fgp animate`` (``fgp_fast.animation``) and the live session (``fgp_fast.stream``):
the driver's blinks are in its expression (``Motion.head_params`` lets a blink win over the
lid-raising channels), and :func:`render_driven` draws a portrait with the rest:
:func:`gaze_to_apply` turns the driver's gaze into the change of gaze the portrait's eyeballs take
(``render.apply_gaze``); :func:`driver_mouth` cuts the driver's mouth out of its frame as a
``render.MouthSource``, which the warp renderer paints where the portrait's mouth opens wider than
its source shows (relative mode; a shaded cavity otherwise).
"""
from __future__ import annotations

import numpy as np

__all__ = ["MAX_GAZE", "driver_mouth", "gaze_to_apply", "render_driven"]

MAX_GAZE = 25.0   # degrees of change of gaze at most (the iris reading is a frontal-view estimate)
MOUTH_PAD = 0.35  # the mouth crop's margin around the outer lips, x their extent


def render_driven(portrait, motion, gaze: np.ndarray | None = None, weight: float = 1.0, absolute: bool = False,
                  mouth=None) -> np.ndarray:
    """``portrait`` in ``motion`` (one frame) with the driver's details: its eyeballs turned by the
    driver's ``gaze`` (see :func:`gaze_to_apply`) and, in relative mode, the driver's inner mouth
    (``mouth``: :func:`driver_mouth`) where the portrait opens its mouth wider than it shows.
    -> (H, W, 3) uint8."""
    return portrait.render(motion, 0, gaze=gaze_to_apply(gaze, weight, absolute, portrait.gaze),
                           mouth_source=None if absolute else mouth)


def gaze_to_apply(gaze: np.ndarray | None, weight: float, absolute: bool, portrait_gaze: np.ndarray | None):
    """The change of gaze (2, 2) degrees for a portrait: relative driving gives the driver's change
    from its reference (``gaze``), absolute driving its gaze, from which the portrait's own
    (``portrait_gaze``, None when unknown) is taken; ``weight`` (0..1) fades it like the motion.
    None when there is nothing to turn."""
    if gaze is None or weight <= 0:
        return None
    change = np.asarray(gaze, np.float64)
    if absolute:
        if portrait_gaze is None:
            return None
        change = change - np.asarray(portrait_gaze, np.float64)
    change = np.clip(weight * change, -MAX_GAZE, MAX_GAZE)
    return change if np.abs(change).max() > 1e-3 else None


def driver_mouth(frame: np.ndarray | None, landmarks: np.ndarray | None):
    """A MouthSource of the driver's mouth: a crop of ``frame`` (H, W, 3) uint8 around the outer lips
    of its FaceMesh ``landmarks`` (478, 2) (only what the renderer samples, so a 1080p driver costs
    what a small one does). None without a frame or landmarks, or when the mouth is off the frame."""
    import torch

    from ..render.features import OUTER_LIPS
    from ..render.mouth import MouthSource

    if frame is None or landmarks is None:
        return None
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 2 or lm.shape[0] <= max(OUTER_LIPS) or not np.isfinite(lm).all():
        return None
    lips = lm[list(OUTER_LIPS)]
    lo, hi = lips.min(0), lips.max(0)
    pad = MOUTH_PAD * float((hi - lo).max()) + 2
    H, W = frame.shape[:2]
    x0, y0 = (max(int(np.floor(v - pad)), 0) for v in lo)
    x1, y1 = min(int(np.ceil(hi[0] + pad)), W), min(int(np.ceil(hi[1] + pad)), H)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    crop = torch.from_numpy(np.ascontiguousarray(frame[y0:y1, x0:x1])).permute(2, 0, 1).float() / 255
    return MouthSource(crop, lm - np.array([x0, y0], np.float64))
