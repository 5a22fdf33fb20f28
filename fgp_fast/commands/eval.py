"""``fgp eval``: APD, AED, the mouth- and eye-openness errors (and, with local adapter weights,
CSIM, LPIPS, FID) of a generated video against its driver; the metrics are defined in
:mod:`fgp_fast.metrics`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import metrics
from ..cli import CLIError
from .common import ProgressBar, refuse_same_file

ADAPTERS = ("csim", "lpips", "fid")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="APD / AED / openness errors of a generated video against its driver",
                       description=metrics.__doc__.split("\n\n", 1)[1])
    p.add_argument("--generated", type=Path, required=True, help="generated video")
    p.add_argument("--driver", type=Path, required=True, help="driver video")
    p.add_argument("--face-index", type=int, default=0, help="which face, largest first (default 0)")
    p.add_argument("--source", type=Path, default=None, help="source portrait for CSIM (default: first driver frame)")
    for name in ADAPTERS:
        p.add_argument(f"--{name}-weights", type=Path, default=None,
                       help=f"local {name.upper()} weights (never downloaded); without them {name.upper()} is skipped")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..fitting import track_file
    from ..fitting.track import detect_landmarks
    from ..media import load_image, read_frames

    if args.face_index < 0:
        raise CLIError(f"--face-index must be >= 0, got {args.face_index}")
    refuse_same_file(args.json, "json", generated=args.generated, driver=args.driver, source=args.source)
    bar = ProgressBar()
    videos = []
    for path in (args.generated, args.driver):
        frames, fps = read_frames(path)
        found = detect_landmarks(frames, args.face_index, bar, str(path))  # for the fit and the openness
        videos.append((track_file(path, args.face_index, progress=bar, frames=frames, fps=fps, landmarks=found)[2],
                       frames, found))
    (gen_fit, generated, gen_lm), (drv_fit, driver, drv_lm) = videos
    results = metrics.pose_expression_distance(gen_fit, drv_fit)
    results.update(metrics.openness_over_videos(gen_lm, drv_lm))
    for name in ADAPTERS:
        weights = getattr(args, f"{name}_weights")
        if weights is None:
            continue
        try:
            model = metrics.load_adapter(weights, name)
        except FileNotFoundError as exc:
            print(f"{name.upper()}: not computed: {exc} "
                  f"(weights are loaded only from a local TorchScript file, never downloaded)")
            continue
        if name == "csim":
            source = load_image(args.source) if args.source else driver[0]
            results["CSIM"] = metrics.csim(model, source, generated)
        elif name == "lpips":
            results["LPIPS"] = metrics.lpips(model, generated, driver)
        else:
            results["FID"] = metrics.fid(model, generated, driver)
    extra = "".join(f", {k} {results[k]:.4f}" for k in ("CSIM", "LPIPS", "FID") if k in results)
    print(f"APD {results['APD']:.2f} deg, AED {results['AED']:.4f}, mouth openness error "
          f"{results['mouth_openness_error']:.4f}, eye openness error {results['eye_openness_error']:.4f} "
          f"over {results['frames']} frames{extra}")
    if args.json:
        from ..media import atomic_write

        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=2))
    return 0
