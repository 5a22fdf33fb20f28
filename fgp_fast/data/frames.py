"""A clip's ``frames.npy`` read memory-mapped: a sample reads only its own frames.

Plain ``np.load(mmap_mode="r")`` maps the file, but the kernel's read-around on a page fault
reads ``read_ahead_kb`` around it (8 MiB on many Linux disks): one frame of a random training
sample pulls in its neighbours, a small clip whole. :class:`FrameFile` maps the file with
``MADV_RANDOM`` (no read-around) and, for each sample, asks for exactly the byte ranges of its
frames (``MADV_WILLNEED``: one asynchronous read per run of consecutive frames, so a stage-2 clip
is still read in large requests, not page by page). The page cache is shared by every process
that maps the file (DataLoader workers); a pickled FrameFile carries only its path and reopens.

A map holds a file descriptor, and a large set has more clips than a process may open files
(often 1024): a file is mapped when first read, and at most ``MAX_OPEN`` maps per process stay
open (least recently read closed first, reopened when read again).
"""
from __future__ import annotations

import mmap
import os
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["FrameFile"]

_PAGE = mmap.PAGESIZE
MAX_OPEN = 256
_open: OrderedDict[int, weakref.ref] = OrderedDict()  # id -> FrameFiles whose maps are open, oldest first


class FrameFile:
    """``FrameFile(path)``: the (T, S, S, 3) uint8 frames of a ``.npy`` file; ``read(indices)`` ->
    a (len(indices), S, S, 3) array of those frames (a copy); ``len()``, ``shape``. Raises
    DataError when the file is not a C-ordered 4-D uint8 ``.npy`` or is shorter than its header says."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            fmt = np.lib.format
            try:
                version = fmt.read_magic(fh)
                header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
                if header is None:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = header(fh)
            except ValueError as exc:
                raise DataError(f"{self.path}: not a readable .npy file ({exc})") from None
            offset = fh.tell()
            if dtype != np.uint8 or len(shape) != 4 or fortran or not shape[0]:
                raise DataError(f"{self.path}: frames are {dtype} {shape}{' (Fortran order)' if fortran else ''}, "
                                f"expected (T, S, S, 3) uint8 in C order, at least one frame")
            self.shape = tuple(int(s) for s in shape)
            self.frame_bytes = int(np.prod(self.shape[1:]))
            need = offset + self.shape[0] * self.frame_bytes
            if os.fstat(fh.fileno()).st_size < need:
                raise DataError(f"{self.path}: truncated ({os.fstat(fh.fileno()).st_size} bytes, header says {need})")
            self.offset, self.nbytes = offset, need
        self._map = self._frames = None
        self._stat = _identity(self.path)

    def _mapped(self) -> np.ndarray:
        """The frames as an array on the map (opened now if it is not), marked most recently used."""
        if self._map is None:
            if _identity(self.path) != self._stat:
                raise DataError(f"{self.path} changed on disk while the dataset was open")
            while len(_open) >= MAX_OPEN:
                oldest = _open.popitem(last=False)[1]()
                if oldest is not None:  # (a FrameFile that is gone took its map with it)
                    oldest.close()
            with open(self.path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), self.nbytes, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_RANDOM"):  # Linux, macOS: no read-around
                self._map.madvise(mmap.MADV_RANDOM)
            self._frames = np.ndarray(self.shape, np.uint8, buffer=self._map, offset=self.offset)
        _open[id(self)] = weakref.ref(self)
        _open.move_to_end(id(self))
        return self._frames

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, indices) -> np.ndarray:
        idx = np.asarray(indices, np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"frame indices {idx.tolist()} out of range for {len(self)} frames in {self.path}")
        frames = self._mapped()
        if hasattr(mmap, "MADV_WILLNEED"):
            for start, stop in _runs(np.unique(idx)):
                lo = self.offset + start * self.frame_bytes
                hi = self.offset + stop * self.frame_bytes
                a = lo - lo % _PAGE  # madvise needs a page-aligned start
                self._map.madvise(mmap.MADV_WILLNEED, a, hi - a)
        return frames[idx]  # fancy indexing: copies exactly these frames out of the map

    @property
    def is_open(self) -> bool:
        return self._map is not None

    def close(self) -> None:
        """Unmap (a later ``read`` maps the file again)."""
        _open.pop(id(self), None)
        self._frames = None  # reads return copies: nothing else holds the map's buffer
        if self._map is not None:
            self._map.close()
            self._map = None

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"FrameFile({str(self.path)!r}, shape={self.shape})"


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _runs(sorted_indices: np.ndarray):
    """(start, stop) of each run of consecutive integers."""
    if not len(sorted_indices):
        return
    breaks = np.flatnonzero(np.diff(sorted_indices) != 1) + 1
    for run in np.split(sorted_indices, breaks):
        yield int(run[0]), int(run[-1]) + 1
