"""Landmark measures of expression: mouth and eye openness, and how far one face's follows another's.

Both work on MediaPipe FaceMesh landmarks (478, 2) or (N, 478, 2) in pixels (found in an image, or
the head model's embedding points projected) and are normalised by the distance between the outer
eye corners, so they do not depend on image size or face scale:

- mouth openness: the gap between the inner lips' midpoints (landmarks 13, 14);
- eye openness: the mean over both eyes of the lids' midpoint gap (159-145, 386-374) over that
  eye's corner-to-corner width (the eye aspect ratio).
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["mouth_openness", "eye_openness", "openness_errors"]

_EYE_CORNERS = (33, 263)
_MOUTH = (13, 14)
_EYES = ((159, 145, 33, 133), (386, 374, 362, 263))


def _landmarks(lm) -> tuple[np.ndarray, bool]:
    a = np.asarray(lm, dtype=np.float64)
    single = a.ndim == 2
    a = a[None] if single else a
    if a.ndim != 3 or a.shape[1] < 468 or a.shape[2] != 2:
        raise InputError(f"landmarks must be (478, 2) or (N, 478, 2) FaceMesh pixels, got {np.shape(lm)}")
    if not np.isfinite(a).all():
        raise InputError("landmarks hold NaN or Inf")
    return a, single


def _gap(a: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(a[:, i] - a[:, j], axis=-1)


def mouth_openness(landmarks) -> np.ndarray | float:
    """Inner-lip gap over the outer eye-corner distance, per face."""
    a, single = _landmarks(landmarks)
    out = _gap(a, *_MOUTH) / np.maximum(_gap(a, *_EYE_CORNERS), 1e-9)
    return float(out[0]) if single else out


def eye_openness(landmarks) -> np.ndarray | float:
    """Mean over both eyes of the lid gap over the eye's width, per face."""
    a, single = _landmarks(landmarks)
    out = np.mean([_gap(a, t, b) / np.maximum(_gap(a, c0, c1), 1e-9) for t, b, c0, c1 in _EYES], axis=0)
    return float(out[0]) if single else out


def openness_errors(generated, target, generated_ref=None, target_ref=None) -> dict[str, float]:
    """Mean absolute mouth- and eye-openness differences between ``generated`` and ``target``
    landmarks (paired by index).

    With ``generated_ref`` and ``target_ref`` (one face each: the source portrait and the driver's
    reference frame, say), the changes from those are compared instead, which cancels the constant
    offset between two faces (or between a detector and a head model's embedding).
    """
    g, _ = _landmarks(generated)
    t, _ = _landmarks(target)
    if len(g) != len(t):
        raise InputError(f"generated has {len(g)} faces but target has {len(t)}")
    out = {}
    for name, fn in (("mouth", mouth_openness), ("eye", eye_openness)):
        dg, dt = np.atleast_1d(fn(g)), np.atleast_1d(fn(t))
        if (generated_ref is None) != (target_ref is None):
            raise InputError("pass both generated_ref and target_ref, or neither")
        if generated_ref is not None:
            dg = dg - fn(_landmarks(generated_ref)[0][:1])[0]
            dt = dt - fn(_landmarks(target_ref)[0][:1])[0]
        out[f"{name}_openness_error"] = float(np.abs(dg - dt).mean())
    return out
