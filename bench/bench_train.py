"""Training steps at SD1.5 size with random weights (time and memory do not depend on the weight
values): 512², N = 20 flow samples, AdamW, bf16 autocast with frozen weights in bf16, gradient
checkpointing on. Stage 1: frozen UNet + VAE, trained ControlNet + appearance net. Stage 2: the
temporal layers of the motion UNet on ``--frames``-frame clips. Reports the median optimizer-step
time and the peak GPU memory per stage and batch size (random flow maps: the flow encode is timed
by bench_diffusion.py). The JSON is rewritten after every batch size, so a run cut short keeps
what it measured.

    python bench/bench_train.py --json $OUT/train.json                        # GPU, stage 1
    python bench/bench_train.py --stages 1,2 --batches 1,4 --json $OUT/train.json
    python bench/bench_train.py --smoke --stages 1,2                          # CPU, tiny config, 64 px
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fgp_fast.training.trainer import TrainModule

from bench_diffusion import random_pipeline


def build(stage: int, smoke: bool, n: int, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    pipe = random_pipeline("tiny" if smoke else "sd15", device, n_samples=n, tiny_decoder=False, temporal=stage == 2)
    model = TrainModule(pipe, stage=stage).to(device)
    if device.type == "cuda" and dtype != torch.float32:
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
    if checkpointing:
        for m in (pipe.motion_unet if stage == 2 else pipe.unet, pipe.controlnet, pipe.appearance.unet):
            m.enable_gradient_checkpointing()
    return model


def time_steps(model, B: int, frames: int, size: int, n: int, steps: int, device, dtype) -> dict:
    cuda = device.type == "cuda"
    params = list(model.trainable_parameters().values())
    opt = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    src = torch.rand(B, 3, size, size, generator=g).to(device)
    tgt = torch.rand(B, frames, 3, size, size, generator=g).to(device)
    flow = (0.02 * torch.randn(B, frames, 3 * n, size, size, generator=g)).to(device)
    noise = torch.randn(B, frames, 4, size // 8, size // 8, generator=g).to(device)
    t = torch.randint(0, 1000, (B,), generator=g).to(device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for i in range(2 + steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(src, tgt, flow, noise, t)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        del opt
    entry = {"step_ms": round(1000 * statistics.median(times), 1),
             "samples_per_s": round(B * frames / statistics.median(times), 2), "loss": float(loss)}
    if cuda:
        entry["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    ap.add_argument("--stages", default="1", help="comma list of training stages (1, 2)")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--frames", type=int, default=8, help="stage 2: frames per clip")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per batch size (after 2 warm-up)")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--json")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    size, n = (64, 4) if args.smoke else (512, 20)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "size": size, "n_samples": n,
               "precision": args.precision, "checkpointing": not args.no_checkpointing, "torch": torch.__version__,
               "stages": {}}
    for stage in (int(s) for s in args.stages.split(",")):
        model = build(stage, args.smoke, n, device, dtype, not args.no_checkpointing)
        model.train()
        frames = 1 if stage == 1 else args.frames
        n_params = sum(p.numel() for p in model.trainable_parameters().values())
        entry = results["stages"][stage] = {"frames": frames, "trainable_params_M": round(n_params / 1e6, 1),
                                             "batches": {}}
        for B in (int(b) for b in args.batches.split(",")):
            entry["batches"][B] = time_steps(model, B, frames, size, n, args.steps, device, dtype)
            print(f"stage {stage} batch {B}: {entry['batches'][B]}", flush=True)
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump(results, fh, indent=2)
        del model
        if cuda:
            torch.cuda.empty_cache()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
