"""The appearance network: a UNet copy whose self-attention inputs form the reference bank."""
from __future__ import annotations

import copy

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from .reference_attention import install_reference_write

__all__ = ["AppearanceNet"]


class AppearanceNet(nn.Module):
    """Runs a UNet on the clean source latents (t = 0) and returns its ``attn1`` inputs.

    ``forward(latents (1|B, 4, h, w), text (1|B, L, C)) -> tuple`` of (B, tokens, channels), one per
    name in ``self.names`` (the generator's ``attn1`` modules, same order). Computed once per identity.
    """

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet
        self.names = install_reference_write(unet)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel) -> "AppearanceNet":
        """A fresh appearance net initialised as a copy of ``unet`` (how reference nets start training)."""
        return cls(copy.deepcopy(unet))

    def forward(self, latents: Tensor, text: Tensor) -> tuple[Tensor, ...]:
        bank: dict[str, Tensor] = {}
        timestep = torch.zeros((), dtype=torch.long, device=latents.device)
        self.unet(latents, timestep, text.expand(latents.shape[0], -1, -1), cross_attention_kwargs={"reference": bank},
                  return_dict=False)
        missing = [name for name in self.names if name not in bank]
        if missing:
            raise RuntimeError(f"appearance net did not reach {missing[:3]}")
        return tuple(bank[name] for name in self.names)
