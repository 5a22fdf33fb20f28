"""Textured mesh rendering on top of ``fgp_fast.ops.rasterize``, for synthetic portraits, and baking
a photo into a texture (:func:`bake_texture`).

UV convention (OBJ / ICT-FaceKit): u runs left to right across the texture, v runs bottom to top,
so v = 0 is the texture's last row. Coordinates outside [0, 1) repeat (UV tiles share one
texture: ICT places the face in u in [0, 1) and head, neck and sockets in [1, 2)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as Fnn
from torch import Tensor

from ..camera import Camera
from ..ops import rasterize
from ..ops.checks import check_camera, check_faces, check_verts
from ..errors import InputError, InputTypeError

__all__ = ["BakedTexture", "bake_texture", "render_textured", "procedural_texture", "sample_texture"]


def _check_texture(texture: Tensor, batch: int, verts: Tensor) -> Tensor:
    if not isinstance(texture, Tensor):
        raise InputTypeError(f"texture must be a torch.Tensor, got {type(texture).__name__}")
    if texture.dim() == 3:
        texture = texture[None]
    if texture.dim() != 4 or texture.shape[0] not in (1, batch) or min(texture.shape[1:]) < 1:
        raise InputError(f"texture must be (C, Ht, Wt) or (1|B={batch}, C, Ht, Wt), got {tuple(texture.shape)}")
    if not texture.is_floating_point():
        raise InputTypeError(f"texture must be floating point, got {texture.dtype}")
    if texture.device != verts.device:
        raise InputError(f"texture is on {texture.device} but the vertices are on {verts.device}")
    return texture.expand(batch, -1, -1, -1)


def _check_uv(uv: Tensor, faces_uv: Tensor, faces: Tensor, verts: Tensor) -> None:
    if not isinstance(uv, Tensor) or not isinstance(faces_uv, Tensor):
        raise InputTypeError("uv and faces_uv must be torch tensors")
    if uv.dim() != 2 or uv.shape[1] != 2 or uv.shape[0] == 0:
        raise InputError(f"uv must have shape (T, 2) with T > 0, got {tuple(uv.shape)}")
    if not uv.is_floating_point():
        raise InputTypeError(f"uv must be floating point, got {uv.dtype}")
    if uv.device != verts.device:
        raise InputError(f"uv is on {uv.device} but the vertices are on {verts.device}")
    if faces_uv.shape != faces.shape:
        raise InputError(f"faces_uv must match faces' shape {tuple(faces.shape)}, got {tuple(faces_uv.shape)}")
    if faces_uv.dtype not in (torch.int32, torch.int64):
        raise InputTypeError(f"faces_uv must be int32 or int64, got {faces_uv.dtype}")
    if faces_uv.device != verts.device:
        raise InputError(f"faces_uv is on {faces_uv.device} but the vertices are on {verts.device}")
    lo, hi = int(faces_uv.min()), int(faces_uv.max())
    if lo < 0 or hi >= uv.shape[0]:
        raise InputError(f"faces_uv index UVs in [{lo}, {hi}] but uv has {uv.shape[0]} rows")


def _background(background, B: int, C: int, H: int, W: int, like: Tensor) -> Tensor:
    if isinstance(background, (int, float)) and not isinstance(background, bool):
        return torch.full((B, C, H, W), float(background), dtype=like.dtype, device=like.device)
    if not isinstance(background, Tensor):
        raise InputTypeError(f"background must be a number or a tensor, got {type(background).__name__}")
    try:
        return background.to(dtype=like.dtype, device=like.device).expand(B, C, H, W)
    except RuntimeError:
        raise InputError(f"background {tuple(background.shape)} does not broadcast to "
                         f"(B, C, H, W) = {(B, C, H, W)}") from None


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of texture (B, C, Ht, Wt) at UVs (B, H, W, 2) -> (B, C, H, W); UVs repeat."""
    uv = uv - torch.floor(uv)
    # grid_sample's y = -1 is the first (top) row; UV v = 0 is the bottom row.
    grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], -1).to(texture.dtype)
    return Fnn.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)


def render_textured(verts: Tensor, faces: Tensor, faces_uv: Tensor, uv: Tensor, texture: Tensor,
                    camera: Camera, background=0.0, backend: str = "auto") -> tuple[Tensor, Tensor]:
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
        raise InputError(f"size must be a positive int or (H, W), got {size}")
    if channels < 1 or octaves < 1 or checker < 1:
        raise InputError("channels, octaves and checker must be >= 1")
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


@dataclass
class BakedTexture:
    """A texture atlas with one square chart per UV chart, side by side, and the UVs that address it:
    ``render_textured(verts, faces, b.faces_uv, b.uv, b.texture, camera)``."""

    texture: Tensor    # (C, size, charts * size) in the image's range
    uv: Tensor         # (3F, 2): one UV per face corner, into the atlas
    faces_uv: Tensor   # (F, 3) long
    valid: Tensor      # (size, charts * size) bool: texels seen in the image; the rest is filled in


def bake_texture(verts: Tensor, faces: Tensor, faces_uv: Tensor, uv: Tensor, image: Tensor, camera: Camera,
                 size: int = 256, charts: Tensor | None = None, depth_tolerance: float = 0.001,
                 backend: str = "auto") -> BakedTexture:
    """Project an image onto a mesh posed as in that image: each texel gets the colour of the pixel
    where its surface point is seen.

    verts (V, 3) or (1, V, 3); image (C, H, W) or (1, C, H, W) seen by ``camera``. ``charts`` (F,)
    ints put faces whose UVs overlap into separate atlas charts (ICT's eyeballs reuse the face's
    UV square); by default each UV tile (floor of u and v) is a chart. A texel is seen when its
    point lies within ``depth_tolerance`` (metres) of the depth rendered at its pixel (so a layer
    closer than that behind the visible surface counts as seen too, like ICT's two eyeball
    layers); the others (occluded, off-image, between UV islands) are filled smoothly from the
    seen ones.
    """
    from .fill import pushpull_fill

    verts = verts[None] if verts.dim() == 2 else verts
    check_verts(verts)
    if verts.shape[0] != 1:
        raise InputError(f"bake_texture takes one mesh, got a batch of {verts.shape[0]}")
    check_faces(faces, verts.shape[1], verts.device)
    check_camera(camera, verts)
    _check_uv(uv, faces_uv, faces, verts)
    image = image[0] if image.dim() == 4 and image.shape[0] == 1 else image
    if not isinstance(image, Tensor) or image.dim() != 3 or not image.is_floating_point():
        raise InputError(f"image must be a float (C, H, W) tensor, got {getattr(image, 'shape', type(image))}")
    if tuple(image.shape[1:]) != (camera.height, camera.width):
        raise InputError(f"image is {tuple(image.shape[1:])} but the camera is {(camera.height, camera.width)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise InputError(f"size must be an int >= 2, got {size!r}")
    F, dev, dt = faces.shape[0], verts.device, verts.dtype
    corner = uv.to(dt)[faces_uv.long()]                                         # (F, 3, 2)
    tile = torch.floor(corner.mean(1))                                           # (F, 2)
    if charts is None:
        charts = tile[:, 0] * 4096 + tile[:, 1]
    elif not isinstance(charts, Tensor) or charts.shape != (F,):
        raise InputError(f"charts must be a tensor of shape ({F},)")
    _, chart = torch.unique(charts.to(dev), return_inverse=True)
    n = int(chart.max()) + 1
    local = corner - tile[:, None]                                               # the face's tile -> [0, 1)
    atlas = torch.stack([(local[..., 0] + chart[:, None]) / n, local[..., 1]], -1).reshape(3 * F, 2)

    # Rasterise the UV layout: points z (u, 1 - v, 1) through K = diag(n size, size, 1) land on texel
    # centres. z is the face's depth in the image, so where UVs overlap (ICT's eyeball UVs fold the
    # back onto the front) the texel goes to the face nearer the camera, the one that can be seen.
    z = camera.world_to_camera(verts)[0, :, 2][faces.long()].mean(1).repeat_interleave(3)
    if not bool((z > 0).all()):
        raise InputError("bake_texture needs the whole mesh in front of the camera")
    flat = torch.stack([atlas[:, 0], 1 - atlas[:, 1], torch.ones_like(atlas[:, 0])], -1) * z[:, None]
    K = torch.tensor([[n * size, 0.0, 0.0], [0.0, size, 0.0], [0.0, 0.0, 1.0]], dtype=dt, device=dev)
    corners = torch.arange(3 * F, device=dev).view(F, 3)
    texels = rasterize(flat[None], corners, Camera(K, torch.eye(4, dtype=dt, device=dev), size, n * size),
                       backend=backend)
    fid = texels.face_id[0].clamp(min=0)                                         # (size, n size)
    points = (texels.bary[0][..., None] * verts[0][faces.long()[fid]]).sum(-2)   # (size, n size, 3)

    pix, depth = camera.project(points.reshape(1, -1, 3))
    H, W = camera.height, camera.width
    grid = torch.stack([2 * pix[0, :, 0] / W - 1, 2 * pix[0, :, 1] / H - 1], -1).view(1, size, n * size, 2)
    # The rendered depth interpolated at the point's projection: exact on smooth surfaces, so the
    # tolerance can be small (eyeballs sit millimetres behind the lids); off-mesh and off-image
    # pixels read 0, so points at silhouettes count as unseen.
    rendered = rasterize(verts, faces, camera, backend=backend).depth[:, None]
    front = Fnn.grid_sample(rendered, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = texels.mask[0] & (depth[0].view(size, n * size) <= front[0, 0] + depth_tolerance)
    colour = Fnn.grid_sample(image[None].to(dt), grid, mode="bilinear", padding_mode="border", align_corners=False)
    texture = pushpull_fill(colour, valid[None, None].to(dt))[0]
    return BakedTexture(texture.to(image.dtype), atlas, corners, valid)
