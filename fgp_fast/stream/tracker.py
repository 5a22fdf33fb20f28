"""Live driver tracking: MediaPipe in video mode plus the warm-started tracker the offline path uses
(:class:`~fgp_fast.fitting.tracker.FrameTracker`: a few Levenberg-Marquardt steps per frame from
the previous frame's solution), tuned for latency: the identity is fitted on a segment's first
frame alone (a lighter fit: it only has to be stable; the source portrait's own fit sets what is
rendered), there are no periodic identity checks, and smoothing is causal (an exponential average)
instead of the offline sliding window. A new segment (the face jumped, a new person, the face
back after a loss) re-anchors the relative reference, as offline. The driver's gaze (its irises)
is smoothed the same way and referenced with the motion.
"""
from __future__ import annotations

import numpy as np

from ..fitting.tracker import IDENTITY_SETTINGS, FrameTracker, TrackSettings
from ..motion import Motion
from ..render.eyes import iris_gaze

__all__ = ["DriverTracker"]

LIVE = TrackSettings(identity_frames=1, identity_every=0)
SMOOTHING = 0.6             # weight of the new frame in an exponential average (jitter vs. lag)


class DriverTracker:
    """Per-connection tracker: frames in, the driver's ``Motion`` (one frame) out, or None without a face."""

    def __init__(self, head, landmarker):
        self.head = head
        self.landmarker = landmarker
        self.size = None            # (H, W) of the driver frames the tracker belongs to
        self.tracker = None
        self.frames = 0
        self.motion = None          # smoothed Motion of the last frame with a face
        self.reference = None       # the driver's neutral Motion (relative driving)
        self.gaze = None            # smoothed (2, 2) gaze of the last frame with a face (None: no irises)
        self.reference_gaze = None  # ... and of the neutral
        self.landmarks = None       # (478, 2) of the last frame with a face

    def reset_reference(self) -> None:
        """The driver's current frame becomes its neutral (the page's reset button)."""
        self.reference, self.reference_gaze = self.motion, self.gaze

    def gaze_change(self, absolute: bool):
        """What drives the portrait's eyes: the change of gaze from the neutral (relative), or the
        gaze itself (absolute); None when unknown."""
        from ..motion.details import MAX_GAZE

        if absolute or self.gaze is None:
            return self.gaze
        if self.reference_gaze is None:
            return None
        return np.clip(self.gaze - self.reference_gaze, -MAX_GAZE, MAX_GAZE)

    def track(self, frame) -> Motion | None:
        size = frame.shape[:2]
        if size != self.size:  # a new camera size: landmark pixels and the fitted focal no longer match
            self.size, self.motion, self.reference = size, None, None
            self.tracker = FrameTracker(self.head, *size, LIVE, IDENTITY_SETTINGS)
        (tracked,) = self.tracker.push(self.frames, self.landmarker.face(frame))
        self.frames += 1
        if not tracked.tracked:
            return None
        new = Motion(tracked.rotation[None].copy(), tracked.expression[None].copy())
        gaze = iris_gaze(tracked.landmarks)
        if tracked.cut is not None:  # a new segment: no smoothing across it, and a new reference
            self.motion = self.reference = self.gaze = self.reference_gaze = None
        a = SMOOTHING
        if self.motion is not None:
            new = Motion(a * new.rotation + (1 - a) * self.motion.rotation,
                         a * new.expression + (1 - a) * self.motion.expression)
        if gaze is not None and self.gaze is not None:
            gaze = a * gaze + (1 - a) * self.gaze
        self.motion, self.gaze, self.landmarks = new, gaze, tracked.landmarks
        if self.reference is None:
            self.reference, self.reference_gaze = new, gaze
        return new
