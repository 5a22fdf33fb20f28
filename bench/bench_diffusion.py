"""Latency of the diffusion renderer at SD1.5 size with random weights (latency does not depend on
weight values): 512², batch 1, fp16, N = 20 flow samples (60-channel ControlNet).

Per-step ms of ControlNet + UNet with and without reference attention (eager, CUDA graph, eager and
CUDA graph in channels_last, optionally torch.compile), VAE vs AutoencoderTiny decode (eager, CUDA
graph), end-to-end frames/s for 1, 2 and 4 steps including the flow encode of the ICT head, and the
peak GPU memory of each phase.

    python bench/bench_diffusion.py --json $OUT/diffusion.json                 # GPU (the numbers)
    python bench/bench_diffusion.py --compile-only --json $OUT/compile.json    # compile once (fills the cache)
    python bench/bench_diffusion.py --smoke                                    # CPU, tiny config
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from fgp_fast.camera import Camera
from fgp_fast.heads import load_head_model
from fgp_fast.models import CudaGraphStep
from fgp_fast.ops import available_backends, flow_encode
from fgp_fast.pipeline import FGPortraitPipeline, PipelineConfig


def timed(fn, warmup: int, iters: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, wall clock on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def random_pipeline(size: str, device: torch.device, **kwargs) -> FGPortraitPipeline:
    """Random weights initialised on ``device``: seconds on a GPU where the CPU takes tens."""
    if device.type == "cuda":
        try:
            with torch.device(device):
                return FGPortraitPipeline.random(size, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of the shortcut: the CPU path below
            print(f"initialising on {device} failed ({type(exc).__name__}: {exc}); initialising on the CPU")
    return FGPortraitPipeline.random(size, **kwargs)


def peak_gib(device: torch.device) -> float | None:
    """Peak GPU memory since the last reset (GiB), then reset; None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


def first_call_s(fn, device: torch.device) -> float:
    """Seconds of one call (for torch.compile: the compile)."""
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return round(time.perf_counter() - t0, 1)


class Results(dict):
    """Prints each number as it comes and rewrites the JSON file, so a run cut short keeps what it measured.
    None (a figure this device has not, e.g. GPU memory on the CPU) is left out."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def __setitem__(self, key, value):
        if value is None:
            return
        super().__setitem__(key, value)
        print(f"{key}: {value}", flush=True)
        if self.path:
            with open(self.path, "w") as fh:
                json.dump(self, fh, indent=2)

    def update(self, values: dict) -> None:
        for key, value in values.items():
            self[key] = value


def heads(size: int, device: torch.device):
    head = load_head_model("ict")
    src = head.neutral_params(1)
    tgt = src.with_expression(jawOpen=0.6)
    v_src, v_tgt = head(src).to(device), head(tgt).to(device)
    return v_src, v_tgt, head.faces.to(device), Camera.frame_head(v_src[0].cpu(), size).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny random config on the CPU (checks the script only)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(fullgraph=True) (~1-2 min cold)")
    ap.add_argument("--compile-only", action="store_true",
                    help="only compile the step once and report the compile time (fills the inductor cache)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.float16
    size, res, n = ("tiny", 64, 2) if args.smoke else ("sd15", 512, 20)
    warmup, iters = (1, 2) if args.smoke else (5, args.iters)
    torch.backends.cuda.matmul.allow_tf32 = True

    pipe = random_pipeline(size, device, config=PipelineConfig(n_samples=n)).to(device, dtype)
    pipe.set_source(torch.rand(1, 3, res, res, device=device, dtype=dtype))
    latents = torch.randn(1, 4, res // 8, res // 8, device=device, dtype=dtype)
    flow = 0.1 * torch.randn(1, 3 * n, res, res, device=device, dtype=dtype)
    t = torch.tensor(499, device=device)
    text, bank = pipe.text_embeddings, pipe.identity[1]
    results = Results(args.json)
    results.update({"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
                     "torch": torch.__version__, "dtype": str(dtype), "resolution": res, "n_samples": n,
                     "config": size, "flow_backends": available_backends(device)})
    step = pipe.step
    if args.compile_only:   # the graph the timed --compile run compiles: fp16, channels_last on a GPU
        if device.type == "cuda":
            pipe.to(channels_last=True)
        with torch.no_grad():
            compiled = torch.compile(step, fullgraph=True)
            results["step_compile_s_first"] = first_call_s(lambda: compiled(latents, t, text, flow, *bank), device)
        return
    peak_gib(device)
    with torch.no_grad():
        cases = {"with_reference": bank, "without_reference": ()}
        for name, ref in cases.items():
            results[f"step_eager_ms_{name}"] = timed(lambda: step(latents, t, text, flow, *ref), warmup, iters, device)
        results["peak_mem_GiB_step_eager"] = peak_gib(device)
        if device.type == "cuda":
            for name, ref in cases.items():
                graph = CudaGraphStep(step)
                results[f"step_graph_ms_{name}"] = timed(lambda: graph(latents, t, text, flow, *ref), warmup, iters,
                                                         device)
            pipe.to(channels_last=True)
            results["step_eager_channels_last_ms_with_reference"] = timed(
                lambda: step(latents, t, text, flow, *bank), warmup, iters, device)
            for name, ref in cases.items():
                graph = CudaGraphStep(step)
                results[f"step_graph_channels_last_ms_{name}"] = timed(
                    lambda: graph(latents, t, text, flow, *ref), warmup, iters, device)
            results["peak_mem_GiB_step_graphs"] = peak_gib(device)
        for name, tiny in (("vae", False), ("taesd", True)):
            results[f"decode_eager_ms_{name}"] = timed(lambda: pipe.decode(latents, tiny=tiny), warmup, iters, device)
            if device.type == "cuda":
                vae = pipe.vae_tiny if tiny else pipe.vae
                graph = CudaGraphStep(lambda z: vae.decode(z, return_dict=False)[0])
                results[f"decode_graph_ms_{name}"] = timed(lambda: graph(latents), warmup, iters, device)

        # End to end: flow encode (auto backend) -> k graphed steps + scheduler -> TAESD decode.
        v_src, v_tgt, faces, camera = heads(res, device)
        results["flow_encode_ms"] = timed(lambda: flow_encode(v_tgt, v_src, faces, camera, n_samples=n,
                                                              backend="auto"), warmup, iters, device)
        if device.type == "cuda":
            pipe.enable_cuda_graph()
        for steps in (1, 2, 4):
            def frame():
                f = flow_encode(v_tgt, v_src, faces, camera, n_samples=n, backend="auto").to(dtype)
                return pipe(f, num_steps=steps, seed=0)
            ms = timed(frame, warmup, iters, device)
            results[f"end_to_end_fps_{steps}_steps"] = 1e3 / ms
            results[f"peak_mem_GiB_end_to_end_{steps}_steps"] = peak_gib(device)
        if args.compile:  # last: the slowest to start, and a timeout here keeps everything above
            compiled = torch.compile(pipe.step, fullgraph=True)
            results["step_compile_s_first"] = first_call_s(lambda: compiled(latents, t, text, flow, *bank), device)
            results["step_compiled_ms_with_reference"] = timed(lambda: compiled(latents, t, text, flow, *bank),
                                                               warmup, iters, device)


if __name__ == "__main__":
    main()
