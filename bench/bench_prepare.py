"""`fgp prepare` throughput: clips/hour with 1 and N local workers on a small generated set.

The videos are the astronaut driver loop (``samples.driver_clip``: head turns and jaw opening),
``--clips`` clips of ``--frames`` frames from different offsets of the loop, every other one
mirrored, H.264. Each run prepares all of them from scratch (landmarks, crop, the warm-started
tracker with smoothing, frames.npy + params.npz) into a fresh folder; worker start-up is part
of the time, as it is for a user. Reports wall time, clips/hour, frames/s and the load average.

    python bench/bench_prepare.py                      # 8 clips x 48 frames, 256 px videos, 1 and 2 workers
    python bench/bench_prepare.py --clips 16 --workers 1 2 4 --json /tmp/prepare.json
    python bench/bench_prepare.py --clips 1 --frames 64 --workers 1 --anchor   # tracker vs batch fitter
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def make_videos(folder: Path, clips: int, frames: int, size: int, fps: float = 25.0) -> None:
    from fgp_fast.media import VideoWriter
    from fgp_fast.samples import driver_clip

    stride = 7
    loop = driver_clip(size, frames + stride * (clips - 1), fps)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(clips):
        part = loop[stride * k:stride * k + frames]
        with VideoWriter(folder / f"clip{k:03d}.mp4", fps, size, size) as w:
            for f in part:
                w.write(f[:, ::-1].copy() if k % 2 else f)


def fitter_anchor(video: Path, size: int, repeats: int = 2) -> dict:
    """ms per frame of the two fitters on one clip's landmarks (in its crop), interleaved, best of
    ``repeats``: the warm-started tracker prepare uses vs the batch fitter it replaced."""
    from fgp_fast.fitting import detect_landmarks, fit_landmarks, track_landmarks
    from fgp_fast.media import read_video

    frames, _ = read_video(video)
    obs, tracked = detect_landmarks(frames)
    obs = obs * (size / frames[0].shape[0])
    best = {"tracker": float("inf"), "batch": float("inf")}
    for _ in range(repeats):
        for name, fit in (("tracker", lambda: track_landmarks(obs, tracked, size, size)),
                          ("batch", lambda: fit_landmarks(obs, tracked, size, size))):
            t0 = time.perf_counter()
            fit()
            best[name] = min(best[name], 1000 * (time.perf_counter() - t0) / len(frames))
    return {f"{k}_ms_per_frame": v for k, v in best.items()} | {"frames": len(frames)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--video-size", type=int, default=256)
    p.add_argument("--size", type=int, default=128, help="prepared (training) resolution")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--anchor", action="store_true",
                   help="also time the tracker against the batch fitter on one clip (interleaved, best of 2)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from fgp_fast.data.prepare import prepare

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        videos = Path(tmp) / "videos"
        t0 = time.perf_counter()
        make_videos(videos, args.clips, args.frames, args.video_size)
        print(f"generated {args.clips} clips x {args.frames} frames ({args.video_size} px) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        for workers in args.workers:
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            report = prepare(videos, Path(tmp) / f"out{workers}", size=args.size, min_frames=8, workers=workers,
                             log=lambda s: None)
            seconds = time.perf_counter() - t0
            if len(report.prepared) != args.clips:
                raise SystemExit(f"only {len(report.prepared)} of {args.clips} clips prepared: {report.skipped}")
            row = {"workers": workers, "seconds": seconds, "clips_per_hour": 3600 * args.clips / seconds,
                   "frames_per_s": args.clips * args.frames / seconds, "load_before": load,
                   "load_after": os.getloadavg()[0]}
            rows.append(row)
            print(f"workers {workers}: {seconds:.1f} s, {row['clips_per_hour']:.0f} clips/hour, "
                  f"{row['frames_per_s']:.1f} frames/s (load {load:.2f} -> {row['load_after']:.2f})", flush=True)
        anchor = fitter_anchor(videos / "clip000.mp4", args.size) if args.anchor else None
        if anchor:
            print(f"one clip ({anchor['frames']} frames): tracker {anchor['tracker_ms_per_frame']:.0f} ms/frame, "
                  f"batch fitter {anchor['batch_ms_per_frame']:.0f} ms/frame (load {os.getloadavg()[0]:.2f})")
    result = {"clips": args.clips, "frames": args.frames, "video_size": args.video_size, "size": args.size,
              "cpus": os.cpu_count(), "rows": rows, "fitters": anchor}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
