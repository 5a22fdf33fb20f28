"""``fgp animate``: a portrait re-posed and re-expressed by a driver video, image folder, still or script."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..cli import CLIError
from .common import ProgressBar, check_fps, check_output, edit_args, load_renderer, refuse_same_file

SCRIPT_HELP = ("A script is JSON/YAML: {fps: 25, keyframes: [{t: 0}, {t: 1.0, mouthSmile_L: 0.6, yaw: 15}]}; "
               "expression values are changes from the portrait, yaw/pitch/roll degrees from its pose. "
               "Limits (--limit) default to yaw=30 pitch=20 roll=20 (degrees of change from the portrait's "
               "pose) and jawOpen=0.8, the range the warp renderer draws well.")


def add_parser(sub) -> None:
    p = sub.add_parser("animate", help="animate a portrait from a driver video, image folder, still or script",
                       description="Re-pose and re-express a source portrait (or every face of a group photo, "
                                   "or each frame of a source video) to follow a driver, with optional edits; "
                                   "the animated head crop is pasted back into the full-resolution source and "
                                   "the driver's sound kept.", epilog=SCRIPT_HELP)
    p.add_argument("--source", type=Path, required=True, help="portrait image or source video")
    p.add_argument("--driver", type=Path, required=True,
                   help="driver video, folder of frames, still image, or .json/.yaml script")
    p.add_argument("--out", type=Path, required=True, help="output .mp4 (.png for a still driver without --frames)")
    p.add_argument("--mode", choices=("absolute", "relative"), default="relative",
                   help="absolute: the driver's pose and expression; relative (default): the source's plus "
                        "the driver's change from its reference (a still driver is always absolute)")
    p.add_argument("--reference-frame", type=int, default=None, metavar="K",
                   help="relative mode: driver frame K is the neutral the motion is measured from "
                        "(default: per shot, the first second of confidently tracked frames)")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="yaw/pitch/roll (degrees of change from the portrait's pose), expression or a "
                        "channel (max value in [0, 1]); repeatable")
    p.add_argument("--edit", action="append", default=[], metavar="NAME=[+|-]VALUE",
                   help="expression channel (in [0, 1]) or yaw/pitch/roll (degrees, within 90); '=' sets, "
                        "'=+'/'=-' shifts (repeatable)")
    p.add_argument("--renderer", choices=("warp", "diffusion"), default="warp",
                   help="warp (learning-free, default) or diffusion (needs --weights)")
    p.add_argument("--weights", type=Path, default=None,
                   help="diffusion renderer weights: a directory written by FGPortraitPipeline.save_pretrained")
    p.add_argument("--device", default=None, help="diffusion renderer device (default: cuda if available, else cpu)")
    p.add_argument("--size", type=int, default=512,
                   help="working resolution of the animated head crop in pixels (default 512; the "
                        "diffusion renderer's input)")
    p.add_argument("--max-side", type=int, default=None,
                   help="scale the source (and so the output) down to at most this longer side")
    p.add_argument("--no-paste-back", action="store_true", help="write the animated head crop alone")
    p.add_argument("--no-audio", action="store_true", help="leave out the driver's sound")
    p.add_argument("--side-by-side", action="store_true", help="put the driver (or the source) beside the result")
    p.add_argument("--face-index", default="0",
                   help="which face, largest first (default 0); 'all' animates every face of the source "
                        "photo with the driver's largest face")
    p.add_argument("--frames", type=int, default=None,
                   help="a still driver: write an mp4 of this many frames easing into its expression")
    p.add_argument("--source-pose", choices=("keep", "driver"), default="keep",
                   help="a source video: keep each frame's own head motion (default) or take the driver's")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a folder or still driver (default 25)")
    p.add_argument("--no-cache", action="store_true", help="retrack instead of using cached driver tracks")
    p.set_defaults(run=run)


def _face_index(text: str) -> int | None:
    """``--face-index``: an index >= 0, or None for 'all'."""
    if text == "all":
        return None
    try:
        index = int(text)
    except ValueError:
        raise CLIError(f"--face-index must be a number >= 0 or 'all', got {text!r}") from None
    if index < 0:
        raise CLIError(f"--face-index must be >= 0, got {index}")
    return index


def _open_driver(path: Path, kind: str) -> None:
    """Open the driver (image headers, a video's first frame, a script's keys) before the portrait
    is fitted, so a bad driver fails in a moment, not after seconds of fitting."""
    from ..media import check_image_size, image_size, open_frames
    from ..motion.script import read_script

    if kind == "image":
        check_image_size(*image_size(path), name=f"driver {path}")
    elif kind == "script":
        read_script(path)
    else:
        open_frames(path).close()


def run(args: argparse.Namespace) -> int:
    from ..animation import AnimateOptions, animate, animate_source_video, driver_kind, limit_side
    from ..errors import InputError
    from ..heads import load_head_model
    from ..media import MAX_SIDE, VIDEO_SUFFIXES, load_image
    from ..motion.robust import parse_limits
    from ..portrait import Portrait

    face_index = _face_index(args.face_index)
    if not 16 <= args.size <= 4096:
        raise CLIError(f"--size must be in [16, 4096], got {args.size}")
    if args.max_side is not None and not 16 <= args.max_side <= MAX_SIDE:
        raise CLIError(f"--max-side must be in [16, {MAX_SIDE}], got {args.max_side}")
    check_fps(args.fps)
    refuse_same_file(args.out, source=args.source, driver=args.driver)
    kind = driver_kind(args.driver)
    if args.frames is not None and kind != "image":
        raise CLIError("--frames is for a still-image driver")
    if args.reference_frame is not None and (args.mode != "relative" or kind not in ("video", "folder")):
        raise CLIError("--reference-frame is for relative driving by a video or a folder of frames")
    source_kind = "video" if args.source.suffix.lower() in VIDEO_SUFFIXES else "image"
    check_output(args.out, ".png" if kind == "image" and args.frames is None else ".mp4")
    names = load_head_model("ict").expression_names
    edits = edit_args(args.edit, names)
    try:
        limits = parse_limits(args.limit, names)
    except InputError as exc:
        raise CLIError(str(exc)) from None
    _open_driver(args.driver, kind)
    renderer = load_renderer(args)
    options = AnimateOptions(mode=args.mode, edits=edits, limits=limits, reference_frame=args.reference_frame,
                             paste_back=not args.no_paste_back, audio=not args.no_audio,
                             side_by_side=args.side_by_side, cache=not args.no_cache, fps=args.fps,
                             frames=args.frames, keep_pose=args.source_pose == "keep")
    start = time.perf_counter()
    bar = ProgressBar()
    if source_kind == "video":
        if face_index is None:
            raise CLIError("--face-index all is for a source photo, not a source video")
        report = animate_source_video(args.source, renderer, args.size, args.driver, args.out, options,
                                      face_index, args.max_side, progress=bar)
        what = f"source video {args.source}"
    else:
        image = limit_side(load_image(args.source), args.max_side)
        if face_index is None:
            if args.renderer != "warp":
                raise CLIError("--face-index all needs the warp renderer (one renderer per face)")
            portraits = Portrait.every_face(image, str(args.source), args.size, lambda: load_renderer(args))
        else:
            portraits = [Portrait(image, str(args.source), face_index, renderer=renderer, size=args.size)]
        report = animate(portraits, args.driver, args.out, options, face_index or 0, progress=bar)
        errors = ", ".join(f"{float(p.fit.error_px[0]):.2f}" for p in portraits)
        what = f"{len(portraits)} face(s), source fit error {errors} px"
    states = ", ".join(f"{k} {v}" for k, v in sorted(report.states.items()))
    cuts = ", ".join(f"{k} {v}" for k, v in sorted(report.cuts.items())) or "none"
    sound = "with the driver's sound" if report.audio else "no sound"
    rate = f" at {report.fps:g} fps" if report.frames > 1 else ""
    print(f"wrote {args.out}: {report.frames} frame(s){rate}, {report.width}x{report.height}, {sound}; "
          f"{what}; driver frames: {states}; segments: {cuts}"
          f"{' (tracks from the cache)' if report.cached else ''}; {time.perf_counter() - start:.1f} s")
    return 0
