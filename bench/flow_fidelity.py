"""How faithfully does the 3D-flow encoding carry head pixels to the source? Depth vs uniform sampling.

The geometric analogue of FG-Portrait's depth-guided sampling ablation (paper Tab. 5). For K random
(source, target) pairs of the ICT head (random expressions, global yaw/pitch):

  true position   : the rasterised target surface point at a head pixel, carried to the source mesh
                    through the same triangle and barycentrics, projected into the source camera;
  encoded position: among the pixel's N encoded samples, the one nearest the target surface
                    (smallest |offset|); its p_src projected into the source camera.

Error = pixel distance between the two, over every head pixel of every pair. ``depth`` samples
within +-delta of the rendered depth; ``uniform`` spreads the same N samples over [near, far] (the
target mesh's depth range), so the nearest sample is typically centimetres off the surface.

    python bench/flow_fidelity.py [--size 96] [--pairs 6] [--samples 20] [--backend auto]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from fgp_fast.camera import Camera
from fgp_fast.heads import load_head_model
from fgp_fast.ops import flow_encode
from fgp_fast.ops.backends import get_backend

CHANNELS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp_L",
            "browInnerUp_R")
MAX_EXPRESSION = 0.8
MAX_ANGLE_DEG = 15.0


def random_verts(head, gen: torch.Generator) -> torch.Tensor:
    """(1, V, 3) ICT vertices with random expression channels in [0, 0.8] and yaw/pitch in +-15 deg."""
    values = (torch.rand(len(CHANNELS), generator=gen) * MAX_EXPRESSION).tolist()
    params = head.neutral_params().with_expression(**dict(zip(CHANNELS, values)))
    pose = torch.zeros(1, 6)
    pose[0, :2] = (torch.rand(2, generator=gen) * 2 - 1) * math.radians(MAX_ANGLE_DEG)   # pitch, yaw
    return head(params.replace(pose=pose))


def pixel_errors(verts_tgt, verts_src, faces, camera, n_samples, sampling, backend) -> torch.Tensor:
    """Pixel error of the encoded source position at every head pixel (see the module docstring)."""
    _, aux = flow_encode(verts_tgt, verts_src, faces, camera, n_samples=n_samples, sampling=sampling,
                         backend=backend, return_aux=True)
    mask, face, bary = aux.mask, aux.face_id.clamp(min=0), aux.bary
    B = verts_src.shape[0]
    corners = verts_src[:, faces.long()][torch.arange(B)[:, None, None], face]    # (B, H, W, 3, 3)
    true_uv, _ = camera.project((bary[..., None] * corners).sum(-2))
    nearest = aux.offset.abs().argmin(1)                                        # (B, H, W)
    p_enc = aux.p_src.gather(1, nearest[:, None, ..., None].expand(-1, 1, -1, -1, 3))[:, 0]
    enc_uv, _ = camera.project(p_enc)
    return (enc_uv - true_uv).norm(dim=-1)[mask]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=96, help="image height and width (pixels)")
    ap.add_argument("--pairs", type=int, default=6, help="random (source, target) pairs")
    ap.add_argument("--samples", type=int, default=20, help="samples per pixel, N")
    ap.add_argument("--backend", default="auto", help="flow_encode backend")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    head = load_head_model("ict")
    faces = head.faces
    camera = Camera.frame_head(head(head.neutral_params())[0], args.size)
    gen = torch.Generator().manual_seed(args.seed)
    pairs = [(random_verts(head, gen), random_verts(head, gen)) for _ in range(args.pairs)]
    verts_src = torch.cat([p[0] for p in pairs])
    verts_tgt = torch.cat([p[1] for p in pairs])

    print(f"flow fidelity: {args.pairs} pairs, {args.size}x{args.size}, N={args.samples}, "
          f"backend={args.backend} ({get_backend(args.backend, 'cpu').name}), seed={args.seed}")
    print("error = |projection of the encoded p_src of the sample nearest the surface - projection of "
          "the true surface correspondence| in source pixels, over head pixels")
    stats = {}
    for sampling in ("depth", "uniform"):
        t0 = time.perf_counter()
        err = pixel_errors(verts_tgt, verts_src, faces, camera, args.samples, sampling, args.backend)
        secs = time.perf_counter() - t0
        stats[sampling] = {"mean": err.mean().item(), "median": err.median().item(),
                           "p95": err.quantile(0.95).item(), "pixels": err.numel()}
        s = stats[sampling]
        print(f"  {sampling:8s} mean {s['mean']:.4f}  median {s['median']:.4f}  p95 {s['p95']:.4f} px"
              f"  ({s['pixels']} head pixels, {secs:.1f} s)")
    ratio = {k: stats["uniform"][k] / max(stats["depth"][k], 1e-12) for k in ("mean", "median", "p95")}
    print(f"  uniform / depth: mean {ratio['mean']:.1f}x  median {ratio['median']:.1f}x  p95 {ratio['p95']:.1f}x")
    stats["ratio"] = ratio
    return stats


if __name__ == "__main__":
    main()
