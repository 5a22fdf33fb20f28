"""Tracking a frame sequence: MediaPipe landmarks per frame -> the fitted head sequence, gaps filled.

One path for every offline user (``fgp animate`` and ``fgp eval`` drivers, ``fgp prepare`` clips):
landmarks in video mode (steadier than per image), one identity for the clip, warm-started
chunks, and frames without a face filled from their neighbours (``FitResult.tracked`` keeps
which frames had one).
"""
from __future__ import annotations

import numpy as np

from ..errors import NoFaceError
from ..progress import Progress, stage
from .fit import FitSettings, fit_sequence
from .gaps import fill_gaps
from .result import FitResult

__all__ = ["detect_landmarks", "fit_landmarks", "track_file", "track_frames"]


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
