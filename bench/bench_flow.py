"""Benchmark of the fused 3D-flow encoder (512x512, N=20) against outside anchors, in one run.

CPU: the cpp backend (per thread count) vs the same queries through Open3D's RaycastingScene
(compute_closest_points over the N*H*W sample points + cast_rays over the H*W pixel rays, Embree)
and warp-lang on the CPU (mesh_query_point_no_sign + mesh_query_ray). GPU (--device cuda): the
cuda backend (fp16 output, CUDA events, median after warm-up, rotating inputs) vs a chunked
brute-force torch nearest-triangle timed on a slice of the queries and scaled to a frame, plus a
CUDA-graph replay timing and a per-kernel split (refit / raster / encode, torch.profiler); the
same for the triton backend. The CUDA timing pieces (rotating_poses, cuda_event_times,
cuda_graph_times, cuda_kernel_split) are functions other scripts call.

    python bench/bench_flow.py                       # CPU, both meshes
    python bench/bench_flow.py --device cuda --json $OUT/gpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import numpy as np
import torch

from fgp_fast import ops
from fgp_fast.camera import Camera
from fgp_fast.ops import flow_aux, native, reference

ASSET = os.path.join(os.path.dirname(native.__file__), "..", "assets", "ict_facekit_head.npz")


def yaw(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def ict_meshes():
    """ICT head neutral (source) and jawOpen 0.6 + 10 deg yaw about the head centre (target)."""
    d = np.load(ASSET)
    v0 = torch.from_numpy(d["v_template"]).float()
    names = [str(s) for s in d["expression_names"]]
    jaw = torch.from_numpy(d["exprdirs"][:, :, names.index("jawOpen")]).float()
    faces = torch.from_numpy(d["faces"].astype(np.int64))
    c = v0.mean(0)
    vt = (v0 + 0.6 * jaw - c) @ yaw(10).T + c
    return v0, vt, faces


def flame_sized_meshes(n_lat: int = 70, n_lon: int = 72):
    """A head-sized closed bumpy ellipsoid of ~5k vertices / ~10k triangles (FLAME: 5023 / 9976),
    with a jaw-like opening of the lower half plus a 10 deg yaw as the expression/pose change."""
    lat = torch.linspace(0, math.pi, n_lat + 2)[1:-1]
    lon = torch.arange(n_lon) * (2 * math.pi / n_lon)
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    dirs = torch.stack([torch.sin(la) * torch.cos(lo), torch.cos(la), torch.sin(la) * torch.sin(lo)], -1).reshape(-1, 3)
    dirs = torch.cat([dirs, torch.tensor([[0.0, 1, 0], [0.0, -1, 0]])])
    bump = 1 + 0.04 * torch.sin(7 * dirs[:, 0]) * torch.cos(5 * dirs[:, 1]) + 0.03 * torch.sin(9 * dirs[:, 2])
    v0 = dirs * bump[:, None] * torch.tensor([0.075, 0.11, 0.09])
    faces = []
    idx = lambda i, j: i * n_lon + (j % n_lon)  # noqa: E731
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = idx(i, j), idx(i + 1, j), idx(i + 1, j + 1), idx(i, j + 1)
            faces += [[a, b, c], [a, c, d]]
    top, bot = n_lat * n_lon, n_lat * n_lon + 1
    for j in range(n_lon):
        faces += [[top, idx(0, j + 1), idx(0, j)], [bot, idx(n_lat - 1, j), idx(n_lat - 1, j + 1)]]
    faces = torch.tensor(faces)
    low = (-v0[:, 1]).clamp(min=0) / 0.11
    vt = v0 + 0.6 * torch.stack([torch.zeros_like(low), -0.02 * low, -0.01 * low], -1)
    vt = vt @ yaw(10).T
    return v0, vt, faces


def sample_points(vt, vs, faces, cam, n, near=None, far=None):
    """The N*H*W world sample points of the flow (as the reference defines them) and pixel rays;
    background samples over [near, far] (default: the mesh's depth range)."""
    B = 1
    r = native.native_rasterize(vt[None], faces, cam)
    z = cam.world_to_camera(vt[None])[..., 2]
    lo = z.amin(1) if near is None else torch.tensor([near])
    hi = z.amax(1) if far is None else torch.tensor([far])
    pts = flow_aux.sample_points(r, cam, lo, hi, n, 0.01, "depth").reshape(-1, 3).contiguous()
    rays_cam = cam.pixel_rays(B)
    origin = cam.cam_to_world()[:3, 3]
    dirs = (rays_cam.reshape(-1, 3) @ cam.world_to_cam[:3, :3]).contiguous()  # world directions
    return pts, origin, dirs, r.mask.float().mean().item()


def interleaved_min(runs: dict, repeat: int) -> dict:
    """Min wall time per method, the methods interleaved round-robin after one warm-up each, so
    load from other processes on a shared machine hits every method alike."""
    for fn, _ in runs.values():
        fn()
    best = {k: float("inf") for k in runs}
    for _ in range(repeat):
        for k, (fn, _) in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: (best[k], runs[k][1]) for k in runs}


def bench_cpu(name, vs, vt, faces, size, n, threads, repeat, rows, anchors, near=None, far=None):
    cam = Camera.frame_head(vs, size)
    P = size * size * n
    enc = ops.FlowEncoder(faces, backend="cpp", n_samples=n, dtype=torch.float32, validate=False)
    out = torch.empty(1, 3 * n, size, size)
    pts, origin, dirs, cover = sample_points(vt, vs, faces, cam, n, near, far)
    span = "mesh depth range" if near is None else f"{near}-{far} m"
    print(f"\n== {name}, background {span}: V={vs.shape[0]} F={faces.shape[0]} {size}x{size} N={n} -> {P / 1e6:.2f} M queries, "
          f"head covers {100 * cover:.0f}% of pixels")
    runs = {}
    saved = native.get_num_threads()
    bvh = native.MeshBVH(faces, vt)

    def with_threads(t, fn):
        def run():
            native.set_num_threads(t)
            try:
                fn()
            finally:
                native.set_num_threads(saved)
        return run

    for t in threads:
        runs[f"cpp fused encode ({t} thr)"] = (with_threads(t, lambda: enc(vt[None], vs[None], cam, near, far, out=out)), t)
        runs[f"cpp surface_field op, unfused ({t} thr)"] = (
            with_threads(t, lambda: bvh.surface_field(pts[None], vs[None])), t)
    if "open3d" in anchors:
        try:
            import open3d as o3d

            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(o3d.core.Tensor(vt.numpy()), o3d.core.Tensor(faces.numpy().astype(np.uint32)))
            q = o3d.core.Tensor(pts.numpy())
            rays = o3d.core.Tensor(torch.cat([origin.expand_as(dirs), dirs], 1).float().numpy())

            def o3d_run():
                scene.compute_closest_points(q)
                scene.cast_rays(rays)

            runs[f"open3d closest+cast_rays ({os.cpu_count()} thr)"] = (o3d_run, os.cpu_count())
        except Exception as exc:  # noqa: BLE001
            print(f"   open3d skipped: {exc}")
    if "warp" in anchors:
        try:
            import warp as wp

            wp.config.quiet = True
            wp.init()

            @wp.kernel
            def closest(mesh: wp.uint64, p: wp.array(dtype=wp.vec3), out: wp.array(dtype=wp.vec3)):
                i = wp.tid()
                r = wp.mesh_query_point_no_sign(mesh, p[i], 1.0e6)
                out[i] = wp.mesh_eval_position(mesh, r.face, r.u, r.v)

            @wp.kernel
            def cast(mesh: wp.uint64, o: wp.vec3, d: wp.array(dtype=wp.vec3), t: wp.array(dtype=float)):
                i = wp.tid()
                r = wp.mesh_query_ray(mesh, o, d[i], 1.0e6)
                t[i] = r.t

            mesh = wp.Mesh(points=wp.array(vt.numpy(), dtype=wp.vec3, device="cpu"),
                           indices=wp.array(faces.int().flatten().numpy(), dtype=wp.int32, device="cpu"))
            wp_pts = wp.array(pts.numpy(), dtype=wp.vec3, device="cpu")
            wp_out = wp.zeros(P, dtype=wp.vec3, device="cpu")
            wp_dirs = wp.array(dirs.float().numpy(), dtype=wp.vec3, device="cpu")
            wp_t = wp.zeros(dirs.shape[0], dtype=float, device="cpu")
            o = wp.vec3(*origin.tolist())

            def warp_run():
                wp.launch(closest, dim=P, inputs=[mesh.id, wp_pts, wp_out], device="cpu")
                wp.launch(cast, dim=dirs.shape[0], inputs=[mesh.id, o, wp_dirs, wp_t], device="cpu")
                wp.synchronize()

            runs["warp closest+ray (1 thr)"] = (warp_run, 1)
        except Exception as exc:  # noqa: BLE001
            print(f"   warp skipped: {exc}")
    res = interleaved_min(runs, repeat)
    o3d_key = next((k for k in res if k.startswith("open3d")), None)
    print(f"   {'method':44s} {'ms/frame':>10s} {'Mq/s':>8s} {'vs open3d':>10s}")
    for k, (t, thr) in res.items():
        ratio = f"{res[o3d_key][0] / t:9.2f}x" if o3d_key else "-"
        print(f"   {k:44s} {1e3 * t:10.1f} {P / t / 1e6:8.2f} {ratio:>10s}")
        rows.append({"mesh": name, "method": k, "threads": thr, "ms_per_frame": 1e3 * t, "mqueries_per_s": P / t / 1e6})


# ---------------------------------------------------------------------------------------------
# CUDA timing pieces (also called by the GPU engineer's bench/gpu_all.sh)

def rotating_poses(vt, k: int = 5, step_deg: float = 1.0):
    """k target poses yawed about the mesh centre, so no frame repeats the previous one's inputs."""
    c = vt.mean(0)
    return [((vt - c) @ yaw(step_deg * (i - k // 2)).to(vt).T + c)[None].contiguous() for i in range(k)]


def cuda_event_times(step, n_frames: int, warmup: int = 10) -> list[float]:
    """ms per call of step(frame_index) by CUDA events, after `warmup` untimed calls."""
    for k in range(warmup):
        step(k)
    torch.cuda.synchronize()
    times = []
    for k in range(n_frames):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step(k)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return times


def cuda_graph_times(run, static_in, poses, n_frames: int, warmup: int = 3) -> list[float]:
    """ms per replay of a CUDA graph of run() (which reads static_in), the rotating pose copied into
    static_in before each replay (outside the timed region)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):   # warm-up on a side stream, as graph capture requires
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()

    times = []
    for k in range(n_frames + warmup):
        static_in.copy_(poses[k % len(poses)])
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        e.synchronize()
        if k >= warmup:
            times.append(s.elapsed_time(e))
    return times


def cuda_kernel_split(step, n_frames: int = 20) -> dict[str, float]:
    """Median device ms per frame of each CUDA kernel step() launches (torch.profiler), e.g.
    refit_kernel / clear_keys / raster_kernel / flow_kernel for the cuda backend."""
    from torch.profiler import ProfilerActivity, profile
    step(0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for k in range(n_frames):
            step(k)
        torch.cuda.synchronize()
    per = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t:
            per[ev.key] = t / 1e3 / n_frames   # us total -> ms per frame
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def _summary(times):
    return {"median_ms": statistics.median(times), "min_ms": min(times), "frames": len(times)}


def bench_cuda(name, vs, vt, faces, size, n, repeat, rows, brute_points=1 << 15):
    dev = "cuda"
    gpu = torch.cuda.get_device_name()
    cam = Camera.frame_head(vs, size).to(device=dev)
    vs_d, vt_d, f_d = vs.to(dev), vt.to(dev), faces.to(dev)
    poses = rotating_poses(vt_d)
    P = size * size * n
    print(f"\n== {name} on {gpu}: {size}x{size} N={n}, fp16 out, {len(poses)} rotating poses")

    def report(method, times, **extra):
        t = _summary(times)
        print(f"   {method:52s} median {t['median_ms']:.3f} ms (min {t['min_ms']:.3f}), "
              f"{P / t['median_ms'] / 1e3:.0f} Mq/s")
        rows.append({"mesh": name, "method": method, "ms_per_frame": t["median_ms"], "min_ms": t["min_ms"],
                     "mqueries_per_s": P / t["median_ms"] / 1e3, "device": gpu, **extra})
        return t["median_ms"]

    enc = ops.FlowEncoder(f_d, backend="cuda", n_samples=n, dtype=torch.float16, validate=False)
    out = torch.empty(1, 3 * n, size, size, dtype=torch.float16, device=dev)
    step = lambda k: enc(poses[k % len(poses)], vs_d[None], cam, out=out)  # noqa: E731
    med = report("cuda fused encode (refit+raster+encode)", cuda_event_times(step, repeat))
    static = poses[0].clone()
    report("cuda fused encode, CUDA-graph replay", cuda_graph_times(lambda: enc(static, vs_d[None], cam, out=out),
                                                                   static, poses, repeat))
    split = cuda_kernel_split(step)
    print(f"   per kernel (ms/frame): {', '.join(f'{k} {v:.3f}' for k, v in split.items())}")
    rows.append({"mesh": name, "method": "cuda per-kernel split", "kernels_ms": split, "device": gpu})
    from fgp_fast.ops import triton as triton_backend
    why = triton_backend.unavailable_reason(dev)
    if why is None:
        t_out = torch.empty_like(out)
        t_enc = ops.FlowEncoder(f_d, backend="triton", n_samples=n, dtype=torch.float16, validate=False)
        t_step = lambda k: t_enc(poses[k % len(poses)], vs_d[None], cam, out=t_out)  # noqa: E731
        t_med = report("triton fused encode (raster+encode)", cuda_event_times(t_step, repeat),
                       autotuned=triton_backend.last_config())
        print(f"   triton / cuda = {t_med / med:.2f}x; autotuned {triton_backend.last_config()}")
        t_split = cuda_kernel_split(t_step)
        print(f"   triton per kernel (ms/frame): {', '.join(f'{k} {v:.3f}' for k, v in t_split.items())}")
        rows.append({"mesh": name, "method": "triton per-kernel split", "kernels_ms": t_split, "device": gpu})
        try:
            t_static = poses[0].clone()
            report("triton fused encode, CUDA-graph replay",
                   cuda_graph_times(lambda: t_enc(t_static, vs_d[None], cam, out=t_out), t_static, poses, repeat))
        except Exception as exc:  # noqa: BLE001 - the launch path may still sync the host
            print(f"   triton graph capture failed: {type(exc).__name__}: {exc}")
    else:
        print(f"   triton backend not timed: {why}")
    # Brute force: all triangles per query, chunked, on a slice; scaled to the frame.
    pts = sample_points(vt, vs, faces, cam.to(device="cpu"), n)[0][:brute_points].to(dev)
    tri = vt_d[f_d]
    ms = cuda_event_times(lambda k: reference.nearest_faces_brute_force(pts, tri, chunk=64), 1, warmup=1)[0]
    ms *= P / pts.shape[0]
    print(f"   brute-force torch nearest (scaled from {pts.shape[0]} queries): {ms / 1e3:.2f} s/frame -> "
          f"{ms / med:.0f}x slower")
    rows.append({"mesh": name, "method": "torch brute force (scaled)", "ms_per_frame": ms,
                 "mqueries_per_s": P / ms / 1e3, "device": gpu})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", default=None, help="comma list for the cpp backend (default: 1,<all>)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mesh", default="both", choices=["ict", "flame", "both"])
    ap.add_argument("--anchors", default="open3d,warp")
    ap.add_argument("--near", type=float, default=None, help="background range start (default: mesh depth range)")
    ap.add_argument("--far", type=float, default=None)
    ap.add_argument("--far-background", action="store_true",
                    help="also run the far-background set: background 0.45-0.9 m (head at ~0.65 m)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if native.cpp_unavailable_reason("cpu") is not None:
        raise SystemExit(native.cpp_unavailable_reason("cpu"))
    meshes = []
    if args.mesh in ("ict", "both"):
        meshes.append(("ICT head", *ict_meshes()))
    if args.mesh in ("flame", "both"):
        meshes.append(("FLAME-sized ellipsoid", *flame_sized_meshes()))
    ncpu = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, ncpu})
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {ncpu} CPUs")
    rows = []
    for name, vs, vt, faces in meshes:
        if args.device == "cpu":
            bench_cpu(name, vs, vt, faces, args.size, args.n, threads, args.repeat, rows, args.anchors.split(","),
                      args.near, args.far)
            if args.far_background:
                bench_cpu(name + " far background", vs, vt, faces, args.size, args.n, threads, args.repeat, rows,
                          args.anchors.split(","), 0.45, 0.9)
        else:
            bench_cuda(name, vs, vt, faces, args.size, args.n, max(args.repeat, 50), rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
