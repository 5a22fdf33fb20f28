"""How often float32 and the float64 oracle pick faces whose fields differ, per tie window
(docs/tie_rule.md). Brute force over random blobs, poses and cameras: half the samples along pixel
rays at 0.3-1.2 m (background), half within 1 cm of the surface (head).

    python bench/tie_agreement.py --seeds 30            # the rule's constants and a few others
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from meshes import deform, random_blob, random_camera  # noqa: E402

from fgp_fast.ops import reference  # noqa: E402
from fgp_fast.ops.geometry import face_normals, point_triangle_dist2, projection_barycentric  # noqa: E402

K = 24   # nearest candidates kept per sample (every window here holds far fewer)


def nearest_k(p, tri):
    ds, fs = [], []
    for s in range(0, p.shape[0], 256):
        q = p[s:s + 256]
        d = point_triangle_dist2(q[:, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2])
        v, i = d.topk(K, dim=1, largest=False)
        ds.append(v)
        fs.append(i)
    return torch.cat(ds), torch.cat(fs)


def pick(d2, f, tie_abs, tie_rel):
    t = d2[:, :1].sqrt() * (1 + tie_rel) + tie_abs
    return torch.where(d2 <= t * t, f, 1 << 30).amin(1)


def field(p, vt, vs, faces, f):
    tt, ts = vt[faces[f]], vs[faces[f]]
    w = projection_barycentric(p, tt)
    h = ((p - (w[:, :, None] * tt).sum(1)) * face_normals(tt)).sum(-1)
    return (w[:, :, None] * ts).sum(1) + h[:, None] * face_normals(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=200)
    args = ap.parse_args()
    rules = [(reference.TIE_ABS, reference.TIE_REL), (2 ** -14, 2 ** -14), (2 ** -17, 2 ** -12),
             (2 ** -20, 2 ** -17), (0.0, 0.0)]
    res = {r: [0, 0] for r in rules}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        gen = torch.Generator().manual_seed(seed)
        vs, faces = random_blob(gen, 2 + seed % 2)
        vt = deform(vs, gen)
        cam = random_camera(gen, 32, 32)
        rays = cam.pixel_rays(1)[0].reshape(-1, 3)
        pc = (torch.linspace(0.3, 1.2, 8)[:, None, None] * rays[None]).reshape(-1, 3)
        far = cam.camera_to_world(pc[None])[0]
        idx = torch.randint(0, vt.shape[0], (far.shape[0] // 2,), generator=gen)
        near = vt[idx] + 0.01 * torch.randn(idx.shape[0], 3, generator=gen, dtype=vt.dtype)
        p32 = torch.cat([far, near]).float()
        p64, v32 = p32.double(), vt.float()
        d32, f32 = nearest_k(p32, v32[faces])
        d64, f64 = nearest_k(p64, v32.double()[faces])
        for rule in rules:
            a, b = pick(d32, f32, *rule), pick(d64, f64, *rule)
            diff = a != b
            err = (field(p32[diff], v32, vs.float(), faces, a[diff]).double()
                   - field(p64[diff], v32.double(), vs.float().double(), faces, b[diff])).norm(dim=-1)
            res[rule][0] += a.numel()
            res[rule][1] += int((err > 1e-5).sum())
    for (ta, tr), (n, bad) in res.items():
        mark = "  <- the rule" if (ta, tr) == (reference.TIE_ABS, reference.TIE_REL) else ""
        print(f"TIE_ABS={ta:.3g} m TIE_REL={tr:.3g}: p_src differs > 1e-5 m on {bad} of {n} samples "
              f"({100 * bad / n:.4f} %){mark}")


if __name__ == "__main__":
    main()
