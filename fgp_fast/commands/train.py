"""`fgp train`: train the diffusion renderer (stage 1: ControlNet + appearance net; stage 2: temporal layers)."""
from __future__ import annotations

import argparse

from ..cli import CLIError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train FG-Portrait weights on a prepared dataset (accelerate)",
                       description="Every hyper-parameter lives in one YAML file (configs/train_sd15.yaml "
                                   "documents them); the flags below override it. Multi-GPU: "
                                   "`accelerate launch -m fgp_fast.cli train ...`. Writes checkpoints to "
                                   "OUTPUT/checkpoints, the final weights to OUTPUT/weights, the loss to "
                                   "OUTPUT/log.csv (and TensorBoard) and preview grids to OUTPUT/samples.")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--data", help="prepared dataset directory (fgp prepare)")
    p.add_argument("--output", help="run directory")
    p.add_argument("--stage", type=int, choices=(1, 2))
    p.add_argument("--init", help="random-tiny | random-sd15 | pretrained:<dir> | sd15:<path>")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"))
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--ema", action="store_true", default=None)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--sample-every", type=int, help="preview grid every N steps (OUTPUT/samples, TensorBoard); 0: none")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step, as if interrupted")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..training import load_config, train

    overrides = {k: getattr(args, k) for k in ("data", "output", "stage", "init", "steps", "batch_size", "grad_accum",
                                                "lr", "mixed_precision", "gradient_checkpointing", "ema",
                                                "checkpoint_every", "sample_every", "seed")}
    if args.no_progress:
        overrides["progress"] = False
    try:
        cfg = load_config(args.config, **overrides)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from None
    if not cfg.data:
        raise CLIError("no dataset: give --data or set data: in the config")
    try:
        result = train(cfg, resume=args.resume, stop_after=args.stop_after)
    except (DataError, ImportError) as exc:
        raise CLIError(str(exc)) from None
    if result["interrupted"]:
        print(f"interrupted at step {result['step']}; checkpoint {result['checkpoint']}")
        return 130
    if result["weights"] is not None:  # the main process (the others write nothing)
        print(f"done: {result['step']} steps; weights in {result['weights']}")
    return 0
