"""The renderer protocol: what draws a source portrait re-posed to target meshes.

:class:`~fgp_fast.portrait.Portrait` talks to its renderer only through this protocol, so the
learning-free warp renderer and the diffusion renderer are interchangeable there (and so is any
renderer added later).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..camera import Camera

__all__ = ["Renderer", "WarpPortraitRenderer"]


@runtime_checkable
class Renderer(Protocol):
    """``set_source`` once per portrait, then ``render`` per frame.

    ``device``: where the inputs go. ``size_multiple``: the source image's sides must be multiples
    of it (the diffusion renderer's latent grid needs 8). A renderer with ``paints_mouth = True``
    also takes ``render(verts, mouth_source=MouthSource)`` (the driver's inner mouth).
    """

    device: torch.device
    size_multiple: int

    def set_source(self, image: Tensor, verts: Tensor, camera: Camera) -> None:
        """image (1, 3, H, W) in [0, 1] framed by ``camera``, showing the mesh verts (1, V, 3)."""

    def render(self, verts: Tensor) -> Tensor:
        """Target meshes (B, V, 3) -> images (B, 3, H, W) in [0, 1], framed like the source."""


class WarpPortraitRenderer:
    """The learning-free warp renderer (:class:`~fgp_fast.render.warp.WarpRenderer`) behind the
    :class:`Renderer` protocol. ``backend`` picks the rasteriser."""

    size_multiple = 1
    paints_mouth = True   # render(verts, mouth_source=...) paints a driver's inner mouth

    def __init__(self, faces: Tensor, backend: str = "auto", **options):
        self.faces, self.backend, self.options = faces, backend, options
        self.device = faces.device
        self.warp = None

    def set_source(self, image: Tensor, verts: Tensor, camera: Camera) -> None:
        from .warp import WarpRenderer

        self.warp = WarpRenderer(image, verts, self.faces, camera, backend=self.backend, **self.options)

    def render(self, verts: Tensor, mouth_source=None) -> Tensor:
        """``mouth_source``: a :class:`~fgp_fast.render.mouth.MouthSource` (the driver frame) to take
        the inner mouth from where the target opens wider than the source."""
        if self.warp is None:
            raise RuntimeError("call set_source(image, verts, camera) before render")
        return self.warp.render(verts, mouth_source=mouth_source).image
