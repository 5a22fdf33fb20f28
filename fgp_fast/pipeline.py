"""FGPortraitPipeline: source portrait + 3D flow maps -> re-posed portraits, in a few diffusion steps.

Per identity (once, cached): the source image's latents and the appearance bank. Per frame: flow map
-> flow ControlNet + generator UNet (one fused step, reference attention over the bank) -> scheduler
(DDIM, LCM or TCD; fixed timesteps, no classifier-free guidance) -> VAE or AutoencoderTiny decode.
Video mode runs the temporal UNet over sliding windows of frames. The empty-prompt text embeddings
are precomputed and stored with the weights, so no text encoder is needed at run time.

Importing this module imports diffusers (the ``diffusion`` extra); ``import fgp_fast`` does not.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, AutoencoderTiny, ControlNetModel, DDIMScheduler, LCMScheduler, MotionAdapter,
                       TCDScheduler, UNet2DConditionModel, UNetMotionModel)
from torch import Tensor

from .models import (SMALL_CONDITIONING_CHANNELS, AppearanceNet, CudaGraphStep, FusedStep, PatchAutoencoder,
                     add_temporal_layers, install_reference_read, load_appearance_weights, load_sd15,
                     make_flow_controlnet, sd15_unet_config, small_unet_config, tiny_taesd_config, tiny_unet_config,
                     tiny_vae_config)
from .models.config import sd15_vae_config
from .errors import InputError, MissingDependencyError

__all__ = ["FGPortraitPipeline", "PipelineConfig", "SCHEDULERS"]

SCHEDULERS = {"ddim": DDIMScheduler, "lcm": LCMScheduler, "tcd": TCDScheduler}
# SD1.5's noise schedule; "trailing" spacing so that one or two steps start from pure noise.
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)
CONFIG_NAME = "fgp_pipeline.json"
TEXT_NAME = "text_embeddings.safetensors"


@dataclass
class PipelineConfig:
    n_samples: int = 20            # flow samples per ray: the ControlNet takes 3N channels
    num_steps: int = 2             # denoising steps per frame
    scheduler: str = "lcm"         # ddim | lcm | tcd
    flow_scale: float = 10.0       # flow is in metres; x10 brings head motion to order 0.1-1
    conditioning_scale: float = 1.0
    window: int = 16               # video: frames per temporal window
    overlap: int = 4               # video: frames shared by consecutive windows


def _make_scheduler(name: str, schedule: dict | None = None):
    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    config = dict(SD15_SCHEDULE if schedule is None else schedule)
    return SCHEDULERS[name].from_config(config)


def _window_starts(frames: int, window: int, overlap: int) -> list[int]:
    if frames <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, frames - window + 1, stride))
    return starts if starts[-1] == frames - window else starts + [frames - window]


class FGPortraitPipeline:
    """The diffusion renderer's models and sampling loop; see the module docstring.

    Build with ``from_pretrained(dir)`` (saved by ``save_pretrained``), ``from_sd15(path, ...)`` (SD1.5
    from a local directory or checkpoint file, fresh ControlNet, appearance net from SD1.5 or
    X-Portrait weights) or ``random(...)`` (random weights: tests and latency benchmarks).
    """

    def __init__(self, unet: UNet2DConditionModel, appearance_net: UNet2DConditionModel,
                 controlnet: ControlNetModel, vae: AutoencoderKL | AutoencoderTiny, text_embeddings: Tensor,
                 config: PipelineConfig | None = None, vae_tiny: AutoencoderTiny | None = None,
                 motion_unet: UNetMotionModel | None = None):
        self.config = config or PipelineConfig()
        if controlnet.config.conditioning_channels != 3 * self.config.n_samples:
            raise InputError(f"the ControlNet takes {controlnet.config.conditioning_channels} channels but "
                             f"n_samples={self.config.n_samples} gives {3 * self.config.n_samples}")
        if text_embeddings.dim() != 3 or text_embeddings.shape[0] != 1:
            raise InputError(f"text_embeddings must be (1, L, C), got {tuple(text_embeddings.shape)}")
        self.unet, self.controlnet, self.vae, self.vae_tiny = unet, controlnet, vae, vae_tiny
        self.appearance = AppearanceNet(appearance_net)
        self.names = install_reference_read(unet)
        self.motion_unet = motion_unet
        if motion_unet is not None:
            install_reference_read(motion_unet)
        self.text_embeddings = text_embeddings
        self.scheduler = _make_scheduler(self.config.scheduler)
        self.step = FusedStep(unet, controlnet, self.names, self.config.conditioning_scale)
        self.video_step = (FusedStep(motion_unet, controlnet, self.names, self.config.conditioning_scale)
                           if motion_unet is not None else None)
        self._runner = self.step
        self.identity: tuple[Tensor, tuple[Tensor, ...]] | None = None  # source latents, appearance bank
        for module in self._modules():
            module.eval().requires_grad_(False)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def random(cls, size: str = "tiny", n_samples: int = 20, temporal: bool = False, tiny_decoder: bool = True,
               seed: int = 0, config: PipelineConfig | None = None) -> "FGPortraitPipeline":
        """Random weights at ``size`` "tiny" (tests), "small" (training from scratch in pixel space:
        ``PatchAutoencoder``, no tiny decoder) or "sd15" (latency: it does not depend on weights)."""
        if size not in ("tiny", "small", "sd15"):
            raise InputError(f"size must be 'tiny', 'small' or 'sd15', got {size!r}")
        torch.manual_seed(seed)
        unet_config = {"tiny": tiny_unet_config, "small": small_unet_config, "sd15": sd15_unet_config}[size]()
        unet = UNet2DConditionModel(**unet_config)
        if size == "small":
            vae, vae_tiny = PatchAutoencoder(), None
        else:
            vae = AutoencoderKL(**(tiny_vae_config() if size == "tiny" else sd15_vae_config()))
            vae_tiny = AutoencoderTiny(**tiny_taesd_config()) if size == "tiny" and tiny_decoder else (
                AutoencoderTiny() if tiny_decoder else None)
        text = torch.randn(1, 77 if size == "sd15" else 4, unet.config.cross_attention_dim)
        config = config or PipelineConfig(n_samples=n_samples)
        controlnet = make_flow_controlnet(unet, config.n_samples,
                                          SMALL_CONDITIONING_CHANNELS if size == "small" else None)
        return cls(unet, copy.deepcopy(unet), controlnet, vae, text, config,
                   vae_tiny, add_temporal_layers(unet) if temporal else None)

    @classmethod
    def from_sd15(cls, sd15: str | Path, text_embeddings: Tensor | str | Path, n_samples: int = 20,
                  appearance_weights: str | Path | None = None, vae_tiny: str | Path | None = None,
                  temporal: bool = False, config: PipelineConfig | None = None) -> "FGPortraitPipeline":
        """A pipeline to train or fine-tune: SD1.5 UNet and VAE, appearance net = a UNet copy (or
        X-Portrait's appearance weights), fresh flow ControlNet. ``text_embeddings``: a (1, 77, 768)
        tensor, a ``.safetensors`` file, or a local CLIP text-encoder directory to encode "" once."""
        unet, vae = load_sd15(sd15)
        appearance = copy.deepcopy(unet)
        if appearance_weights is not None:
            load_appearance_weights(appearance, appearance_weights)
        tiny = AutoencoderTiny.from_pretrained(vae_tiny, local_files_only=True) if vae_tiny is not None else None
        config = config or PipelineConfig(n_samples=n_samples)
        return cls(unet, appearance, make_flow_controlnet(unet, config.n_samples), vae,
                   _text_embeddings(text_embeddings), config, tiny, add_temporal_layers(unet) if temporal else None)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "FGPortraitPipeline":
        """Load what ``save_pretrained`` wrote (diffusers layout, safetensors)."""
        directory = Path(directory)
        required = {CONFIG_NAME: "the pipeline config", TEXT_NAME: "the empty-prompt text embeddings",
                    "unet/config.json": "the SD1.5 UNet", "appearance_net/config.json": "the appearance net",
                    "controlnet/config.json": "the flow ControlNet", "vae/config.json": "the SD1.5 VAE"}
        missing = [f"{name} ({what})" for name, what in required.items() if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory} is not a complete fgp_fast diffusion weights directory; missing: {', '.join(missing)}. "
                "Build one with FGPortraitPipeline.from_sd15(<local SD1.5 dir or .safetensors>, <empty-prompt "
                "embeddings>, appearance_weights=<X-Portrait checkpoint>) and train the ControlNet, then call "
                "save_pretrained(dir)")
        from safetensors.torch import load_file
        raw = json.loads((directory / CONFIG_NAME).read_text())
        config = PipelineConfig(**{k: v for k, v in raw.items() if k in PipelineConfig.__dataclass_fields__})
        load = dict(local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(directory / "unet", **load)
        motion = None
        if (directory / "motion_adapter" / "config.json").is_file():
            adapter = MotionAdapter.from_pretrained(directory / "motion_adapter", **load)
            motion = UNetMotionModel.from_unet2d(unet, motion_adapter=adapter)
        tiny = (AutoencoderTiny.from_pretrained(directory / "vae_tiny", **load)
                if (directory / "vae_tiny" / "config.json").is_file() else None)
        pipe = cls(unet, UNet2DConditionModel.from_pretrained(directory / "appearance_net", **load),
                   ControlNetModel.from_pretrained(directory / "controlnet", **load),
                   _load_vae(directory / "vae"),
                   load_file(str(directory / TEXT_NAME))["text_embeddings"], config, tiny, motion)
        if (directory / "scheduler").is_dir():
            pipe.scheduler = SCHEDULERS[config.scheduler].from_pretrained(directory / "scheduler")
        with torch.no_grad():  # own the weights instead of the file's memory map (CPU kernels are alignment-sensitive)
            for module in pipe._modules():
                for param in module.parameters():
                    param.data = param.data.clone()
        return pipe.to(device, dtype)

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        save_file({"text_embeddings": self.text_embeddings.detach().float().cpu().contiguous()},
                  str(directory / TEXT_NAME))
        self.unet.save_pretrained(directory / "unet")
        self.appearance.unet.save_pretrained(directory / "appearance_net")
        self.controlnet.save_pretrained(directory / "controlnet")
        self.vae.save_pretrained(directory / "vae")
        self.scheduler.save_pretrained(directory / "scheduler")
        if self.vae_tiny is not None:
            self.vae_tiny.save_pretrained(directory / "vae_tiny")
        if self.motion_unet is not None:
            self.motion_unet.save_motion_modules(directory / "motion_adapter")

    # ---- runtime ------------------------------------------------------------------------------
    def _modules(self):
        return [m for m in (self.unet, self.appearance, self.controlnet, self.vae, self.vae_tiny, self.motion_unet)
                if m is not None]

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
           channels_last: bool = False) -> "FGPortraitPipeline":
        """Move and cast every model (fp16/bf16 on GPUs); ``channels_last`` for faster convolutions."""
        for module in self._modules():
            module.to(device=device, dtype=dtype)
            if channels_last:
                module.to(memory_format=torch.channels_last)
        self.text_embeddings = self.text_embeddings.to(device=device, dtype=dtype)
        if self.identity is not None:
            latents, bank = self.identity
            self.identity = (latents.to(device, dtype), tuple(b.to(device, dtype) for b in bank))
        return self

    def set_scheduler(self, name: str, num_steps: int | None = None) -> None:
        self.scheduler = _make_scheduler(name, dict(self.scheduler.config))
        self.config.scheduler = name
        if num_steps is not None:
            self.config.num_steps = num_steps

    def compile(self, backend: str = "inductor", mode: str | None = None) -> None:
        """Run the image step through ``torch.compile(fullgraph=True)``."""
        self._runner = torch.compile(self.step, fullgraph=True, backend=backend, mode=mode)

    def enable_cuda_graph(self) -> None:
        """Replay the image step as a CUDA graph (fixed batch and resolution)."""
        self._runner = CudaGraphStep(self.step)

    # ---- per identity -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> scaled latents (B, C, H/8, W/8) (C = 4 for SD's VAE)."""
        encoded = self.vae.encode(image.to(self.device, self.dtype) * 2 - 1)
        latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
        return latents * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor, tiny: bool | None = None) -> Tensor:
        """Latents -> images in [0, 1]; the AutoencoderTiny decoder when present (unless ``tiny=False``)."""
        vae = self.vae_tiny if (tiny is not False and self.vae_tiny is not None) else self.vae
        if tiny and self.vae_tiny is None:
            raise InputError("no tiny decoder (vae_tiny) in this pipeline")
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        return ((image.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def set_source(self, image: Tensor) -> None:
        """Cache the source portrait's latents and appearance bank: image (1, 3, H, W) in [0, 1], H and W
        multiples of 8."""
        if image.dim() != 4 or image.shape[:2] != (1, 3) or image.shape[-1] % 8 or image.shape[-2] % 8:
            raise InputError(f"source image must be (1, 3, H, W) with H, W multiples of 8, got {tuple(image.shape)}")
        latents = self.encode_image(image)
        self.identity = (latents, self.appearance(latents, self.text_embeddings))

    # ---- per frame ----------------------------------------------------------------------------
    def _check_flow(self, flow: Tensor) -> Tensor:
        if self.identity is None:
            raise RuntimeError("call set_source(image) before rendering")
        size = tuple(8 * s for s in self.identity[0].shape[-2:])
        if flow.dim() != 4 or tuple(flow.shape[-2:]) != size or flow.shape[1] != 3 * self.config.n_samples:
            raise InputError(f"flow must be (B, {3 * self.config.n_samples}, {size[0]}, {size[1]}) "
                             f"(3N channels for n_samples={self.config.n_samples}, the source's size), "
                             f"got {tuple(flow.shape)}")
        return (flow * self.config.flow_scale).to(self.device, self.dtype)

    def _predict(self, runner, latents: Tensor, timestep: Tensor, flow: Tensor) -> Tensor:
        return runner(latents, timestep, self.text_embeddings, flow, *self.identity[1])

    def _predict_video(self, latents: Tensor, timestep: Tensor, flow: Tensor) -> Tensor:
        """Temporal UNet over overlapping windows; overlapping predictions are averaged."""
        total, count = torch.zeros_like(latents), latents.new_zeros(latents.shape[0], 1, 1, 1)
        for start in _window_starts(latents.shape[0], self.config.window, self.config.overlap):
            end = start + self.config.window
            total[start:end] += self._predict(self.video_step, latents[start:end], timestep, flow[start:end])
            count[start:end] += 1
        return total / count

    @torch.no_grad()
    def __call__(self, flow: Tensor, num_steps: int | None = None, seed: int | None = 0, video: bool = False,
                 output: str = "image") -> Tensor:
        """Render frames from flow maps (B, 3N, H, W) (``fgp_fast.ops.flow_encode`` in the source camera).

        Returns images (B, 3, H, W) in [0, 1] (``output="latent"``: the final latents). ``video=True``
        treats the batch as consecutive frames of one clip (temporal layers, sliding windows).
        Deterministic for a given ``seed``: the same initial noise for every frame.
        """
        flow = self._check_flow(flow)
        steps = self.config.num_steps if num_steps is None else num_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"num_steps must be an int >= 1, got {steps!r}")
        if video and self.video_step is None:
            raise InputError("video mode needs temporal layers: build the pipeline with temporal=True "
                             "or load weights that include motion_adapter/")
        frames = flow.shape[0]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = torch.randn((1, *self.identity[0].shape[1:]), generator=generator)
        latents = (noise.expand(frames, -1, -1, -1) * self.scheduler.init_noise_sigma).to(self.device, self.dtype)
        self.scheduler.set_timesteps(steps, device=self.device)
        for timestep in self.scheduler.timesteps:
            model_in = self.scheduler.scale_model_input(latents, timestep)
            if video:
                eps = self._predict_video(model_in, timestep, flow)
            else:
                eps = self._predict(self._runner, model_in, timestep, flow)
            latents = self.scheduler.step(eps, timestep, latents, generator=generator, return_dict=False)[0]
        return latents if output == "latent" else self.decode(latents)


def _load_vae(directory: Path):
    """The autoencoder a saved ``vae/`` holds: SD's AutoencoderKL, or the weight-free
    PatchAutoencoder of pixel-space weights (``random("small")``; a config and no weights file)."""
    name = json.loads((directory / "config.json").read_text()).get("_class_name")
    if name == PatchAutoencoder.__name__:
        return PatchAutoencoder.from_config(PatchAutoencoder.load_config(directory))
    return AutoencoderKL.from_pretrained(directory, local_files_only=True)


def _text_embeddings(source: Tensor | str | Path) -> Tensor:
    """Precomputed empty-prompt embeddings: a tensor, a safetensors file, or a local CLIP text encoder."""
    if isinstance(source, Tensor):
        return source.reshape(1, *source.shape[-2:])
    path = Path(source)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file
        return next(iter(load_file(str(path)).values())).reshape(1, 77, -1)
    if (path / "text_encoder" / "config.json").is_file() or (path / "config.json").is_file():
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as exc:
            raise MissingDependencyError("encoding the empty prompt with a CLIP text encoder needs transformers") from exc
        root = path if (path / "config.json").is_file() else path / "text_encoder"
        tokenizer_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else root
        tokens = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)(
            "", padding="max_length", max_length=77, return_tensors="pt")
        with torch.no_grad():
            return CLIPTextModel.from_pretrained(root, local_files_only=True)(tokens.input_ids)[0]
    raise FileNotFoundError(f"no text embeddings at {path}: give a (1, 77, 768) tensor, a .safetensors file "
                            "holding one, or a local CLIP text-encoder directory")
