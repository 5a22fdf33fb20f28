"""Benchmark of the Triton encoder (fgp_fast.ops.triton) beside the CUDA backend and torch baselines.

ICT head (``load_head_model("ict")``): source = neutral, target = jawOpen 0.6 + 10 deg yaw about
the head centre; 512x512, N=20, fp16 output. GPU timings are CUDA events, medians after warm-up,
with rotating target poses (no frame repeats the previous frame's inputs). Rows:

  triton encode (raster + encode)    ops.FlowEncoder(backend="triton")(..., out=) end to end
  triton rasterize (part)            the rasteriser the Triton backend uses, alone
  cuda fused encode                  ops.FlowEncoder(backend="cuda"), if the cuda backend is built
  torch reference flow_encode        fgp_fast.ops.reference (clustered culling in torch), few reps
  torch brute force (scaled)         every triangle per sample, timed on a slice, scaled to a frame

It also checks the Triton flow against the CUDA one (and both against the reference on a pixel
subset) and records the autotuned block sizes. ``--device cpu`` (with TRITON_INTERPRET=1 and a
tiny --size) is a smoke test of this script only; its timings mean nothing.

    python bench/bench_triton.py --json $OUT/bench_triton.json
    TRITON_INTERPRET=1 python bench/bench_triton.py --device cpu --size 16 --n 2 --repeat 1
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch

from fgp_fast import ops
from fgp_fast.camera import Camera
from fgp_fast.heads import load_head_model
from fgp_fast.ops import reference
from fgp_fast.ops import triton as triton_backend


def yaw(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def ict_meshes():
    """(source neutral, target jawOpen 0.6 + 10 deg yaw about the head centre, faces), float32 CPU."""
    model = load_head_model("ict")
    params = model.neutral_params(1)
    v0 = model(params)[0].detach().float()
    params.expression[0, list(model.expression_names).index("jawOpen")] = 0.6
    v1 = model(params)[0].detach().float()
    c = v0.mean(0)
    vt = (v1 - c) @ yaw(10).T + c
    return v0, vt, model.faces.long().cpu()


class Timer:
    """CUDA events on the GPU (ms), perf_counter elsewhere."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            return s.elapsed_time(e)
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)


def timed(timer, fns, warmup, repeat):
    """Median / min ms over ``repeat`` calls cycling through ``fns`` (rotating inputs)."""
    for k in range(warmup):
        fns[k % len(fns)]()
    if timer.cuda:
        torch.cuda.synchronize()
    times = [timer(fns[k % len(fns)]) for k in range(repeat)]
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--reference-reps", type=int, default=1,
                    help="runs of the (slow) torch reference encode; 0 skips it and its check")
    ap.add_argument("--brute-points", type=int, default=1 << 15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    reason = triton_backend.unavailable_reason(dev)
    if reason is not None:
        raise SystemExit(f"triton backend unavailable on {dev}: {reason}")
    size, N = args.size, args.n
    vs, vt, faces = ict_meshes()
    cam = Camera.frame_head(vs, size).to(device=dev)
    vs_d, f_d = vs.to(dev)[None].contiguous(), faces.to(dev)
    c = vt.mean(0)
    poses = [(((vt - c) @ yaw(d).T + c)[None]).to(dev).contiguous() for d in (-2, -1, 0, 1, 2)]
    gpu = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
    P = size * size * N
    timer = Timer(dev)
    rows = []

    def row(method, med, mn, **extra):
        print(f"   {method:44s} median {med:10.3f} ms  (min {mn:.3f})  {P / med / 1e3:9.1f} Mq/s")
        rows.append({"mesh": "ICT head", "method": method, "ms_per_frame": med, "min_ms": mn,
                     "mqueries_per_s": P / med / 1e3, "device": gpu, "size": size, "n_samples": N,
                     "out_dtype": "float16", **extra})

    print(f"== ICT head V={vs.shape[0]} F={faces.shape[0]} on {gpu}: {size}x{size} N={N} fp16 out, "
          f"torch {torch.__version__}")
    out = torch.empty(1, 3 * N, size, size, dtype=torch.float16, device=dev)
    tri_enc = ops.FlowEncoder(f_d, backend="triton", n_samples=N, dtype=torch.float16, validate=False)
    tri_fns = [lambda p=p: tri_enc(p, vs_d, cam, out=out) for p in poses]
    # The first call autotunes; the warm-up then runs on the chosen config.
    tri_fns[0]()
    med, mn = timed(timer, tri_fns, args.warmup, args.repeat)
    config = triton_backend.last_config()
    row("triton encode (raster + encode)", med, mn, autotuned=config)
    print(f"   autotuned: {config}")
    ras = triton_backend.triton_rasterize
    med_r, mn_r = timed(timer, [lambda p=p: ras(p, f_d, cam) for p in poses], args.warmup, args.repeat)
    row("triton backend rasterize alone (triton z-buffer)", med_r, mn_r)

    cuda_out = None
    if "cuda" in ops.available_backends(dev):
        enc = ops.FlowEncoder(f_d, backend="cuda", n_samples=N, dtype=torch.float16, validate=False)
        cuda_out = torch.empty_like(out)
        med_c, mn_c = timed(timer, [lambda p=p: enc(p, vs_d, cam, out=cuda_out) for p in poses],
                            args.warmup, args.repeat)
        row("cuda fused encode", med_c, mn_c)
        print(f"   triton / cuda time: {med / med_c:.2f}x (target <= 2x)")
    else:
        why = "not registered"
        try:
            ops.backends.get_backend("cuda", dev)
        except Exception as exc:  # noqa: BLE001
            why = str(exc)
        print(f"   cuda backend not timed: {why}")

    # Correctness on the benchmark frame (float32 outputs): triton vs cuda, and vs the reference.
    t32 = ops.flow_encode(poses[2], vs_d, f_d, cam, n_samples=N, backend="triton", dtype=torch.float32)
    if cuda_out is not None:
        c32 = ops.flow_encode(poses[2], vs_d, f_d, cam, n_samples=N, backend="cuda", dtype=torch.float32)
        d = (t32 - c32).abs().view(1, N, 3, size, size).amax(2)
        print(f"   triton vs cuda: max |diff| {d.max().item():.3e} m, samples > 1e-5 m: "
              f"{(d > 1e-5).float().mean().item() * 100:.3f}% (distance ties; equal elsewhere)")
        rows.append({"mesh": "ICT head", "check": "triton vs cuda", "max_abs_m": d.max().item(),
                     "frac_over_1e-5": (d > 1e-5).float().mean().item()})
    if args.reference_reps > 0:   # slow on a 512^2 x 20 frame: timed once by default, output reused
        ref_times, r32 = [], None
        for _ in range(args.reference_reps):
            def ref_run():
                nonlocal r32
                r32 = ops.flow_encode(poses[2], vs_d, f_d, cam, n_samples=N, backend="reference",
                                      dtype=torch.float32)
            ref_times.append(timer(ref_run))
        row("torch reference flow_encode (clustered)", statistics.median(ref_times), min(ref_times),
            reps=args.reference_reps)
        d = (t32 - r32).abs().view(1, N, 3, size, size).amax(2)
        print(f"   triton vs reference: max |diff| {d.max().item():.3e} m, samples > 1e-5 m: "
              f"{(d > 1e-5).float().mean().item() * 100:.3f}% (distance ties)")
        rows.append({"mesh": "ICT head", "check": "triton vs reference", "max_abs_m": d.max().item(),
                     "frac_over_1e-5": (d > 1e-5).float().mean().item()})

    # Brute force over every triangle, on a slice of the sample points, scaled to a frame.
    _, aux = ops.flow_encode(poses[2], vs_d, f_d, cam, n_samples=N, backend="triton", return_aux=True)
    pts = aux.points.reshape(-1, 3)
    sel = pts[torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(0))[:args.brute_points].to(dev)]
    tri = poses[2][0][f_d]
    ms = timer(lambda: reference.nearest_faces_brute_force(sel, tri, chunk=64)) * P / sel.shape[0]
    row(f"torch brute force (scaled from {sel.shape[0]})", ms, ms)
    print(f"   brute force / triton: {ms / med:.0f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
