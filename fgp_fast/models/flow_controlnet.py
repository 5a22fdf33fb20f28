"""The flow ControlNet: a ControlNet copied from the UNet whose condition is the 3N-channel flow map."""
from __future__ import annotations

from diffusers import ControlNetModel, UNet2DConditionModel
from torch import Tensor
from ..errors import InputError

__all__ = ["check_flow_channels", "flow_channels", "make_flow_controlnet"]


def flow_channels(n_samples: int) -> int:
    """Channels of the flow map for ``n_samples`` samples per ray (x, y, z each)."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples must be an int >= 1, got {n_samples!r}")
    return 3 * n_samples


def make_flow_controlnet(unet: UNet2DConditionModel, n_samples: int = 20,
                         embedding_channels: tuple[int, ...] | None = None) -> ControlNetModel:
    """``ControlNetModel.from_unet`` with ``conditioning_channels = 3N``. Its zero convolutions make
    a fresh ControlNet add nothing to the UNet; the conditioning map is 8x the latent size.
    ``embedding_channels``: the condition encoder's widths (four levels; default SD's)."""
    extra = {} if embedding_channels is None else {"conditioning_embedding_out_channels": tuple(embedding_channels)}
    return ControlNetModel.from_unet(unet, conditioning_channels=flow_channels(n_samples), **extra)


def check_flow_channels(controlnet: ControlNetModel, flow: Tensor, latents: Tensor) -> None:
    """Clear errors for a flow map the ControlNet cannot take."""
    expected = controlnet.config.conditioning_channels
    if flow.dim() != 4:
        raise InputError(f"flow must be (B, 3N, H, W), got shape {tuple(flow.shape)}")
    if flow.shape[1] != expected:
        raise InputError(f"flow has {flow.shape[1]} channels but the ControlNet takes {expected} "
                         f"(3N for N = {expected // 3} samples); encode the flow with n_samples={expected // 3}")
    size = (8 * latents.shape[-2], 8 * latents.shape[-1])
    if tuple(flow.shape[-2:]) != size:
        raise InputError(f"flow is {tuple(flow.shape[-2:])} (H, W) but must be 8x the latents: {size}")
