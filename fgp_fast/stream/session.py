"""Per-connection state: the source portrait, the driver tracker, edits, and the two frame stages.

A frame goes through two stages that run in worker threads: ``track`` (decode, landmarks, fit, the
driver's gaze and mouth) and ``render`` (drive, edit, render, encode; ``motion.details``, as
offline). The server runs them as a two-step pipeline, so frame N+1 is tracked while frame N
renders; with the server's render workers the render stage of the default portrait runs in a
forked process (``render_remote``). Nothing here queues frames: the server hands each stage the
latest input only.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from ..errors import InputError, WorkerError
from ..motion import ANGLES, Edit, Motion, apply_edits, drive, edits_from_mapping
from ..motion.details import driver_mouth, render_driven
from .protocol import MAX_PIXELS, MAX_SIDE, ProtocolError, decode_image, encode_image

__all__ = ["Session", "render_remote"]

log = logging.getLogger(__name__)

LANDMARKER_MAX_SIDE = 32766  # MediaPipe's OpenCV remap aborts the whole process at SHRT_MAX (32767)


class Session:
    """One client's source, tracker and edits. ``track`` and ``render`` may run concurrently."""

    def __init__(self, portrait, mode: str = "relative", max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS,
                 render_pool=None):
        from ..landmarks import FaceLandmarker
        from ..motion.robust import MotionLimits
        from .tracker import DriverTracker

        self.portrait = portrait
        self.mode = mode
        self.limits = MotionLimits()  # what the driver may ask of the portrait (edits go beyond)
        self.edits: list[Edit] = []
        self.format, self.quality = "jpeg", 85
        self.max_side, self.max_pixels = max_side, max_pixels
        self._landmarker = FaceLandmarker(video=True, max_faces=1)
        self.tracker = DriverTracker(portrait.head, self._landmarker)
        self._reset = False
        self._track_lock = threading.Lock()   # close() must not free MediaPipe under a running track()
        # Forked workers that render ``portrait`` (render_worker.WorkerPool of render_remote), or None;
        # used while the session keeps that portrait.
        self.render_pool, self._pooled = render_pool, portrait

    # ----------------------------------------------------------------- control (event-loop thread)
    def set_edits(self, edits) -> None:
        """{"jawOpen": 0.3, "yaw": -10}: shifts on top of the driven motion (the edit grammar's limits)."""
        try:
            self.edits = edits_from_mapping(edits, self.portrait.head.expression_names)
        except InputError as exc:
            raise ProtocolError(str(exc)) from None

    def request_reset(self) -> None:
        self._reset = True  # applied by the next track(), which owns the tracker

    def configure(self, fmt: str | None = None, quality: int | None = None) -> None:
        """Output encoding (values checked by the message schema, ``messages.Config``)."""
        self.format, self.quality = fmt or self.format, quality or self.quality

    # ----------------------------------------------------------------- stages (worker threads)
    def track(self, data: bytes) -> tuple[Motion | None, dict]:
        """Driver frame bytes -> (the driver's motion, or None without a face; stage timings in ms)."""
        t0 = time.perf_counter()
        frame = self._decode(data, "frame")
        t1 = time.perf_counter()
        with self._track_lock:
            if self._landmarker is None:
                raise ProtocolError("session closed")
            if self._reset:
                self._reset = False
                self.tracker.reset_reference()
            motion = self.tracker.track(frame)
            reference = self.tracker.reference
            if motion is not None:
                gaze = self.tracker.gaze_change(self.mode == "absolute")
                mouth = driver_mouth(frame, self.tracker.landmarks) if self.mode == "relative" else None
        t2 = time.perf_counter()
        driven = None if motion is None else (reference, motion, gaze, mouth)
        return driven, {"decode": _ms(t1 - t0), "track": _ms(t2 - t1)}

    def render(self, driven) -> tuple[bytes, dict]:
        """(reference, current driver motions, gaze, mouth) from ``track``, or None (no face: the
        source as it is) -> image bytes."""
        t0 = time.perf_counter()
        portrait = self.portrait
        source = portrait.motion()
        gaze = mouth = None
        if driven is None:
            motion = source
        else:
            reference, current, gaze, mouth = driven
            driver = Motion(np.concatenate([reference.rotation, current.rotation]),
                            np.concatenate([reference.expression, current.expression]))
            motion = drive(source, driver, self.mode)
            motion = Motion(motion.rotation[1:], motion.expression[1:])
            motion = self.limits.apply(motion, source, portrait.head.expression_names)
        motion = apply_edits(motion, self.edits, portrait.head.expression_names)
        job = (motion, gaze, self.mode == "absolute", mouth, self.format, self.quality)
        done = None
        if self.render_pool is not None and portrait is self._pooled:
            try:
                done = self.render_pool.call(job)
            except WorkerError as exc:
                log.warning("render workers failed (%s): rendering in the server process from now on", exc)
                self.render_pool = None
        data, _, encode_s = done if done is not None else render_remote(portrait, job)
        return data, {"render": _ms(time.perf_counter() - t0 - encode_s), "encode": _ms(encode_s)}

    def set_source(self, data: bytes, size: int, diffusion=None) -> None:
        """A new portrait from image bytes (seconds: landmarks and a full fit)."""
        from ..media import fit_size, resize
        from ..portrait import Portrait

        image = self._decode(data, "source")
        image = resize(image, *fit_size(*image.shape[:2], size))
        try:
            self.portrait = Portrait(image, "the uploaded source", renderer=diffusion)
        except InputError as exc:  # no face, or too small for the renderer
            raise ProtocolError(str(exc)) from None

    def _decode(self, data: bytes, name: str) -> np.ndarray:
        """Image bytes -> RGB within this session's limits, and a shape MediaPipe can take whatever they are."""
        image = decode_image(data, max_side=self.max_side, max_pixels=self.max_pixels, name=name)
        if max(image.shape[:2]) > LANDMARKER_MAX_SIDE:
            raise ProtocolError(f"{name} of {image.shape[1]}x{image.shape[0]} is over {LANDMARKER_MAX_SIDE} "
                                f"pixels a side")
        return image

    def ready(self, renderer: str) -> dict:
        names = self.portrait.head.expression_names
        return {"type": "ready", "size": list(self.portrait.image.shape[:2]), "expressions": list(names),
                "angles": list(ANGLES), "renderer": renderer, "mode": self.mode}

    def close(self) -> None:
        with self._track_lock:
            if self._landmarker is not None:
                self._landmarker.close()
                self._landmarker = None
                trim_heap()


def render_remote(portrait, job) -> tuple[bytes, float, float]:
    """Render and encode one frame of ``portrait`` (what a render worker runs): ``job`` is (motion,
    gaze, absolute, mouth, format, quality); returns (bytes, render seconds, encode seconds)."""
    motion, gaze, absolute, mouth, fmt, quality = job
    t0 = time.perf_counter()
    image = render_driven(portrait, motion, gaze, 1.0, absolute, mouth)
    t1 = time.perf_counter()
    data = encode_image(image, fmt, quality)
    return data, t1 - t0, time.perf_counter() - t1


def trim_heap() -> None:
    """Give memory that glibc keeps in per-thread arenas back to the system.

    Each connection builds and tears down a MediaPipe graph in the worker threads; nothing leaks
    (Python's heap and live sessions stay flat), but the freed memory stays in fragmented arenas
    and the server's resident size climbs by tens of MB per few connections without this.
    A no-op where the C library is not glibc.
    """
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = lambda pad: 0  # noqa: E731
    _malloc_trim(0)


_malloc_trim = None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
