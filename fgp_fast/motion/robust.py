"""Driving that survives real clips: a robust reference, re-anchoring at cuts, holds, limits.

A real driver is not a clean talking head: the first frame may show a distant face or someone
else, shots change, people walk in and out. :class:`RobustDriver` turns tracked driver frames
(:class:`~fgp_fast.fitting.tracker.TrackedFrame`, which carry the tracker's segments: a new one at
every cut, face jump, return after a loss or change of identity) into the portrait's motion:

- **Reference** (relative mode): per segment, from its first ``reference_seconds`` of confident
  frames: the median head pose, and the expression of the most neutral-looking of them (lowest
  total activation), so a driver who starts mid-smile does not take the portrait's smile away.
  ``reference_frame=K`` uses driver frame K instead, for K's segment.
- **Confidence**: a frame drives only when it has a face of at least ``min_face`` pixels whose
  landmarks fit within ``max_error`` of its size. Otherwise the last motion is held, and after
  ``hold_seconds`` the portrait eases back to its own pose and expression.
- **Re-anchoring**: each segment is driven relative to its own reference, eased in over
  ``blend_seconds`` from wherever the portrait was, so a cut never makes it jump.
- **Scale**: the tracker reads every face at one canonical scale (``fgp_fast.facefinder``) and
  every threshold here is in units of the face's size; the driver's translation never moves the
  portrait (it keeps its framing).
- **Limits** (:class:`MotionLimits`): the applied head pose stays within ``yaw``/``pitch``/
  ``roll`` degrees of the portrait's own and every expression channel within its cap, eased
  (a soft knee, not a clip) so that motion near a limit slows down instead of stopping dead.

Nothing here needs more than ``reference_seconds`` of lookahead, so the offline pipeline stays
bounded; the live path uses the same class with ``lookahead=False`` (the reference is a segment's
first confident frame). Its output (:class:`DrivenFrame`) does not depend on the portrait: it is
composed with each portrait's own motion at the end, so several faces, or a source video (one
motion per frame), are driven by one driver alike.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..heads import axis_angle_to_matrix, matrix_to_axis_angle
from .drive import MODES, Motion
from .details import MAX_GAZE
from .edits import ANGLES

__all__ = ["DrivenFrame", "MotionLimits", "RobustDriver", "parse_limits", "soft_limit"]

KNEE = 0.7   # soft limits are the identity up to KNEE x the limit, then ease into it
GAZE_SMOOTHING = 0.5   # weight of the new frame's gaze


def soft_limit(x: np.ndarray, limit: float, knee: float = KNEE) -> np.ndarray:
    """Identity for |x| <= knee * limit, then a smooth (C1) saturation that approaches ``limit``."""
    x = np.asarray(x, np.float64)
    if not math.isfinite(limit):
        return x
    k = knee * limit
    over = np.abs(x) - k
    span = limit - k
    out = np.where(over > 0, np.sign(x) * (k + span * np.tanh(np.maximum(over, 0) / max(span, 1e-12))), x)
    return out


@dataclass(frozen=True)
class MotionLimits:
    """The range the renderer draws well (defaults: the warp renderer's tested sweep of +-30 deg
    yaw, +-20 deg pitch, and a jaw open up to 0.8). Angles are degrees of change from the
    portrait's own pose; ``expression`` caps every channel's value, ``channels`` single ones."""

    yaw: float = 30.0
    pitch: float = 20.0
    roll: float = 20.0
    expression: float = 1.0
    channels: Mapping[str, float] = field(default_factory=lambda: {"jawOpen": 0.8})

    def __post_init__(self):
        for name in ANGLES:
            v = getattr(self, name)
            if not 0 < v <= 90:
                raise InputError(f"limit {name} must be in (0, 90] degrees, got {v:g}")
        for name, v in {"expression": self.expression, **self.channels}.items():
            if not 0 < v <= 1:
                raise InputError(f"limit {name} must be in (0, 1], got {v:g}")

    def apply(self, motion: Motion, source: Motion, expression_names: tuple[str, ...]) -> Motion:
        """``motion`` with its pose change from ``source`` (one frame) and its expressions limited."""
        from ..heads import euler_to_matrix, matrix_to_euler

        R = axis_angle_to_matrix(torch.from_numpy(np.asarray(motion.rotation, np.float64)))
        R_src = axis_angle_to_matrix(torch.from_numpy(np.asarray(source.rotation[:1], np.float64)))
        change = torch.stack(matrix_to_euler(R @ R_src.transpose(-1, -2)), -1).numpy()   # (T, 3) degrees
        for j, name in enumerate(ANGLES):
            change[:, j] = soft_limit(change[:, j], getattr(self, name))
        R = euler_to_matrix(*torch.from_numpy(change).unbind(-1)) @ R_src
        expr = np.asarray(motion.expression, np.float64)
        caps = np.full(expr.shape[1], self.expression)
        for name, v in self.channels.items():
            if name in expression_names:
                caps[expression_names.index(name)] = min(v, self.expression)
        limited = np.stack([soft_limit(expr[:, j], caps[j]) if caps[j] < 1 else expr[:, j]
                            for j in range(expr.shape[1])], 1)
        return Motion(matrix_to_axis_angle(R).numpy().astype(np.float32),
                      np.clip(limited, 0, 1).astype(np.float32))


def parse_limits(items: Iterable[str], expression_names: tuple[str, ...]) -> MotionLimits:
    """``["yaw=40", "jawOpen=1", "expression=0.9"]`` -> MotionLimits (the defaults elsewhere)."""
    base = MotionLimits()
    angles = {n: getattr(base, n) for n in ANGLES}
    expression, channels = base.expression, dict(base.channels)
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or not math.isfinite(value):
            raise InputError(f"a limit is NAME=NUMBER (yaw, pitch, roll, expression or a channel), got {item!r}")
        if name in ANGLES:
            angles[name] = value
        elif name == "expression":
            expression = value
        elif name in expression_names:
            channels[name] = value
        else:
            raise InputError(f"unknown limit {name!r}; valid: {', '.join(ANGLES)}, expression, or an expression "
                             f"channel ({', '.join(expression_names[:3])}, ...)")
    return MotionLimits(**angles, expression=expression, channels=channels)


@dataclass
class DrivenFrame:
    """What one driver frame asks of a portrait, independent of the portrait: in relative mode a
    change of head rotation (axis-angle, applied on the left of the portrait's own) and of
    expression (added to the portrait's); in absolute mode the driver's rotation and expression.
    ``weight`` in [0, 1] is how much of it applies (0: the portrait's own motion, where the
    driver has long had no confident face). :meth:`motion` makes a portrait's Motion from it."""

    index: int
    rotation: np.ndarray      # (3,) axis-angle
    expression: np.ndarray    # (E,)
    weight: float
    absolute: bool
    state: str                # "driven", "held" (no confident face: the last values kept) or "rest"
    frame: object             # the TrackedFrame it came from
    gaze: np.ndarray | None = None   # (2, 2) degrees (left, right) x (yaw, pitch): relative mode: the change
                                     # from the reference; absolute: the driver's gaze (None: unknown)

    def motion(self, source: Motion, limits: MotionLimits, expression_names: tuple[str, ...],
               keep_pose: bool = False) -> Motion:
        """The Motion (one frame) of a portrait whose own motion is ``source`` (one frame), within
        ``limits``; ``keep_pose`` keeps the portrait's own head rotation (video-to-video)."""
        w = float(self.weight)
        src_rot = np.asarray(source.rotation[0], np.float64)
        src_expr = np.asarray(source.expression[0], np.float64)
        if self.absolute:
            rotation = _slerp(src_rot, self.rotation, w)
            expression = (1 - w) * src_expr + w * self.expression
        else:
            change = _slerp(np.zeros(3), self.rotation, w)
            rotation = matrix_to_axis_angle(_matrix(change[None]) @ _matrix(src_rot[None]))[0].numpy()
            expression = src_expr + w * self.expression
        if keep_pose:
            rotation = src_rot
        motion = Motion(rotation[None].astype(np.float32), np.clip(expression, 0, 1)[None].astype(np.float32))
        return limits.apply(motion, source, expression_names)


def _matrix(aa: np.ndarray) -> torch.Tensor:
    return axis_angle_to_matrix(torch.from_numpy(np.asarray(aa, np.float64)))


def _slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Interpolate two (3,) axis-angle rotations (geodesically)."""
    if t <= 0:
        return np.asarray(a, np.float64)
    Ra, Rb = _matrix(np.asarray(a)[None]), _matrix(np.asarray(b)[None])
    if t >= 1:
        return np.asarray(b, np.float64)
    d = matrix_to_axis_angle(Rb @ Ra.transpose(-1, -2))
    return matrix_to_axis_angle(_matrix((d * t).numpy()) @ Ra)[0].numpy()


class RobustDriver:
    """Tracked driver frames in, :class:`DrivenFrame` s out (see the module docstring).

    ``push(tracked)`` -> the frames now decided (in order); ``flush()`` at the end. ``fps``: the
    driver's frame rate (for the durations). ``reference``: a TrackedFrame to use as the reference
    of its segment (``reference_frame``). ``gaze``: a function from (478, 2) landmarks to (2, 2)
    gaze angles, or None.
    """

    def __init__(self, mode: str = "relative", fps: float = 25.0, reference=None, lookahead: bool = True,
                 reference_seconds: float = 1.0, hold_seconds: float = 1.0, blend_seconds: float = 0.3,
                 min_face: float = 40.0, max_error: float = 0.03, gaze=None):
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if not fps > 0:
            raise InputError(f"fps must be > 0, got {fps}")
        self.absolute = mode == "absolute"
        self.fixed_reference = reference
        self.lookahead = lookahead
        self.n_reference = max(1, round(reference_seconds * fps))
        self.max_wait = max(self.n_reference, round(2 * reference_seconds * fps))
        self.hold = round(hold_seconds * fps)
        self.blend = max(1, round(blend_seconds * fps))
        self.min_face, self.max_error = min_face, max_error
        self.gaze = gaze
        self.segment = None
        self.reference = None
        self.window: list = []      # the segment's confident frames while its reference is open
        self.waiting: list = []     # frames held back until the reference is known
        self.seen = 0               # frames of the current segment so far
        self.current = None         # the last values given out: (rotation (3,), expression (E,))
        self.current_gaze = None    # ... and gaze (2, 2), held with them
        self.weight = 0.0 if self.absolute else 1.0
        self.lost = 0
        self.easing = 0             # frames left of an ease toward the target

    # ------------------------------------------------------------------ reference
    def confident(self, f) -> bool:
        return bool(f.tracked and f.face_size >= self.min_face and f.error_px <= self.max_error * f.face_size)

    def _gaze_of(self, f):
        return None if self.gaze is None or f.landmarks is None else np.asarray(self.gaze(f.landmarks))

    def _make_reference(self, frames: list):
        """(rotation, expression, gaze) of the driver's neutral, or None without a frame for it."""
        if self.absolute:
            return "absolute"
        if not frames:
            return None
        rotation = np.median(np.stack([f.rotation for f in frames]).astype(np.float64), 0)
        expression = min(frames, key=lambda f: float(np.sum(f.expression))).expression
        gazes = [g for g in (self._gaze_of(f) for f in frames) if g is not None]
        gaze = np.median(np.stack(gazes), 0) if gazes else None
        return rotation, np.asarray(expression, np.float64), gaze

    # ------------------------------------------------------------------ values
    def _target(self, f):
        gaze = self._gaze_of(f)
        if self.absolute:
            return (np.asarray(f.rotation, np.float64), np.asarray(f.expression, np.float64)), gaze
        ref_rot, ref_expr, ref_gaze = self.reference
        R = _matrix(np.asarray(f.rotation, np.float64)[None]) @ _matrix(ref_rot[None]).transpose(-1, -2)
        gaze = None if gaze is None or ref_gaze is None else np.clip(gaze - ref_gaze, -MAX_GAZE, MAX_GAZE)
        return (matrix_to_axis_angle(R)[0].numpy(), np.asarray(f.expression, np.float64) - ref_expr), gaze

    def _out(self, f, state: str) -> DrivenFrame:
        if self.current is None:  # nothing driven yet: the portrait's own motion
            E = len(f.expression)
            self.current = (np.zeros(3), np.zeros(E))
        rot, expr = self.current
        gaze = None if self.current_gaze is None else self.current_gaze.astype(np.float32)
        return DrivenFrame(f.index, rot.astype(np.float32), expr.astype(np.float32), self.weight, self.absolute,
                           state, f, gaze)

    def _follow_gaze(self, gaze) -> None:
        """Iris landmarks jitter by a pixel or two: an exponential average (which also eases a cut)."""
        if gaze is None or self.current_gaze is None:
            self.current_gaze = gaze
        else:
            self.current_gaze = GAZE_SMOOTHING * gaze + (1 - GAZE_SMOOTHING) * self.current_gaze

    def _decide(self, f) -> DrivenFrame:
        if self.confident(f) and self.reference is not None:
            target, gaze = self._target(f)
            self._follow_gaze(gaze)
            if self.current is None or self.weight == 0:
                self.current = target                 # nothing shown of the old values: start at the new
            elif self.easing:                         # a new segment: ease over from the last values
                t = 1.0 / self.easing
                self.current = (_slerp(self.current[0], target[0], t), (1 - t) * self.current[1] + t * target[1])
                self.easing -= 1
            else:
                self.current = target
            self.weight = min(1.0, self.weight + 1.0 / self.blend)
            self.lost = 0
            return self._out(f, "driven")
        self.lost += 1
        if self.lost <= self.hold:
            return self._out(f, "held")
        # too long without a confident face: ease home to the portrait's own pose and expression
        self.weight = max(0.0, self.weight - 1.0 / self.blend)
        return self._out(f, "rest")

    # ------------------------------------------------------------------ stream
    def _close_reference(self) -> list[DrivenFrame]:
        if self.reference is None:
            self.reference = self._make_reference(self.window)
        out = [self._decide(f) for f in self.waiting]
        self.waiting, self.window = [], []
        return out

    def push(self, f) -> list[DrivenFrame]:
        out = []
        if f.segment != self.segment:
            out += self._close_reference()
            self.easing = self.blend if self.segment is not None else 0  # no ease into the first segment
            self.segment, self.reference, self.seen = f.segment, None, 0
            if self.absolute:
                self.reference = self._make_reference([])
            elif self.fixed_reference is not None and self.fixed_reference.segment == f.segment:
                self.reference = self._make_reference([self.fixed_reference])
        self.seen += 1
        if self.reference is not None:
            return out + [self._decide(f)]
        self.waiting.append(f)
        if self.confident(f):
            self.window.append(f)
        if not self.lookahead and self.window:
            self.reference = self._make_reference(self.window[:1])
            return out + self._close_reference()
        if len(self.window) >= self.n_reference or self.seen >= self.max_wait:
            out += self._close_reference()
        return out

    def flush(self) -> list[DrivenFrame]:
        return self._close_reference()
