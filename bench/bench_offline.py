"""Offline ``fgp animate`` benchmark: frames/s end to end (decode to encoded mp4), the per-stage
split, and peak RSS against the driver's length (issue 14, items 3 and 4).

The driver is generated: the bundled astronaut turning and talking (``samples.driver_clip``, a
2-second loop) placed, drifting, on a ``--driver-size`` canvas (720p by default), ``--frames`` long.
Each run is a fresh process (its peak RSS is its own), tracks afresh (``--no-cache``) into a private
cache folder, and animates the full astronaut photo (512 x 512; the head crop at ``--size``).

    python bench/bench_offline.py                           # 300 and 3000 frames of 720p, size 512
    python bench/bench_offline.py --frames 300 --size 512   # the fps / split run only
    python bench/bench_offline.py --frames 300 --blas default serial   # BLAS's own threads vs one

Stage seconds are busy time per stage (waits excluded; ``render`` is the render workers' own busy
time, summed, when animate forks them); stages overlap on the cores, so the wall time is below
their sum. Peak RSS is the main process's and, separately, a render worker's (each shares the
parent's pages until it writes them). Report the load average with the numbers (``uptime``): this machine is
shared.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """This process's own peak RSS (MB): /proc's VmHWM (render_worker.peak_rss_mb). (getrusage's
    ru_maxrss keeps the forking parent's resident size across exec, so a child started by a parent
    that had generated a large driver would report the parent's; it is only the fallback.)"""
    from fgp_fast.render_worker import peak_rss_mb as own

    mb = own()
    return mb if mb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def driver_frames(frames: int, width: int, height: int, fps: float = 25.0):
    """``frames`` (height, width, 3) uint8 frames: the astronaut loop on a grey canvas, drifting slowly."""
    from fgp_fast.samples import driver_clip

    side = min(height, width) * 3 // 5
    loop = driver_clip(side, frames=50, fps=fps)
    for i in range(frames):
        img = np.full((height, width, 3), 96, np.uint8)
        x = int((width - side) * (0.5 + 0.3 * np.sin(2 * np.pi * i / 400)))
        y = (height - side) // 2
        img[y:y + side, x:x + side] = loop[i % len(loop)]
        yield img


def make_driver(path: Path, frames: int, width: int, height: int, fps: float = 25.0) -> None:
    """:func:`driver_frames` written to ``path``, with a tone."""
    sys.path.insert(0, str(ROOT / "tests"))
    from clips import write_clip

    write_clip(path, driver_frames(frames, width, height, fps), fps, tone=440.0)


def child(args) -> None:
    """One animate run in this process: print its report as JSON."""
    from skimage import data

    from fgp_fast.animation import AnimateOptions, animate
    from fgp_fast.portrait import Portrait

    if args.blas == "serial":
        from fgp_fast.threads import serial_blas

        serial_blas()
    t0 = time.perf_counter()
    portrait = Portrait(data.astronaut(), "the astronaut", size=args.size)
    setup = time.perf_counter() - t0
    report = animate(portrait, args.driver, args.out, AnimateOptions(cache=False))
    print(json.dumps({"frames": report.frames, "seconds": report.seconds, "setup": setup,
                      "stages": report.stages, "width": report.width, "height": report.height,
                      "peak_rss_mb": peak_rss_mb(), "worker_peak_rss_mb": report.worker_peak_rss_mb}))


def run(driver: Path, size: int, workdir: Path, blas: str) -> dict:
    env = {**os.environ, "FGP_FAST_CACHE": str(workdir / "cache"), "GLOG_minloglevel": "3"}
    cmd = [sys.executable, __file__, "--child", "--driver", str(driver), "--size", str(size),
           "--out", str(workdir / "out.mp4"), "--blas", blas]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
    if done.returncode:
        raise RuntimeError(f"animate failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[300, 3000])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--driver-size", default="1280x720")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--blas", nargs="+", choices=("default", "serial"), default=["default"],
                   help="numpy/SciPy BLAS threads: the library's default pool, or serial (threads.serial_blas); "
                        "several: each run with each, to compare")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--driver", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    width, height = map(int, args.driver_size.split("x"))
    results = []
    with tempfile.TemporaryDirectory(prefix="fgp-bench-") as tmp:
        tmp = Path(tmp)
        for n in args.frames:
            driver = tmp / f"driver_{n}.mp4"
            t = time.perf_counter()
            make_driver(driver, n, width, height)
            made = time.perf_counter() - t
            for blas in args.blas:
                load = os.getloadavg()
                r = run(driver, args.size, tmp, blas)
                r.update(driver_frames=n, driver_size=args.driver_size, load_before=load,
                         load_after=os.getloadavg(), driver_seconds=made, blas=blas)
                results.append(r)
                worker = (f" (each render worker {r['worker_peak_rss_mb']:.0f} MB)"
                          if r.get("worker_peak_rss_mb") else "")
                split = ", ".join(f"{k} {1000 * v / r['frames']:.1f}" for k, v in r["stages"].items())
                print(f"{n} frames {args.driver_size} -> {r['width']}x{r['height']} (crop {args.size}, BLAS "
                      f"{blas}): {r['frames'] / r['seconds']:.1f} frames/s end to end ({r['seconds']:.1f} s; setup "
                      f"{r['setup']:.1f} s); busy ms/frame: {split}; peak RSS {r['peak_rss_mb']:.0f} MB{worker}; "
                      f"load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    for blas in args.blas:
        mine = [r for r in results if r["blas"] == blas]
        if len(mine) > 1:
            for key, what in (("peak_rss_mb", "peak RSS"), ("worker_peak_rss_mb", "render worker peak RSS")):
                a, b = mine[0].get(key), mine[-1].get(key)
                if a and b:
                    print(f"{what} {mine[0]['driver_frames']} vs {mine[-1]['driver_frames']} frames (BLAS {blas}): "
                          f"{a:.0f} MB vs {b:.0f} MB ({100 * (b - a) / a:+.1f}%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
