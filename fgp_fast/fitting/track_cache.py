"""Tracked driver frames cached per video, written chunk by chunk while the video is tracked and
read back chunk by chunk, so neither tracking nor a cached rerun holds a whole long clip in memory.

An entry is a directory under the fit cache (``fgp_fast.fitting.cache.cache_dir``) named by the
video's content hash and the tracking settings: ``chunk-NNNNN.npz`` files of ``CHUNK`` frames and
a ``manifest.json`` with each chunk's frame count and SHA-256. It is written under a temporary
name and renamed into place only when the whole video has been tracked, so an interrupted run
leaves no entry; a damaged one (missing or altered chunk, bad manifest) is reported in one warning
line, deleted, and the video is tracked again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cache import cache_dir, file_digest
from .tracker import TrackedFrame

__all__ = ["CHUNK", "TrackCache"]

CHUNK = 256
_VERSION = "1"
_CUTS = (None, "first", "shot", "jump", "found", "identity")
log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pack(frames: list[TrackedFrame], n_landmarks: int, n_shape: int) -> dict:
    lm = np.full((len(frames), n_landmarks, 2), np.nan, np.float32)
    shape = np.full((len(frames), n_shape), np.nan, np.float32)
    for i, f in enumerate(frames):
        if f.landmarks is not None:
            lm[i] = f.landmarks
        if f.shape is not None:
            shape[i] = f.shape
    return {"index": np.array([f.index for f in frames], np.int64),
            "tracked": np.array([f.tracked for f in frames], bool),
            "rotation": np.stack([f.rotation for f in frames]).astype(np.float32),
            "translation": np.stack([f.translation for f in frames]).astype(np.float32),
            "expression": np.stack([f.expression for f in frames]).astype(np.float32),
            "error_px": np.array([f.error_px for f in frames], np.float32),
            "face_size": np.array([f.face_size for f in frames], np.float32),
            "segment": np.array([f.segment for f in frames], np.int64),
            "identity": np.array([f.identity for f in frames], np.int64),
            "cut": np.array([_CUTS.index(f.cut) for f in frames], np.int8),
            "landmarks": lm, "shape": shape, "focal": np.array([f.focal for f in frames], np.float64)}


def _unpack(z) -> Iterator[TrackedFrame]:
    for i in range(len(z["index"])):
        lm, shape = z["landmarks"][i], z["shape"][i]
        yield TrackedFrame(int(z["index"][i]), bool(z["tracked"][i]), z["rotation"][i], z["translation"][i],
                           z["expression"][i], float(z["error_px"][i]), float(z["face_size"][i]),
                           int(z["segment"][i]), _CUTS[int(z["cut"][i])],
                           None if np.isnan(lm).any() else lm, int(z["identity"][i]),
                           None if np.isnan(shape).any() else shape, float(z["focal"][i]))


class TrackCache:
    """The cache entry of ``video`` tracked with ``settings_key`` (which must name everything the
    tracked frames depend on: tracking and fitting settings, face index)."""


    def __init__(self, video: str | os.PathLike, settings_key: str, entry: Path | None = None):
        self.video = Path(video)
        if entry is None:  # ``entry``: a folder of one's own instead (a run-private store)
            key = hashlib.sha256(f"{_VERSION}|{file_digest(video)}|{settings_key}".encode()).hexdigest()[:32]
            entry = cache_dir() / f"track-{key}"
        self.entry = Path(entry)

    def frames(self) -> Iterator[TrackedFrame] | None:
        """The cached frames (checked up front, then read a chunk at a time), or None on a miss."""
        if not self.entry.is_dir():
            return None
        try:
            chunks = self._check()
        except DataError as exc:
            log.warning("track cache entry %s for %s is damaged (%s); discarding it and tracking again",
                        self.entry, self.video, exc)
            shutil.rmtree(self.entry, ignore_errors=True)
            return None
        return self._read(chunks)

    def _check(self) -> list[Path]:
        try:
            manifest = json.loads((self.entry / "manifest.json").read_text())
            chunks = [(self.entry / c["file"], c["sha256"], int(c["frames"])) for c in manifest["chunks"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"unreadable manifest: {exc}") from None
        if sum(n for _, _, n in chunks) != manifest.get("frames"):
            raise DataError("the manifest's frame counts disagree")
        for path, digest, _ in chunks:
            if path.parent != self.entry or not path.is_file() or _sha256(path) != digest:
                raise DataError(f"chunk {path.name} is missing or altered")
        return [p for p, _, _ in chunks]

    @staticmethod
    def _read(chunks: list[Path]) -> Iterator[TrackedFrame]:
        for path in chunks:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            yield from _unpack(arrays)

    def writer(self) -> TrackWriter:
        return TrackWriter(self.entry)


class TrackWriter:
    """``add(frame)`` as frames are tracked, ``commit()`` when the video is done (``abort()``
    otherwise). Holds at most one chunk of frames; creates nothing on disk before its first chunk."""

    def __init__(self, entry: Path):
        self.entry = entry
        self._chunks: list[dict] = []
        self._buffer: list[TrackedFrame] = []
        self._n_landmarks = self._n_shape = None
        self._target = None
        self._failed = False   # an unwritable cache only costs time: stop trying

    def add(self, frame: TrackedFrame) -> None:
        if self._failed:
            return
        if frame.landmarks is not None and self._n_landmarks is None:
            self._n_landmarks = len(frame.landmarks)
        if frame.shape is not None and self._n_shape is None:
            self._n_shape = len(frame.shape)
        self._buffer.append(frame)
        if len(self._buffer) >= CHUNK:
            self._write()

    def _write(self) -> None:
        from ..media.atomic import AtomicPath

        if not self._buffer or self._failed:
            return
        name = f"chunk-{len(self._chunks):05d}.npz"
        try:
            if self._target is None:
                self.entry.parent.mkdir(parents=True, exist_ok=True)
                self._target = AtomicPath(self.entry, directory=True)
            path = self._target.tmp / name
            with open(path, "wb") as fh:
                np.savez(fh, **_pack(self._buffer, self._n_landmarks or 478, self._n_shape or 50))
        except OSError:
            self.abort()
            return
        self._chunks.append({"file": name, "sha256": _sha256(path), "frames": len(self._buffer)})
        self._buffer = []

    def commit(self) -> None:
        self._write()
        if self._target is None:
            return
        frames = sum(c["frames"] for c in self._chunks)
        try:
            (self._target.tmp / "manifest.json").write_text(json.dumps({"frames": frames, "chunks": self._chunks}))
            self._target.commit()
        except OSError:
            self.abort()
        self._target = None
        self._failed = True  # done: nothing more is written

    def abort(self) -> None:
        self._failed = True
        if self._target is not None:
            self._target.abort()
            self._target = None
