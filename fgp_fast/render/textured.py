"""Textured mesh rendering on top of ``fgp_fast.ops.rasterize``, for synthetic portraits.

UV convention (OBJ / ICT-FaceKit): u runs left to right across the texture, v runs bottom to top,
so v = 0 is the texture's last row. Coordinates outside [0, 1) repeat (UV tiles share one
texture: ICT places the face in u in [0, 1) and head, neck and sockets in [1, 2)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fnn
from torch import Tensor

from ..camera import Camera
from ..ops import rasterize
from ..ops.checks import check_camera, check_faces, check_verts

__all__ = ["render_textured", "procedural_texture", "sample_texture"]


def _check_texture(texture: Tensor, batch: int, verts: Tensor) -> Tensor:
    if not isinstance(texture, Tensor):
        raise TypeError(f"texture must be a torch.Tensor, got {type(texture).__name__}")
    if texture.dim() == 3:
        texture = texture[None]
    if texture.dim() != 4 or texture.shape[0] not in (1, batch) or min(texture.shape[1:]) < 1:
        raise ValueError(f"texture must be (C, Ht, Wt) or (1|B={batch}, C, Ht, Wt), got {tuple(texture.shape)}")
    if not texture.is_floating_point():
        raise TypeError(f"texture must be floating point, got {texture.dtype}")
    if texture.device != verts.device:
        raise ValueError(f"texture is on {texture.device} but the vertices are on {verts.device}")
    return texture.expand(batch, -1, -1, -1)


def _check_uv(uv: Tensor, faces_uv: Tensor, faces: Tensor, verts: Tensor) -> None:
    if not isinstance(uv, Tensor) or not isinstance(faces_uv, Tensor):
        raise TypeError("uv and faces_uv must be torch tensors")
    if uv.dim() != 2 or uv.shape[1] != 2 or uv.shape[0] == 0:
        raise ValueError(f"uv must have shape (T, 2) with T > 0, got {tuple(uv.shape)}")
    if not uv.is_floating_point():
        raise TypeError(f"uv must be floating point, got {uv.dtype}")
    if uv.device != verts.device:
        raise ValueError(f"uv is on {uv.device} but the vertices are on {verts.device}")
    if faces_uv.shape != faces.shape:
        raise ValueError(f"faces_uv must match faces' shape {tuple(faces.shape)}, got {tuple(faces_uv.shape)}")
    if faces_uv.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"faces_uv must be int32 or int64, got {faces_uv.dtype}")
    if faces_uv.device != verts.device:
        raise ValueError(f"faces_uv is on {faces_uv.device} but the vertices are on {verts.device}")
    lo, hi = int(faces_uv.min()), int(faces_uv.max())
    if lo < 0 or hi >= uv.shape[0]:
        raise IndexError(f"faces_uv index UVs in [{lo}, {hi}] but uv has {uv.shape[0]} rows")


def _background(background, B: int, C: int, H: int, W: int, like: Tensor) -> Tensor:
    if isinstance(background, (int, float)) and not isinstance(background, bool):
        return torch.full((B, C, H, W), float(background), dtype=like.dtype, device=like.device)
    if not isinstance(background, Tensor):
        raise TypeError(f"background must be a number or a tensor, got {type(background).__name__}")
    try:
        return background.to(dtype=like.dtype, device=like.device).expand(B, C, H, W)
    except RuntimeError:
        raise ValueError(f"background {tuple(background.shape)} does not broadcast to "
                         f"(B, C, H, W) = {(B, C, H, W)}") from None


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of texture (B, C, Ht, Wt) at UVs (B, H, W, 2) -> (B, C, H, W); UVs repeat."""
    uv = uv - torch.floor(uv)
    # grid_sample's y = -1 is the first (top) row; UV v = 0 is the bottom row.
    grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], -1).to(texture.dtype)
    return Fnn.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)


def render_textured(verts: Tensor, faces: Tensor, faces_uv: Tensor, uv: Tensor, texture: Tensor,
                    camera: Camera, background=0.0, backend: str = "reference") -> tuple[Tensor, Tensor]:
    """Render a UV-textured mesh: -> image (B, C, H, W) in the texture's dtype, mask (B, 1, H, W) bool.

    UVs are interpolated with the rasteriser's perspective-correct barycentrics and the texture is
    sampled bilinearly (no mip-mapping: keep texture detail near the pixel scale or coarser).
    ``background`` is a number or a tensor broadcastable to (B, C, H, W).
    """
    check_verts(verts)
    check_faces(faces, verts.shape[1], verts.device)
    check_camera(camera, verts)
    _check_uv(uv, faces_uv, faces, verts)
    B, H, W = verts.shape[0], camera.height, camera.width
    texture = _check_texture(texture, B, verts)
    raster = rasterize(verts, faces, camera, backend=backend)
    corner_uv = uv.to(verts.dtype)[faces_uv.long()[raster.face_id.clamp(min=0)]]   # (B, H, W, 3, 2)
    pix_uv = (raster.bary[..., None] * corner_uv).sum(-2)
    colour = sample_texture(texture, pix_uv)
    mask = raster.mask[:, None]
    image = torch.where(mask, colour, _background(background, B, texture.shape[1], H, W, texture))
    return image, mask


def procedural_texture(size: int | tuple[int, int] = 256, seed: int = 0, channels: int = 3,
                       octaves: int = 12, detail: float = 0.15, checker: int = 32,
                       dtype=torch.float32, device=None) -> Tensor:
    """A deterministic smooth-but-detailed colour texture (channels, H, W) in [0, 1].

    Each channel is a sum of ``octaves`` random plane waves of 1 to 8 cycles per texture (smooth
    shading with structure at many scales) plus a ``checker`` x ``checker`` checkerboard of
    amplitude ``detail`` (sharp edges that make misalignment visible). Periodic, so UV tiles join.
    """
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size}")
    if channels < 1 or octaves < 1 or checker < 1:
        raise ValueError("channels, octaves and checker must be >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    Ht, Wt = size
    y, x = torch.meshgrid((torch.arange(Ht, dtype=torch.float64) + 0.5) / Ht,
                          (torch.arange(Wt, dtype=torch.float64) + 0.5) / Wt, indexing="ij")
    # Integer frequencies keep the texture periodic on the unit square.
    freq = torch.randint(-8, 9, (channels, octaves, 2), generator=gen).to(torch.float64)
    freq[..., 0] += (freq.abs().sum(-1) == 0).to(torch.float64)      # no constant waves
    phase = torch.rand(channels, octaves, generator=gen, dtype=torch.float64) * 2 * math.pi
    amp = torch.rand(channels, octaves, generator=gen, dtype=torch.float64)
    amp = amp / freq.norm(dim=-1)                                   # fall off with frequency
    arg = 2 * math.pi * (freq[..., 0, None, None] * x + freq[..., 1, None, None] * y) + phase[..., None, None]
    waves = (amp[..., None, None] * torch.sin(arg)).sum(1)          # (C, H, W)
    waves = waves / waves.abs().amax((1, 2), keepdim=True).clamp(min=1e-12)
    cells = (torch.floor(x * checker) + torch.floor(y * checker)) % 2
    tex = 0.5 + 0.5 * (1 - detail) * waves + detail * (cells - 0.5)
    return tex.clamp(0, 1).to(dtype=dtype, device=device)
