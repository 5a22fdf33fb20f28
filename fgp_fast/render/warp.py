"""Learning-free warp renderer: re-pose a source portrait by backward-warping it along the 3D flow.

Head pixels: rasterise M_tgt; a pixel's surface point (triangle t, barycentrics b) corresponds to
p_src = sum_i b_i v_i^src on the source mesh (the surface field at offset 0); projecting p_src into
the source camera gives where to sample the source image. Off-head pixels: the head's 2D
displacement (source position - target position, in normalised image coordinates) is extended
outward by push-pull filling and faded to zero over ``falloff`` pixels of distance from the head,
so nearby background follows the head, far background stays, and there is no seam at the
silhouette. Head pixels whose p_src is hidden in the source view (disocclusions) are still warped
but reported in ``valid = False``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as Fnn
from torch import Tensor

from ..camera import Camera
from ..ops import rasterize
from ..ops.checks import check_camera, check_faces, check_verts
from ..ops.reference import Z_MIN
from .fill import distance_to_mask, pushpull_fill, smooth_falloff
from ..errors import InputError, InputTypeError

__all__ = ["WarpRenderer", "WarpResult", "warp_render"]

DEFAULT_FALLOFF = 0.15  # of the target image height


class WarpResult(NamedTuple):
    image: Tensor   # (B, C, H, W) the warped source image
    mask: Tensor    # (B, 1, H, W) bool, target head pixels
    valid: Tensor   # (B, 1, H, W) bool, head pixels whose source point is visible in the source
    grid: Tensor    # (B, H, W, 2) grid_sample grid into the source image (align_corners=False)


def _batch_of(name: str, size: int, batch: int) -> None:
    if size not in (1, batch):
        raise InputError(f"{name} has batch size {size}; expected 1 or {batch}")


def _check_image(image: Tensor, camera: Camera, device: torch.device) -> None:
    if not isinstance(image, Tensor):
        raise InputTypeError(f"source_image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 4 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"source_image must have shape (B, C, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InputTypeError(f"source_image must be floating point, got {image.dtype}")
    if image.device != device:
        raise InputError(f"source_image is on {image.device} but verts_src is on {device}")
    if tuple(image.shape[-2:]) != (camera.height, camera.width):
        raise InputError(f"source_image is {tuple(image.shape[-2:])} (H, W) but camera_src is "
                         f"{(camera.height, camera.width)}")


class WarpRenderer:
    """Warp one source portrait (batch 1 or B) to target meshes; see the module docstring.

    source_image (1|B, C, H, W) is framed by ``camera_src`` and shows the mesh ``verts_src``
    (1|B, V, 3). Output images are framed by ``camera_tgt`` (default: ``camera_src``).
    ``falloff``: pixels over which the background motion fades out (default 0.15 x target height;
    0 keeps the background still). ``depth_tol``: metres by which p_src may differ from the source's
    rasterised depth and still count as visible (default: two source pixel footprints at that
    depth, so slanted surfaces are not mistaken for occluded ones).
    """

    def __init__(self, source_image: Tensor, verts_src: Tensor, faces: Tensor, camera_src: Camera,
                 camera_tgt: Camera | None = None, falloff: float | None = None,
                 depth_tol: float | None = None, backend: str = "auto"):
        check_verts(verts_src, "verts_src")
        check_faces(faces, verts_src.shape[1], verts_src.device)
        if not isinstance(camera_src, Camera):
            raise InputTypeError(f"camera_src must be a fgp_fast.camera.Camera, got {type(camera_src).__name__}")
        camera_tgt = camera_src if camera_tgt is None else camera_tgt
        if not isinstance(camera_tgt, Camera):
            raise InputTypeError(f"camera_tgt must be a fgp_fast.camera.Camera, got {type(camera_tgt).__name__}")
        if camera_tgt.device != verts_src.device:
            raise InputError(f"camera_tgt is on {camera_tgt.device} but verts_src is on {verts_src.device}")
        _check_image(source_image, camera_src, verts_src.device)
        for name, value in (("falloff", falloff), ("depth_tol", depth_tol)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < float("inf")):
                raise InputError(f"{name} must be a finite number >= 0 or None, got {value!r}")
        batch = max(source_image.shape[0], verts_src.shape[0], camera_src.batch_size or 1)
        _batch_of("source_image", source_image.shape[0], batch)
        _batch_of("verts_src", verts_src.shape[0], batch)
        verts_src = verts_src.expand(batch, -1, -1)
        check_camera(camera_src, verts_src)

        self.source_image = source_image
        self.verts_src = verts_src
        self.faces = faces
        self.camera_src = camera_src.to(dtype=verts_src.dtype)
        self.camera_tgt = camera_tgt.to(dtype=verts_src.dtype)
        self.falloff = DEFAULT_FALLOFF * camera_tgt.height if falloff is None else float(falloff)
        self.depth_tol = depth_tol
        self.backend = backend
        # The source view's z-buffer decides which source points are visible.
        self.source_raster = rasterize(verts_src, faces, self.camera_src, backend=backend)

    @property
    def batch_size(self) -> int:
        return self.verts_src.shape[0]

    def _check_target(self, verts_tgt: Tensor) -> int:
        check_verts(verts_tgt, "verts_tgt")
        if verts_tgt.shape[1] != self.verts_src.shape[1]:
            raise InputError(f"verts_tgt has {verts_tgt.shape[1]} vertices, verts_src has {self.verts_src.shape[1]}")
        if verts_tgt.dtype != self.verts_src.dtype:
            raise InputTypeError(f"verts_tgt is {verts_tgt.dtype} but verts_src is {self.verts_src.dtype}")
        if verts_tgt.device != self.verts_src.device:
            raise InputError(f"verts_tgt is on {verts_tgt.device} but verts_src is on {self.verts_src.device}")
        B = verts_tgt.shape[0]
        if self.batch_size not in (1, B):
            raise InputError(f"verts_tgt has batch size {B} but the source has {self.batch_size}")
        check_camera(self.camera_tgt, verts_tgt)
        self.camera_src.expand(B)
        return B

    def _visible(self, uv: Tensor, z: Tensor, face_id: Tensor) -> Tensor:
        """Is the source point at pixel coordinates uv (B, H, W, 2), depth z the source's nearest hit?"""
        B = uv.shape[0]
        r = self.source_raster
        Hs, Ws = self.camera_src.height, self.camera_src.width
        ix, iy = torch.floor(uv[..., 0]).long(), torch.floor(uv[..., 1]).long()
        inside = (ix >= 0) & (ix < Ws) & (iy >= 0) & (iy < Hs) & (z > Z_MIN)
        flat = (iy.clamp(0, Hs - 1) * Ws + ix.clamp(0, Ws - 1)).reshape(B, -1)
        depth = r.depth.expand(B, -1, -1).reshape(B, -1).gather(1, flat).view_as(z)
        face = r.face_id.expand(B, -1, -1).reshape(B, -1).gather(1, flat).view_as(z)
        if self.depth_tol is None:
            K, _ = self.camera_src.expand(B)
            tol = 2 * z / K[:, 1, 1].view(B, 1, 1)
        else:
            tol = self.depth_tol
        return inside & (face >= 0) & ((face == face_id) | ((z - depth).abs() <= tol))

    def render(self, verts_tgt: Tensor) -> WarpResult:
        """Warp the source image to the target meshes verts_tgt (B, V, 3)."""
        B = self._check_target(verts_tgt)
        cam_s, cam_t = self.camera_src, self.camera_tgt
        H, W, Hs, Ws = cam_t.height, cam_t.width, cam_s.height, cam_s.width
        dt, dev = verts_tgt.dtype, verts_tgt.device

        raster = rasterize(verts_tgt, self.faces, cam_t, backend=self.backend)
        tri_src = self.verts_src.expand(B, -1, -1)[:, self.faces.long()]           # (B, F, 3, 3)
        face = raster.face_id.clamp(min=0)
        corners = tri_src[torch.arange(B, device=dev)[:, None, None], face]      # (B, H, W, 3, 3)
        p_src = (raster.bary[..., None] * corners).sum(-2)
        uv, z = cam_s.project(p_src)
        head = raster.mask & (z > Z_MIN)
        valid = head & self._visible(uv, z, raster.face_id)

        ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=dt), torch.arange(W, device=dev, dtype=dt),
                                indexing="ij")
        # Normalised coordinates (grid_sample, align_corners=False): x_n = 2 u / W - 1, pixel centres at +0.5.
        base = torch.stack([(2 * xs + 1) / W - 1, (2 * ys + 1) / H - 1], -1).expand(B, H, W, 2)
        scale = torch.tensor([2.0 / Ws, 2.0 / Hs], dtype=dt, device=dev)
        head_grid = torch.where(head[..., None], uv * scale - 1, base)
        disp = (head_grid - base).permute(0, 3, 1, 2)                              # (B, 2, H, W)
        extended = pushpull_fill(disp, head[:, None].to(dt))
        fade = smooth_falloff(distance_to_mask(head).to(dt), self.falloff)
        disp = torch.where(head[:, None], disp, extended * fade[:, None])
        grid = base + disp.permute(0, 2, 3, 1)

        image = self.source_image.expand(B, -1, -1, -1)
        out = Fnn.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border",
                              align_corners=False)
        return WarpResult(out, raster.mask[:, None], valid[:, None], grid)

    __call__ = render


def warp_render(source_image: Tensor, verts_src: Tensor, verts_tgt: Tensor, faces: Tensor, camera: Camera,
                camera_tgt: Camera | None = None, falloff: float | None = None,
                depth_tol: float | None = None, backend: str = "auto") -> WarpResult:
    """One-shot form of ``WarpRenderer(source_image, verts_src, faces, camera, ...).render(verts_tgt)``."""
    return WarpRenderer(source_image, verts_src, faces, camera, camera_tgt, falloff, depth_tol,
                        backend).render(verts_tgt)
