"""``fgp animate``: a portrait re-posed and re-expressed by a driver video, image folder or script."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..cli import CLIError
from .common import ProgressBar, check_output, edit_args, load_renderer

SCRIPT_HELP = ("A script is JSON/YAML: {fps: 25, keyframes: [{t: 0}, {t: 1.0, mouthSmile_L: 0.6, yaw: 15}]}; "
               "expression values are changes from the portrait, yaw/pitch/roll degrees from its pose.")


def add_parser(sub) -> None:
    p = sub.add_parser("animate", help="animate a portrait from a driver video, image folder or script",
                       description="Re-pose and re-express a source portrait to follow a driver, with "
                                   "optional edits, and write an H.264 mp4.", epilog=SCRIPT_HELP)
    p.add_argument("--source", type=Path, required=True, help="portrait image")
    p.add_argument("--driver", type=Path, required=True, help="driver video, folder of frames, or .json/.yaml script")
    p.add_argument("--out", type=Path, required=True, help="output .mp4")
    p.add_argument("--mode", choices=("absolute", "relative"), default="relative",
                   help="absolute: the driver's pose and expression; relative (default): the source's plus "
                        "the driver's change since its first frame")
    p.add_argument("--edit", action="append", default=[], metavar="NAME=[+|-]VALUE",
                   help="expression channel (in [0, 1]) or yaw/pitch/roll (degrees, within 90); '=' sets, "
                        "'=+'/'=-' shifts (repeatable)")
    p.add_argument("--renderer", choices=("warp", "diffusion"), default="warp",
                   help="warp (learning-free, default) or diffusion (needs --weights)")
    p.add_argument("--weights", type=Path, default=None,
                   help="diffusion renderer weights: a directory written by FGPortraitPipeline.save_pretrained")
    p.add_argument("--device", default=None, help="diffusion renderer device (default: cuda if available, else cpu)")
    p.add_argument("--size", type=int, default=512, help="longer side of the output in pixels (default 512)")
    p.add_argument("--side-by-side", action="store_true", help="put the driver (or the source) beside the result")
    p.add_argument("--face-index", type=int, default=0, help="which face, largest first (default 0)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a folder driver (default 25)")
    p.add_argument("--no-cache", action="store_true", help="refit instead of using cached driver fits")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..heads import load_head_model
    from ..media import fit_size, load_image, resize
    from ..motion import apply_edits, load_driver
    from ..portrait import Portrait

    if args.face_index < 0:
        raise CLIError(f"--face-index must be >= 0, got {args.face_index}")
    if not 16 <= args.size <= 4096:
        raise CLIError(f"--size must be in [16, 4096], got {args.size}")
    check_output(args.out)
    renderer = load_renderer(args)
    start = time.perf_counter()
    edits = edit_args(args.edit, load_head_model("ict").expression_names)
    image = load_image(args.source)
    image = resize(image, *fit_size(*image.shape[:2], args.size))
    portrait = Portrait(image, str(args.source), args.face_index, renderer=renderer)
    bar = ProgressBar()
    driven = load_driver(args.driver, portrait.motion(), portrait.head.expression_names, args.mode,
                         args.face_index, cache=not args.no_cache, progress=bar)
    fps = args.fps or driven.fps or 25.0
    motion = apply_edits(driven.motion, edits, portrait.head.expression_names)
    side = None
    if args.side_by_side:
        side = (lambda i: driven.frames[i]) if driven.frames is not None else (lambda i: portrait.image)
    n = portrait.write_video(motion, args.out, fps, side, progress=bar)
    H, W = portrait.size
    print(f"wrote {args.out}: {n} frames at {fps:g} fps, {W * (2 if side else 1)}x{H}; "
          f"driver frames without a face filled from neighbours: {driven.filled}; "
          f"source fit error {float(portrait.fit.error_px[0]):.2f} px; {time.perf_counter() - start:.1f} s")
    return 0
