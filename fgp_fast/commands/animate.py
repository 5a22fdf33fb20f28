"""``fgp animate``: a portrait re-posed and re-expressed by a driver video, image folder or script."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..cli import CLIError

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SCRIPT_SUFFIXES = {".json", ".yaml", ".yml"}
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
                   help="expression channel or yaw/pitch/roll (degrees); '=' sets, '=+'/'=-' shifts (repeatable)")
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


# ------------------------------------------------------------------------------------ helpers
def progress(label: str):
    """A plain one-line stderr progress bar."""
    start = time.perf_counter()
    last = [0.0]

    def update(done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < 0.25:  # a few redraws a second are plenty
            return
        last[0] = now
        bar = "#" * int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label} [{bar:<30}] {done}/{total} {time.perf_counter() - start:5.1f}s{end}")
        sys.stderr.flush()

    return update


def check_output(path: Path) -> None:
    if path.suffix.lower() != ".mp4":
        raise CLIError(f"--out must be an .mp4 file, got {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write to {parent}")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1|3, H, W) or (1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    image = image.reshape(-1, *image.shape[-2:])
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def fit_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with the longer side ``size``, both even (H.264)."""
    s = size / max(height, width)
    return max(2, int(round(height * s / 2)) * 2), max(2, int(round(width * s / 2)) * 2)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.LANCZOS))


def read_image_uint8(path: Path) -> np.ndarray:
    from ..media.images import load_image

    return to_uint8(load_image(path))


class Portrait:
    """A source image, its fit, and the renderer (warp, or a ``DiffusionRenderer``) built on it once."""

    def __init__(self, image: np.ndarray, name: str, face_index: int = 0, settings=None, diffusion=None):
        from ..fitting import FitSettings, fit_image
        from ..heads import load_head_model
        from ..landmarks import detect_image
        from ..render import WarpRenderer

        self.head = load_head_model("ict")
        self.image = image
        H, W = image.shape[:2]
        self.landmarks = detect_image(image, name, face_index)
        self.fit = fit_image(self.head, self.landmarks, H, W, settings or FitSettings())
        self.params = self.fit.head_params(self.head)
        self.camera = self.fit.camera()
        self.verts = self.head(self.params)
        source = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        self.diffusion = diffusion
        if diffusion is None:
            self.renderer = WarpRenderer(source, self.verts, self.head.faces, self.camera, backend="auto")
        else:
            device = diffusion.pipeline.device
            diffusion.set_source(source.to(device), self.verts.to(device), self.camera.to(device=device))

    def motion(self):
        from ..motion.drive import Motion

        return Motion(self.fit.rotation[:1].copy(), self.fit.expression[:1].copy())

    def render(self, motion, index: int) -> np.ndarray:
        params = self.params.replace(
            expression=torch.from_numpy(motion.expression[index:index + 1]),
            pose=self._pose(motion.rotation[index:index + 1]))
        verts = self.head(params)
        if self.diffusion is not None:
            return to_uint8(self.diffusion.render(verts.to(self.diffusion.pipeline.device)).float().cpu())
        return to_uint8(self.renderer.render(verts).image)

    def _pose(self, rotation: np.ndarray) -> torch.Tensor:
        from ..fitting.result import NECK

        pose = self.params.pose.clone()
        pose[:, NECK] = torch.from_numpy(np.asarray(rotation, np.float32))
        return pose


def driver_frames(path: Path) -> tuple[list[np.ndarray], float | None]:
    """Frames of a driver video or image folder (folder: no frame rate of its own)."""
    from ..media.video import read_video

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CLIError(f"driver folder {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        frames = [read_image_uint8(f) for f in files]
        if len({f.shape for f in frames}) > 1:
            raise CLIError(f"driver folder {path} has images of different sizes")
        return frames, None
    return read_video(path)


def track_driver(frames: list[np.ndarray], name: str, face_index: int):
    """Landmarks per frame and the fitted sequence; frames without a face are filled from neighbours."""
    from ..fitting import fit_sequence
    from ..landmarks import N_LANDMARKS, FaceLandmarker

    H, W = frames[0].shape[:2]
    obs = np.zeros((len(frames), N_LANDMARKS, 2), np.float32)
    tracked = np.zeros(len(frames), bool)
    bar = progress("landmarks")
    with FaceLandmarker(video=True) as lm:
        for i, frame in enumerate(frames):
            face = lm.face(frame, face_index)
            if face is not None:
                obs[i], tracked[i] = face, True
            bar(i + 1, len(frames))
    if not tracked.any():
        raise CLIError(f"no face found in any frame of {name}")
    from ..heads import load_head_model

    return fit_sequence(load_head_model("ict"), obs, H, W, tracked, progress=progress("fitting"))


def driver_motion(path: Path, args, portrait: Portrait):
    """-> (motion, fps, driver frames or None, filled frame count)."""
    from ..motion.drive import Motion, drive, load_script
    from ..fitting import cached_fit, fill_gaps
    from ..fitting.fit import FitSettings

    names = portrait.head.expression_names
    if not path.exists():
        raise CLIError(f"driver not found: {path}")
    if path.is_file() and path.suffix.lower() in SCRIPT_SUFFIXES:
        motion, fps = load_script(path, portrait.motion(), names)
        return motion, fps, None, 0
    frames, fps = driver_frames(path)
    fps = args.fps or fps or 25.0
    key = f"{FitSettings().key()}|face{args.face_index}"
    if path.is_dir():  # a folder has no single content hash to key a cache entry on
        fit = track_driver(frames, str(path), args.face_index)
    else:
        fit, _ = cached_fit(path, key, lambda: track_driver(frames, str(path), args.face_index),
                            enabled=not args.no_cache)
    fit, filled = fill_gaps(fit)
    motion = drive(portrait.motion(), Motion(fit.rotation, fit.expression), args.mode)
    return motion, fps, frames, filled


def write_video(portrait: Portrait, motion, fps: float, out: Path, side=None) -> int:
    """Render every frame of ``motion`` into ``out``; ``side(i)`` gives an image to put on the left."""
    from ..media.video import VideoWriter

    H, W = portrait.image.shape[:2]
    width = 2 * W if side else W
    bar = progress("rendering")
    with VideoWriter(out, fps, width, H) as writer:
        for i in range(len(motion)):
            frame = portrait.render(motion, i)
            if side:
                frame = np.concatenate([resize(side(i), H, W), frame], 1)
            writer.write(frame)
            bar(i + 1, len(motion))
    return len(motion)


def load_source(path: Path, size: int) -> np.ndarray:
    if not 16 <= size <= 4096:
        raise CLIError(f"--size must be in [16, 4096], got {size}")
    image = read_image_uint8(path)
    return resize(image, *fit_size(*image.shape[:2], size))


def load_diffusion_renderer(args: argparse.Namespace):
    """The diffusion renderer from ``--weights`` (fp16 on CUDA), or a CLIError saying what is missing."""
    if args.weights is None:
        raise CLIError("--renderer diffusion needs --weights DIR: a directory written by "
                       "FGPortraitPipeline.save_pretrained (no trained weights ship with fgp_fast)")
    if not args.weights.is_dir():
        raise CLIError(f"--weights {args.weights} is not a directory")
    try:
        from ..render.diffusion import DiffusionRenderer
    except ImportError as exc:
        raise CLIError(f"the diffusion renderer needs the 'diffusion' extra "
                       f"(pip install -e '.[diffusion]'): {exc}") from None
    from ..heads import load_head_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    faces = load_head_model("ict").faces.to(device)
    return DiffusionRenderer.from_pretrained(args.weights, faces, device=device, dtype=dtype)


def run(args: argparse.Namespace) -> int:
    from ..motion.drive import apply_edits, parse_edits

    diffusion = load_diffusion_renderer(args) if args.renderer == "diffusion" else None
    if args.face_index < 0:
        raise CLIError(f"--face-index must be >= 0, got {args.face_index}")
    check_output(args.out)
    start = time.perf_counter()
    from ..heads import load_head_model

    edits = parse_edits(args.edit, load_head_model("ict").expression_names)
    image = load_source(args.source, args.size)
    if diffusion is not None:  # the latent grid needs sides that are multiples of 8
        image = resize(image, image.shape[0] // 8 * 8, image.shape[1] // 8 * 8)
    portrait = Portrait(image, str(args.source), args.face_index, diffusion=diffusion)
    motion, fps, frames, filled = driver_motion(args.driver, args, portrait)
    motion = apply_edits(motion, edits, portrait.head.expression_names)
    side = None
    if args.side_by_side:
        side = (lambda i: frames[i]) if frames is not None else (lambda i: image)
    n = write_video(portrait, motion, fps, args.out, side)
    print(f"wrote {args.out}: {n} frames at {fps:g} fps, {image.shape[1] * (2 if side else 1)}x{image.shape[0]}; "
          f"driver frames without a face filled from neighbours: {filled}; "
          f"source fit error {float(portrait.fit.error_px[0]):.2f} px; {time.perf_counter() - start:.1f} s")
    return 0
