"""The CUDA backend against the C++ one, bit for bit, and against the reference on fresh random cases.

1. ICT head, 128x128, N = 4, a batch of two poses (jawOpen 0.6 + yaw +-10 deg against the neutral
   source), depth-guided and uniform sampling: the cuda flow, face ids and depths must equal the
   cpp ones exactly (both are built from the same headers with -fmad=false).
2. BVH refit on random blobs, batched, repeated: the CUDA nodes and triangles must equal the CPU
   refit every time (the refit merges boxes through global atomics, which racecheck cannot see).
3. Fresh random scenes (seeds from os.urandom, printed): cuda against the reference under the
   backend contract (fgp_fast.ops.testing, the tie rule in one place).

Exit status 1 on any mismatch; ``--json`` writes every case's result. ``--device cpu --backend cpp``
runs the same script with the cpp backend in both roles (a CPU check of the script itself).

    python3 bench/cuda_parity.py --json $OUT/parity.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback

import torch

from fgp_fast import ops
from fgp_fast.camera import Camera
from fgp_fast.heads import load_head_model
from fgp_fast.ops import native, testing
from fgp_fast.ops.scenes import deform, random_blob, random_camera

DEV, BACKEND = "cuda", "cuda"  # the device and backend under test (--device, --backend)


def yaw(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def ict_batch(size: int):
    """(target (2, V, 3), source (2, V, 3), faces, camera) on the CPU, float32."""
    head = load_head_model("ict")
    src = head.neutral_params(1)
    v_src = head(src)[0].detach().float()
    v_jaw = head(src.with_expression(jawOpen=0.6))[0].detach().float()
    c = v_src.mean(0)
    vt = torch.stack([(v_jaw - c) @ yaw(d).T + c for d in (10, -10)])
    return vt, v_src.expand(2, -1, -1).contiguous(), head.faces.long(), Camera.frame_head(v_src, size)


def differences(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.cpu(), b.cpu()
    diff = a != b
    if a.is_floating_point():
        diff &= ~(a.isnan() & b.isnan())
    d = (a.double() - b.double()).abs()[diff]
    return {"elements": a.numel(), "differing": int(diff.sum()), "max_abs": float(d.max()) if d.numel() else 0.0}


def ict_bitwise(size: int, n: int) -> list[dict]:
    vt, vs, faces, cam = ict_batch(size)
    rows = []
    for sampling in ("depth", "uniform"):
        kw = dict(n_samples=n, sampling=sampling, return_aux=True, dtype=torch.float32)
        cpp, aux_p = ops.flow_encode(vt, vs, faces, cam, backend="cpp", **kw)
        cu, aux_c = ops.flow_encode(vt.to(DEV), vs.to(DEV), faces.to(DEV), cam.to(device=DEV), backend=BACKEND, **kw)
        row = {"case": f"ICT head {size}x{size} N={n} B=2 {sampling}", "flow": differences(cu, cpp),
               "face_id": differences(aux_c.face_id, aux_p.face_id), "depth": differences(aux_c.depth, aux_p.depth)}
        row["ok"] = all(row[k]["differing"] == 0 for k in ("flow", "face_id", "depth"))
        rows.append(row)
    return rows


def refit_repeat(seed: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    verts, faces = [], None
    for _ in range(3):
        v, faces = random_blob(gen, 3)
        verts.append(deform(v, gen))
    vt = torch.stack(verts).float()
    gpu = native.MeshBVH(faces.to(DEV), vt.to(DEV))
    cpu = native.MeshBVH(faces, vt)
    bad = 0
    for k in range(repeats):
        moved = vt + 0.003 * k * torch.sin(5 * vt.flip(-1))
        gpu.refit(moved.to(DEV))
        cpu.refit(moved)
        # bit patterns: the nodes carry int indices as float bits (NaN payloads for leaves)
        same = all(torch.equal(getattr(gpu, k).cpu().view(torch.int32), getattr(cpu, k).view(torch.int32))
                   for k in ("nodes", "tris"))
        bad += int(not same)
    return {"case": f"refit B=3 F={faces.shape[0]} x{repeats} (seed {seed})", "mismatching_refits": bad, "ok": bad == 0}


def random_against_reference(count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        seed = int.from_bytes(os.urandom(4), "little")
        gen = torch.Generator().manual_seed(seed)
        v, faces = random_blob(gen, 2)
        vt = deform(v, gen).float()[None]
        cam = random_camera(gen, 20 + seed % 13, 24 + seed % 11).to(dtype=torch.float32)
        case = {"case": f"random blob vs reference (seed {seed}, {cam.height}x{cam.width})"}
        try:   # the backend contract: one tie rule, in fgp_fast.ops.testing
            testing.assert_flow_matches_reference(BACKEND, vt.to(DEV), v.float()[None].to(DEV), faces.to(DEV),
                                                  cam.to(device=DEV), n_samples=1 + seed % 6)
            case["ok"] = True
        except AssertionError as exc:
            case.update(ok=False, error=str(exc)[:500])
        rows.append(case)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--random", type=int, default=6, help="fresh random scenes against the reference")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="cuda", help="the backend compared with cpp (cpp on --device cpu)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    global DEV, BACKEND
    DEV, BACKEND = args.device, args.backend
    for name, device in (("cpp", "cpu"), (BACKEND, DEV)):
        try:
            ops.backends.get_backend(name, device)
        except Exception as exc:  # noqa: BLE001 - BackendUnavailableError and friends: say why, stop
            raise SystemExit(f"{name} backend unavailable on {device}: {exc}") from None
    rows = []
    parts = (("ict", lambda: ict_bitwise(args.size, args.n)),
             ("refit", lambda: [refit_repeat(s, 20) for s in (0, 1)]),
             ("reference", lambda: random_against_reference(args.random)))
    for part, run in parts:
        try:
            got = run()
        except Exception as exc:  # noqa: BLE001 - one part failing must not hide the others
            traceback.print_exc()
            got = [{"case": part, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}]
        for row in got:
            print(("ok   " if row["ok"] else "FAIL ") + json.dumps(row), flush=True)
        rows += got
    failed = sum(not r["ok"] for r in rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cases": rows, "failed": failed, "total": len(rows)}, fh, indent=1)
    print(f"{len(rows) - failed}/{len(rows)} parity cases ok")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
