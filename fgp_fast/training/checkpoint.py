"""Training checkpoints: what a resumed run needs to continue bit for bit.

A checkpoint ``OUTPUT/checkpoints/step-XXXXXXXX/`` holds the trainable weights (``trainable.pt``),
the optimizer (``optimizer.pt``), the EMA weights (``ema.pt``, when on) and ``meta.json`` (step,
config, LR schedule, torch RNG state), written last: a folder without it is not a checkpoint.
Folders are written under a temporary name and renamed (``fgp_fast.media.atomic``), and only the
newest ``keep`` are kept.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError

__all__ = ["CKPT_RE", "TrainState", "checkpoint_meta", "latest_checkpoint", "restore_checkpoint", "save_checkpoint"]

CKPT_RE = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    """The mutable state of a run that checkpoints carry."""

    params: dict[str, nn.Parameter]     # trainable parameters by name
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: dict[str, torch.Tensor] | None  # float32 EMA of each trainable parameter, or None

    @property
    def names(self) -> list[str]:
        return sorted(self.params)


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest complete checkpoint (``step-XXXXXXXX`` with meta.json); temp leftovers are ignored."""
    root = Path(output) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if CKPT_RE.match(p.name) and (p / "meta.json").is_file()]
    return max(done, key=lambda p: int(CKPT_RE.match(p.name).group(1)), default=None)


def save_checkpoint(state: TrainState, step: int, config: dict, output: str | Path, keep: int,
                    extra: dict | None = None) -> Path:
    """Write ``step``'s checkpoint under ``output`` atomically and drop all but the newest ``keep``.
    ``extra``: more JSON state of the run (the best validation score), read back by ``checkpoint_meta``."""
    from ..media import atomic_write

    final = Path(output) / "checkpoints" / f"step-{step:08d}"
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(final, directory=True) as tmp:
        torch.save({n: state.params[n].detach().cpu() for n in state.names}, tmp / "trainable.pt")
        torch.save(state.optimizer.state_dict(), tmp / "optimizer.pt")
        if state.ema is not None:
            torch.save({k: v.cpu() for k, v in state.ema.items()}, tmp / "ema.pt")
        meta = {"step": step, "config": config, "lr_scheduler": state.lr_scheduler.state_dict(),
                "torch_rng": torch.get_rng_state().tolist(), "extra": extra or {}}
        (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks the checkpoint complete
    kept = sorted((p for p in final.parent.iterdir() if CKPT_RE.match(p.name)), key=lambda p: p.name)
    for old in kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_meta(checkpoint: Path) -> dict:
    """The checkpoint's meta.json: step, config, LR schedule, RNG state and ``extra``."""
    return json.loads((Path(checkpoint) / "meta.json").read_text())


def restore_checkpoint(state: TrainState, checkpoint: Path, device: torch.device) -> int:
    """Load ``checkpoint`` into ``state`` (and the global torch RNG); returns its step."""
    meta = json.loads((checkpoint / "meta.json").read_text())
    saved = torch.load(checkpoint / "trainable.pt", map_location=device)
    missing = set(state.names) - set(saved)
    if missing:
        raise InputError(f"checkpoint {checkpoint} does not match this config (missing {sorted(missing)[:3]})")
    with torch.no_grad():
        for n in state.names:
            state.params[n].copy_(saved[n])
    state.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=device))
    state.lr_scheduler.load_state_dict(meta["lr_scheduler"])
    if state.ema is not None and (checkpoint / "ema.pt").is_file():
        state.ema = {k: v.to(device) for k, v in torch.load(checkpoint / "ema.pt", map_location=device).items()}
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
    return int(meta["step"])
