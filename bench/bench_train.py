"""Stage-1 training step at SD1.5 size with random weights (time and memory do not depend on the
weight values): 512², N = 20 flow samples, frozen UNet + VAE, trained ControlNet + appearance net,
AdamW, bf16 autocast with frozen weights in bf16, gradient checkpointing on. Reports the median
optimizer-step time and the peak GPU memory at batch 1, 2 and 4 (random flow maps: the flow
encode is timed by bench_diffusion.py).

    python bench/bench_train.py --json $OUT/train.json          # GPU (the numbers)
    python bench/bench_train.py --smoke                         # CPU, tiny config, 64 px
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fgp_fast.pipeline import FGPortraitPipeline
from fgp_fast.training.trainer import TrainModule


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per batch size (after 2 warm-up)")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--json")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    size, n = (64, 4) if args.smoke else (512, 20)
    pipe = FGPortraitPipeline.random("tiny" if args.smoke else "sd15", n_samples=n, tiny_decoder=False)
    model = TrainModule(pipe, stage=1).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    if cuda and dtype != torch.float32:
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
    if not args.no_checkpointing:
        for m in (pipe.unet, pipe.controlnet, pipe.appearance.unet):
            m.enable_gradient_checkpointing()
    params = list(model.trainable_parameters().values())
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "size": size, "n_samples": n,
               "precision": args.precision, "checkpointing": not args.no_checkpointing,
               "trainable_params_M": round(n_params / 1e6, 1), "torch": torch.__version__, "batches": {}}
    for B in (int(b) for b in args.batches.split(",")):
        g = torch.Generator().manual_seed(0)
        src = torch.rand(B, 3, size, size, generator=g).to(device)
        tgt = torch.rand(B, 1, 3, size, size, generator=g).to(device)
        flow = (0.02 * torch.randn(B, 1, 3 * n, size, size, generator=g)).to(device)
        noise = torch.randn(B, 1, 4, size // 8, size // 8, generator=g).to(device)
        t = torch.randint(0, 1000, (B,), generator=g).to(device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        try:
            for i in range(2 + args.steps):
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
            entry = {"step_ms": round(1000 * statistics.median(times), 1),
                     "samples_per_s": round(B / statistics.median(times), 2), "loss": float(loss)}
            if cuda:
                entry["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except torch.OutOfMemoryError:
            entry = {"error": "out of memory"}
        results["batches"][B] = entry
        print(f"batch {B}: {entry}", flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
