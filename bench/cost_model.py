"""Device-independent cost model of the CUDA flow encoder (issue 15 item 2).

Runs the real per-pixel code of ``flow_kernel`` (``fgp::flow_pixel`` and the BVH traversal of
csrc/bvh.h, compiled from the same header with its ``FGP_TRACE`` hook recording events; the real
builds compile the hook to nothing) on the CPU for a given mesh, resolution and N: ``fgp::flow_tile``
is the CPU form of one block of ``flow_kernel`` (an 8x8 pixel tile, two warps of 8x4, whose
background samples share a shortlist walk per sample index, run by the first warp), and each warp
is replayed in lockstep (bench/cost_model.cpp). It
reports nodes visited and triangles tested per head and per background sample, the shortlists
(walks, overflows, length), SIMT lane efficiency and modelled warp-instructions per frame.

Lane efficiency: useful lane-instructions / (32 x warp-instructions). The tile's walk runs on all
lanes in step (each computes the same node tests; a step through queued leaves gives each lane a
triangle): ``lane_efficiency`` counts that walk as one lane's work (strict), ``active_lane_efficiency``
counts every active lane (what nsight reports as warp execution efficiency).

Calibration: the instructions each event costs are counted in the SASS of ``flow_kernel`` built
for sm_90 (nvcc -cubin -arch=sm_90 -O3 -fmad=false -lineinfo, disassembled with the nvdisasm that
Triton ships, ``-gi`` line info with the inline chain). Every instruction goes to the event
whose ``FGP_TRACE`` marker precedes its source line in the traversal (the innermost frame of the
inline chain inside bvh_search / bvh_resolve_lost / offer_tri / offer_face), the rest to the
per-sample or per-pixel fixed cost; the static count of a region (up to the kernel's last EXIT:
the IEEE division and sqrt slow paths after it are left out) is its cost per event. For the
triangle test that is every Voronoi-region branch, what a fully diverged warp executes, so the
model is an upper bound for coherent warps. ``--calibrate``
recomputes bench/cost_model_sass.json (needs nvcc); otherwise the committed counts are used and
the model says which source they were taken from.

    python bench/cost_model.py                          # ICT head, 512x512, N=20
    python bench/cost_model.py --mesh flame --size 256 --n 8 --json out.json
    python bench/cost_model.py --calibrate              # recount the SASS first
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")
SASS_JSON = os.path.join(HERE, "cost_model_sass.json")
EVENTS = ["sample", "seed", "iter", "inner", "leaf", "tri", "pop", "resolve", "exact",
          "tile", "tileinner", "tilequeue", "tilestep", "tileseed", "tileprobe", "filter", "list", "listplane"]   # csrc/bvh.h TraceEvent
# H200 SXM: 132 SMs x 4 warp schedulers, one warp-instruction each per cycle, 1.98 GHz boost
ISSUE_PER_S = 132 * 4 * 1.98e9


# ---------------------------------------------------------------------------------------------
# calibration from SASS

def _nvdisasm() -> str:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    if not os.path.exists(path):
        raise SystemExit("no nvdisasm: install triton (it ships one)")
    return path


def _regions(path: str) -> dict[int, str]:
    """Source line -> event of csrc/bvh.h, flow_core.h or cuda/kernels.cu: inside the traced
    functions, the event of the last FGP_TRACE marker (or pop_within<kTraceX> call) at or before the
    line (lines before the first marker: 'sample'). Untraced helpers (pop_within) map to nothing: their caller's line decides."""
    lines = open(path).read().splitlines()
    out = {}
    funcs = {"bvh_search": None, "bvh_resolve_lost": None, "offer_tri": None, "offer_face": "seed",
             "bvh_shortlist": None, "shortlist_filter": None, "offer_shortlist": None, "shortlist_step": None,
             "shortlist_leaf": None, "shortlist_descend": None, "tile_seed": "tileseed",
             "pixel_setup": "pixel", "sample_point": "sample", "tile_member": "sample", "flow_sample": "sample",
             "tile_sample_box": "sample", "block_shortlist": "sample"}
    i = 0
    while i < len(lines):
        m = re.match(r"(?:FGP_HD|__device__) \w+ (\w+)\(", lines[i])
        if m and m.group(1) in funcs:
            fixed, region = funcs[m.group(1)], "sample" if m.group(1) != "flow_pixel" else "pixel"
            j = i
            while j < len(lines) and lines[j] != "}":
                # a marker, or a call of pop_within<kTraceX> (the helper's lines belong to its caller)
                mk = re.search(r"FGP_TRACE\(kTrace(\w+)\)|pop_within<kTrace(\w+)>", lines[j])
                if mk and fixed is None:
                    region = (mk.group(1) or mk.group(2)).lower()
                    if m.group(1) == "bvh_resolve_lost" and region != "resolve":
                        region = "resolve_" + region   # its own copy of a test: costed by the main one
                    if m.group(1) == "offer_shortlist" and region not in ("list", "listplane"):
                        region = "list_" + region
                out[j + 1] = fixed or region
                j += 1
            i = j
        i += 1
    return out


def calibrate() -> dict:
    """Instructions per event from the SASS of flow_kernel (sm_90)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-O3", "-lineinfo", "-fmad=false", "-std=c++17",
                        f"-I{CSRC}", os.path.join(CSRC, "cuda", "kernels.cu"), "-o", cubin], check=True)
        sass = subprocess.run([_nvdisasm(), "-c", "-gi", cubin], check=True, capture_output=True,
                              text=True).stdout
    text = next(sec for sec in re.split(r"//-{5,} \.text\.", sass) if "flow_kernel" in sec.split("\n", 1)[0])
    maps = {os.path.join(CSRC, f): _regions(os.path.join(CSRC, f))
            for f in ("bvh.h", "flow_core.h", os.path.join("cuda", "kernels.cu"))}
    counts, loads = Counter(), Counter()
    sites = {"filter": set(), "tilestep": set(), "tilequeue": set()}   # regions of helpers inlined at several call sites
    chain: list[tuple[str, int]] = []   # the inline chain, innermost first: one comment line per frame
    fresh = True
    for line in text.splitlines():
        m = re.match(r'\s*//## File "([^"]+)", line (\d+)', line)
        if m:
            if fresh:
                chain, fresh = [], False
            chain.append((m.group(1), int(m.group(2))))
            continue
        if not re.match(r"\s*/\*[0-9a-f]{4,}\*/", line):
            continue
        fresh = True
        if re.search(r"\bEXIT ;", line) and not re.search(r"@!?U?P\d", line):
            break   # past the kernel's last EXIT: the division/sqrt slow-path subroutines (rare)
        region = "pixel"
        for k, (f, n) in enumerate(chain):   # innermost traced frame decides
            r = maps.get(f, {}).get(n)
            if r is not None:
                region = r
                if r in sites and k + 1 < len(chain):
                    sites[r].add(chain[k + 1])
                break
        counts[region] += 1
        if "LDG.E.128" in line:
            loads[region] += 1
    # a leaf loop the compiler unrolled holds several copies of the triangle test (3 loads each)
    copies = max(1, loads["tri"] // 3)
    per_event = {e: counts[e] for e in EVENTS}
    per_event["tri"] = counts["tri"] / copies
    per_event["exact"] = counts["exact"] / copies
    for r, callers in sites.items():   # one copy per call site: the cost of one event is one copy's
        per_event[r] = counts[r] / max(1, len(callers))
    res = {"events": per_event, "pixel": counts["pixel"], "tri_copies": copies, "total": sum(counts.values()),
           "list_exact": counts["list_exact"], "copies": {r: len(c) for r, c in sites.items()},
           "source": "nvcc -cubin -arch=sm_90 -O3 -fmad=false csrc/cuda/kernels.cu; nvdisasm -c -gi (flow_kernel)",
           "sources_sha1": _sources_hash()}
    return res


def _sources_hash() -> str:
    h = hashlib.sha1()
    for f in ("bvh.h", "flow_core.h", "geometry.h", os.path.join("cuda", "kernels.cu")):
        h.update(open(os.path.join(CSRC, f), "rb").read())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# driver

def build_driver(defines: tuple[str, ...] = ()) -> str:
    src = os.path.join(HERE, "cost_model.cpp")
    h = hashlib.sha1(open(src, "rb").read() + " ".join(defines).encode())
    for f in ("bvh.h", "flow_core.h", "geometry.h"):
        h.update(open(os.path.join(CSRC, f), "rb").read())
    exe = os.path.join(tempfile.gettempdir(), f"fgp_cost_model_{h.hexdigest()[:12]}")
    if not os.path.exists(exe):
        subprocess.run(["g++", "-O2", "-fopenmp", "-std=c++17", "-ffp-contract=off", "-fno-math-errno",
                        *[f"-D{d}" for d in defines], f"-I{CSRC}", src, "-o", exe + ".tmp"], check=True)
        os.replace(exe + ".tmp", exe)
    return exe


def scene(mesh: str, size: int):
    sys.path.insert(0, HERE)
    from bench_flow import flame_sized_meshes, ict_meshes
    from fgp_fast.camera import Camera
    vs, vt, faces = ict_meshes() if mesh == "ict" else flame_sized_meshes()
    return vs, vt, faces, Camera.frame_head(vs, size)


def run(vs, vt, faces, cam, n: int, costs: dict, near=None, far=None, delta: float = 0.01,
        leaf_size: int = 4, defines: tuple[str, ...] = ()) -> dict:
    from fgp_fast.ops import native
    bvh = native.MeshBVH(faces, vt, leaf_size=leaf_size)
    r = native.native_rasterize(vt[None], faces, cam)
    key = np.where(r.mask[0].numpy(), (r.depth[0].numpy().astype(np.float32).view(np.uint32).astype(np.uint64) << 32)
                   | r.face_id[0].numpy().astype(np.uint64), np.uint64(0xFFFFFFFFFFFFFFFF)).astype(np.uint64)
    z = cam.world_to_camera(vt[None])[0, :, 2]
    near = float(z.min()) if near is None else near
    far = float(z.max()) if far is None else far
    K, w2c = cam.expand(1)
    V, F, M = vt.shape[0], faces.shape[0], bvh.num_nodes
    with tempfile.TemporaryDirectory() as tmp:
        inp, cst = os.path.join(tmp, "in.bin"), os.path.join(tmp, "costs.txt")
        with open(inp, "wb") as fh:
            fh.write(struct.pack("6i", V, F, M, cam.height, cam.width, n))
            fh.write(struct.pack("3f", near, far, delta))
            for t in (K[0], w2c[0], bvh.verts[0], vs.float(), bvh.faces, bvh.nodes[0], bvh.tris[0]):
                fh.write(t.contiguous().numpy().tobytes())
            fh.write(key.tobytes())
        with open(cst, "w") as fh:
            fh.write(" ".join(str(costs["events"][e]) for e in EVENTS) + f" {costs['events']['sample']} "
                     f"{costs['pixel']}\n")
        out = subprocess.run([build_driver(defines), inp, cst], check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    res["head_pixel_fraction"] = float(r.mask.float().mean())
    res["ms_at_full_issue_h200"] = res["warp_instructions"] / ISSUE_PER_S * 1e3
    res["ms_at_60pct_issue_h200"] = res["ms_at_full_issue_h200"] / 0.6
    bg = res["background_warps"]["warp_instructions"]
    res["background_warp_share"] = bg / res["warp_instructions"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", default="ict", choices=["ict", "flame"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--near", type=float, default=None)
    ap.add_argument("--far", type=float, default=None)
    ap.add_argument("--leaf-size", type=int, default=4, help="BVH leaf size (the backends use 4)")
    ap.add_argument("--define", action="append", default=[],
                    help="NAME=VALUE for the driver's build, to model a variant (FGP_LIST_CAP_CUDA, FGP_TILE_MIN_SHARED)")
    ap.add_argument("--threads", type=int, default=None, help="OpenMP threads of the driver")
    ap.add_argument("--calibrate", action="store_true", help="recount instructions from the sm_90 SASS (nvcc)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.calibrate:
        costs = calibrate()
        with open(SASS_JSON, "w") as fh:
            json.dump(costs, fh, indent=1)
    else:
        costs = json.load(open(SASS_JSON))
        if costs.get("sources_sha1") != _sources_hash():
            print("note: the SASS counts are from other sources than these (run --calibrate where nvcc is)")
    vs, vt, faces, cam = scene(args.mesh, args.size)
    res = run(vs, vt, faces, cam, args.n, costs, args.near, args.far, leaf_size=args.leaf_size,
              defines=tuple(args.define))
    res.update(mesh=args.mesh, size=args.size, n=args.n, leaf_size=args.leaf_size, defines=args.define, costs=costs)
    print(f"{args.mesh} {args.size}x{args.size} N={args.n}: head on {100 * res['head_pixel_fraction']:.0f}% of pixels")
    t = res["tiles"]
    print(f"  tile shortlists: {t['shortlist_walks']:.0f} walks, {t['overflows']:.0f} overflowed, "
          f"{t['list_length']:.1f} entries, {t['walk_chunks']:.1f} frontier chunks, {t['descents']:.2f} descents and {t['walk_steps']:.1f} steps through queued leaves per "
          f"walk; walks {100 * t['shared_warp_instructions'] / res['warp_instructions']:.0f}% of the instructions")
    for k in ("head", "background"):
        c = res[k]
        print(f"  {k:10s} samples: {c['nodes_per_sample']:6.1f} nodes, {c['tris_per_sample']:6.1f} exact triangle "
              f"tests of {c['tri_boxes_per_sample']:.1f} boxed + {c['list_entries_per_sample']:.1f} listed "
              f"(+{c['seeds_per_sample']:.1f} seeds; {100 * c['shortlisted_fraction']:.0f}% through a shortlist), "
              f"lost-member passes {c['lost_member_passes']:.0f}")
    print(f"  lane efficiency {100 * res['lane_efficiency']:.1f}% (active lanes {100 * res['active_lane_efficiency']:.1f}%)  "
          f"(head warps {100 * res['head_warps']['lane_efficiency']:.0f}%, background "
          f"{100 * res['background_warps']['lane_efficiency']:.0f}%, mixed {100 * res['mixed_warps']['lane_efficiency']:.0f}%)")
    print(f"  {res['warp_instructions'] / 1e9:.2f} G warp-instructions/frame, background warps "
          f"{100 * res['background_warp_share']:.0f}%; H200 at full issue {res['ms_at_full_issue_h200']:.2f} ms, "
          f"at 60% {res['ms_at_60pct_issue_h200']:.2f} ms")
    by_mix = dict(zip(("head_warps", "background_warps", "mixed_warps"), res["by_event"]))
    for mix, costs_of in by_mix.items():
        split = sorted(((v, e) for e, v in zip(EVENTS, costs_of) if v > 0), reverse=True)
        fixed = res[mix]["warp_instructions"] - sum(costs_of)
        print(f"  {mix.replace('_', ' ')} by event (G warp-instructions): "
              + ", ".join(f"{e} {v / 1e9:.2f}" for v, e in split if v >= 5e6) + f", fixed per sample {fixed / 1e9:.2f}")
    res["by_event"] = {mix: dict(zip(EVENTS, c)) for mix, c in by_mix.items()}
    print(f"  costs (instructions/event, {costs['source']}): {costs['events']}, per pixel {costs['pixel']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
