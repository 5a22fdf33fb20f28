"""A driver's sound carried into the output video: decoded (any codec PyAV reads), cut and aligned to
the output's frames, and encoded as AAC next to the H.264 video.

Output time 0 is the source's time ``start`` (the driver's first video frame, so sound and picture
stay in step even where a container starts its audio earlier than its video). The output's audio
ends with its last video frame: the source's sound is cut there, or padded with silence when it
ends first. It is encoded in step with the video (``advance`` after every frame), so the whole
track is never held in memory.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["AudioTrack", "has_audio"]

AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
FRAME = 1024  # samples per AAC frame


def has_audio(path: str | os.PathLike) -> bool:
    """Does the media file at ``path`` have an audio stream? (False for unreadable files.)"""
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.FFmpegError, OSError):
        return False


class AudioTrack:
    """The first audio stream of ``path``, from source time ``start`` seconds, for one output video.

    ``attach(container)`` adds the AAC stream to an output container (once); ``advance(t)`` encodes
    the sound up to output time ``t``; ``finish(t)`` ends the track at ``t`` (the video's length).
    Errors decoding the source are InputErrors (the writer then removes its half-written file).
    """

    def __init__(self, path: str | os.PathLike, start: float = 0.0):
        import av

        self.path = Path(path)
        self.start = float(start)
        try:
            self._input = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise InputError(f"cannot read the audio of {self.path}: {exc}") from None
        if not self._input.streams.audio:
            self._input.close()
            raise InputError(f"{self.path} has no audio stream")
        self._in_stream = self._input.streams.audio[0]
        ctx = self._in_stream.codec_context
        channels = ctx.channels or 2
        self.layout = "mono" if channels == 1 else "stereo"
        self.channels = 1 if channels == 1 else 2
        rate = ctx.sample_rate or 48000
        self.rate = rate if rate in AAC_RATES else 48000
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self._decoded = self._decode()
        self._pending = np.zeros((self.channels, 0), np.float32)
        self._source_done = False
        self._next = 0            # the next output sample to encode
        self._out = self._container = None

    # ------------------------------------------------------------------ the source
    def _decode(self):
        """Resampled (C, n) float32 blocks of the source with the source time of their first sample."""
        import av

        try:
            for frame in self._input.decode(self._in_stream):
                t = frame.time
                for out in self._resampler.resample(frame):
                    yield (t if t is not None else None), out.to_ndarray().reshape(self.channels, -1)
                    t = None
            for out in self._resampler.resample(None):
                yield None, out.to_ndarray().reshape(self.channels, -1)
        except av.FFmpegError as exc:
            raise InputError(f"cannot decode the audio of {self.path}: {exc}") from None

    def _pull(self, need: int) -> None:
        """Fill ``_pending`` (output samples from ``_next`` on) until it holds ``need`` samples."""
        while self._pending.shape[1] < need and not self._source_done:
            try:
                t, block = next(self._decoded)
            except StopIteration:
                self._source_done = True
                break
            have = self._next + self._pending.shape[1]      # output samples placed so far
            if t is not None:
                # Where this block belongs on the output timeline; a gap is filled with silence,
                # samples before output time 0 (or overlapping ones) are dropped.
                at = int(round((t - self.start) * self.rate))
                if at > have:
                    block = np.concatenate([np.zeros((block.shape[0], at - have), np.float32), block], 1)
                elif at < have:
                    block = block[:, have - at:]
            self._pending = np.concatenate([self._pending, block], 1) if block.size else self._pending

    # ------------------------------------------------------------------ the output
    def attach(self, container) -> None:
        if self._out is not None:
            raise InputError("an AudioTrack feeds one output")
        self._container = container
        self._out = container.add_stream("aac", rate=self.rate)
        self._out.layout = self.layout
        self._out.time_base = Fraction(1, self.rate)

    def _encode(self, n: int) -> None:
        import av

        samples = self._pending[:, :n]
        if samples.shape[1] < n:  # the source ended: silence to the video's end
            samples = np.concatenate([samples, np.zeros((samples.shape[0], n - samples.shape[1]), np.float32)], 1)
        self._pending = self._pending[:, n:]
        for i in range(0, n, FRAME):
            block = np.ascontiguousarray(samples[:, i:i + FRAME])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=self.layout)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self._next + i, Fraction(1, self.rate)
            for packet in self._out.encode(frame):
                self._container.mux(packet)
        self._next += n

    def advance(self, until: float) -> None:
        """Encode the sound up to output time ``until`` seconds (whole AAC frames only)."""
        end = int(round(until * self.rate))
        n = (end - self._next) // FRAME * FRAME
        if n > 0:
            self._pull(n)
            self._encode(n)

    def finish(self, end: float) -> None:
        """Encode the rest up to output time ``end`` (the video's length) and flush the encoder."""
        n = int(round(end * self.rate)) - self._next
        if n > 0:
            self._pull(n)
            self._encode(n)
        for packet in self._out.encode(None):
            self._container.mux(packet)
        self.close()

    def close(self) -> None:
        if self._input is not None:
            self._input.close()
            self._input = None
