"""Small-scale replication of FG-Portrait's claim, end to end on the CPU.

1. Renders synthetic training clips and a held-out set of identities never trained on
   (``fgp_fast.data.synthetic``: random ICT identities, expressions, poses, textures, backgrounds;
   the held-out textures use other photo crops).
2. Trains the three learned variants (``configs/ablation_*.yaml``: random weights, pixel space,
   64 px), all with the same steps, batch and seed, in parallel processes (one thread each, one
   loader worker each): 3D flow with depth-guided sampling (the paper's method), 3D flow with
   uniform sampling (its ablation), rasterised driver landmarks (the landmark baseline).
3. Scores them and two floors, copying the source and the learning-free warp renderer, on the
   held-out pairs: PSNR, SSIM, APD, AED (``fgp_fast.training.evaluate`` defines them), plus the
   fitter's own APD/AED on the truth (the metric's resolution).
4. Writes the table, the wall time and load average into ``bench/RESULTS.md`` (between the
   ``train_ablation`` markers) and a contact sheet (rows: pairs; columns: source | driver | warp |
   flow depth | flow uniform | landmarks; copying the source is the source column).

    python bench/train_ablation.py                     # the full comparison (~1 h on 2 idle cores)
    python bench/train_ablation.py --steps 40 --clips 16 --pairs 8 --out /tmp/abl --no-results   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"flow_depth": "3D flow, depth-guided sampling (paper)", "flow_uniform": "3D flow, uniform sampling (ablation)",
            "landmarks": "2D landmarks (rasterised)"}
START, END = "<!-- train_ablation:start -->", "<!-- train_ablation:end -->"


def _data(args) -> tuple[Path, Path]:
    from fgp_fast.data.synthetic import SyntheticSpec, TextureBank, render_synthetic
    from fgp_fast.heads import load_head_model

    train, held = args.out / "data_train", args.out / "data_heldout"
    head = load_head_model("ict")
    look = dict(kinds=tuple(args.kinds), background_pattern=args.background_pattern)
    for folder, spec, seed in ((train, SyntheticSpec(clips=args.clips, frames=args.frames, seed=0, **look), 0),
                               (held, SyntheticSpec(clips=args.heldout_clips, frames=4, seed=1000, **look), 1)):
        manifest = folder / "manifest.json"
        wanted = json.loads(json.dumps(spec.__dict__))  # as the manifest stores it (tuples are lists)
        if manifest.is_file() and json.loads(manifest.read_text()).get("synthetic") == wanted:
            continue
        t0 = time.perf_counter()
        render_synthetic(folder, spec, TextureBank(head, seed=seed))
        print(f"rendered {spec.clips} clips x {spec.frames} frames into {folder} in {time.perf_counter() - t0:.0f} s",
              flush=True)
    return train, held


def _train_one(args) -> None:
    """(child process) train one variant; prints its wall time as JSON on the last line."""
    import torch

    torch.set_num_threads(1)
    from fgp_fast.training import load_config, train

    cfg = load_config(ROOT / "configs" / f"ablation_{args.train_one}.yaml", data=str(args.data),
                      val_data=str(args.val_data), output=str(args.out / f"run_{args.train_one}"), steps=args.steps,
                      val_every=args.val_every or args.steps, loader_workers=1, checkpoint_every=args.steps,
                      seed=args.seed)
    t0 = time.perf_counter()
    result = train(cfg, log=lambda s: print(s, flush=True))
    print(json.dumps({"variant": args.train_one, "seconds": time.perf_counter() - t0, "steps": result["step"],
                      "final_loss": sum(result["losses"][-20:]) / len(result["losses"][-20:])}), flush=True)


def _train_all(args, train: Path, held: Path) -> dict:
    procs = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for v in args.variants:
        log = open(args.out / f"train_{v}.log", "w")
        cmd = [sys.executable, __file__, "--train-one", v, "--data", str(train), "--val-data", str(held),
               "--out", str(args.out), "--steps", str(args.steps), "--val-every", str(args.val_every),
               "--seed", str(args.seed)]
        procs[v] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        if args.sequential:
            procs[v][0].wait()
    times = {}
    for v, (proc, log) in procs.items():
        proc.wait()
        log.close()
        lines = (args.out / f"train_{v}.log").read_text().strip().splitlines()
        if proc.returncode != 0:
            raise SystemExit(f"training {v} failed (exit {proc.returncode}):\n" + "\n".join(lines[-30:]))
        times[v] = json.loads(lines[-1])
        print(f"trained {v}: {times[v]}", flush=True)
    return times


def _evaluate(args, held_dir: Path) -> tuple[dict, dict]:
    import torch

    from fgp_fast.pipeline import FGPortraitPipeline
    from fgp_fast.training import load_config
    from fgp_fast.training.evaluate import HeldOut, render_copy, render_model, render_warp

    held = HeldOut(str(held_dir), args.pairs, pose=True)
    renders = {"copy": render_copy(held), "warp": render_warp(held)}
    for v in args.variants:
        cfg = load_config(ROOT / "configs" / f"ablation_{v}.yaml", val_every=0)
        pipe = FGPortraitPipeline.from_pretrained(args.out / f"run_{v}" / "weights")
        renders[v] = render_model(pipe, held, cfg.condition, cfg.n_samples, cfg.flow_delta, cfg.flow_sampling,
                                  cfg.val_steps, seed=args.seed)
    scores = {k: held.score(im) for k, im in renders.items()}
    scores["fit_floor"] = held.fit_floor()
    _contact_sheet(held, renders, args.out / "contact_sheet.png", args.sheet_rows)
    held.close()
    return scores, renders


def _contact_sheet(held, renders: dict, path: Path, rows: int) -> None:
    import torch

    from fgp_fast.media import save_png

    cols = [held.batch["source"], held.batch["target"][:, 0], renders["warp"]] + \
        [renders[v] for v in VARIANTS if v in renders]
    n = min(rows, len(cols[0]))
    grid = torch.cat([torch.cat([c[i].float().clamp(0, 1) for c in cols], -1) for i in range(n)], -2)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=2, mode="nearest")[0]  # 128 px cells
    save_png(grid, path)


def _markdown(args, scores: dict, times: dict, wall: float, load: tuple) -> str:
    rows = [("copy", "copy the source (floor)"), ("warp", "learning-free warp renderer (floor)")] + \
        [(v, VARIANTS[v]) for v in args.variants]
    lines = [START, "## Small-scale replication: flow vs landmarks, depth-guided vs uniform (`bench/train_ablation.py`)",
             "",
             f"Command: `python bench/train_ablation.py {' '.join(args.argv)}`. Synthetic 64 px ICT clips: "
             f"{args.clips} training identities x {args.frames} frames; held-out: {args.heldout_clips} unseen "
             f"identities, {args.pairs} (source, driver) pairs. Every learned variant: random weights (small UNet, "
             f"ControlNet, appearance net in pixel space), {args.steps} steps x batch 16, seed {args.seed}, "
             "one-step sampler. APD/AED: MediaPipe + the project's fitter on generated frame and truth "
             "(definitions in `fgp_fast/training/evaluate.py`); `face` = fraction of generated frames where "
             "MediaPipe finds a face (APD/AED cover pairs with a face in both).",
             "",
             "| variant | PSNR (dB) ↑ | SSIM ↑ | APD (deg) ↓ | AED ↓ | face | train time (s) |",
             "|---|---|---|---|---|---|---|"]
    for key, label in rows:
        s = scores[key]
        t = f"{times[key]['seconds']:.0f}" if key in times else "-"
        lines.append(f"| {label} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['apd']:.2f} | {s['aed']:.4f} | "
                     f"{s['face']:.2f} | {t} |")
    f = scores["fit_floor"]
    lines += ["", f"Metric resolution (fit of the truth vs its known parameters): APD {f['apd']:.2f} deg, "
                  f"AED {f['aed']:.4f}, faces found on {100 * f['face']:.0f}% of the truths.",
              "", f"Wall time of the whole comparison: {wall / 60:.1f} min; load average at start / end: "
                  f"{load[0]:.1f} / {load[1]:.1f} (2 cores, shared).",
              "", f"Contact sheet (`bench/ablation_contact_sheet.png`): source | driver (truth) | warp | "
                  + " | ".join(VARIANTS[v] for v in args.variants) + ".", "",
              "![contact sheet](ablation_contact_sheet.png)", END]
    return "\n".join(lines)


def _write_results(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--clips", type=int, default=160)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--heldout-clips", type=int, default=16)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--val-every", type=int, default=0, help="validation interval (default: at the end only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", nargs="+", default=["face", "photo", "procedural"],
                   help="texture families of the synthetic clips (fgp_fast.data.synthetic.TEXTURE_KINDS)")
    p.add_argument("--background-pattern", type=float, default=0.4,
                   help="weight of the backgrounds' procedural pattern over their flat colour (0: flat)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--sequential", action="store_true", help="train one variant after another")
    p.add_argument("--sheet-rows", type=int, default=8)
    p.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md")
    p.add_argument("--train-one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--val-data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_one:
        _train_one(args)
        return 0
    import torch

    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    train, held = _data(args)
    times = _train_all(args, train, held)
    scores, _ = _evaluate(args, held)
    wall, load1 = time.perf_counter() - t0, os.getloadavg()[0]
    (args.out / "scores.json").write_text(json.dumps({"scores": scores, "times": times, "wall_s": wall,
                                                      "load": [load0, load1]}, indent=2))
    section = _markdown(args, scores, times, wall, (load0, load1))
    print(section)
    if not args.no_results:
        import shutil

        shutil.copy(args.out / "contact_sheet.png", ROOT / "bench" / "ablation_contact_sheet.png")
        _write_results(ROOT / "bench" / "RESULTS.md", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
