"""Preview grids while training: one fixed sample of the dataset rendered by the model being trained.

Rows are driver frames (one for stage 1, F for stage 2); columns are source | driver (target) |
flow magnitude | generated. The render goes through ``FGPortraitPipeline.__call__`` (the sampler
users run) with a fixed seed, so previews of different steps differ only by the weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Preview"]


class Preview:
    """``write(step, writer)``: render the fixed sample, save ``samples/step-XXXXXXXX.png`` under
    ``output`` and, when ``writer`` (a TensorBoard SummaryWriter) is given, add it as an image."""

    def __init__(self, pipe, dataset, output: str | Path, stage: int, num_steps: int, seed: int,
                 flow_delta: float, flow_backend: str, device: torch.device, condition: str = "flow",
                 sampling: str = "depth"):
        from .conditions import condition_maps

        self.pipe, self.stage, self.num_steps, self.seed = pipe, stage, num_steps, seed
        self.dir = Path(output) / "samples"
        self.device = torch.device(device)
        sample = dataset.preview()
        batch = {k: v[None] for k, v in sample.items() if isinstance(v, Tensor)}
        self.source = sample["source"]
        self.target = sample["target"]                                           # (F, 3, S, S)
        self.flow = condition_maps(dataset, batch, condition, pipe.config.n_samples, flow_delta, sampling,
                                   flow_backend, self.device)[0]

    @torch.no_grad()
    def render(self, model, accelerator) -> Tensor:
        """The grid (3, F*S, 4*S) in [0, 1]. ``model`` (the training module) is put in eval mode and
        back in train mode; the global RNGs are left as they were (resume stays bit-for-bit)."""
        pipe = self.pipe
        devices = [self.device] if self.device.type == "cuda" else []
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), accelerator.autocast():
                pipe.set_source(self.source[None].to(self.device))
                latents = pipe(self.flow, num_steps=self.num_steps, seed=self.seed, video=self.stage == 2,
                               output="latent")
                # the full VAE: the decoder the latents were trained against (vae_tiny is not moved to device)
                generated = pipe.decode(latents, tiny=False).float().cpu()
        finally:
            pipe.identity = None  # the cached bank would go stale at the next optimizer step
            model.train()
        return _grid(self.source, self.target, self.flow.float().cpu(), generated)

    def write(self, step: int, model, accelerator, writer=None) -> Path:
        from ..media import save_png

        grid = self.render(model, accelerator)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = save_png(grid, self.dir / f"step-{step:08d}.png")  # atomic: temp file + rename
        if writer is not None:
            writer.add_image("samples", grid, step)
        return path


def _grid(source: Tensor, target: Tensor, flow: Tensor, generated: Tensor) -> Tensor:
    from ..media import colormap

    F, S = target.shape[0], target.shape[-1]
    magnitude = flow.view(F, -1, 3, S, S).norm(dim=2).mean(1)                   # (F, S, S), metres
    vmax = max(float(magnitude.max()), 1e-12)  # one scale for the whole clip
    rows = [torch.cat([source, target[f], colormap(magnitude[f], vmin=0.0, vmax=vmax), generated[f]], -1)
            for f in range(F)]
    return torch.cat(rows, -2).clamp(0, 1)
