"""A small case that launches every kernel of the CUDA backend, to run under compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 bench/cuda_sanitize_case.py
    compute-sanitizer --tool racecheck --kernel-name kns=refit_kernel python3 bench/cuda_sanitize_case.py --refit
    compute-sanitizer --tool racecheck --kernel-name kns=flow_kernel python3 bench/cuda_sanitize_case.py --flow
    compute-sanitizer --tool synccheck --kernel-name kns=flow_kernel python3 bench/cuda_sanitize_case.py --flow

Without the caching allocator each tensor is its own cudaMalloc, so an overrun past a tensor is
outside any allocation and memcheck sees it (pooled memory would hide it). The meshes are small
and odd-sized (sizes that do not divide a block) so partial blocks and tails are exercised; --flow
runs only the fused encode (its blocks share a list and scratch in shared memory across two warps,
with barriers: racecheck and synccheck), on an image large enough for the background walks.
"""
from __future__ import annotations

import argparse

import torch

from fgp_fast import ops
from fgp_fast.ops import native
from fgp_fast.ops.scenes import deform, random_blob, random_camera


def scene(seed: int, size=(17, 23), batch: int = 2, device: str = "cuda"):
    gen = torch.Generator().manual_seed(seed)
    vs, vt, faces = [], [], None
    for _ in range(batch):
        v, faces = random_blob(gen, 2)
        vs.append(v)
        vt.append(deform(v, gen))
    cam = random_camera(gen, *size).to(device=device, dtype=torch.float32)
    return torch.stack(vt).float().to(device), torch.stack(vs).float().to(device), faces.to(device), cam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refit", action="store_true", help="only build and refit BVHs (the racecheck case)")
    ap.add_argument("--flow", action="store_true", help="only the fused encode (the flow kernel's racecheck case)")
    ap.add_argument("--device", default="cuda", help="cpu runs the same calls on the cpp backend (a check of this script)")
    args = ap.parse_args()
    dev = args.device
    backend = "cuda" if dev == "cuda" else "cpp"
    if args.flow:
        vt, vs, faces, cam = scene(1, size=(37, 45), device=dev)
        ops.flow_encode(vt, vs, faces, cam, n_samples=4, backend=backend)
        if dev == "cuda":
            torch.cuda.synchronize()
        print("sanitizer case ok (flow only)")
        return
    vt, vs, faces, cam = scene(0, device=dev)
    bvh = native.MeshBVH(faces, vt)
    for k in range(3):
        bvh.refit(vt + 0.002 * k)
    if not args.refit:
        for sampling in ("depth", "uniform"):
            ops.flow_encode(vt, vs, faces, cam, n_samples=3, backend=backend, sampling=sampling, return_aux=True)
        ops.rasterize(vt, faces, cam, backend=backend)
        pts = (vt[:, :97] + 0.02 * torch.randn(2, 97, 3, device=dev)).contiguous()
        ops.surface_field(pts, vt, vs, faces, backend=backend)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            enc = ops.FlowEncoder(faces, backend=backend, n_samples=2, dtype=dtype)
            enc(vt, vs, cam)
            enc(vt + 0.001, vs, cam)   # the second frame refits
    if dev == "cuda":
        torch.cuda.synchronize()
    print("sanitizer case ok" + (" (refit only)" if args.refit else ""))


if __name__ == "__main__":
    main()
