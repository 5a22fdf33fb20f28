"""Faces at any distance: MediaPipe's full-range face detector finds them, FaceMesh reads their 478
landmarks from a crop that brings each face to one canonical scale.

FaceMesh on a whole frame only finds faces that fill a good part of it (its detector is the
short-range one): the 40-60 px faces of a group shot or a wide talking-head clip are missed. Here
the face is cut out (an affine resample, out-of-frame parts black) so that it spans about half of
a ``CROP`` x ``CROP`` image, FaceMesh runs on that, and the landmarks are mapped back to frame
pixels. The driver's face scale is normalised this way: a distant and a close face are read alike.

- :func:`find_faces`: every face of a still image, largest first (portraits, group photos).
- :class:`CropLandmarker`: one face followed through a video (FaceMesh's tracking mode inside a
  crop that follows the face, re-detected where it is lost or, for the largest face, when another
  face becomes clearly larger).
"""
from __future__ import annotations

import numpy as np

from .errors import InputError, MissingDependencyError

__all__ = ["CROP", "CropLandmarker", "FaceDetector", "find_faces"]

CROP = 384             # side of the canonical crop FaceMesh reads (a face spans ~1/FACE_SPAN of it)
FACE_SPAN = 1.9        # crop side / face extent (the landmarks' box, or the detector's box)
DETECTOR_SPAN = 2.4    # crop side / the detector's box (its box is tighter than the landmarks')
KEEP_SHIFT = 0.08      # the crop stays put while the face moves less than this fraction of it ...
KEEP_SCALE = 0.15      # ... and changes its size by less than this fraction
REDETECT = 30          # frames between full-frame detections (largest-face switches)
SWITCH_AREA = 1.5      # another face must be this much larger (area) to take over as "the largest"


def _cv2():
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("face finding needs OpenCV (installed with MediaPipe): "
                                     "pip install -r requirements-mediapipe.txt") from None
    return cv2


class FaceDetector:
    """MediaPipe's full-range face detector: boxes (x0, y0, w, h) in pixels, largest first."""

    def __init__(self, min_confidence: float = 0.5):
        # (the first import raises the install hint)
        from .landmarks import QuietStart, _face_mesh_module, _quiet_native_logs, open_quietly

        _face_mesh_module()
        from mediapipe.python.solutions import face_detection

        self._quiet = _quiet_native_logs  # graph start, first frame and shutdown log from C++
        self._det = open_quietly(lambda: face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence))
        self._process = QuietStart()

    def boxes(self, image: np.ndarray) -> list[np.ndarray]:
        H, W = image.shape[:2]
        result = self._process(self._det.process, np.ascontiguousarray(image))
        out = []
        for d in result.detections or ():
            b = d.location_data.relative_bounding_box
            box = np.array([b.xmin * W, b.ymin * H, b.width * W, b.height * H], np.float64)
            if box[2] > 1 and box[3] > 1:
                out.append(box)
        return sorted(out, key=lambda b: -b[2] * b[3])

    def close(self) -> None:
        with self._quiet():
            self._det.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Crop:
    """A square crop of ``side`` frame pixels centred at ``centre``, resampled to CROP x CROP."""

    def __init__(self, centre, side: float):
        self.centre, self.side = np.asarray(centre, np.float64), float(side)
        self.scale = CROP / self.side

    def cut(self, image: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        s, (cx, cy) = self.scale, self.centre
        # pixel centres at +0.5 in both images; OpenCV's are at integers
        M = np.array([[s, 0, s * (0.5 - cx) + CROP / 2 - 0.5], [0, s, s * (0.5 - cy) + CROP / 2 - 0.5]])
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        return cv2.warpAffine(image, M, (CROP, CROP), flags=interp, borderMode=cv2.BORDER_CONSTANT)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        return ((points - CROP / 2) / self.scale + self.centre).astype(np.float32)

    @classmethod
    def around_points(cls, points: np.ndarray) -> "_Crop":
        lo, hi = points.min(0), points.max(0)
        return cls((lo + hi) / 2, max(float((hi - lo).max()), 4.0) * FACE_SPAN)

    @classmethod
    def around_box(cls, box: np.ndarray) -> "_Crop":
        x, y, w, h = box
        return cls((x + w / 2, y + h / 2), max(w, h, 4.0) * DETECTOR_SPAN)


def _extent(points: np.ndarray) -> float:
    return float((points.max(0) - points.min(0)).max())


def _central(faces: list[np.ndarray]) -> np.ndarray | None:
    """The face nearest the crop's centre (the one the crop was cut for)."""
    if not faces:
        return None
    return min(faces, key=lambda p: float(np.linalg.norm((p.max(0) + p.min(0)) / 2 - CROP / 2)))


def find_faces(image: np.ndarray, min_confidence: float = 0.5) -> list[np.ndarray]:
    """Every face of an (H, W, 3) uint8 RGB still, largest first, as (478, 2) float32 pixels.

    Faces FaceMesh finds on the whole image come first-hand; every further face the full-range
    detector finds is read from its own canonical crop.
    """
    from .landmarks import FaceLandmarker

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {getattr(image, 'shape', image)}")
    with FaceLandmarker(video=False, max_faces=8, min_confidence=min_confidence) as mesh:
        found = list(mesh.faces(image))
        with FaceDetector(min_confidence) as detector:
            boxes = detector.boxes(image)
        for box in boxes:
            centre = box[:2] + box[2:] / 2
            if any(_covers(face, centre) for face in found):
                continue
            crop = _Crop.around_box(box)
            face = _central(mesh.faces(crop.cut(image)))
            if face is not None:
                face = crop.to_frame(face)
                if not any(_covers(f, (face.min(0) + face.max(0)) / 2) for f in found):
                    found.append(face)
    return sorted(found, key=lambda p: -float(np.prod(p.max(0) - p.min(0))))


def _covers(face: np.ndarray, point) -> bool:
    lo, hi = face.min(0), face.max(0)
    return bool(np.all(point >= lo) and np.all(point <= hi))


class CropLandmarker:
    """The ``face_index``-th largest face of a video, frame by frame: ``landmarker(frame)`` ->
    (478, 2) float32 frame pixels, or None when there is no such face in this frame.

    The crop follows the face and stays still while the face moves little (FaceMesh tracks best
    in a steady image); where the face is lost, the frame is searched again at once.
    """

    def __init__(self, face_index: int = 0, min_confidence: float = 0.5):
        from .landmarks import FaceLandmarker

        if face_index < 0:
            raise InputError(f"face index must be >= 0, got {face_index}")
        self.face_index = face_index
        self._mesh = FaceLandmarker(video=True, max_faces=1, min_confidence=min_confidence)
        self._detector = FaceDetector(min_confidence)
        self._crop: _Crop | None = None
        self._frame = 0

    def _detect(self, frame: np.ndarray) -> _Crop | None:
        boxes = self._detector.boxes(frame)
        return _Crop.around_box(boxes[self.face_index]) if self.face_index < len(boxes) else None

    def _read(self, frame: np.ndarray, crop: _Crop) -> np.ndarray | None:
        face = _central(self._mesh.faces(crop.cut(frame)))
        return None if face is None else crop.to_frame(face)

    def _larger_face_elsewhere(self, frame: np.ndarray, points: np.ndarray) -> _Crop | None:
        boxes = self._detector.boxes(frame)
        if not boxes:
            return None
        box = boxes[0]
        centre = box[:2] + box[2:] / 2
        area = float(np.prod(points.max(0) - points.min(0)))
        if not _covers(points, centre) and box[2] * box[3] > SWITCH_AREA * area * 0.6:
            return _Crop.around_box(box)  # (the detector's box is ~0.6 of the landmarks' area)
        return None

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        self._frame += 1
        points = None
        if self._crop is not None:
            points = self._read(frame, self._crop)
            if points is not None and self.face_index == 0 and self._frame % REDETECT == 0:
                switch = self._larger_face_elsewhere(frame, points)
                if switch is not None:
                    self._crop, points = switch, self._read(frame, switch)
        if points is None:  # lost (or never found): search the whole frame now
            self._crop = self._detect(frame)
            if self._crop is None:
                return None
            points = self._read(frame, self._crop)
            if points is None:
                self._crop = None
                return None
        target = _Crop.around_points(points)
        moved = np.linalg.norm(target.centre - self._crop.centre) > KEEP_SHIFT * self._crop.side
        rescaled = abs(target.side / self._crop.side - 1) > KEEP_SCALE
        if moved or rescaled:
            self._crop = target
        return points

    def close(self) -> None:
        self._mesh.close()
        self._detector.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
