"""``fgp eval``: APD and AED (and, with local adapter weights, CSIM, LPIPS, FID) of a generated
video against its driver; the metrics are defined in :mod:`fgp_fast.metrics`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import metrics
from ..cli import CLIError
from .common import ProgressBar

ADAPTERS = ("csim", "lpips", "fid")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="APD / AED of a generated video against its driver",
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
    from ..media import load_image

    if args.face_index < 0:
        raise CLIError(f"--face-index must be >= 0, got {args.face_index}")
    bar = ProgressBar()
    (generated, _, gen_fit), (driver, _, drv_fit) = (track_file(path, args.face_index, progress=bar)
                                                      for path in (args.generated, args.driver))
    results = metrics.pose_expression_distance(gen_fit, drv_fit)
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
    print(f"APD {results['APD']:.2f} deg, AED {results['AED']:.4f} over {results['frames']} frames{extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0
