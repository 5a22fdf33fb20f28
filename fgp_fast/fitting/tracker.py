"""Frame-by-frame head tracking, shared by the live and the offline paths.

:class:`FrameTracker` fits the driver's identity (and the camera's focal) once per segment, on the
segment's first frame with a face, then follows the head with a few warm-started
Levenberg-Marquardt steps per frame (:meth:`Fitter.refine`, ~10 ms). It also watches for what
breaks relative driving and starts a new *segment* there:

- ``shot``: the caller says the picture changed (a cut: :func:`scene_change` on thumbnails);
- ``jump``: the face moved or changed size more in one frame than a head does (a cut, or the
  crop switching to another face);
- ``found``: the face is back after being lost for ``lost_frames``;
- ``identity``: the identity refitted on the current frame is another person's (checked at
  every jump, cut and return, and every ``identity_every`` frames).

At a new segment the pose is re-guessed; when the identity differs the segment gets the new one.
:class:`WindowSmoother` is the offline smoothing pass: a local quadratic fit over a sliding window
(within one segment, over frames with a face), emitted ``half`` frames behind the input.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InputError
from .fit import FitSettings, Fitter

__all__ = ["FrameTracker", "TrackSettings", "TrackedFrame", "WindowSmoother", "identity_distance",
           "scene_change", "thumbnail"]

IDENTITY_SETTINGS = FitSettings(identity_iterations=5)  # the periodic identity checks' lighter fit


@dataclass(frozen=True)
class TrackSettings:
    steps: int = 3                # LM steps per frame (the live path's); more when a frame fits badly
    retry_error: float = 0.03     # refit with more steps when the mean error exceeds this x face size
    jump_motion: float = 0.15     # median landmark motion in one frame, x face size, that is a jump
    jump_scale: float = 1.25      # face-size ratio between frames that is a jump
    lost_frames: int = 10         # a face back after this many frames without one starts a segment
    identity_frames: int = 8      # frames with a face a segment's identity is fitted on
    identity_window: int = 30     # ... gathered within at most this many frames (the lookahead)
    identity_every: int = 150     # frames between identity checks (0: only at jumps and cuts)
    identity_change: float = 0.03  # identity distance (see identity_distance) that is another person,
                                   # for two fits of identity_frames frames (see FrameTracker._same_person)

    def key(self) -> str:
        return repr(self)


@dataclass
class TrackedFrame:
    """One driver frame's head state. Without a face, the last state is held and ``tracked`` is False."""

    index: int
    tracked: bool
    rotation: np.ndarray      # (3,) neck axis-angle
    translation: np.ndarray   # (3,) metres
    expression: np.ndarray    # (E,) in [0, 1]
    error_px: float           # mean landmark reprojection error (NaN without a face)
    face_size: float          # landmark box diagonal in pixels (0 without a face)
    segment: int              # increments at every new segment
    cut: str | None           # why a segment starts here: "first", "shot", "jump", "found", "identity"
    landmarks: np.ndarray | None = None   # (478, 2) frame pixels
    identity: int = 0         # increments when the identity changes
    shape: np.ndarray | None = None       # (S,) the identity's shape coefficients
    focal: float = math.nan   # pixels

    def replace(self, **fields) -> TrackedFrame:
        return replace(self, **fields)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A small colour histogram of a frame (what :func:`scene_change` compares)."""
    import cv2

    t = cv2.resize(frame, (64, 48), interpolation=cv2.INTER_AREA)
    h = cv2.calcHist([t], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
    return (h / max(h.sum(), 1)).astype(np.float32)


def scene_change(a: np.ndarray | None, b: np.ndarray, threshold: float = 0.35) -> bool:
    """A cut between two frames' thumbnails: their colour histograms differ by more than
    ``threshold`` of their mass (consecutive frames of one shot differ by < 0.15)."""
    return a is not None and 0.5 * float(np.abs(a - b).sum()) > threshold


def _face_size(points: np.ndarray) -> float:
    return float(np.linalg.norm(points.max(0) - points.min(0)))


def identity_distance(model, shape_a: np.ndarray, shape_b: np.ndarray) -> float:
    """How different two fitted identities look: RMS distance between their neutral landmark sets
    (pose, expression at rest; centred and scaled to unit RMS spread). On real clips, 8-frame refits
    of one person differ by 0.014-0.018 and different people by 0.017-0.09: a distance above the
    threshold is another person, one below it may still be (a cut or a jump usually says so too)."""
    from ..heads import HeadParams

    shapes = torch.from_numpy(np.stack([shape_a, shape_b]).astype(np.float32))
    params = HeadParams(shapes, torch.zeros(2, model.n_expression), torch.zeros(2, 3 * model.n_joints),
                        torch.zeros(2, 3), model.expression_names)
    with torch.no_grad():
        pts = model.points(params)[:, :468].double()
    pts = pts - pts.mean(1, keepdim=True)
    pts = pts / pts.norm(dim=-1).pow(2).mean(1).sqrt()[:, None, None]
    return float((pts[0] - pts[1]).norm(dim=-1).pow(2).mean().sqrt())


class FrameTracker:
    """``push(index, landmarks or None, shot=False)`` -> the :class:`TrackedFrame` s now known, in
    order (see the module docstring); ``flush()`` at the end of the stream. ``height``, ``width``:
    the driver's frame size; ``fit_settings.focal`` fixes the focal.

    A segment's identity is fitted jointly on its first ``identity_frames`` frames with a face
    (one frame's fit leaves a shape error that biases every later pose by ~1 degree), so the first
    frames of a segment come out together once those are in: a lookahead of at most
    ``identity_window`` frames.
    """

    def __init__(self, head, height: int, width: int, settings: TrackSettings = TrackSettings(),
                 fit_settings: FitSettings = FitSettings()):
        self.head, self.size, self.settings = head, (height, width), settings
        self.fitter = Fitter(head, fit_settings)
        self.focal = fit_settings.focal
        self.state = None                     # the refine state of the last frame with a face
        self.shape = None                     # the current identity (1, S)
        self.shape_frames = 0                 # ... fitted on this many frames
        self.segment, self.identity = -1, 0
        self.lost = 0
        self.since_identity = 0
        self.recent: deque[np.ndarray] = deque(maxlen=settings.identity_frames)
        self.pending: list[tuple[int, np.ndarray | None]] = []   # a new segment's frames, collected
        self.pending_cut: str | None = None
        self.last: TrackedFrame | None = None
        self.last_points = None

    # ------------------------------------------------------------------ fitting
    def _fit(self, points: list[np.ndarray], settings: FitSettings):
        """A joint fit of identity (and the focal the first time) and per-frame poses."""
        if self.focal is not None:
            settings = replace(settings, focal=self.focal)
        fit = Fitter(self.head, settings).fit(np.stack(points), *self.size, identity_only=True)
        self.focal = fit.focal
        return fit

    def _refine(self, obs: torch.Tensor) -> tuple[dict, float]:
        state = self.fitter.refine(self.state, obs, self.size, self.settings.steps)
        err = self._error(state, obs)
        if err > self.settings.retry_error * _face_size(obs[0].numpy()):  # fell behind a fast move
            state = self.fitter.refine(state, obs, self.size, 4 * self.settings.steps)
            err = self._error(state, obs)
        return state, err

    def _error(self, state: dict, obs: torch.Tensor) -> float:
        with torch.no_grad():
            d = (self.fitter._project(state, 1, *self.size) - obs).norm(dim=-1)[0]  # noqa: SLF001
        w = self.fitter.weights
        return float((d * w).sum() / w.sum())

    def _same_person(self, shape: np.ndarray, frames: int) -> bool:
        """Is ``shape``, fitted on ``frames`` frames, the current identity? A fit's noise falls as
        1/sqrt(frames) (same-person distances of synthetic renders, MediaPipe landmarks, vs an
        8-frame fit: max 0.019 from 8 frames, 0.024 from 4, 0.035 from 2, 0.055 from one), so the
        threshold grows with the two fits' combined noise: a 1-frame segment after a jump is not
        taken for another person."""
        s = self.settings
        n = max(s.identity_frames, 1)
        scale = math.sqrt((1 / max(frames, 1) + 1 / max(self.shape_frames, 1)) / (2 / n))
        d = identity_distance(self.fitter.model, self.shape.numpy()[0], shape)
        return d < s.identity_change * max(scale, 1.0)

    # ------------------------------------------------------------------ per frame
    def _jump(self, points: np.ndarray) -> bool:
        if self.last_points is None or self.lost:
            return False
        s = self.settings
        a, b = _face_size(self.last_points), _face_size(points)
        motion = float(np.median(np.linalg.norm(points[:468] - self.last_points[:468], axis=1))) / max(a, 1.0)
        return motion > s.jump_motion or not 1 / s.jump_scale < b / max(a, 1.0) < s.jump_scale

    def _held(self, index: int) -> TrackedFrame:
        if self.last is None:
            E = self.fitter.model.n_expression
            return TrackedFrame(index, False, np.zeros(3, np.float32), np.zeros(3, np.float32),
                                np.zeros(E, np.float32), math.nan, 0.0, max(self.segment, 0), None)
        return self.last.replace(index=index, tracked=False, error_px=math.nan, face_size=0.0, cut=None,
                                 landmarks=None)

    def _tracked(self, index: int, points: np.ndarray, cut: str | None) -> TrackedFrame:
        obs = torch.from_numpy(points)[None]
        self.state, err = self._refine(obs)
        self.lost = 0
        self.last_points = points
        self.recent.append(points)
        self.last = TrackedFrame(index, True, self.state["rotation"][0].numpy().copy(),
                                 self.state["translation"][0].numpy().copy(),
                                 self.state["expression"][0].numpy().copy(), err, _face_size(points),
                                 self.segment, cut, points, self.identity, self.shape[0].numpy(), self.focal)
        return self.last

    def _start_segment(self) -> list[TrackedFrame]:
        """Fit the collected frames' identity, decide whether it is a new person, track them."""
        frames, cut = self.pending, self.pending_cut
        self.pending, self.pending_cut = [], None
        faces = [p for _, p in frames if p is not None]
        fit = self._fit(faces, self.fitter.settings)
        if self.shape is None:
            self.shape, self.shape_frames = torch.from_numpy(fit.shape)[None], len(faces)
        elif not self._same_person(fit.shape, len(faces)):
            self.shape, self.identity, cut = torch.from_numpy(fit.shape)[None], self.identity + 1, "identity"
            self.shape_frames = len(faces)
        self.segment += 1
        self.since_identity = 0
        first = Fitter.state_of(fit, 0)
        self.state = {**first, "shape": self.shape, "log_focal": torch.tensor([math.log(self.focal)])}
        self.last_points = None
        out = []
        for index, points in frames:
            if points is None:
                self.lost += 1
                out.append(self._held(index))
            else:
                out.append(self._tracked(index, points, cut))
                cut = None
        return out

    def _check_identity(self) -> str | None:
        """Every ``identity_every`` frames: is the face of the last few frames still the same person?"""
        s = self.settings
        self.since_identity += 1
        if not s.identity_every or self.since_identity < s.identity_every or len(self.recent) < self.recent.maxlen:
            return None
        self.since_identity = 0
        fit = self._fit(list(self.recent), IDENTITY_SETTINGS)
        return None if self._same_person(fit.shape, len(self.recent)) else "identity"

    def push(self, index: int, landmarks: np.ndarray | None, shot: bool = False) -> list[TrackedFrame]:
        s = self.settings
        points = None
        if landmarks is not None:
            points = np.ascontiguousarray(landmarks, np.float32)
            if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(self.fitter.weights):
                raise InputError(f"landmarks must be ({len(self.fitter.weights)}, 2), got {points.shape}")
        out = []
        if self.pending:  # collecting a new segment's first frames
            cut = None
            if points is not None:
                last = next(p for _, p in reversed(self.pending) if p is not None)
                self.last_points, self.lost = last, 0
                cut = "shot" if shot else ("jump" if self._jump(points) else None)
            if cut is not None:  # the collected frames are a segment of their own
                out += self._start_segment()
                self.pending, self.pending_cut = [(index, points)], cut
            else:
                self.pending.append((index, points))
            n_faces = sum(p is not None for _, p in self.pending)
            if n_faces >= s.identity_frames or len(self.pending) >= s.identity_window:
                out += self._start_segment()
            return out
        if points is None:
            self.lost += 1
            return [self._held(index)]
        cut = None
        if self.state is None:
            cut = "first"
        elif shot:
            cut = "shot"
        elif self._jump(points):
            cut = "jump"
        elif self.lost >= s.lost_frames:
            cut = "found"
        else:
            cut = self._check_identity()
        if cut is None:
            return [self._tracked(index, points, None)]
        self.pending, self.pending_cut = [(index, points)], cut
        if s.identity_frames <= 1:
            return self._start_segment()
        return []

    def flush(self) -> list[TrackedFrame]:
        return self._start_segment() if self.pending else []


class WindowSmoother:
    """Fixed-lag smoothing of tracked frames: ``push(frame)`` -> the frames now final (``half``
    frames behind), ``flush()`` -> the rest. Rotation, translation and expression of frame t
    become a local quadratic fit over the frames of its segment with a face within ``half`` frames
    (Savitzky-Golay where the window is full); frames without a face pass through."""

    def __init__(self, half: int = 3):
        if half < 0:
            raise InputError(f"smoothing half-width must be >= 0, got {half}")
        self.half = half
        self.window: deque[TrackedFrame] = deque()
        self.emitted = 0   # frames of the window already emitted (the first ones)
        self._weights: dict = {}

    def _coefficients(self, offsets: tuple[int, ...]) -> np.ndarray:
        w = self._weights.get(offsets)
        if w is None:
            x = np.asarray(offsets, np.float64)
            degree = min(2, len(x) - 1)
            A = np.vander(x, degree + 1, increasing=True)      # value at offset 0 = first coefficient
            w = self._weights[offsets] = np.linalg.pinv(A)[0]
        return w

    def _smoothed(self, i: int) -> TrackedFrame:
        f = self.window[i]
        if not f.tracked or not self.half:
            return f
        near = [(j - i, g) for j, g in enumerate(self.window)
                if abs(j - i) <= self.half and g.tracked and g.segment == f.segment]
        w = self._coefficients(tuple(o for o, _ in near))
        mix = lambda key: np.einsum("n,nc->c", w, np.stack([getattr(g, key) for _, g in near])).astype(np.float32)  # noqa: E731
        return f.replace(rotation=mix("rotation"), translation=mix("translation"),
                         expression=np.clip(mix("expression"), 0.0, 1.0))

    def _emit(self, final: bool) -> list[TrackedFrame]:
        out = []
        while self.emitted < len(self.window) and (final or len(self.window) - self.emitted > self.half):
            out.append(self._smoothed(self.emitted))
            self.emitted += 1
            if self.emitted > self.half:  # nothing behind the window needs the oldest frame any more
                self.window.popleft()
                self.emitted -= 1
        return out

    def push(self, frame: TrackedFrame) -> list[TrackedFrame]:
        self.window.append(frame)
        return self._emit(False)

    def flush(self) -> list[TrackedFrame]:
        out = self._emit(True)
        self.window.clear()
        self.emitted = 0
        return out
