"""``fgp demo``: the astronaut portrait (NASA, public domain) smiling, blinking, talking, turning and
nodding, rendered by the warp renderer -> demo.mp4 and a contact-sheet PNG."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..cli import CLIError
from .common import ProgressBar

# Changes from the portrait's own expression; angles in degrees from its pose.
DEMO_SCRIPT = {
    "fps": 25,
    "keyframes": [
        {"t": 0.0},
        {"t": 0.5, "mouthSmile_L": 0.8, "mouthSmile_R": 0.8},
        {"t": 0.8, "mouthSmile_L": 0.8, "mouthSmile_R": 0.8, "eyeBlink_L": 1.0, "eyeBlink_R": 1.0},
        {"t": 1.0, "mouthSmile_L": 0.8, "mouthSmile_R": 0.8},
        {"t": 1.5, "jawOpen": 0.5},
        {"t": 1.9},
        {"t": 2.4, "yaw": 18},
        {"t": 3.0, "yaw": -18},
        {"t": 3.4, "pitch": 10},
        {"t": 3.8, "pitch": -8},
        {"t": 4.2},
    ],
}
SHEET_FRAMES = 8


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="animate the bundled astronaut portrait (offline)",
                       description="Animate scikit-image's astronaut portrait (NASA, public domain) with a "
                                   "built-in script: smile, blink, jaw open, head turn and nod.")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default out/demo)")
    p.add_argument("--size", type=int, default=384, help="frame size in pixels (default 384)")
    p.set_defaults(run=run)


def contact_sheet(frames: list[np.ndarray], columns: int = 4) -> np.ndarray:
    rows = [np.concatenate(frames[i:i + columns], 1) for i in range(0, len(frames), columns)]
    return np.concatenate(rows, 0)


def run(args: argparse.Namespace) -> int:
    from ..media import save_png
    from ..motion import script_motion
    from ..portrait import Portrait
    from ..samples import astronaut_portrait

    if args.size % 2 or not 64 <= args.size <= 2048:
        raise CLIError(f"--size must be even and in [64, 2048], got {args.size}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output directory {args.out}: {exc}") from None
    start = time.perf_counter()
    image, _ = astronaut_portrait(args.size)
    portrait = Portrait(image, "the astronaut portrait")
    motion, fps = script_motion(DEMO_SCRIPT, portrait.motion(), portrait.head.expression_names, "demo script")
    video = args.out / "demo.mp4"
    n = portrait.write_video(motion, video, fps, progress=ProgressBar())
    picks = np.linspace(0, n - 1, SHEET_FRAMES).round().astype(int)
    sheet = save_png(contact_sheet([portrait.render(motion, int(i)) for i in picks]), args.out / "contact_sheet.png")
    print(f"wrote {video} ({n} frames, {fps:g} fps, {args.size}x{args.size}) and {sheet}; "
          f"fit error {float(portrait.fit.error_px[0]):.2f} px; {time.perf_counter() - start:.1f} s")
    return 0
