"""Samples for training from a prepared dataset (layout: see ``fgp_fast.data``).

Stage 1: (source frame, driver frame) pairs of one clip. Stage 2: a source frame and a driver clip
of F consecutive frames. Sample ``i`` depends only on (seed, i), so the data order is a pure
function of the step and a resumed run sees exactly the data an uninterrupted one would.
The 3D flow is computed per batch by :meth:`ClipDataset.flow` (``flow_encode``, on any device),
optionally kept per (clip, source frame, driver frames) in a bounded cache: a small set's pairs
recur every few hundred samples, and the flow is most of a small model's step on the CPU.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .frames import FrameFile

__all__ = ["ClipDataset", "DataError"]


class ClipDataset:
    """``sample(i) -> dict`` of source (3, S, S), target (F, 3, S, S) in [0, 1], verts_src (V, 3),
    verts_tgt (F, V, 3), and its clip's camera: K (3, 3), world_to_cam (4, 4) (focals differ per
    clip); ``batch(indices)`` stacks samples; ``flow(batch, n_samples)``.

    Frames stay on disk: each clip's ``frames.npy`` is memory-mapped (:class:`~.frames.FrameFile`,
    no read-around) and a sample reads only its own frames, so no clip is ever loaded whole and
    the page cache is shared by every loader worker. Pickling (a spawned DataLoader worker)
    carries the paths and reopens the maps; only the small per-clip parameters travel.
    """

    def __init__(self, root: str | Path, frames: int = 1, seed: int = 0, head: str = "ict", flow_cache_mb: int = 0):
        from ..fitting import FitResult
        from ..heads import load_head_model

        if flow_cache_mb < 0:
            raise DataError(f"flow_cache_mb must be >= 0, got {flow_cache_mb}")
        self.root, self.frames, self.seed = Path(root), int(frames), int(seed)
        self.flow_cache = _FlowCache(flow_cache_mb << 20)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise DataError(f"{self.root} is not a prepared dataset (no manifest.json); run `fgp prepare` first")
        meta = json.loads(manifest.read_text())
        self.size = int(meta["size"])
        self.head = load_head_model(head)
        self.clips, self.fits, self.images = [], [], []
        problems = []
        for clip in meta["clips"]:
            folder = self.root / "clips" / clip["name"]
            missing = [n for n in ("frames.npy", "params.npz") if not (folder / n).is_file()]
            if missing:
                problems.append(f"{clip['name']}: missing {', '.join(missing)}")
                continue
            try:
                fit = FitResult.load(folder / "params.npz")
                images = FrameFile(folder / "frames.npy")
            except (OSError, ValueError, KeyError) as exc:  # DataError is a ValueError
                problems.append(f"{clip['name']}: unreadable ({exc})")
                continue
            if len(fit) != len(images) or images.shape[1:] != (self.size, self.size, 3):
                problems.append(f"{clip['name']}: {len(images)} frames of {images.shape[1:]} but {len(fit)} "
                                f"parameter sets at size {self.size}")
                continue
            if len(images) < max(2, self.frames):
                problems.append(f"{clip['name']}: {len(images)} frames, need at least {max(2, self.frames)}")
                continue
            self.clips.append(clip["name"])
            self.fits.append(fit)
            self.images.append(images)
        if problems:  # checked up front: never a crash mid-epoch
            raise DataError(f"dataset {self.root} has {len(problems)} bad clip(s): " + "; ".join(problems)
                            + ". Re-run `fgp prepare` or remove them from manifest.json")
        if not self.clips:
            raise DataError(f"dataset {self.root} has no usable clips")
        self.cameras = [fit.camera() for fit in self.fits]

    def __len__(self) -> int:
        return sum(len(x) for x in self.images)

    def sample(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        c = int(rng.integers(len(self.clips)))
        T, F = len(self.images[c]), self.frames
        src = int(rng.integers(T))
        if F == 1:
            tgt = [int(rng.integers(T - 1))]
            tgt = [tgt[0] + (tgt[0] >= src)]  # a different frame from the source
        else:
            start = int(rng.integers(T - F + 1))
            tgt = list(range(start, start + F))
        return self.item(c, src, tgt)

    def preview(self) -> dict:
        """A fixed sample, independent of the seed, for comparable previews across a run: the first
        clip's first frame as source, its last F frames as target."""
        T = len(self.images[0])
        return self.item(0, 0, list(range(T - self.frames, T)))

    def item(self, c: int, src: int, tgt: list[int]) -> dict:
        """The sample of clip ``c`` with source frame ``src`` and driver frames ``tgt``."""
        fit = self.fits[c]
        with torch.no_grad():
            verts = self.head(fit.head_params(self.head, [src] + tgt))
        image = torch.from_numpy(self.images[c].read([src] + tgt)).permute(0, 3, 1, 2).float() / 255
        camera = self.cameras[c]
        return {"source": image[0], "target": image[1:], "verts_src": verts[0], "verts_tgt": verts[1:],
                "K": camera.K, "world_to_cam": camera.world_to_cam, "clip": c, "frames": [src] + tgt}

    def batch(self, indices) -> dict:
        return self.stack([self.sample(i) for i in indices])

    @staticmethod
    def stack(samples: list[dict]) -> dict:
        """Samples (``sample``/``item``) -> one batch of their tensors."""
        out = {k: torch.stack([s[k] for s in samples])
               for k in ("source", "target", "verts_src", "verts_tgt", "K", "world_to_cam")}
        out["pairs"] = [(int(s["clip"]), tuple(s["frames"])) for s in samples]
        return out

    def flow(self, batch: dict, n_samples: int, delta: float = 0.01, backend: str = "auto",
             device=None, sampling: str = "depth") -> Tensor:
        """(B, F, 3N, S, S) flow from each target to its source, each sample in its own clip's camera
        (``sampling``: ``flow_encode``'s depth-guided "depth" or the ablation's "uniform"). With a
        flow cache and the batch's ``pairs`` (``stack`` adds them), only pairs not in it are encoded."""
        B = batch["verts_tgt"].shape[0]
        pairs = batch.get("pairs")
        if not self.flow_cache.capacity or pairs is None:
            return self._encode(batch, range(B), n_samples, delta, backend, device, sampling)
        keys = [(pair, n_samples, float(delta), sampling, backend) for pair in pairs]
        found = [self.flow_cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            new = self._encode(batch, missing, n_samples, delta, backend, device, sampling)
            for j, i in enumerate(missing):
                found[i] = new[j]
                self.flow_cache.put(keys[i], new[j])
        device = device or batch["verts_tgt"].device
        return torch.stack([f.to(device) for f in found])

    def _encode(self, batch: dict, rows, n_samples: int, delta: float, backend: str, device, sampling: str) -> Tensor:
        from ..camera import Camera
        from ..ops import flow_encode

        rows = list(rows)
        verts_tgt, verts_src = batch["verts_tgt"][rows], batch["verts_src"][rows]
        B, F = verts_tgt.shape[:2]
        device = device or verts_tgt.device
        # flow_encode takes one camera per mesh, so clips with different focals share one batched call
        camera = Camera(batch["K"][rows].repeat_interleave(F, 0).to(device),
                        batch["world_to_cam"][rows].repeat_interleave(F, 0).to(device), self.size, self.size)
        faces = self.head.faces.to(device)
        tgt = verts_tgt.reshape(B * F, *verts_tgt.shape[2:]).to(device)
        src = verts_src[:, None].expand(B, F, *verts_src.shape[1:]).reshape(B * F, *verts_src.shape[1:]).to(device)
        with torch.no_grad():
            flow = flow_encode(tgt, src, faces, camera, n_samples=n_samples, delta=delta, sampling=sampling,
                               backend=backend)
        return flow.reshape(B, F, *flow.shape[1:])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # a worker process starts with an empty cache of the same size
        state["flow_cache"] = _FlowCache(self.flow_cache.capacity)
        return state


class _FlowCache:
    """Least-recently-used flows (kept on the CPU) up to ``capacity`` bytes; 0 keeps none."""

    def __init__(self, capacity: int):
        self.capacity, self.size = int(capacity), 0
        self.items: OrderedDict = OrderedDict()

    def get(self, key) -> Tensor | None:
        flow = self.items.get(key)
        if flow is not None:
            self.items.move_to_end(key)
        return flow

    def put(self, key, flow: Tensor) -> None:
        flow = flow.detach().to("cpu", copy=True)
        nbytes = flow.numel() * flow.element_size()
        if nbytes > self.capacity or key in self.items:
            return
        self.items[key] = flow
        self.size += nbytes
        while self.size > self.capacity:
            _, old = self.items.popitem(last=False)
            self.size -= old.numel() * old.element_size()
