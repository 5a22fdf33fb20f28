"""Videos -> training dataset (layout: see ``fgp_fast.data``). Bad clips are skipped and reported."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ..errors import InputError

__all__ = ["VIDEO_EXTENSIONS", "PrepareReport", "prepare"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MANIFEST = "manifest.json"


@dataclass
class PrepareReport:
    prepared: list[str] = field(default_factory=list)     # clip names written now
    reused: list[str] = field(default_factory=list)       # clip names already complete (resume)
    skipped: list[dict] = field(default_factory=list)     # {"video", "reason"}


def _clip_name(video: Path, root: Path) -> str:
    rel = video.relative_to(root).with_suffix("")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(rel).replace(os.sep, "__"))


def _crop_box(landmarks: np.ndarray, height: int, width: int, margin: float) -> tuple[int, int, int]:
    """One square box (x0, y0, side) that holds the face in every frame of the clip."""
    lo, hi = landmarks.reshape(-1, 2).min(0), landmarks.reshape(-1, 2).max(0)
    centre = (lo + hi) / 2
    side = round(float((hi - lo).max()) * margin)
    side = max(8, min(side, height, width))
    x0 = int(np.clip(round(centre[0] - side / 2), 0, width - side))
    y0 = int(np.clip(round(centre[1] - side / 2 - 0.05 * side), 0, height - side))
    return x0, y0, side


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def _prepare_clip(video: Path, out: Path, size: int, min_frames: int, max_frames: int, margin: float,
                  fit_settings, min_tracked: float) -> dict:
    """Raises ValueError with the reason when the clip is unusable."""
    from ..fitting import fill_gaps, fit_sequence
    from ..heads import load_head_model
    from ..landmarks import FaceLandmarker
    from ..media.video import read_video

    frames, fps = read_video(video)  # ValueError on a corrupt file
    frames = frames[:max_frames] if max_frames else frames
    if len(frames) < min_frames:
        raise InputError(f"too short: {len(frames)} frames < {min_frames}")
    H, W = frames[0].shape[:2]
    with FaceLandmarker(video=True) as lm:
        found = [lm.face(f) for f in frames]
    tracked = np.array([f is not None for f in found])
    if not tracked.any():
        raise InputError("no face found")
    if tracked.mean() < min_tracked:
        raise InputError(f"face found in only {tracked.sum()} of {len(frames)} frames")
    obs = np.stack([f if f is not None else np.zeros_like(found[int(np.argmax(tracked))]) for f in found])
    x0, y0, side = _crop_box(obs[tracked], H, W, margin)
    crops = np.stack([_resize(f[y0:y0 + side, x0:x0 + side], size) for f in frames])
    obs_crop = ((obs - np.float32([x0, y0])) * (size / side)).astype(np.float32)
    fit = fit_sequence(load_head_model("ict"), obs_crop, size, size, tracked, fit_settings)
    if not tracked.all():
        fit, _ = fill_gaps(fit)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "frames.npy", crops)
    fit.save(tmp / "params.npz")
    info = {"video": str(video), "box": [x0, y0, side], "frames": len(frames), "fps": fps,
            "tracked": int(tracked.sum())}
    (tmp / "clip.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return info


def prepare(videos: str | os.PathLike, out: str | os.PathLike, size: int = 512, min_frames: int = 8,
            max_frames: int = 0, margin: float = 1.8, fit_steps: int | None = None, min_tracked: float = 0.5,
            log: Callable[[str], None] = print) -> PrepareReport:
    """Prepare every video under ``videos`` into ``out``; returns what was done. Resumable."""
    from ..fitting import FitSettings

    videos, out = Path(videos), Path(out)
    if not videos.is_dir():
        raise FileNotFoundError(f"video directory not found: {videos}")
    if size % 8:
        raise InputError(f"size must be a multiple of 8, got {size}")
    files = sorted(p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    (out / "clips").mkdir(parents=True, exist_ok=True)
    settings = FitSettings() if fit_steps is None else FitSettings(steps=fit_steps, rigid_steps=min(60, fit_steps))
    report = PrepareReport()
    clips = []
    for i, video in enumerate(files):
        name = _clip_name(video, videos)
        target = out / "clips" / name
        if (target / "clip.json").is_file():
            info = json.loads((target / "clip.json").read_text())
            report.reused.append(name)
        else:
            try:
                info = _prepare_clip(video, target, size, min_frames, max_frames, margin, settings, min_tracked)
            except (ValueError, FileNotFoundError, OSError) as exc:
                report.skipped.append({"video": str(video), "reason": str(exc)})
                log(f"[{i + 1}/{len(files)}] skipped {video}: {exc}")
                continue
            report.prepared.append(name)
            log(f"[{i + 1}/{len(files)}] {name}: {info['frames']} frames")
        clips.append({"name": name, "frames": info["frames"], "fps": info["fps"], "video": info["video"]})
        _write_manifest(out, size, clips, report.skipped)  # after every clip: an interrupted run keeps its work
    _write_manifest(out, size, clips, report.skipped)
    return report


def _write_manifest(out: Path, size: int, clips: list, skipped: list) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"version": 1, "size": size, "clips": clips, "skipped": skipped}, indent=2))
    os.replace(tmp, out / MANIFEST)
