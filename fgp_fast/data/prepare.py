"""Videos -> training dataset (layout: see ``fgp_fast.data``). Bad clips are skipped and reported.

The per-clip work is one function, :func:`prepare_clip` (a video in, a finished clip folder and
its manifest entry out), run in this process, a local process pool (``workers``) or as Ray tasks
(``engine="ray"``, ``address`` of a cluster); see ``engines.py``. :func:`prepare` walks a folder,
resumes finished clips, removes what dead writers left and merges the manifest (atomically, after
every finished clip and at the end, in the videos' order whatever order clips finish in).
One ``prepare`` per dataset folder at a time (a lock file refuses a second one on this machine).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..progress import Progress

__all__ = ["VIDEO_EXTENSIONS", "PrepareReport", "PrepareSettings", "clip_name", "finished_clip", "prepare",
           "prepare_clip"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PrepareSettings:
    size: int = 512               # training resolution (square, a multiple of 8)
    min_frames: int = 8           # shorter clips are skipped
    max_frames: int = 0           # keep at most this many frames per clip (0: all)
    margin: float = 1.8           # crop side / the face's landmark extent over the clip
    fit_steps: int | None = None  # identity-fit iterations (None: the fitter's default)
    min_tracked: float = 0.5      # fraction of frames that must have a face
    smoothing: int = 3            # half-width in frames of the tracker's smoothing window (0: none)

    def check(self) -> None:
        if not isinstance(self.size, int) or self.size < 8 or self.size % 8:
            raise InputError(f"size must be a positive multiple of 8, got {self.size}")
        if not isinstance(self.min_frames, int) or self.min_frames < 2:
            raise InputError(f"min_frames must be an integer >= 2, got {self.min_frames}")
        if not isinstance(self.max_frames, int) or self.max_frames < 0:
            raise InputError(f"max_frames must be an integer >= 0 (0: all frames), got {self.max_frames}")
        if self.max_frames and self.max_frames < self.min_frames:
            raise InputError(f"max_frames ({self.max_frames}) is below min_frames ({self.min_frames}): "
                             f"every clip would be skipped")
        if not (isinstance(self.margin, (int, float)) and 1.0 <= self.margin <= 10.0):
            raise InputError(f"margin must be in [1, 10], got {self.margin}")
        if self.fit_steps is not None and (not isinstance(self.fit_steps, int) or self.fit_steps < 1):
            raise InputError(f"fit_steps must be an integer >= 1, got {self.fit_steps}")
        if isinstance(self.smoothing, bool) or not isinstance(self.smoothing, int) or not 0 <= self.smoothing <= 30:
            raise InputError(f"smoothing must be an integer in [0, 30] (frames), got {self.smoothing}")
        if not 0.0 < self.min_tracked <= 1.0:
            raise InputError(f"min_tracked must be in (0, 1], got {self.min_tracked}")

    def fit_settings(self):
        from ..fitting import FitSettings

        if self.fit_steps is None:
            return FitSettings()
        return FitSettings(steps=self.fit_steps, rigid_steps=min(60, self.fit_steps))


@dataclass
class PrepareReport:
    prepared: list[str] = field(default_factory=list)     # clip names written now
    reused: list[str] = field(default_factory=list)       # clip names already complete (resume)
    skipped: list[dict] = field(default_factory=list)     # {"video", "reason"}


def clip_name(video: Path, root: Path) -> str:
    """A readable, collision-free folder name: the sanitised relative path plus a short hash of the
    exact relative path (``a b.mp4`` / ``a_b.mp4``, ``clip.mp4`` / ``clip.mkv`` and ``sub/x.mp4`` /
    ``sub__x.mp4`` all differ)."""
    import hashlib
    import re

    rel = video.relative_to(root).as_posix()
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(rel).with_suffix("")).replace("/", "__"))[:80]
    return f"{readable}-{hashlib.sha256(rel.encode()).hexdigest()[:10]}"


def finished_clip(folder: Path, size: int) -> dict | None:
    """The clip.json entry of a complete clip folder of this size, or None when it is missing,
    damaged or of another size."""
    try:
        info = json.loads((folder / "clip.json").read_text())
    except (OSError, ValueError):
        return None
    keys = ("video", "frames", "fps")
    if not isinstance(info, dict) or any(k not in info for k in keys) or not isinstance(info["frames"], int) \
            or info.get("size") != size or not all((folder / n).is_file() for n in ("frames.npy", "params.npz")):
        return None
    return info


def prepare_clip(video: str | os.PathLike, out_dir: str | os.PathLike, settings: PrepareSettings) -> dict:
    """One video -> the finished clip folder ``out_dir`` (written atomically) -> its clip.json entry.

    The head is followed by the offline path's tracker (``fitting.track_landmarks``: identity
    fitted once, warm-started frames, windowed smoothing, cuts found by ``scene_change``); a clip
    that turns into another person is kept up to that frame. Raises InputError (or OSError) with
    the reason when the video is unusable: unreadable, too short, or without a face in enough frames.
    """
    from ..fitting import detect_landmarks, track_landmarks
    from ..fitting.tracker import scene_change, thumbnail
    from ..landmarks import face_box
    from ..media import atomic_write, read_video, resize

    video, out_dir = Path(video), Path(out_dir)
    frames, fps = read_video(video)
    frames = frames[:settings.max_frames] if settings.max_frames else frames
    if len(frames) < settings.min_frames:
        raise InputError(f"too short: {len(frames)} frames < {settings.min_frames}")
    H, W = frames[0].shape[:2]
    obs, tracked = detect_landmarks(frames, name=str(video))
    if tracked.mean() < settings.min_tracked:
        raise InputError(f"face found in only {tracked.sum()} of {len(frames)} frames")
    x0, y0, side = face_box(obs[tracked], H, W, settings.margin)
    size = settings.size
    crops = np.stack([resize(f[y0:y0 + side, x0:x0 + side], size, size) for f in frames])
    obs_crop = ((obs - np.float32([x0, y0])) * (size / side)).astype(np.float32)
    thumbs = [thumbnail(f) for f in crops]
    shots = np.array([i > 0 and scene_change(thumbs[i - 1], thumbs[i]) for i in range(len(crops))])
    fit, stop = track_landmarks(obs_crop, tracked, size, size, settings=settings.fit_settings(),
                                smoothing=settings.smoothing, shots=shots)
    if stop < len(frames):
        if stop < settings.min_frames:
            raise InputError(f"another person from frame {stop}: {stop} frames of the first < {settings.min_frames}")
        crops, tracked = crops[:stop], tracked[:stop]
    if tracked.mean() < settings.min_tracked:
        raise InputError(f"face found in only {tracked.sum()} of {len(crops)} frames")
    info = {"video": str(video), "box": [x0, y0, side], "size": size, "frames": len(crops), "fps": fps,
            "tracked": int(tracked.sum())}
    if stop < len(frames):
        info["cut_at"] = stop  # the frames after are another person's
    with atomic_write(out_dir, directory=True) as tmp:
        np.save(tmp / "frames.npy", crops)
        fit.save(tmp / "params.npz")
        (tmp / "clip.json").write_text(json.dumps(info, indent=2))
    return info


def prepare(videos: str | os.PathLike, out: str | os.PathLike, settings: PrepareSettings | None = None,
            log: Callable[[str], None] = print, workers: int = 1, engine: str = "local",
            address: str | None = None, retries: int = 2, progress: Progress | None = None,
            **options) -> PrepareReport:
    """Prepare every video under ``videos`` into ``out``; returns what was done. Resumable.

    ``settings`` (or its fields as keyword ``options``): see :class:`PrepareSettings`.
    ``workers``: local processes (engine "local") or Ray CPUs of a local instance (engine "ray"
    without ``address``). ``retries``: reruns of a clip whose worker died. ``progress("clips",
    done, total)`` after each clip (reused ones count as done from the start).
    """
    from .engines import check_engine, clean_temporaries, run_local, run_pool, run_ray

    settings = settings or PrepareSettings(**options)
    settings.check()
    check_engine(engine, workers, address)
    videos, out = Path(videos), Path(out)
    if not videos.is_dir():
        raise FileNotFoundError(f"video directory not found: {videos}")
    files = sorted(p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    (out / "clips").mkdir(parents=True, exist_ok=True)
    with _Lock(out / ".prepare.lock"):
        for p in clean_temporaries(out / "clips"):
            log(f"removed {p.name}: left by a writer that died")
        report = PrepareReport()
        order = {clip_name(v, videos): i for i, v in enumerate(files)}
        clips: dict[str, dict] = {}  # name -> manifest entry: one entry per clip, whatever happens
        jobs = []
        for video in files:
            name = clip_name(video, videos)
            target = out / "clips" / name
            info = finished_clip(target, settings.size)
            if info is not None:
                report.reused.append(name)
                clips[name] = _entry(name, info)
                continue
            if target.exists():
                log(f"{name}: the clip folder is incomplete, damaged or of another size; preparing it again")
            jobs.append((video, target, name))
        _write_manifest(out, settings.size, clips, order, report.skipped)  # resume: the merged state first
        if progress:
            progress("clips", len(report.reused), len(files))
        if engine == "ray":
            results = run_ray(jobs, settings, workers, address, retries, log)
        elif workers > 1 and len(jobs) > 1:
            results = run_pool(jobs, settings, min(workers, len(jobs)), retries, log)
        else:
            results = run_local(jobs, settings)
        for done, ((video, _, name), (status, value)) in enumerate(results, 1):
            if status == "ok":
                report.prepared.append(name)
                clips[name] = _entry(name, value)
                log(f"[{done}/{len(jobs)}] {name}: {value['frames']} frames")
            else:
                report.skipped.append({"video": str(video), "reason": value})
                log(f"[{done}/{len(jobs)}] skipped {video}: {value}")
            _write_manifest(out, settings.size, clips, order, report.skipped)  # an interrupted run keeps its work
            if progress:
                progress("clips", len(report.reused) + done, len(files))
        clean_temporaries(out / "clips")
        report.skipped.sort(key=lambda s: s["video"])
        _write_manifest(out, settings.size, clips, order, report.skipped)
    return report


def _entry(name: str, info: dict) -> dict:
    return {"name": name, "frames": info["frames"], "fps": info["fps"], "video": info["video"]}


class _Lock:
    """An exclusive lock on a file (fcntl, this machine): a second ``prepare`` of the same folder is refused."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.fh = open(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise InputError(f"another fgp prepare is writing {self.path.parent}; wait for it or use another --out") \
                from None
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _write_manifest(out: Path, size: int, clips: dict, order: dict, skipped: list) -> None:
    from ..media import atomic_write

    entries = sorted(clips.values(), key=lambda c: order.get(c["name"], len(order)))
    with atomic_write(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"version": 1, "size": size, "clips": entries, "skipped": skipped}, indent=2))
