"""`fgp prepare`: videos -> a training dataset (face crops, head-model parameters, manifest)."""
from __future__ import annotations

import argparse

from ..cli import CLIError


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="prepare a training dataset from a directory of videos",
                       description="Decode every video under --videos, crop the face (one box per clip), resize, "
                                   "track head-model parameters and write one folder per clip plus manifest.json. "
                                   "Clips without a face, too short or unreadable are skipped and reported; "
                                   "rerunning continues where an interrupted run stopped.")
    p.add_argument("--videos", required=True, help="directory of videos (searched recursively)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--size", type=int, default=512, help="training resolution (square, multiple of 8)")
    p.add_argument("--min-frames", type=int, default=8, help="skip clips shorter than this")
    p.add_argument("--max-frames", type=int, default=0, help="keep at most this many frames per clip (0: all)")
    p.add_argument("--margin", type=float, default=1.8, help="crop side / face landmark extent")
    p.add_argument("--fit-steps", type=int, default=None, help="identity-fit iterations (default: the fitter's)")
    p.add_argument("--smoothing", type=int, default=3,
                   help="half-width in frames of the tracker's smoothing window (0: none)")
    p.add_argument("--workers", type=int, default=1,
                   help="clips prepared at once: local processes, or the CPUs of a local Ray instance")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this machine's processes; ray: Ray tasks (pip install 'fgp_fast[distributed]')")
    p.add_argument("--address", default=None,
                   help="with --engine ray: the Ray cluster to run on (e.g. auto, HOST:6379 or ray://HOST:10001); "
                        "--out must then be a folder every node shares")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import PrepareSettings, prepare
    from ..errors import InputError

    settings = PrepareSettings(size=args.size, min_frames=args.min_frames, max_frames=args.max_frames,
                               margin=args.margin, fit_steps=args.fit_steps,
                               smoothing=args.smoothing)
    try:
        settings.check()
    except InputError as exc:  # name the flag, not the field
        raise CLIError("--" + str(exc).replace("_", "-", 1)) from None
    from ..data.engines import check_engine

    try:
        check_engine(args.engine, args.workers, args.address)
    except InputError as exc:
        raise CLIError("--" + str(exc)) from None
    try:
        report = prepare(args.videos, args.out, settings, workers=args.workers, engine=args.engine,
                         address=args.address)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    print(f"{len(report.prepared)} clip(s) prepared, {len(report.reused)} already done, "
          f"{len(report.skipped)} skipped -> {args.out}/manifest.json")
    for s in report.skipped:
        print(f"  skipped {s['video']}: {s['reason']}")
    return 0
