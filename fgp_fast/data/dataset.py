"""Samples for training from a prepared dataset (layout: see ``fgp_fast.data``).

Stage 1: (source frame, driver frame) pairs of one clip. Stage 2: a source frame and a driver clip
of F consecutive frames. Sample ``i`` depends only on (seed, i), so the data order is a pure
function of the step and a resumed run sees exactly the data an uninterrupted one would.
The 3D flow is computed per batch by :meth:`ClipDataset.flow` (``flow_encode``, on any device).
"""
from __future__ import annotations

import json
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

    def __init__(self, root: str | Path, frames: int = 1, seed: int = 0, head: str = "ict"):
        from ..fitting import FitResult
        from ..heads import load_head_model

        self.root, self.frames, self.seed = Path(root), int(frames), int(seed)
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
        return {k: torch.stack([s[k] for s in samples])
                for k in ("source", "target", "verts_src", "verts_tgt", "K", "world_to_cam")}

    def flow(self, batch: dict, n_samples: int, delta: float = 0.01, backend: str = "auto",
             device=None, sampling: str = "depth") -> Tensor:
        """(B, F, 3N, S, S) flow from each target to its source, each sample in its own clip's camera
        (``sampling``: ``flow_encode``'s depth-guided "depth" or the ablation's "uniform")."""
        from ..camera import Camera
        from ..ops import flow_encode

        verts_tgt, verts_src = batch["verts_tgt"], batch["verts_src"]
        B, F = verts_tgt.shape[:2]
        device = device or verts_tgt.device
        # flow_encode takes one camera per mesh, so clips with different focals share one batched call
        camera = Camera(batch["K"].repeat_interleave(F, 0).to(device),
                        batch["world_to_cam"].repeat_interleave(F, 0).to(device), self.size, self.size)
        faces = self.head.faces.to(device)
        tgt = verts_tgt.reshape(B * F, *verts_tgt.shape[2:]).to(device)
        src = verts_src[:, None].expand(B, F, *verts_src.shape[1:]).reshape(B * F, *verts_src.shape[1:]).to(device)
        with torch.no_grad():
            flow = flow_encode(tgt, src, faces, camera, n_samples=n_samples, delta=delta, sampling=sampling,
                               backend=backend)
        return flow.reshape(B, F, *flow.shape[1:])
