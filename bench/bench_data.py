"""Training data loading: samples/s of stage-1 and stage-2 batches, 0 vs N loader workers.

What a training step waits for, built exactly as ``fgp train`` builds it on the CPU
(``training.loader.micro_batches``: frames read memory-mapped, meshes posed, and with
``--condition flow`` the 3D-flow condition maps, which the workers build in parallel with the
step; with 0 workers the training process builds them). The dataset is random frames with
plausible head parameters (``data.synthetic.random_dataset``: the content does not change the
cost). ``--cold`` drops the frame files from the page cache before every run (Linux), so frames
come from the disk as with a set larger than memory.

    python bench/bench_data.py                                    # 256 px, stage 1 B=8, stage 2 B=2 x F=8
    python bench/bench_data.py --size 512 --cold --json /tmp/data.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path


def _evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(dataset, batch: int, workers: int, condition, batches: int, warmup: int, cold: bool) -> dict:
    """Samples/s over ``batches`` batches after ``warmup`` (worker start-up not counted)."""
    from fgp_fast.training.loader import micro_batches

    if cold:
        _evict(f.path for f in dataset.images)
    it = micro_batches(dataset, batch, 1, 0, 0, warmup + batches, workers, condition)
    for _ in range(warmup):
        b = next(it)
        if condition is not None and workers == 0:
            b["condition"] = condition(dataset, b)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        if condition is not None and workers == 0:  # as the trainer does without workers
            b["condition"] = condition(dataset, b)
    seconds = time.perf_counter() - t0
    del it
    return {"samples_per_s": batch * batches / seconds, "ms_per_batch": 1000 * seconds / batches}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--clip-frames", type=int, default=64, help="frames per clip on disk")
    p.add_argument("--stage1-batch", type=int, default=8)
    p.add_argument("--stage2-batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8, help="stage 2: driver frames per sample")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--conditions", nargs="+", default=["none", "flow"], choices=["none", "flow", "landmarks"])
    p.add_argument("--n-samples", type=int, default=20, help="flow samples per ray")
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cold", action="store_true", help="frames from the disk: drop them from the page cache first")
    p.add_argument("--data", type=Path, help="an existing dataset instead of a generated one")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # one thread per process: the comparison is processes, not BLAS threads
    from fgp_fast.data import ClipDataset
    from fgp_fast.data.synthetic import random_dataset
    from fgp_fast.training.conditions import condition_maps

    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        root = random_dataset(Path(tmp.name) / "data", args.clips, args.clip_frames, args.size)
    load = os.getloadavg()
    rows = []
    try:
        for stage, frames, batch in ((1, 1, args.stage1_batch), (2, args.frames, args.stage2_batch)):
            dataset = ClipDataset(root, frames=frames)
            for cond in args.conditions:
                condition = None if cond == "none" else functools.partial(
                    condition_maps, condition=cond, n_samples=args.n_samples, delta=0.01, sampling="depth",
                    backend="auto", device="cpu")
                for workers in args.workers:
                    r = measure(dataset, batch, workers, condition, args.batches, args.warmup, args.cold)
                    r.update(stage=stage, batch=batch, frames=frames, condition=cond, workers=workers)
                    rows.append(r)
                    print(f"stage {stage} (B={batch}, F={frames}) condition {cond:9s} workers {workers}: "
                          f"{r['samples_per_s']:7.2f} samples/s ({r['ms_per_batch']:.0f} ms/batch)", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result = {"size": dataset.size, "cold": args.cold, "n_samples": args.n_samples, "cpus": os.cpu_count(),
              "load_before": load, "load_after": os.getloadavg(), "rows": rows}
    print(f"load average before {load[0]:.2f}, after {result['load_after'][0]:.2f}; {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
