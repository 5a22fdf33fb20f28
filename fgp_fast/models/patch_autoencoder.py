"""A learning-free "latent space" for pixel-space training: 8x8 pixel patches as latent channels.

``PatchAutoencoder`` maps images (B, 3, H, W) in [-1, 1] to (B, 3 * 8 * 8, H/8, W/8) by
space-to-depth (``pixel_unshuffle``) and back exactly (``pixel_shuffle``): no weights, nothing
lost, and the 8x downsampling every other part of the pipeline assumes (the flow map is 8x the
latents, as with SD's VAE). Training from random weights (the small-scale replication,
``init: random-small``) runs the diffusion in this space, so generated frames are judged in
pixels without an untrained decoder in between. It speaks the AutoencoderKL subset the
pipeline and the trainer use: ``encode(x).latents``, ``decode(z, return_dict=False)[0]``,
``config.scaling_factor``, ``config.latent_channels``, ``save_pretrained``/``from_pretrained``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as Fnn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from ..errors import InputError

__all__ = ["PatchAutoencoder"]


@dataclass
class _Encoded:
    latents: Tensor


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Space-to-depth by ``patch`` (8): exact, weight-free; see the module docstring."""

    @register_to_config
    def __init__(self, in_channels: int = 3, patch: int = 8, latent_channels: int = 192, scaling_factor: float = 1.0):
        super().__init__()
        if patch != 8:  # the flow map / latent ratio is 8 throughout fgp_fast
            raise InputError(f"patch must be 8 (the pipeline's latent stride), got {patch}")
        if latent_channels != in_channels * patch * patch:
            raise InputError(f"latent_channels must be in_channels * patch ** 2 = {in_channels * patch * patch}, "
                             f"got {latent_channels}")
        # one buffer so that .dtype/.device work like on any model (there are no weights)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _check(self, x: Tensor, channels: int, what: str) -> None:
        if x.dim() != 4 or x.shape[1] != channels:
            raise InputError(f"{what} must be (B, {channels}, H, W), got {tuple(x.shape)}")

    def encode(self, x: Tensor, return_dict: bool = True):
        self._check(x, self.config.in_channels, "images")
        p = self.config.patch
        if x.shape[-1] % p or x.shape[-2] % p:
            raise InputError(f"image sides must be multiples of {p}, got {tuple(x.shape[-2:])}")
        latents = Fnn.pixel_unshuffle(x, p)
        return _Encoded(latents) if return_dict else (latents,)

    def decode(self, z: Tensor, return_dict: bool = False):
        self._check(z, self.config.latent_channels, "latents")
        image = Fnn.pixel_shuffle(z, self.config.patch)
        return (image,) if not return_dict else _Decoded(image)


@dataclass
class _Decoded:
    sample: Tensor
