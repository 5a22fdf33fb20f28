"""Validation while training: every ``val_every`` steps the model renders a fixed held-out pair set
(``evaluate.HeldOut``: identities never trained on) with the pipeline's own sampler and a fixed
noise seed, and PSNR/SSIM (and APD/AED with ``val_pose``) go to log.csv and TensorBoard beside
the loss. The weights scored are the ones exported: the EMA weights when EMA is on. The best
score by ``best_metric`` so far is kept in ``OUTPUT/best`` (a ``from_pretrained`` directory plus
``best.json``), and travels in every checkpoint, so a resumed run keeps the same best.

Validation leaves the global RNGs and the weights exactly as it found them (own generator,
``fork_rng``, EMA swapped in and back by copy), so a run with validation resumes bit for bit.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..errors import InputError

__all__ = ["HIGHER_IS_BETTER", "Validation", "ema_weights"]

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "apd": False, "aed": False}
METRICS = ("psnr", "ssim", "apd", "aed", "face")


@contextmanager
def ema_weights(state):
    """Inside: the trainable parameters hold the EMA weights (when EMA is on); restored after."""
    if state.ema is None:
        yield
        return
    with torch.no_grad():
        backup = {n: state.params[n].detach().clone() for n in state.names}
        for n in state.names:
            state.params[n].copy_(state.ema[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for n in state.names:
                state.params[n].copy_(backup[n])


class Validation:
    """``run(model, accelerator, state) -> metrics``; ``improved(metrics)`` updates the best."""

    def __init__(self, cfg, pipe, train_size: int, device: torch.device):
        from .evaluate import HeldOut

        self.cfg, self.pipe, self.device = cfg, pipe, torch.device(device)
        self.held = HeldOut(cfg.val_data, cfg.val_pairs, pose=cfg.val_pose)
        if self.held.size != train_size:
            raise InputError(f"val_data {cfg.val_data} is {self.held.size} px but the training data is {train_size} px")
        self.best: dict | None = None   # {"metric", "value", "step"}

    def due(self, step: int, last: int) -> bool:
        every = self.cfg.val_every
        return bool(every) and (step % every == 0 or step == last)

    @torch.no_grad()
    def run(self, model, accelerator, state) -> dict:
        from .evaluate import render_model

        cfg = self.cfg
        devices = [self.device] if self.device.type == "cuda" else []
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), ema_weights(state), accelerator.autocast():
                images = render_model(self.pipe, self.held, cfg.condition, cfg.n_samples, cfg.flow_delta,
                                      cfg.flow_sampling, cfg.val_steps, seed=cfg.seed, backend=cfg.flow_backend)
        finally:
            model.train()
        return self.held.score(images)

    def improved(self, metrics: dict, step: int) -> bool:
        """Is ``metrics`` the best so far by ``best_metric``? (NaN never is.) Updates ``best``."""
        name = self.cfg.best_metric
        value = float(metrics[name])
        if math.isnan(value):
            return False
        if self.best is not None:
            old = self.best["value"]
            if (value <= old) if HIGHER_IS_BETTER[name] else (value >= old):
                return False
        self.best = {"metric": name, "value": value, "step": step}
        return True

    def close(self) -> None:
        self.held.close()
