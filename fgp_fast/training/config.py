"""Training configuration: one YAML file holds every hyper-parameter (see ``configs/train_*.yaml``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from ..errors import InputError

__all__ = ["LR_SCHEDULES", "TrainConfig", "load_config", "lr_factor"]

LR_SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, warmup: int, steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of ``lr``: a linear
    warmup over ``warmup`` steps, then constant, or a half cosine from 1 down towards 0 at step
    ``steps`` (short runs end better annealed)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


@dataclass
class TrainConfig:
    # --- what to train
    stage: int = 1                  # 1: ControlNet + appearance net; 2: temporal layers only
    init: str = "random-tiny"       # random-tiny | random-small | random-sd15 | pretrained:<dir> | sd15:<path>
    text_embeddings: str = ""       # for init sd15:<path>: .safetensors or a CLIP text-encoder dir
    appearance_weights: str = ""    # for init sd15:<path>: X-Portrait appearance checkpoint (optional)
    n_samples: int = 20             # flow samples per ray (ControlNet input 3N channels)
    flow_delta: float = 0.01        # flow sampling half-width, metres
    flow_backend: str = "auto"
    condition: str = "flow"         # flow (3N channels) | landmarks (rasterised driver landmarks, 3 channels)
    flow_sampling: str = "depth"    # depth (+-flow_delta around the target depth) | uniform (the head's depth range)
    train_unet: bool = False        # stage 1: train the generator UNet too (training from random weights)
    prediction_type: str = "epsilon"  # epsilon (SD1.5) | v_prediction
    min_train_timestep: int = 0     # train on t in [this, 1000): a few-step sampler only visits high t
    # --- data
    data: str = ""                  # prepared dataset directory (fgp prepare)
    frames: int = 8                 # stage 2: driver clip length F
    seed: int = 0
    flow_cache_mb: int = 0          # keep flows per (clip, source, driver frames) up to this size, per process
    loader_workers: int = 0         # DataLoader worker processes reading samples (0: in the training process)
    # --- optimisation
    steps: int = 1000               # optimizer steps
    batch_size: int = 1             # per device, per micro-step (stage 2: clips)
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0      # 0 disables clipping
    warmup_steps: int = 0
    lr_schedule: str = "constant"   # constant | cosine (after the warmup, down to 0 at ``steps``)
    mixed_precision: str = "no"     # no | fp16 | bf16
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    # --- bookkeeping
    output: str = "runs/fgp"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 500         # preview grid every N steps (TensorBoard + samples/*.png); 0 disables
    sample_steps: int = 2           # denoising steps of the preview
    progress: bool = True
    # --- validation on a fixed held-out set (a prepared dataset of identities not trained on)
    val_data: str = ""              # "" disables validation
    val_every: int = 0              # optimizer steps between validations (0: none; also at the last step)
    val_pairs: int = 16             # fixed (source, driver) pairs drawn from val_data
    val_steps: int = 4              # denoising steps of the validation renders
    val_pose: bool = True           # also APD/AED (MediaPipe + the fitter on the renders; slower)
    best_metric: str = "psnr"       # psnr | ssim (higher is better) | apd | aed (lower): OUTPUT/best keeps the best

    def check(self) -> TrainConfig:
        if self.stage not in (1, 2):
            raise InputError(f"stage must be 1 or 2, got {self.stage}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InputError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "n_samples"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_every < 0:
            raise InputError(f"sample_every must be >= 0 (0 disables previews), got {self.sample_every}")
        if self.sample_steps < 1:
            raise InputError(f"sample_steps must be >= 1, got {self.sample_steps}")
        if self.stage == 2 and self.frames < 2:
            raise InputError("stage 2 needs frames >= 2")
        from .conditions import CONDITIONS, FLOW_SAMPLINGS

        choices = {"condition": CONDITIONS, "flow_sampling": FLOW_SAMPLINGS,
                   "prediction_type": ("epsilon", "v_prediction"), "lr_schedule": LR_SCHEDULES, "best_metric": ("psnr", "ssim", "apd", "aed")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0 <= self.min_train_timestep < 1000:
            raise InputError(f"min_train_timestep must be in [0, 1000), got {self.min_train_timestep}")
        for name in ("loader_workers", "val_every", "warmup_steps", "flow_cache_mb"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("val_pairs", "val_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_every and not self.val_data:
            raise InputError("val_every is set but val_data (the held-out dataset) is not")
        if self.best_metric in ("apd", "aed") and not self.val_pose:
            raise InputError(f"best_metric {self.best_metric} needs val_pose: true")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def load_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """Read a YAML config (unknown keys are an error), then apply non-None ``overrides``."""
    values: dict = {}
    if path is not None:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise InputError(f"{path}: expected a mapping of hyper-parameters")
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown config keys {unknown}; known: {sorted(known)}")
    return TrainConfig(**values).check()
