"""Loading weights from local files: SD1.5 (diffusers directory or single checkpoint file) and
X-Portrait's appearance network. Nothing here downloads; missing files raise a clear error."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint
from torch import Tensor

from .config import sd15_unet_config, sd15_vae_config
from ..errors import InputError

__all__ = ["load_appearance_weights", "load_sd15", "map_xportrait_appearance_keys"]

# Prefixes under which X-Portrait (and ControlNet-style reference-only code) store the appearance UNet.
XPORTRAIT_APPEARANCE_PREFIXES = ("appearance_control_model.", "module.appearance_control_model.")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".th")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_sd15(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """SD1.5's UNet and VAE from a local diffusers directory (``unet/``, ``vae/``) or one checkpoint
    file (original LDM layout, e.g. ``v1-5-pruned-emaonly.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        missing = [sub for sub in ("unet", "vae") if not (path / sub / "config.json").is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a diffusers SD1.5 directory: no {', '.join(missing)}/config.json; "
                                    "give the local copy of stable-diffusion-v1-5 or its single checkpoint file")
        return (UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, local_files_only=True),
                AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, local_files_only=True))
    if not path.is_file() or path.suffix not in CHECKPOINT_SUFFIXES:
        raise FileNotFoundError(f"no SD1.5 weights at {path}: give a local diffusers directory or a single "
                                f"checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")
    # from_single_file would fetch the configs from the Hub; write SD1.5's next to nothing instead.
    with tempfile.TemporaryDirectory() as configs:
        for sub, config in (("unet", sd15_unet_config()), ("vae", sd15_vae_config())):
            (Path(configs) / sub).mkdir()
            (Path(configs) / sub / "config.json").write_text(json.dumps(config))
        kwargs = dict(config=configs, torch_dtype=dtype, local_files_only=True)
        return (UNet2DConditionModel.from_single_file(str(path), subfolder="unet", **kwargs),
                AutoencoderKL.from_single_file(str(path), subfolder="vae", **kwargs))


def map_xportrait_appearance_keys(state_dict: dict[str, Tensor], unet_config: dict) -> dict[str, Tensor]:
    """X-Portrait's appearance-net weights as a diffusers UNet state dict.

    Takes the keys under ``appearance_control_model.`` (or a checkpoint of the bare UNet) in the
    original LDM layout (``input_blocks.*``) or already in diffusers layout (``down_blocks.*``).
    """
    for prefix in XPORTRAIT_APPEARANCE_PREFIXES:
        picked = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if picked:
            break
    else:
        picked = {k[len(LDM_UNET_KEY):] if k.startswith(LDM_UNET_KEY) else k: v for k, v in state_dict.items()}
    if any(k.startswith("input_blocks.") for k in picked):
        return convert_ldm_unet_checkpoint({LDM_UNET_KEY + k: v for k, v in picked.items()}, dict(unet_config))
    if any(k.startswith("down_blocks.") for k in picked):
        return picked
    raise InputError("no appearance-net weights found: expected keys under 'appearance_control_model.' "
                     "(X-Portrait) or a UNet state dict in LDM ('input_blocks.*') or diffusers ('down_blocks.*') layout")


def load_appearance_weights(unet: UNet2DConditionModel, source: str | Path | dict[str, Tensor]) -> None:
    """Initialise an appearance net's UNet from a checkpoint file or state dict (X-Portrait layout or plain
    UNet); every UNet weight must be present."""
    state = _read_state_dict(Path(source)) if not isinstance(source, dict) else source
    mapped = map_xportrait_appearance_keys(state, unet.config)
    expected = unet.state_dict()
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    resized = [k for k in expected if k in mapped and mapped[k].shape != expected[k].shape]
    if missing or unexpected or resized:
        raise InputError(f"appearance weights do not fit the UNet: {len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(resized)} of another shape "
                         f"(e.g. {resized[:3]}); is it an SD1.5-sized appearance net?")
    unet.load_state_dict(mapped)
