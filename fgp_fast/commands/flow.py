"""``fgp flow``: the 3D flow of an expression/pose change on the bundled head, as PNGs (+ .npy)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..cli import CLIError
from .common import edit_args


def add_parser(sub) -> None:
    p = sub.add_parser("flow", help="write depth, flow-magnitude and warp-preview PNGs for an edit",
                       description="Encode the 3D flow from the neutral bundled ICT head (source) to the "
                                   "head with the given expression and head rotation (target).")
    p.add_argument("--expr", action="append", default=[], metavar="NAME=VALUE",
                   help="an edit of the neutral head: expression channel in [0, 1], e.g. jawOpen=0.8 "
                        "(repeatable; the edit grammar of `fgp animate --edit`)")
    p.add_argument("--yaw", type=float, default=0.0, help="head yaw in degrees (neck rotation)")
    p.add_argument("--pitch", type=float, default=0.0, help="head pitch in degrees (neck rotation)")
    p.add_argument("--roll", type=float, default=0.0, help="head roll in degrees (neck rotation)")
    p.add_argument("--size", type=int, default=256, help="image height and width (default 256)")
    p.add_argument("--samples", type=int, default=20, help="samples per ray N (default 20)")
    p.add_argument("--delta", type=float, default=0.01, help="half-width of the depth band, metres")
    p.add_argument("--sampling", choices=["depth", "uniform"], default="depth")
    p.add_argument("--backend", default="auto", help="flow backend (default: auto, the fastest available)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(run=run)


def _target_params(head, edits):
    """The neutral head (source) and the head with the edits (target)."""
    from ..motion import Motion, apply_edits

    src = head.neutral_params(1)
    neutral = Motion(np.zeros((1, 3), np.float32), src.expression.numpy().copy())
    return src, apply_edits(neutral, edits, head.expression_names).head_params(src, 0)


def run(args: argparse.Namespace) -> int:
    from .. import ops
    from ..camera import Camera
    from ..heads import load_head_model
    from ..media import colormap, save_png
    from ..render import procedural_texture, render_textured, warp_render

    if args.size < 8 or args.size > 4096:
        raise CLIError(f"--size must be in [8, 4096], got {args.size}")
    head = load_head_model("ict")
    angles = [f"{name}={getattr(args, name)!r}" for name in ("yaw", "pitch", "roll") if getattr(args, name)]
    src, tgt = _target_params(head, edit_args(args.expr + angles, head.expression_names))
    v_src, v_tgt = head(src), head(tgt)
    faces = head.faces
    camera = Camera.frame_head(v_src[0], args.size)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output directory {args.out}: {exc}") from None

    start = time.perf_counter()
    flow, aux = ops.flow_encode(v_tgt, v_src, faces, camera, n_samples=args.samples, delta=args.delta,
                                sampling=args.sampling, backend=args.backend, return_aux=True)
    seconds = time.perf_counter() - start
    mask = aux.mask[0]
    N = args.samples
    magnitude = flow[0].view(N, 3, args.size, args.size).norm(dim=1).mean(0)

    texture = procedural_texture(512, seed=0)
    src_img, _ = render_textured(v_src, faces, head.faces_uv, head.uv, texture, camera, background=0.8)
    tgt_img, _ = render_textured(v_tgt, faces, head.faces_uv, head.uv, texture, camera, background=0.8)
    warped = warp_render(src_img, v_src, v_tgt, faces, camera).image

    out = args.out
    save_png(colormap(aux.depth[0], mask), out / "depth.png")
    save_png(colormap(magnitude * 1000, vmin=0.0), out / "flow_magnitude.png")
    save_png(src_img, out / "source.png")
    save_png(tgt_img, out / "target.png")
    save_png(warped, out / "warp_preview.png")
    np.save(out / "flow.npy", flow[0].float().numpy())
    print(f"flow {tuple(flow.shape)} in {seconds:.2f} s (backend {args.backend}); head pixels "
          f"{int(mask.sum())}/{mask.numel()}; mean |flow| on the head {float(magnitude[mask].mean()) * 1000:.2f} mm")
    print(f"wrote {', '.join(p.name for p in sorted(out.iterdir()) if not p.name.startswith('.'))} to {out}")
    return 0
