"""Video files through PyAV: streamed decoding to RGB frames, H.264 mp4 encoding (with the driver's
sound, ``fgp_fast.media.audio``) written atomically (temp file + rename); folders of frames read
like a video."""
from __future__ import annotations

import numbers
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingDependencyError
from .atomic import AtomicPath
from .images import IMAGE_SUFFIXES, MAX_PIXELS, MAX_SIDE, check_image_size, image_size, load_image

__all__ = ["DEFAULT_FPS", "VIDEO_SUFFIXES", "FolderReader", "VideoReader", "VideoWriter", "open_frames", "read_frames", "read_image_folder",
           "read_video"]

DEFAULT_FPS = 25.0
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".ogg", ".ogv", ".mpg", ".mpeg", ".ts", ".flv",
                  ".wmv")  # what a source is taken for a video by (drivers: anything not a script or image)
MAX_SKIPPED = 3  # undecodable packets tolerated (and at most a tenth of the frames)


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("video needs PyAV: pip install av") from None
    return av


class VideoReader:
    """A video file opened for streaming: the header's frame size is checked against the image
    limits and the first frame decoded at open (a corrupt or empty file fails here, before any
    work), then frames are decoded one at a time as the reader is iterated (once).

    ``fps``: the stream's frame rate; ``frames``: the header's frame count (None when it has
    none; an estimate for some containers); ``start``: the source time of the first frame in
    seconds (where the output's audio starts); ``has_audio``: whether it has an audio stream.
    """

    def __init__(self, path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE):
        av = _av()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video not found: {self.path}")
        self._limits = (max_pixels, max_side)
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise InputError(f"cannot read video {self.path}: {exc}") from None
        try:
            if not self._container.streams.video:
                raise InputError(f"{self.path} has no video stream")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: decoding keeps up with the rest of the pipeline
            ctx = stream.codec_context
            if ctx.width and ctx.height:
                check_image_size(ctx.width, ctx.height, max_pixels=max_pixels, max_side=max_side,
                                 name=f"video {self.path}")
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else DEFAULT_FPS
            self.frames = int(stream.frames) or None
            self.has_audio = bool(self._container.streams.audio)
            self.skipped = 0  # packets the decoder refused (e.g. a stray header packet), skipped
            # Frames are converted through the reader's own swscale context, single-threaded: PyAV's
            # frame.to_ndarray keeps one per thread (thread-local) with a pool of slice threads, and
            # a process forked while that thread lives (render_worker) frees it and hangs there.
            self._reformatter = av.video.reformatter.VideoReformatter()
            self._threads = {"threads": 1}  # emptied for PyAV < 14 (no threads argument, no sliced swscale)
            self._decoded = self._decode(stream)
            first = self._next_frame()
            if first is None:
                raise InputError(f"video {self.path} has no frames")
            self.start = float(first.time or 0.0)
            self._first = self._rgb(first)
            self.height, self.width = self._first.shape[:2]
        except BaseException:
            self.close()
            raise

    def _decode(self, stream):
        """Decoded frames; a packet the decoder refuses is skipped (as ffmpeg does) unless
        nothing decodes or they are more than a few."""
        av = _av()
        decoded = 0
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                self.skipped += 1
                if decoded == 0 and self.skipped > MAX_SKIPPED or self.skipped > max(MAX_SKIPPED, decoded // 10):
                    raise InputError(f"cannot read video {self.path}: {exc}") from None
                continue
            for frame in frames:
                decoded += 1
                yield frame

    def _next_frame(self):
        av = _av()
        try:
            return next(self._decoded, None)
        except av.FFmpegError as exc:
            raise InputError(f"cannot read video {self.path}: {exc}") from None

    def _rgb(self, frame) -> np.ndarray:
        check_image_size(frame.width, frame.height, max_pixels=self._limits[0], max_side=self._limits[1],
                         name=f"video {self.path}")
        try:
            rgb = self._reformatter.reformat(frame, format="rgb24", **self._threads)
        except TypeError:
            if not self._threads:
                raise
            self._threads = {}
            rgb = self._reformatter.reformat(frame, format="rgb24")
        return rgb.to_ndarray()

    def __iter__(self):
        if self._first is None:
            raise InputError(f"video {self.path} is read once; open it again to reread it")
        first, self._first = self._first, None
        yield first
        while (frame := self._next_frame()) is not None:
            image = self._rgb(frame)
            if image.shape[:2] != (self.height, self.width):
                raise InputError(f"video {self.path} changes its frame size mid-stream "
                                 f"({self.width}x{self.height} -> {image.shape[1]}x{image.shape[0]})")
            yield image

    def close(self) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_video(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
               max_side: int = MAX_SIDE) -> tuple[list[np.ndarray], float]:
    """All frames of a video as (H, W, 3) uint8 RGB arrays, and its frame rate (a short clip's
    convenience; long videos are read with :class:`VideoReader`)."""
    with VideoReader(path, max_pixels=max_pixels, max_side=max_side) as reader:
        return list(reader), reader.fps


class FolderReader:
    """The images of a folder in name order, read like a video: every header is checked (limits,
    one size for all) at open, the pixels are decoded one image at a time as it is iterated.
    ``fps`` is None (a folder has no frame rate), ``has_audio`` False."""

    def __init__(self, path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE):
        self.path = Path(path)
        self._limits = dict(max_pixels=max_pixels, max_side=max_side)
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise InputError(f"folder {self.path} has no images ({', '.join(IMAGE_SUFFIXES)})")
        sizes = {}
        for f in self.files:
            size = sizes[f] = image_size(f)
            check_image_size(*size, max_pixels=max_pixels, max_side=max_side, name=f"image {f}")
        if len(set(sizes.values())) > 1:
            raise InputError(f"folder {self.path} has images of different sizes: {sorted(set(sizes.values()))}")
        self.width, self.height = sizes[self.files[0]]
        self.fps, self.frames, self.start, self.has_audio = None, len(self.files), 0.0, False

    def __iter__(self):
        for f in self.files:
            yield load_image(f, **self._limits)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_image_folder(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
                      max_side: int = MAX_SIDE) -> list[np.ndarray]:
    """The images of a folder, in name order, as (H, W, 3) uint8 frames. Every header is checked
    (limits, one size for all) before any image is decoded."""
    return list(FolderReader(path, max_pixels=max_pixels, max_side=max_side))


def open_frames(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE):
    """A :class:`VideoReader` for a video file, a :class:`FolderReader` for a folder of images."""
    path = Path(path)
    reader = FolderReader if path.is_dir() else VideoReader
    return reader(path, max_pixels=max_pixels, max_side=max_side)


def read_frames(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
                max_side: int = MAX_SIDE) -> tuple[list[np.ndarray], float | None]:
    """Frames of a video file or an image folder, and the frame rate (None for a folder)."""
    with open_frames(path, max_pixels=max_pixels, max_side=max_side) as reader:
        return list(reader), reader.fps


class VideoWriter:
    """H.264 (yuv420p) mp4 writer; frames go to a hidden temp file renamed to ``path`` on success.

    Use as a context manager: an exception inside the block deletes the temp file, so no
    half-written video is left behind. Width and height must be even (yuv420p). ``audio``: an
    :class:`~fgp_fast.media.audio.AudioTrack` encoded in step with the frames and ended with the
    last one.
    """

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int, crf: int = 20,
                 audio=None):
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
        self.audio = audio
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
            if audio is not None:
                audio.attach(self._container)
        except BaseException:
            self.abort()
            raise
        self.fps, self.audio, self.frames = fps, audio, 0

    def write(self, frame: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame."""
        av = _av()
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(out):
            self._container.mux(packet)
        self.frames += 1
        if self.audio is not None:
            self.audio.advance(self.frames / self.fps)

    def close(self) -> Path:
        if not self.frames:
            self.abort()
            raise InputError(f"no frames to write to {self.path}")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            if self.audio is not None:
                self.audio.finish(self.frames / self.fps)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        return self._target.commit()

    def abort(self) -> None:
        try:
            if self.audio is not None:
                self.audio.close()
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
