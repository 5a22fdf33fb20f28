"""Live driver tracking: MediaPipe in video mode plus a warm-started few-iteration fit per frame.

The offline fit (``fit_sequence``) optimises whole chunks with hundreds of L-BFGS steps; live, each
frame starts from the previous frame's solution, so a handful of steps follow the head. The
driver's identity and focal are fitted once, on its first frame with a face (a lighter fit than
the offline one: it only has to be stable, the source portrait's own fit sets what is rendered).
"""
from __future__ import annotations

import numpy as np
import torch

from ..motion import Motion
from ..fitting.fit import FitSettings, Fitter

__all__ = ["DriverTracker"]

IDENTITY_SETTINGS = FitSettings(restarts=1, steps=100)
STEPS = 3                   # Levenberg-Marquardt steps per frame: ~10 ms, tracks 5°/frame turns within 1°
SMOOTHING = 0.6             # weight of the new frame in an exponential average (jitter vs. lag)
LOST_FRAMES = 10            # after this many frames without a face, restart from a frontal guess


class DriverTracker:
    """Per-connection tracker: frames in, the driver's ``Motion`` (one frame) out, or None without a face."""

    def __init__(self, head, landmarker):
        self.fitter = Fitter(head, IDENTITY_SETTINGS)
        self.landmarker = landmarker
        self.size = None            # (H, W) of the driver frames the state belongs to
        self.state = None           # the fitter's state dict of the last frame
        self.motion = None          # smoothed Motion of the last frame with a face
        self.reference = None       # the driver's neutral Motion (relative driving)
        self.lost = 0

    def reset_reference(self) -> None:
        """The driver's current frame becomes its neutral (the page's reset button)."""
        self.reference = self.motion

    def track(self, frame: np.ndarray) -> Motion | None:
        size = frame.shape[:2]
        if size != self.size:  # a new camera size: landmark pixels and the fitted focal no longer match
            self.size, self.state, self.motion, self.reference = size, None, None, None
        obs = self.landmarker.face(frame)
        if obs is None:
            self.lost += 1
            return None
        obs = torch.from_numpy(obs)[None]
        if self.state is None:
            self.state = Fitter.state_of(self.fitter.fit(obs.numpy(), *size))
        else:
            self.state = self.fitter.refine(self.state, obs, size, STEPS, reinit=self.lost > LOST_FRAMES)
        self.lost = 0
        new = Motion(self.state["rotation"].numpy().copy(), self.state["expression"].numpy().copy())
        if self.motion is not None:
            a = SMOOTHING
            new = Motion(a * new.rotation + (1 - a) * self.motion.rotation,
                         a * new.expression + (1 - a) * self.motion.expression)
        self.motion = new
        if self.reference is None:
            self.reference = new
        return new
