"""The driver tracker alone (issue 14 item 4): the initial joint identity fit and the per-frame
tracking cost, on MediaPipe landmarks of bench_offline.py's generated driver.

The driver (the astronaut loop drifting on a 1280x720 canvas) is made in memory and MediaPipe is run
on it once; then ``FrameTracker`` tracks the landmarks alone (one torch thread, as in the pipeline).

    python bench/bench_track.py                 # 300 frames
    python bench/bench_track.py --frames 600 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch


def driver_landmarks(frames: int, width: int = 1280, height: int = 720) -> list:
    from bench_offline import driver_frames  # this folder is on sys.path when run as a script

    from fgp_fast.landmarks import FaceLandmarker

    with FaceLandmarker(video=True) as lm:
        return [lm.face(img) for img in driver_frames(frames, width, height)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from fgp_fast.fitting.fit import Fitter, FitSettings
    from fgp_fast.fitting.tracker import IDENTITY_SETTINGS, FrameTracker
    from fgp_fast.heads import load_head_model

    torch.set_num_threads(1)
    pts = driver_landmarks(args.frames)
    if any(p is None for p in pts[:8]):
        raise SystemExit("MediaPipe found no face in the driver's first frames")
    head = load_head_model("ict")
    H, W = 720, 1280
    first = np.stack(pts[:8])
    t = time.perf_counter()
    fit = Fitter(head).fit(first, H, W, identity_only=True)  # as FrameTracker fits a segment
    cold = time.perf_counter() - t
    t = time.perf_counter()
    Fitter(head).fit(first, H, W, identity_only=True)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    Fitter(head, replace(IDENTITY_SETTINGS, focal=fit.focal)).fit(first, H, W, identity_only=True)
    check = time.perf_counter() - t
    tracker = FrameTracker(head, H, W)
    for i in range(12):  # the first segment (its identity fit) is timed above
        tracker.push(i, pts[i])
    t = time.perf_counter()
    for i in range(12, args.frames):
        tracker.push(i, pts[i])
    per_frame = (time.perf_counter() - t) / max(args.frames - 12, 1)
    r = {"frames": args.frames, "identity_fit_cold_s": cold, "identity_fit_warm_s": warm,
         "identity_check_s": check, "track_ms_per_frame": 1000 * per_frame,
         "identity_every": tracker.settings.identity_every, "load": os.getloadavg()}
    print(f"initial identity fit {cold:.2f} s (first in the process), {warm:.2f} s (again); periodic identity "
          f"check {check:.2f} s (every {r['identity_every']} frames); tracking {1000 * per_frame:.1f} ms/frame over "
          f"{args.frames - 12} frames, checks included; load {r['load'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=2)


if __name__ == "__main__":
    main()
