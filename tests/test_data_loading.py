"""Frames read memory-mapped (data/frames.py): the samples equal a plain read, and one sample
reads only its own frames' pages from disk (checked with the page cache itself: mincore)."""
from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from fgp_fast.data import ClipDataset
from fgp_fast.data.frames import FrameFile
from fgp_fast.data.synthetic import random_dataset
from fgp_fast.errors import DataError

PAGE = mmap.PAGESIZE


@pytest.mark.parametrize("frames", [1, 5])
def test_memmapped_samples_equal_a_plain_read(tmp_path, frames):
    seed = int(np.random.default_rng().integers(1 << 20))
    root = random_dataset(tmp_path, clips=3, frames=12, size=16, seed=seed)
    ds = ClipDataset(root, frames=frames, seed=seed)
    assert all(isinstance(f, FrameFile) for f in ds.images)
    plain = [np.load(root / "clips" / c / "frames.npy") for c in ds.clips]  # the whole file, read()
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned loader worker gets
    assert all(isinstance(f, FrameFile) and f.path == g.path for f, g in zip(copy.images, ds.images))
    for i in np.random.default_rng(seed).integers(0, 1 << 30, 20):
        s = ds.sample(int(i))
        want = torch.from_numpy(plain[s["clip"]][s["frames"]]).permute(0, 3, 1, 2).float() / 255
        assert s["target"].shape == (frames, 3, 16, 16)
        assert torch.equal(s["source"], want[0]) and torch.equal(s["target"], want[1:])
        c = copy.sample(int(i))
        assert torch.equal(c["source"], s["source"]) and torch.equal(c["target"], s["target"])
    # repeated and unsorted indices, as a batch may ask
    f = ds.images[1]
    assert np.array_equal(f.read([7, 2, 7, 3]), plain[1][[7, 2, 7, 3]])


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _resident(path) -> set[int]:
    """The pages of ``path`` now in the page cache (mincore of a fresh mapping, no page touched)."""
    libc, size = _libc(), os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        vec = ctypes.create_string_buffer((size + PAGE - 1) // PAGE)
        rc = libc.mincore(addr, size, vec)
        libc.munmap(addr, size)
        assert rc == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    return set(np.flatnonzero(np.frombuffer(vec.raw, np.uint8) & 1).tolist())


def _evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _pages(f: FrameFile, frames) -> set[int]:
    out = set()
    for k in frames:
        lo = f.offset + k * f.frame_bytes
        out |= set(range(lo // PAGE, (lo + f.frame_bytes - 1) // PAGE + 1))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-cache residency via mincore/fadvise: Linux")
@pytest.mark.parametrize("frames", [1, 8])
def test_one_sample_reads_only_its_frames(tmp_path, frames):
    """After the clips are dropped from the page cache, one sample brings back exactly the pages of
    its own frames (no read-around, no other clip), stage 1 (2 frames) and stage 2 (1 + 8)."""
    seed = int(np.random.default_rng().integers(1 << 20))
    root = random_dataset(tmp_path, clips=3, frames=150, size=64, seed=seed)  # 1.8 MB per clip, 12 KiB per frame
    ds = ClipDataset(root, frames=frames, seed=seed)
    paths = [f.path for f in ds.images]
    for p in paths:
        _evict(p)
    if any(_resident(p) for p in paths):
        pytest.skip("this filesystem keeps the pages cached (tmpfs?): residency cannot be measured")
    s = ds.sample(int(np.random.default_rng(seed).integers(1 << 30)))
    c = s["clip"]
    got = _resident(paths[c])
    want = _pages(ds.images[c], s["frames"])
    assert got == want, (sorted(got - want)[:10], sorted(want - got)[:10])
    assert len(got) < 0.1 * os.path.getsize(paths[c]) / PAGE
    assert all(not _resident(p) for i, p in enumerate(paths) if i != c)
    # the measurement can fail: a whole read (np.load without a map) brings every page in
    np.load(paths[c])
    assert len(_resident(paths[c])) == (os.path.getsize(paths[c]) + PAGE - 1) // PAGE


def test_frame_file_refuses_bad_files(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((4, 8, 8, 3), np.uint8))
    f = FrameFile(good)
    assert len(f) == 4 and f.shape == (4, 8, 8, 3)
    with pytest.raises(IndexError, match="out of range"):
        f.read([0, 4])
    with pytest.raises(IndexError, match="out of range"):
        f.read([-1])
    cases = {"float.npy": np.zeros((4, 8, 8, 3), np.float32), "flat.npy": np.zeros((4, 8), np.uint8),
             "fortran.npy": np.asfortranarray(np.zeros((4, 8, 8, 3), np.uint8)),
             "empty.npy": np.zeros((0, 8, 8, 3), np.uint8)}
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(DataError, match="expected"):
            FrameFile(tmp_path / name)
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        FrameFile(cut)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not an array at all" * 10)
    with pytest.raises(DataError, match="not a readable .npy"):
        FrameFile(junk)


def test_dataset_reports_bad_frames_as_data_error(tmp_path):
    root = random_dataset(tmp_path, clips=2, frames=6, size=16, seed=0)
    np.save(root / "clips" / "random0_00001" / "frames.npy", np.zeros((6, 16, 16, 3), np.float32))
    with pytest.raises(DataError, match="random0_00001: unreadable.*uint8"):
        ClipDataset(root)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts open descriptors in /proc/self/fd")
def test_open_maps_are_bounded(tmp_path, monkeypatch):
    """More clips than MAX_OPEN: at most that many maps (file descriptors) open at once, each
    reopened when read again, the samples unchanged."""
    from fgp_fast.data import frames as frames_module

    monkeypatch.setattr(frames_module, "MAX_OPEN", 3)
    root = random_dataset(tmp_path, clips=8, frames=6, size=16, seed=1)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    ds = ClipDataset(root, frames=2, seed=1)
    assert not any(f.is_open for f in ds.images) and fds() == before  # nothing mapped until read
    plain = [np.load(root / "clips" / c / "frames.npy") for c in ds.clips]
    for i in range(40):
        s = ds.sample(i)
        assert torch.equal(s["source"], torch.from_numpy(plain[s["clip"]][s["frames"][0]]).permute(2, 0, 1) / 255)
        assert sum(f.is_open for f in ds.images) <= 3
        assert fds() <= before + 3
    # a clip rewritten while the dataset is open is refused, not mixed
    f = ds.images[0]
    f.close()
    np.save(f.path, np.zeros((6, 16, 16, 3), np.uint8))
    with pytest.raises(DataError, match="changed on disk"):
        f.read([0])
