"""Tracking a frame sequence: MediaPipe landmarks per frame -> the fitted head sequence, gaps filled.

Landmarks in video mode (steadier than per image), one identity for the clip, and frames
without a face filled from their neighbours (``FitResult.tracked`` keeps which frames had one).
Two fitters: :func:`fit_landmarks` (the batch fitter, ~120 ms a frame: ``fgp eval``) and
:func:`track_landmarks` (the warm-started ``FrameTracker`` with ``WindowSmoother``, what
``fgp animate`` tracks drivers with, a few ms a frame: ``fgp prepare``).
"""
from __future__ import annotations

import numpy as np

from ..errors import NoFaceError
from ..progress import Progress, stage
from .fit import FitSettings, fit_sequence
from .gaps import fill_gaps
from .result import FitResult

__all__ = ["detect_landmarks", "fit_landmarks", "track_file", "track_frames", "track_landmarks"]


def detect_landmarks(frames, face_index: int = 0, progress: Progress | None = None,
                     name: str = "the video") -> tuple[np.ndarray, np.ndarray]:
    """(T, 478, 2) pixel landmarks of the ``face_index``-th largest face per frame (zeros where
    there is none) and the (T,) mask of frames with one; NoFaceError when no frame has a face."""
    from ..landmarks import N_LANDMARKS, FaceLandmarker

    report = stage(progress, "landmarks")
    obs = np.zeros((len(frames), N_LANDMARKS, 2), np.float32)
    tracked = np.zeros(len(frames), bool)
    with FaceLandmarker(video=True) as lm:
        for i, frame in enumerate(frames):
            face = lm.face(frame, face_index)
            if face is not None:
                obs[i], tracked[i] = face, True
            if report:
                report(i + 1, len(frames))
    if not tracked.any():
        raise NoFaceError(f"no face found in any frame of {name}")
    return obs, tracked


def fit_landmarks(landmarks: np.ndarray, tracked: np.ndarray, height: int, width: int, head=None,
                  settings: FitSettings | None = None, progress: Progress | None = None) -> FitResult:
    """Fit (T, L, 2) pixel landmarks of (height, width) frames; untracked frames filled from neighbours."""
    from ..heads import load_head_model

    head = head if head is not None else load_head_model("ict")
    fit = fit_sequence(head, landmarks, height, width, tracked, settings or FitSettings(),
                       progress=stage(progress, "fitting"))
    return fill_gaps(fit)[0] if not fit.tracked.all() else fit


def track_landmarks(landmarks: np.ndarray, tracked: np.ndarray, height: int, width: int, head=None,
                    settings: FitSettings | None = None, smoothing: int = 3, shots: np.ndarray | None = None,
                    track_settings=None) -> tuple[FitResult, int]:
    """Follow (T, L, 2) pixel landmarks of (height, width) frames with the offline path's tracker:
    ``FrameTracker`` (identity fitted jointly on a segment's first frames with ``settings``, then
    a few warm-started LM steps a frame) and ``WindowSmoother`` (half-width ``smoothing``).
    ``shots``: (T,) True where a cut starts (the pose is re-guessed there).

    -> (fit, stop): a FitResult holds one identity, so it covers frames ``[0, stop)``, up to the
    first frame the tracker found to be another person (``stop == T`` when there is none).
    Frames without a face are filled from their neighbours. NoFaceError when no frame has a face.
    """
    from ..heads import load_head_model
    from .tracker import FrameTracker, TrackSettings, WindowSmoother

    landmarks, tracked = np.asarray(landmarks, np.float32), np.asarray(tracked, bool)
    if not tracked.any():
        raise NoFaceError("no face found in any frame")
    head = head if head is not None else load_head_model("ict")
    tracker = FrameTracker(head, height, width, track_settings or TrackSettings(), settings or FitSettings())
    smoother = WindowSmoother(smoothing)
    out = []
    for i in range(len(landmarks)):
        for t in tracker.push(i, landmarks[i] if tracked[i] else None, bool(shots[i]) if shots is not None else False):
            out += smoother.push(t)
    for t in tracker.flush():
        out += smoother.push(t)
    out += smoother.flush()
    first = next(t for t in out if t.tracked)
    stop = next((t.index for t in out if t.tracked and t.identity != first.identity), len(out))
    out = out[:stop]
    fit = FitResult(shape=np.asarray(first.shape, np.float32),
                    expression=np.stack([t.expression for t in out]).astype(np.float32),
                    rotation=np.stack([t.rotation for t in out]).astype(np.float32),
                    translation=np.stack([t.translation for t in out]).astype(np.float32),
                    focal=float(first.focal), height=height, width=width,
                    tracked=np.array([t.tracked for t in out]),
                    error_px=np.array([t.error_px if t.tracked else np.nan for t in out], np.float32))
    return (fill_gaps(fit)[0] if not fit.tracked.all() else fit), stop


def track_frames(frames, face_index: int = 0, head=None, settings: FitSettings | None = None,
                 progress: Progress | None = None, name: str = "the video") -> FitResult:
    """(H, W, 3) uint8 frames of one size -> their fitted head sequence (see the module docstring)."""
    obs, tracked = detect_landmarks(frames, face_index, progress, name)
    H, W = frames[0].shape[:2]
    return fit_landmarks(obs, tracked, H, W, head, settings, progress)


def track_file(path, face_index: int = 0, settings: FitSettings | None = None, cache: bool = True,
               progress: Progress | None = None, frames: list[np.ndarray] | None = None,
               fps: float | None = None, landmarks: tuple[np.ndarray, np.ndarray] | None = None,
               ) -> tuple[list[np.ndarray], float | None, FitResult]:
    """A video file or an image folder -> (frames, its frame rate or None for a folder, fit).

    ``frames``/``fps``: the file's frames when the caller has already read them; ``landmarks``:
    their :func:`detect_landmarks` (fitted when the cache has no fit). A video's fit is
    cached by its content (``fgp_fast.fitting.cache``; an entry must have the video's frame
    count); a folder has no single content hash, so it is always fitted.
    """
    from pathlib import Path

    from ..media import read_frames
    from .cache import cached_fit

    path = Path(path)
    if frames is None:
        frames, fps = read_frames(path)
    settings = settings or FitSettings()

    def compute() -> FitResult:
        if landmarks is not None:
            return fit_landmarks(*landmarks, *frames[0].shape[:2], settings=settings, progress=progress)
        return track_frames(frames, face_index, settings=settings, progress=progress, name=str(path))

    if path.is_dir() or not cache:
        return frames, fps, compute()
    fit, _ = cached_fit(path, f"{settings.key()}|face{face_index}", compute, frames=len(frames))
    return frames, fps, fit
