"""Temporal layers for video mode: the UNet turned into diffusers' UNetMotionModel."""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

__all__ = ["add_temporal_layers"]


def add_temporal_layers(unet: UNet2DConditionModel) -> UNetMotionModel:
    """A UNetMotionModel with ``unet``'s weights and fresh motion modules whose output projections
    are zero, so each motion module (a residual block) starts as the identity: before training the
    video model computes exactly what the image model computes, frame by frame."""
    motion = UNetMotionModel.from_unet2d(unet)
    with torch.no_grad():
        for module in motion.modules():
            if isinstance(module, AnimateDiffTransformer3D):
                module.proj_out.weight.zero_()
                module.proj_out.bias.zero_()
    return motion
