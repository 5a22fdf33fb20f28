"""Generated media for the tests: video clips carrying a tone, decoded audio, frame probes."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def write_clip(path, frames, fps: float = 25.0, tone: float | None = 440.0, rate: int = 44100,
               onset: float = 0.0, audio_seconds: float | None = None, video_delay: int = 0,
               audio_codec: str = "aac", layout: str = "stereo") -> None:
    """``frames`` (H, W, 3) uint8 as H.264, plus (``tone`` Hz) a sine starting at ``onset`` seconds
    of audio time, ``audio_seconds`` long (default: the video's length and a half second more).
    ``video_delay``: the first video frame's pts in frames (the video starts after the audio)."""
    frames = list(frames)
    H, W = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        a = None
        if tone is not None:
            a = c.add_stream(audio_codec, rate=rate)
            a.layout = layout
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts = i + video_delay
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is None:
            return
        n = int(((len(frames) + video_delay) / fps + 0.5 if audio_seconds is None else audio_seconds) * rate)
        t = np.arange(n) / rate
        signal = (0.5 * np.sin(2 * np.pi * tone * t) * (t >= onset)).astype(np.float32)
        fmt = a.codec_context.format
        channels = 1 if layout == "mono" else 2
        step = a.codec_context.frame_size or 1024
        for pos in range(0, n, step):
            block = np.repeat(signal[None, pos:pos + step], channels, 0)
            if fmt.name.startswith("s16"):
                block = (block * 32767).astype(np.int16)
            elif fmt.name.startswith("s32"):
                block = (block * 2147483000).astype(np.int32)
            if not fmt.is_planar:
                block = block.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=fmt.name, layout=layout)
            frame.sample_rate, frame.pts = rate, pos
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode():
            c.mux(p)


def decode_audio(path) -> tuple[np.ndarray, int, float]:
    """(mono float32 samples, sample rate, the first audio frame's time) of a file's first audio stream."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        rate = s.codec_context.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        out, t0 = [], None
        for frame in c.decode(s):
            t0 = frame.time if t0 is None else t0
            out += [g.to_ndarray().ravel() for g in resampler.resample(frame)]
        return np.concatenate(out), rate, float(t0 or 0.0)


def probe(path) -> dict:
    """Video frame count, size, rate and duration, and whether there is audio."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return {"frames": n, "width": s.width, "height": s.height, "fps": float(s.average_rate),
                "seconds": n / float(s.average_rate), "audio": bool(c.streams.audio)}


def peak_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def onset(x: np.ndarray, rate: int, level: float = 0.2) -> float:
    """Seconds until the signal first exceeds ``level``."""
    loud = np.flatnonzero(np.abs(x) > level)
    return float(loud[0] / rate) if len(loud) else float("inf")
