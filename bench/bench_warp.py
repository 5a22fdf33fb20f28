"""Benchmark of the warp renderer on the sample portrait: per-stage cost, tears, temporal steadiness.

The astronaut portrait is fitted as ``fgp demo`` does, then rendered over a yaw sweep (+-30 deg)
and a pitch sweep (+-20 deg), 1 degree apart, plus jawOpen and blink frames. Reported per size:

- ms/frame per stage (median over the frames): raster (the target's coarse z-buffer), mesh (the
  control mesh), map (rasterising its displacement), remap (sampling the source), fill (mouth and
  eyes), and the whole ``render``; anchors measured in the same run: one cv2.remap of the frame and
  one full-resolution raster of the head mesh (what ``WarpResult.mask``/``valid`` cost when read);
- the tear metric: the largest fraction of pixels whose local area ratio is outside [0.1, 10];
- steadiness: between frames 1 degree apart, the 99.9th percentile and the maximum of how far any
  pixel's source point moves (popping control points would show as jumps);
- the load average, since the machine is shared.

    python bench/bench_warp.py                     # 256 and 512, 1 thread
    python bench/bench_warp.py --sizes 512 --threads 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

STAGES = ("raster", "mesh", "map", "remap", "fill")


def fit_portrait(size: int):
    from fgp_fast.samples import astronaut_portrait
    from fgp_fast.fitting import FitSettings, fit_image
    from fgp_fast.heads import load_head_model
    from fgp_fast.landmarks import detect_image

    head = load_head_model("ict")
    image, _ = astronaut_portrait(size)
    fit = fit_image(head, detect_image(image, "astronaut"), size, size, FitSettings())
    return head, image, fit.head_params(head), fit.camera()


def targets(head, params):
    """(name, vertices) for the sweeps and the expression frames."""
    from fgp_fast.heads import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle
    from fgp_fast.render import close_lids

    R0 = axis_angle_to_matrix(params.pose[:, 3:6].double())

    def turn(yaw, pitch):
        R = euler_to_matrix(torch.tensor(float(yaw)), torch.tensor(float(pitch)), torch.tensor(0.0)).double() @ R0
        pose = params.pose.clone()
        pose[:, 3:6] = matrix_to_axis_angle(R).float()
        return head(params.replace(pose=pose))

    out = [(f"yaw{y:+d}", turn(y, 0)) for y in range(-30, 31)]
    out += [(f"pitch{p:+d}", turn(0, p)) for p in range(-20, 21)]
    names = head.expression_names
    for k, (channels) in enumerate([{"jawOpen": 0.3}, {"jawOpen": 0.6}, {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}]):
        e = params.expression.clone()
        for n, v in channels.items():
            e[0, names.index(n)] += v
        out.append((",".join(channels), head(params.replace(expression=close_lids(e, names)))))
    return out


def bench_size(size: int, repeats: int) -> dict:
    import cv2

    from fgp_fast.ops import rasterize
    from fgp_fast.render import WarpRenderer, tear_fraction

    head, image, params, camera = fit_portrait(size)
    verts = head(params)
    source = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    start = time.perf_counter()
    renderer = WarpRenderer(source, verts, head.faces, camera, backend="auto")
    setup = time.perf_counter() - start
    frames = targets(head, params)
    renderer.render(frames[0][1])  # warm-up
    stage = {s: [] for s in STAGES}
    total, tears, maps = [], {}, {}
    for _ in range(repeats):
        for name, v in frames:
            t = {}
            start = time.perf_counter()
            res = renderer.render(v, timings=t)
            total.append(time.perf_counter() - start)
            for s in STAGES:
                stage[s].append(t.get(s, 0.0))
            tears[name] = tear_fraction(res.backward_map)
            maps[name] = res.backward_map[0]
    # Steadiness over the 1-degree sweeps.
    jumps = []
    for prefix, lo, hi in (("yaw", -30, 30), ("pitch", -20, 20)):
        for a in range(lo, hi):
            d = (maps[f"{prefix}{a + 1:+d}"] - maps[f"{prefix}{a:+d}"]).norm(dim=-1)
            jumps.append(d.flatten())
    jumps = torch.cat(jumps)
    # Anchors in the same run.
    src = np.ascontiguousarray(image.astype(np.float32) / 255)
    xy = np.ascontiguousarray(renderer._base.numpy() - 0.5)  # noqa: SLF001 -- the still map, as a remap input
    remap = []
    for _ in range(20):
        start = time.perf_counter()
        cv2.remap(src, xy, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        remap.append(time.perf_counter() - start)
    full = []
    for _ in range(5):
        start = time.perf_counter()
        rasterize(frames[10][1], head.faces, camera, backend="auto")
        full.append(time.perf_counter() - start)
    ms = lambda xs: round(1e3 * statistics.median(xs), 2)  # noqa: E731
    worst = max(tears, key=tears.get)
    return {
        "size": size, "frames": len(frames) * repeats, "setup_s": round(setup, 2),
        "ms_per_frame": {**{s: ms(stage[s]) for s in STAGES}, "render": ms(total)},
        "render_p95_ms": round(1e3 * float(np.quantile(total, 0.95)), 2),
        "anchor_ms": {"cv2_remap_frame": ms(remap), "full_res_head_raster": ms(full)},
        "tear_fraction_max": tears[worst], "tear_worst_frame": worst,
        "tear_fraction_mean": float(np.mean(list(tears.values()))),
        "step_1deg_px": {"p99.9": round(float(np.quantile(jumps.numpy(), 0.999)), 3), "max": round(float(jumps.max()), 3)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    results = {"threads": args.threads, "load_before": os.getloadavg(), "sizes": []}
    for size in args.sizes:
        r = bench_size(size, args.repeats)
        results["sizes"].append(r)
        print(json.dumps(r))
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
