"""One denoising step as a single module: flow ControlNet + generator UNet + reference bank as inputs.

Everything that changes per frame is a tensor argument and nothing is kept between calls, so the
module traces for ONNX, compiles with ``torch.compile(fullgraph=True)`` and captures as a CUDA graph.
"""
from __future__ import annotations

from diffusers import ControlNetModel, UNet2DConditionModel, UNetMotionModel
from torch import Tensor, nn

from .flow_controlnet import check_flow_channels
from ..errors import InputError

__all__ = ["FusedStep"]


class FusedStep(nn.Module):
    """``forward(latents, timestep, text, flow, *reference) -> noise prediction``.

    latents (F, 4, h, w): F frames (a batch, or one clip's frames when ``unet`` is a
    UNetMotionModel); timestep: a scalar tensor; text (1|F, L, C): precomputed (empty-prompt)
    embeddings; flow (F, 3N, 8h, 8w); reference: the appearance bank, one tensor per name in
    ``names`` (batch 1 broadcasts), or nothing for plain self-attention.
    """

    def __init__(self, unet: UNet2DConditionModel | UNetMotionModel, controlnet: ControlNetModel,
                 names: list[str], conditioning_scale: float = 1.0):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.names = list(names)
        self.conditioning_scale = float(conditioning_scale)
        self.video = isinstance(unet, UNetMotionModel)

    def forward(self, latents: Tensor, timestep: Tensor, text: Tensor, flow: Tensor, *reference: Tensor) -> Tensor:
        if reference and len(reference) != len(self.names):
            raise InputError(f"expected {len(self.names)} reference tensors (one per attn1), got {len(reference)}")
        check_flow_channels(self.controlnet, flow, latents)
        frames = latents.shape[0]
        bank = dict(zip(self.names, reference)) if reference else None
        text = text.expand(frames, -1, -1)  # per frame, also for the motion UNet
        down, mid = self.controlnet(latents, timestep, text, controlnet_cond=flow,
                                    conditioning_scale=self.conditioning_scale, return_dict=False)
        if self.video:  # one clip: (1, C, F, h, w); the motion UNet flattens frames in this order
            sample = latents.transpose(0, 1).unsqueeze(0)
            out = self.unet(sample, timestep, text, cross_attention_kwargs={"reference": bank},
                            down_block_additional_residuals=down, mid_block_additional_residual=mid,
                            return_dict=False)[0]
            return out[0].transpose(0, 1)
        return self.unet(latents, timestep, text, cross_attention_kwargs={"reference": bank},
                         down_block_additional_residuals=down, mid_block_additional_residual=mid,
                         return_dict=False)[0]
