"""Video files through PyAV: decode to RGB frames, encode H.264 mp4 atomically (temp file + rename)."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
from ..errors import InputError, MissingDependencyError

__all__ = ["VideoWriter", "read_video", "DEFAULT_FPS"]

DEFAULT_FPS = 25.0


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("video needs PyAV: pip install av") from None
    return av


def read_video(path: str | os.PathLike) -> tuple[list[np.ndarray], float]:
    """All frames of a video as (H, W, 3) uint8 RGB arrays, and its frame rate."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except av.FFmpegError as exc:
        raise InputError(f"cannot read video {path}: {exc}") from None
    if not frames:
        raise InputError(f"video {path} has no frames")
    return frames, float(rate) if rate else DEFAULT_FPS


class VideoWriter:
    """H.264 (yuv420p) mp4 writer; frames go to a hidden temp file renamed to ``path`` on success.

    Use as a context manager: an exception inside the block deletes the temp file, so no
    half-written video is left behind. Width and height must be even (yuv420p).
    """

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int, crf: int = 20):
        av = _av()
        if width % 2 or height % 2:
            raise InputError(f"H.264 needs an even frame size, got {width}x{height}")
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise InputError(f"output must be an .mp4 file, got {self.path}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output directory does not exist: {self.path.parent}")
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}.mp4")
        try:
            self._container = av.open(str(self._tmp), mode="w")
        except (OSError, av.FFmpegError) as exc:
            raise PermissionError(f"cannot write {self.path}: {exc}") from None
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
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
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
