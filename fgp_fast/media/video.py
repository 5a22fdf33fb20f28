"""Video files through PyAV: decode to RGB frames, encode H.264 mp4 atomically (temp file + rename);
folders of frames read like a video."""
from __future__ import annotations

import numbers
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingDependencyError
from .atomic import AtomicPath
from .images import IMAGE_SUFFIXES, MAX_PIXELS, MAX_SIDE, check_image_size, image_size, load_image

__all__ = ["VideoWriter", "read_frames", "read_video", "read_image_folder", "DEFAULT_FPS"]

DEFAULT_FPS = 25.0


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("video needs PyAV: pip install av") from None
    return av


def read_video(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
               max_side: int = MAX_SIDE) -> tuple[list[np.ndarray], float]:
    """All frames of a video as (H, W, 3) uint8 RGB arrays, and its frame rate. The frame size in
    the stream's header is checked against the image limits before anything is decoded."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context.width and stream.codec_context.height:
                check_image_size(stream.codec_context.width, stream.codec_context.height, max_pixels=max_pixels,
                                 max_side=max_side, name=f"video {path}")
            rate = stream.average_rate or stream.guessed_rate
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except av.FFmpegError as exc:
        raise InputError(f"cannot read video {path}: {exc}") from None
    if not frames:
        raise InputError(f"video {path} has no frames")
    return frames, float(rate) if rate else DEFAULT_FPS


def read_image_folder(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
                      max_side: int = MAX_SIDE) -> list[np.ndarray]:
    """The images of a folder, in name order, as (H, W, 3) uint8 frames. Every header is checked
    (limits, one size for all) before any image is decoded."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"folder {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
    sizes = {}
    for f in files:
        size = sizes[f] = image_size(f)
        check_image_size(*size, max_pixels=max_pixels, max_side=max_side, name=f"image {f}")
    if len(set(sizes.values())) > 1:
        raise InputError(f"folder {path} has images of different sizes: {sorted(set(sizes.values()))}")
    return [load_image(f, max_pixels=max_pixels, max_side=max_side) for f in files]


def read_frames(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
                max_side: int = MAX_SIDE) -> tuple[list[np.ndarray], float | None]:
    """Frames of a video file or an image folder, and the frame rate (None for a folder)."""
    path = Path(path)
    if path.is_dir():
        return read_image_folder(path, max_pixels=max_pixels, max_side=max_side), None
    return read_video(path, max_pixels=max_pixels, max_side=max_side)


class VideoWriter:
    """H.264 (yuv420p) mp4 writer; frames go to a hidden temp file renamed to ``path`` on success.

    Use as a context manager: an exception inside the block deletes the temp file, so no
    half-written video is left behind. Width and height must be even (yuv420p).
    """

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int, crf: int = 20):
        av = _av()
        if width % 2 or height % 2 or width < 2 or height < 2:
            raise InputError(f"H.264 needs an even frame size, got {width}x{height}")
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps <= 1000:
            raise InputError(f"frame rate must be a number in (0, 1000], got {fps!r}")
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise InputError(f"output must be an .mp4 file, got {self.path}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output directory does not exist: {self.path.parent}")
        if self.path.is_dir():
            raise IsADirectoryError(f"cannot write {self.path}: it is a directory")
        self._target = AtomicPath(self.path)
        try:
            self._container = av.open(str(self._target.tmp), mode="w")
        except (OSError, av.FFmpegError) as exc:
            self._target.abort()
            raise PermissionError(f"cannot write {self.path}: {exc}") from None
        try:
            self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        except BaseException:
            self.abort()
            raise
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame."""
        av = _av()
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(out):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        if not self.frames:
            self.abort()
            raise InputError(f"no frames to write to {self.path}")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        return self._target.commit()

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            self._target.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
