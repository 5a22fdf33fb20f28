"""The flow's sample points and its ``FlowAux`` record, built in one place for every backend.

Every backend places the N samples of a pixel the same way (DESIGN.md step 2): N depths within
+-delta of the rendered target depth on head pixels, [near, far] elsewhere (all pixels with
``sampling="uniform"``), lifted along the pixel's ray. ``sample_points`` is that rule;
``build_aux`` packs a raster and the per-sample surface field into the ``FlowAux`` returned by
``flow_encode(..., return_aux=True)``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..camera import Camera


class FlowAux(NamedTuple):
    """What ``flow_encode(..., return_aux=True)`` returns beside the flow (dtype: the vertices')."""
    depth: Tensor           # (B, H, W) rendered target depth, 0 off-mesh
    face_id: Tensor         # (B, H, W) int64 target face under the pixel, -1 off-mesh
    mask: Tensor            # (B, H, W) bool, face_id >= 0
    bary: Tensor            # (B, H, W, 3) perspective-correct barycentrics of the hit
    points: Tensor          # (B, N, H, W, 3) the world sample points p_n
    p_src: Tensor           # (B, N, H, W, 3) each sample carried onto the source mesh
    sample_face_id: Tensor  # (B, N, H, W) int64 nearest target triangle of each sample
    offset: Tensor          # (B, N, H, W) signed distance along that triangle's normal


def sample_depths(raster, near: Tensor, far: Tensor, n_samples: int, delta: float, sampling: str) -> Tensor:
    """Per-pixel sample depths (B, N, H, W): around the surface on the head, [near, far] elsewhere."""
    depth = raster.depth
    dt, dev = depth.dtype, depth.device
    if n_samples == 1:
        s = torch.full((1,), 0.5, dtype=dt, device=dev)
    else:
        s = torch.arange(n_samples, dtype=dt, device=dev) / (n_samples - 1)
    s = s.view(1, -1, 1, 1)
    uniform = near.view(-1, 1, 1, 1) + (far - near).view(-1, 1, 1, 1) * s
    if sampling == "uniform":
        return uniform.expand(-1, -1, *depth.shape[1:]).contiguous()
    around = depth[:, None] - delta + 2 * delta * s
    return torch.where(raster.mask[:, None], around, uniform)


def sample_points(raster, camera: Camera, near: Tensor, far: Tensor, n_samples: int, delta: float,
                  sampling: str) -> Tensor:
    """The world sample points (B, N, H, W, 3) of every pixel of ``raster``, in its dtype."""
    dt, B = raster.depth.dtype, raster.depth.shape[0]
    cam = camera.to(dtype=dt)
    depths = sample_depths(raster, near.to(dt), far.to(dt), n_samples, delta, sampling)
    return cam.camera_to_world(depths[..., None] * cam.pixel_rays(B)[:, None])


def build_aux(raster, points: Tensor, p_src: Tensor, sample_face_id: Tensor, offset: Tensor) -> FlowAux:
    """Pack a raster (depth, face_id, bary, mask) and the per-sample field into a ``FlowAux``.

    The per-sample tensors may come flat ((B, N*H*W[, 3])) or shaped; they are shaped like
    ``points`` (B, N, H, W) and cast to the raster's dtype (face ids to int64).
    """
    dt = raster.depth.dtype
    grid = points.shape[:4]
    return FlowAux(raster.depth, raster.face_id.long(), raster.mask, raster.bary, points,
                   p_src.reshape(*grid, 3).to(dt), sample_face_id.reshape(grid).long(), offset.reshape(grid).to(dt))
