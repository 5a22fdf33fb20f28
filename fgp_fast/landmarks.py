"""MediaPipe FaceMesh (478 points with irises) in pixel coordinates, largest face first.

Needs ``mediapipe==0.10.21`` (the last wheel that ships its face models, so it works offline),
installed lean: ``pip install -r requirements-mediapipe.txt && pip install --no-deps mediapipe==0.10.21``.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

import numpy as np

from .errors import InputError, MissingDependencyError, NoFaceError

__all__ = ["FaceLandmarker", "MediaPipeMissingError", "NoFaceError", "N_LANDMARKS", "detect_image", "face_box",
           "set_native_logging"]

N_LANDMARKS = 478
INSTALL_HINT = ("pip install -r requirements-mediapipe.txt && "
                "pip install --no-deps mediapipe==0.10.21  (x86-64, Python < 3.13)")


_native_logs = os.environ.get("FGP_NATIVE_LOGS") == "1"
# Frames processed with the logs silenced: the first one starts the models, and their warnings
# are written from MediaPipe's own threads, sometimes after that call has returned.
QUIET_FRAMES = 3
_quiet_lock = threading.Lock()
_quiet_depth = 0
_saved_stderr: int | None = None


def set_native_logging(enabled: bool) -> bool:
    """Let MediaPipe's own log lines (TF Lite's INFO, absl warnings; C++, from its threads) reach
    stderr, or not (the default; ``FGP_NATIVE_LOGS=1`` or ``fgp --verbose`` turn them on).
    Returns the previous setting."""
    global _native_logs
    previous, _native_logs = _native_logs, bool(enabled)
    return previous


@contextmanager
def _quiet_native_logs():
    """Point file descriptor 2 at /dev/null while MediaPipe starts or stops a graph, where it logs.

    MediaPipe writes from C++ (no Python logger to configure), so only the descriptor can silence
    it; that is process-wide, which is why it is limited to graph start-up, its first frame and
    shutdown (nested and concurrent uses share one redirection).
    """
    global _quiet_depth, _saved_stderr
    if _native_logs:
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            sys.stderr.flush()
            _saved_stderr = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                os.dup2(_saved_stderr, 2)
                os.close(_saved_stderr)
                _saved_stderr = None


def open_quietly(make_graph):
    """Build a MediaPipe solution and wait, logs silenced, until its calculators have opened.

    The graph opens its calculators on its own threads after the constructor returns, and they
    log as they do; one process call on a blank image returns only once all of them are open, so
    nothing is logged after this returns (a bare constructor leaks those lines into whatever the
    caller does next).
    """
    with _quiet_native_logs():
        graph = make_graph()
        graph.process(np.zeros((64, 64, 3), np.uint8))
    return graph


class QuietStart:
    """Calls a MediaPipe graph with its native logs silenced over its first QUIET_FRAMES frames
    (they initialise the models, which logs from C++ threads)."""

    def __init__(self):
        self.left = QUIET_FRAMES

    def __call__(self, process, image: np.ndarray):
        if not self.left:
            return process(image)
        with _quiet_native_logs():
            result = process(image)
        self.left -= 1
        return result


class MediaPipeMissingError(MissingDependencyError):
    """mediapipe is not installed (or not importable here)."""


def _face_mesh_module():
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as exc:
        raise MediaPipeMissingError(f"face landmarks need MediaPipe, which is not importable ({exc}); "
                                    f"install it with: {INSTALL_HINT}") from None
    return face_mesh


class FaceLandmarker:
    """478 FaceMesh landmarks per image as (478, 2) pixel coordinates (pixel centres at +0.5).

    ``video=True`` tracks across consecutive frames (faster, steadier); ``False`` treats every
    image on its own. Faces are ordered by bounding-box area, largest first; ``face_index`` picks
    one in that order.
    """

    def __init__(self, video: bool = False, max_faces: int = 4, min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging is noisy
        face_mesh = _face_mesh_module()
        self._mesh = open_quietly(lambda: face_mesh.FaceMesh(
            static_image_mode=not video, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence))
        self._process = QuietStart()

    def faces(self, image: np.ndarray) -> list[np.ndarray]:
        """Every face in an (H, W, 3) uint8 RGB image, largest first, each (478, 2) float32 pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        H, W = image.shape[:2]
        result = self._process(self._mesh.process, np.ascontiguousarray(image))
        out = []
        for face in result.multi_face_landmarks or ():
            xy = np.array([(p.x, p.y) for p in face.landmark], dtype=np.float32) * np.float32([W, H])
            if len(xy) == N_LANDMARKS:
                out.append(xy)
        return sorted(out, key=lambda p: -float(np.prod(p.max(0) - p.min(0))))

    def face(self, image: np.ndarray, face_index: int = 0) -> np.ndarray | None:
        """The ``face_index``-th largest face, or None when there are not that many."""
        found = self.faces(image)
        return found[face_index] if face_index < len(found) else None

    def close(self) -> None:
        with _quiet_native_logs():
            self._mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def detect_image(image: np.ndarray, name: str, face_index: int = 0) -> np.ndarray:
    """Landmarks of one still image; ``name`` (its file) is quoted in the error when no face is found."""
    check_face_index(face_index)
    with FaceLandmarker(video=False) as lm:
        return pick_face(lm.faces(image), name, face_index)


def check_face_index(face_index: int) -> None:
    if face_index < 0:
        raise InputError(f"face index must be >= 0, got {face_index}")


def pick_face(found: list[np.ndarray], name: str, face_index: int) -> np.ndarray:
    """``found[face_index]`` (faces largest first), or NoFaceError naming ``name`` and what was found."""
    if not found:
        raise NoFaceError(f"no face found in {name}")
    if face_index >= len(found):
        raise NoFaceError(f"{name} has {len(found)} face(s); face index {face_index} does not exist "
                          f"(faces are numbered from 0, largest first)")
    return found[face_index]


def face_box(landmarks: np.ndarray, height: int, width: int, margin: float) -> tuple[int, int, int]:
    """One square crop box (x0, y0, side) around (..., 2) pixel landmarks (one face, or a whole
    clip's): ``margin`` times their extent, centred slightly above them (foreheads have no
    landmarks), and kept inside the (height, width) image."""
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if not np.isfinite(points).all() or not len(points):
        raise InputError("face_box needs finite landmarks")
    if not margin > 0:
        raise InputError(f"margin must be > 0, got {margin}")
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    side = min(max(8, round(float((hi - lo).max()) * margin)), height, width)
    x0 = int(np.clip(round(centre[0] - side / 2), 0, width - side))
    y0 = int(np.clip(round(centre[1] - side / 2 - 0.05 * side), 0, height - side))
    return x0, y0, side
