"""`fgp train`: stage 1 (flow ControlNet + appearance net) and stage 2 (temporal layers) on `accelerate`.

The frozen SD1.5 UNet and VAE never change; the loss is the standard denoising loss (epsilon
prediction, SD1.5's noise schedule) through exactly the modules the pipeline samples with
(``FusedStep`` + the appearance bank, flow scaled by ``PipelineConfig.flow_scale``).

Reproducibility: sample indices of micro-step m of optimizer step s are pure functions of (seed,
s, m) and each sample's noise and timestep of (seed, sample index), so N processes x batch B see
exactly what one process x batch N*B does; checkpoints hold the trainable weights, the optimizer, the LR
schedule and the EMA, so ``resume`` continues a run bit-for-bit. Checkpoints are written to a
temporary directory and renamed (``step-XXXXXXXX``, see ``checkpoint.py``); temp leftovers are ignored.
SIGINT/SIGTERM finish the current step, write a checkpoint and return. The loss goes to log.csv
(and TensorBoard); every ``sample_every`` steps the main process writes a preview grid
(``preview.py``) and every ``val_every`` steps it scores a held-out set (``validation.py``, the best
weights kept in OUTPUT/best), each with its own generator, leaving the training RNG stream untouched.
Batches come from ``loader.py`` (``loader_workers`` processes); the condition (3D flow, depth-guided
or uniform, or driver landmarks) from ``conditions.py``.

Importing this module imports torch only; accelerate and diffusers load inside :func:`train`.
"""
from __future__ import annotations

import csv
import functools
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError, MissingDependencyError
from .checkpoint import TrainState, checkpoint_meta, latest_checkpoint, restore_checkpoint, save_checkpoint
from .config import TrainConfig, lr_factor

__all__ = ["TrainModule", "build_pipeline", "latest_checkpoint", "train"]


def build_pipeline(cfg: TrainConfig):
    from ..models import add_temporal_layers
    from ..pipeline import SD15_SCHEDULE, FGPortraitPipeline, PipelineConfig, _make_scheduler
    from .conditions import pipeline_n_samples

    init = cfg.init
    n_samples = pipeline_n_samples(cfg.condition, cfg.n_samples)
    if init in ("random-tiny", "random-small", "random-sd15"):
        pipe = FGPortraitPipeline.random(init.split("-")[1], n_samples=n_samples, temporal=cfg.stage == 2,
                                         seed=cfg.seed, tiny_decoder=init == "random-tiny")
    elif init.startswith("pretrained:"):
        pipe = FGPortraitPipeline.from_pretrained(init.split(":", 1)[1])
    elif init.startswith("sd15:"):
        pipe = FGPortraitPipeline.from_sd15(init.split(":", 1)[1], cfg.text_embeddings,
                                            appearance_weights=cfg.appearance_weights or None,
                                            config=PipelineConfig(n_samples=n_samples))
    else:
        raise InputError(f"init must be random-tiny, random-small, random-sd15, pretrained:<dir> or sd15:<path>, "
                         f"got {init!r}")
    if pipe.config.n_samples != n_samples:
        raise InputError(f"the weights take n_samples={pipe.config.n_samples}; the config ({cfg.condition}) "
                         f"needs {n_samples}")
    if pipe.scheduler.config.prediction_type != cfg.prediction_type:
        if init.startswith("pretrained:"):
            raise InputError(f"the weights predict {pipe.scheduler.config.prediction_type}; the config says "
                             f"{cfg.prediction_type}")
        pipe.scheduler = _make_scheduler(pipe.config.scheduler, {**SD15_SCHEDULE, "prediction_type": cfg.prediction_type})
    if cfg.stage == 2 and pipe.motion_unet is None:
        pipe = FGPortraitPipeline(pipe.unet, pipe.appearance.unet, pipe.controlnet, pipe.vae, pipe.text_embeddings,
                                  pipe.config, pipe.vae_tiny, add_temporal_layers(pipe.unet))
    return pipe


class TrainModule(nn.Module):
    """``forward(source, target, flow, noise, timesteps) -> loss``: one module so that DDP sees every
    trainable parameter. source (B, 3, S, S), target (B, F, 3, S, S), flow (B, F, C, S, S) (the
    condition: 3N flow channels or 3 landmark channels), noise (B, F, latent channels, S/8, S/8),
    timesteps (B,). The target is the noise (``prediction_type`` epsilon) or v = sqrt(a) noise -
    sqrt(1 - a) x0 (v_prediction), as the pipeline's scheduler expects; ``train_unet`` trains the
    generator UNet too (stage 1 from random weights)."""

    def __init__(self, pipe, stage: int, train_unet: bool = False):
        super().__init__()
        from diffusers import DDPMScheduler

        from ..pipeline import SD15_SCHEDULE

        self.stage = stage
        self.unet, self.appearance, self.controlnet, self.vae = pipe.unet, pipe.appearance, pipe.controlnet, pipe.vae
        self.motion_unet = pipe.motion_unet
        self.step = pipe.video_step if stage == 2 else pipe.step
        self.register_buffer("text", pipe.text_embeddings.detach().clone(), persistent=False)
        self.flow_scale = float(pipe.config.flow_scale)
        sched = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULE.items()
                                 if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                          "clip_sample")})
        self.num_train_timesteps = sched.config.num_train_timesteps
        self.prediction_type = pipe.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"training supports epsilon and v_prediction, not {self.prediction_type!r}")
        self.latent_channels = int(pipe.vae.config.latent_channels)
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.clone().float(), persistent=False)
        self.requires_grad_(False)
        if stage == 1:
            self.controlnet.requires_grad_(True)
            self.appearance.requires_grad_(True)
            if train_unet:
                self.unet.requires_grad_(True)
            # The appearance net's tail after its last bank read cannot change the loss: frozen, so that
            # every trained parameter gets a gradient (DDP fails on ones that never do).
            for p in _bank_free_parameters(self.appearance, self.text):
                p.requires_grad_(False)
        else:
            for n, p in self.motion_unet.named_parameters():
                p.requires_grad_(".motion_modules." in n)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # the VAE only encodes, without gradients
        return self

    def _encode(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            enc = self.vae.encode(images.to(self.vae.dtype) * 2 - 1)
            latents = enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latents
            return latents * self.vae.config.scaling_factor

    def forward(self, source: Tensor, target: Tensor, flow: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        B, F = target.shape[:2]
        src_lat = self._encode(source)
        tgt_lat = self._encode(target.flatten(0, 1)).unflatten(0, (B, F))
        dtype = self.unet.dtype
        text = self.text.to(dtype)
        a = self.alphas_cumprod[timesteps].view(B, 1, 1, 1, 1)
        noisy = (a.sqrt() * tgt_lat + (1 - a).sqrt() * noise).to(dtype)
        flow = (flow * self.flow_scale).to(dtype)
        if self.prediction_type == "v_prediction":
            target = (a.sqrt() * noise - (1 - a).sqrt() * tgt_lat).float()
        else:
            target = noise.float()
        if self.stage == 1:
            bank = self.appearance(src_lat.to(dtype), text)
            pred = self.step(noisy[:, 0], timesteps, text, flow[:, 0], *bank)
            return torch.nn.functional.mse_loss(pred.float(), target[:, 0])
        losses = []
        for b in range(B):  # one clip per temporal forward
            with torch.no_grad():
                bank = self.appearance(src_lat[b:b + 1].to(dtype), text)
            pred = self.step(noisy[b], timesteps[b], text, flow[b], *bank)
            losses.append(torch.nn.functional.mse_loss(pred.float(), target[b]))
        return torch.stack(losses).mean()


def _bank_free_parameters(appearance, text: Tensor) -> list[nn.Parameter]:
    """The appearance net's parameters that no bank tensor depends on: those the autograd graph of
    one forward pass (at the smallest latent size its downsampling allows) never reaches."""
    unet = appearance.unet
    side = 2 ** (len(unet.config.block_out_channels) - 1)
    with torch.enable_grad():
        bank = appearance(torch.zeros(1, unet.config.in_channels, side, side, dtype=unet.dtype),
                          text.to(unet.dtype))
    reached, seen, todo = set(), set(), [b.grad_fn for b in bank]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):  # AccumulateGrad: a leaf, i.e. a parameter
            reached.add(id(fn.variable))
        todo.extend(f for f, _ in fn.next_functions)
    return [p for p in appearance.parameters() if id(p) not in reached]


class _Stop:
    def __init__(self):
        self.requested = None

    def __call__(self, signum, frame):
        self.requested = signum


def _seed_gen(*parts: int) -> torch.Generator:
    import numpy as np

    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0]))


def _noise(seed: int, indices, shape: tuple, num_timesteps: int, min_timestep: int = 0) -> tuple[Tensor, Tensor]:
    """Noise (B, *shape) and timesteps (B,) of the samples ``indices``: each from its own generator keyed
    by the global sample index, so they do not depend on how samples are split over processes and
    micro-batches (the third key word keeps this stream apart from the dataset's (seed, index))."""
    gens = [_seed_gen(seed, i, 1) for i in indices]
    noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
    timesteps = torch.cat([torch.randint(min_timestep, num_timesteps, (1,), generator=g) for g in gens])
    return noise, timesteps


@dataclass
class _Run:
    """Everything one training run builds before its first step."""

    accelerator: object
    dataset: object
    pipe: object
    model: nn.Module           # the (possibly DDP-wrapped) TrainModule
    core: TrainModule          # the unwrapped one
    state: TrainState


def _build(cfg: TrainConfig) -> _Run:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ..data import ClipDataset

    # accelerate keeps mixed precision in a process-wide singleton that refuses a change; clear it (not
    # the process group) so that train() can run again in one process with another mixed_precision
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    device = accelerator.device
    dataset = ClipDataset(cfg.data, frames=1 if cfg.stage == 1 else cfg.frames, seed=cfg.seed,
                          flow_cache_mb=cfg.flow_cache_mb)
    pipe = build_pipeline(cfg)
    if dataset.size % 8:
        raise InputError(f"dataset size {dataset.size} is not a multiple of 8")
    model = TrainModule(pipe, cfg.stage, cfg.train_unet)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    model.to(device)
    pipe.text_embeddings = pipe.text_embeddings.to(device)  # the pipeline's own sampler (previews) runs on device
    if device.type == "cuda" and weight_dtype != torch.float32:  # frozen weights in half precision
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(weight_dtype)
    if cfg.gradient_checkpointing:
        for m in (pipe.unet, pipe.controlnet, pipe.appearance.unet, pipe.motion_unet):
            if m is not None:
                m.enable_gradient_checkpointing()
    params = model.trainable_parameters()
    names = sorted(params)
    optimizer = torch.optim.AdamW([params[n] for n in names], lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, cfg.lr_schedule, warmup=cfg.warmup_steps, steps=cfg.steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = {n: params[n].detach().clone().float() for n in names} if cfg.ema else None
    return _Run(accelerator, dataset, pipe, model, accelerator.unwrap_model(model),
                TrainState(params, optimizer, lr_sched, ema))


def _optimizer_step(run: _Run, cfg: TrainConfig, step: int, batches) -> float:
    """One optimizer step (``grad_accum`` micro-batches from ``batches``); returns the loss of the global batch."""
    from .conditions import condition_maps

    acc, model, core, state = run.accelerator, run.model, run.core, run.state
    device, world, rank, B = acc.device, acc.num_processes, acc.process_index, cfg.batch_size
    latent = run.dataset.size // 8
    F = 1 if cfg.stage == 1 else cfg.frames
    total = 0.0
    for micro in range(cfg.grad_accum):
        first = ((step * cfg.grad_accum + micro) * world + rank) * B
        batch = next(batches)
        flow = batch.get("condition")
        if flow is None:
            flow = condition_maps(run.dataset, batch, cfg.condition, cfg.n_samples, cfg.flow_delta, cfg.flow_sampling,
                                  cfg.flow_backend, device)
        flow = flow.to(device)
        noise, timesteps = _noise(cfg.seed, range(first, first + B), (F, core.latent_channels, latent, latent),
                                  core.num_train_timesteps, cfg.min_train_timestep)
        with acc.autocast():
            loss = model(batch["source"].to(device), batch["target"].to(device), flow,
                         noise.to(device), timesteps.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}")
        if micro < cfg.grad_accum - 1:
            with acc.no_sync(model):
                acc.backward(loss / cfg.grad_accum)
        else:
            acc.backward(loss / cfg.grad_accum)
        total += float(loss.detach()) / cfg.grad_accum
    if world > 1:  # log the loss of the whole global batch, as one process with it would
        total = float(acc.reduce(torch.tensor(total, device=device), "mean"))
    params = [state.params[n] for n in state.names]
    if cfg.max_grad_norm > 0:
        acc.clip_grad_norm_(params, cfg.max_grad_norm)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        with torch.no_grad():
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            for n in state.names:
                state.ema[n].mul_(d).add_(state.params[n].detach().float(), alpha=1 - d)
    return total


class _Log:
    """log.csv and TensorBoard (main process only). Validation metrics share the loss's row (empty
    where a step was not validated) and go to TensorBoard as ``val/<metric>``."""

    COLUMNS = ["step", "loss", "lr", "seconds"] + [f"val_{m}" for m in ("psnr", "ssim", "apd", "aed", "face")]

    def __init__(self, out: Path, resumed_at: int | None = None):
        self.path = out / "log.csv"
        if resumed_at is not None and self.path.is_file():
            self._keep_until(resumed_at)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=None if resumed_at is None
                                        else resumed_at + 1)
        except ImportError:
            self.writer = None

    def _keep_until(self, step: int) -> None:
        """Drop rows after ``step`` (written by a run killed before its next checkpoint), atomically."""
        from ..media import atomic_write

        with open(self.path, newline="") as fh:
            rows = list(csv.reader(fh))
        kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        with atomic_write(self.path) as tmp, open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows([rows[0]] + kept if rows else [])

    def write(self, step: int, loss: float, lr: float, seconds: float, val: dict | None = None) -> None:
        new = not self.path.is_file()
        val = val or {}
        with open(self.path, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(self.COLUMNS)
            w.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{seconds:.4f}"]
                       + [f"{val[c[4:]]:.6g}" if c[4:] in val else "" for c in self.COLUMNS[4:]])
        if self.writer is not None:
            self.writer.add_scalar("loss", loss, step)
            self.writer.add_scalar("lr", lr, step)
            for name, value in val.items():
                self.writer.add_scalar(f"val/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None,
          on_step: Callable[[int, float], None] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) training; returns {"step", "losses", "weights", "interrupted", "checkpoint"}.

    ``stop_after``: stop (with a checkpoint) once this optimizer step is done, as if interrupted.
    ``on_step(step, loss)``: called after every optimizer step.
    """
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("fgp train needs accelerate: pip install 'fgp_fast[train]'") from exc

    cfg.check()
    out = Path(cfg.output)
    run = _build(cfg)
    acc, state = run.accelerator, run.state
    main = acc.is_main_process
    step, resumed, best = 0, None, None
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            log(f"no checkpoint in {out / 'checkpoints'}; starting from step 0")
        else:
            step = resumed = restore_checkpoint(state, ckpt, acc.device)
            best = checkpoint_meta(ckpt).get("extra", {}).get("best")
            log(f"resumed from {ckpt} at step {step}")
    validation = None
    if main and cfg.val_every:
        from .validation import Validation

        validation = Validation(cfg, run.pipe, run.dataset.size, acc.device)
        validation.best = best

    def checkpoint() -> Path | None:
        acc.wait_for_everyone()
        extra = {"best": validation.best} if validation is not None else {}
        return save_checkpoint(state, step, cfg.to_dict(), out, cfg.keep_checkpoints, extra) if main else None

    logger = preview = bar = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        logger = _Log(out, resumed)
        if cfg.sample_every:
            from .preview import Preview
            preview = Preview(run.pipe, run.dataset, out, cfg.stage, cfg.sample_steps, cfg.seed, cfg.flow_delta,
                              cfg.flow_backend, acc.device, cfg.condition, cfg.flow_sampling)
        if cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.steps, initial=step, desc=f"stage {cfg.stage}", dynamic_ncols=True)
    stop = _Stop()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    losses: list[float] = []
    interrupted, last_ckpt = False, None
    run.model.train()
    from .loader import micro_batches
    from .conditions import condition_maps

    # on the CPU the loader workers build the condition maps too, in parallel with the step
    in_workers = functools.partial(condition_maps, condition=cfg.condition, n_samples=cfg.n_samples,
                                   delta=cfg.flow_delta, sampling=cfg.flow_sampling, backend=cfg.flow_backend,
                                   device="cpu") if acc.device.type == "cpu" else None
    batches = micro_batches(run.dataset, cfg.batch_size, acc.num_processes, acc.process_index,
                            step * cfg.grad_accum, cfg.steps * cfg.grad_accum, cfg.loader_workers, in_workers)
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            total = _optimizer_step(run, cfg, step, batches)
            step += 1
            losses.append(total)
            seconds = time.perf_counter() - t0
            val = None
            if validation is not None and validation.due(step, cfg.steps):
                val = validation.run(run.model, acc, state)
                if validation.improved(val, step):
                    _export_weights(run, out / "best", {"best.json": json.dumps({**validation.best, "metrics": val},
                                                                                indent=2)})
                best = validation.best
                log(f"step {step} validation: " + ", ".join(f"{k} {v:.4g}" for k, v in val.items())
                    + (f" (best {best['metric']} {best['value']:.4g} at step {best['step']})" if best else ""))
            if main and (val is not None or step % cfg.log_every == 0 or step == cfg.steps or step == 1):
                logger.write(step, total, state.lr_scheduler.get_last_lr()[0], seconds, val)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}")
            if preview is not None and step % cfg.sample_every == 0:
                preview.write(step, run.model, acc, logger.writer)
            if on_step is not None:
                on_step(step, total)
            if step % cfg.checkpoint_every == 0:
                last_ckpt = checkpoint()
            if stop.requested is not None or (stop_after is not None and step >= stop_after and step < cfg.steps):
                interrupted = True
                if step % cfg.checkpoint_every:
                    last_ckpt = checkpoint()
                log(f"stopped at step {step}" + (f" ({signal.Signals(stop.requested).name})"
                                                  if stop.requested is not None else "")
                    + f"; resume with --resume (checkpoint {last_ckpt})")
                break
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
        if validation is not None:
            validation.close()
    weights = None
    if not interrupted:
        if step % cfg.checkpoint_every:
            last_ckpt = checkpoint()
        if main:
            weights = _export_weights(run, out / "weights")
            log(f"weights written to {weights} (FGPortraitPipeline.from_pretrained)")
    acc.wait_for_everyone()
    return {"step": step, "losses": losses, "weights": weights, "interrupted": interrupted,
            "checkpoint": last_ckpt, "pipeline": run.pipe,
            "best": validation.best if validation is not None else None}


def _export_weights(run: _Run, weights: Path, files: dict[str, str] | None = None) -> Path:
    """The pipeline (with the EMA weights, when on) and text ``files`` saved atomically to ``weights``."""
    from ..media import atomic_write
    from .validation import ema_weights

    with ema_weights(run.state), atomic_write(weights, directory=True) as tmp:
        _save_pipeline(run.pipe, tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
    return weights


def _save_pipeline(pipe, directory: Path) -> None:
    dtypes = {m: next(m.parameters()).dtype for m in pipe._modules() if next(m.parameters(), None) is not None}
    dtypes = {m: dt for m, dt in dtypes.items() if dt != torch.float32}
    try:
        for m in dtypes:
            m.to(torch.float32)
        pipe.save_pretrained(directory)
    finally:
        for m, dt in dtypes.items():
            m.to(dt)
