"""The diffusion renderer: the warp renderer's role (source portrait + meshes -> images), drawn by
FGPortraitPipeline from the 3D flow. Importing this module imports diffusers (the ``diffusion`` extra)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..camera import Camera
from ..ops import flow_encode
from ..ops.checks import check_faces, check_verts
from ..pipeline import FGPortraitPipeline
from ..errors import InputError

__all__ = ["DiffusionRenderer"]


class DiffusionRenderer:
    """``set_source(image, verts_src, camera)`` once per identity, then ``render(verts_tgt) -> (B, 3, H, W)``.

    The flow is encoded in the source camera (the output keeps the source framing) with the
    pipeline's N samples; ``backend`` picks the flow-encode implementation. Every call renders with
    the same ``seed``, so a still target gives a still image. Implements the
    :class:`~fgp_fast.render.renderer.Renderer` protocol.
    """

    size_multiple = 8  # the latent grid: image sides are multiples of the VAE's factor

    def __init__(self, pipeline: FGPortraitPipeline, faces: Tensor, delta: float = 0.01, backend: str = "auto",
                 seed: int = 0, video: bool = False):
        self.pipeline, self.faces = pipeline, faces
        self.delta, self.backend, self.seed, self.video = delta, backend, seed, video
        self.verts_src: Tensor | None = None
        self.camera: Camera | None = None

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @classmethod
    def from_pretrained(cls, directory: str | Path, faces: Tensor, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, **kwargs) -> "DiffusionRenderer":
        return cls(FGPortraitPipeline.from_pretrained(directory, device, dtype), faces, **kwargs)

    def set_source(self, image: Tensor, verts_src: Tensor, camera: Camera) -> None:
        """image (1, 3, H, W) in [0, 1] framed by ``camera`` (H, W multiples of 8); verts_src (1, V, 3)."""
        check_verts(verts_src, "verts_src")
        check_faces(self.faces, verts_src.shape[1], verts_src.device)
        if verts_src.shape[0] != 1:
            raise InputError(f"one identity at a time: verts_src must be (1, V, 3), got {tuple(verts_src.shape)}")
        if tuple(image.shape[-2:]) != (camera.height, camera.width):
            raise InputError(f"image is {tuple(image.shape[-2:])} (H, W) but the camera is {(camera.height, camera.width)}")
        self.pipeline.set_source(image)
        self.verts_src, self.camera = verts_src, camera

    @torch.no_grad()
    def render(self, verts_tgt: Tensor) -> Tensor:
        """Target meshes (B, V, 3) -> images (B, 3, H, W) in [0, 1] (one clip of B frames in video mode)."""
        if self.verts_src is None:
            raise RuntimeError("call set_source(image, verts_src, camera) before render")
        check_verts(verts_tgt, "verts_tgt")
        flow = flow_encode(verts_tgt, self.verts_src.expand(verts_tgt.shape[0], -1, -1), self.faces, self.camera,
                           n_samples=self.pipeline.config.n_samples, delta=self.delta, backend=self.backend)
        return self.pipeline(flow, seed=self.seed, video=self.video)
