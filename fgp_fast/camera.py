"""Pinhole camera in the project's conventions (DESIGN.md).

OpenCV camera frame (x right, y down, z forward), metres, ``K`` in pixels with pixel (u, v) centred
at (u + 0.5, v + 0.5), extrinsics as ``world_to_cam`` 4x4, depth = camera z.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from .errors import InputError, InputTypeError


def apply_rows(M: Tensor, p: Tensor) -> Tensor:
    """M p for 3x3 matrices M (broadcasting against p's leading dims) and points p (..., 3), summed
    as (M_i0 p_0 + M_i1 p_1) + M_i2 p_2 like the native kernels (csrc/flow_core.h). A matmul would
    leave the order and fused multiply-adds to the BLAS kernel the CPU picks, and a last-ulp
    difference in a vertex moves a sliver triangle's barycentrics by 1e-5 and more."""
    x, y, z = p[..., 0, None], p[..., 1, None], p[..., 2, None]
    return (M[..., 0] * x + M[..., 1] * y) + M[..., 2] * z


@dataclass
class Camera:
    """A pinhole camera; ``K`` is (3, 3) or (B, 3, 3), ``world_to_cam`` is (4, 4) or (B, 4, 4)."""

    K: Tensor
    world_to_cam: Tensor
    height: int
    width: int

    def __post_init__(self):
        if not isinstance(self.K, Tensor) or not isinstance(self.world_to_cam, Tensor):
            raise InputTypeError("Camera.K and Camera.world_to_cam must be torch tensors")
        if self.K.shape[-2:] != (3, 3) or self.K.dim() not in (2, 3):
            raise InputError(f"Camera.K must be (3, 3) or (B, 3, 3), got {tuple(self.K.shape)}")
        if self.world_to_cam.shape[-2:] != (4, 4) or self.world_to_cam.dim() not in (2, 3):
            raise InputError(
                f"Camera.world_to_cam must be (4, 4) or (B, 4, 4), got {tuple(self.world_to_cam.shape)}")
        if not self.K.is_floating_point() or not self.world_to_cam.is_floating_point():
            raise InputTypeError("Camera.K and Camera.world_to_cam must be floating point")
        if self.K.device != self.world_to_cam.device:
            raise InputError("Camera.K and Camera.world_to_cam are on different devices")
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"Camera.{name} must be a positive int, got {value!r}")
        if not (torch.isfinite(self.K).all() and torch.isfinite(self.world_to_cam).all()):
            raise InputError("Camera.K or Camera.world_to_cam holds NaN or Inf")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_fov(cls, fov_y_deg: float, height: int, width: int, world_to_cam: Tensor | None = None,
                 dtype=torch.float32, device=None) -> "Camera":
        """Square-pixel camera with the principal point at the image centre."""
        if not 0.0 < fov_y_deg < 180.0:
            raise InputError(f"fov_y_deg must be in (0, 180), got {fov_y_deg}")
        f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
        K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]],
                         dtype=dtype, device=device)
        if world_to_cam is None:
            world_to_cam = torch.eye(4, dtype=dtype, device=device)
        return cls(K, world_to_cam.to(dtype=dtype, device=device), height, width)

    @classmethod
    def frame_head(cls, verts: Tensor, height: int = 512, width: int | None = None,
                   fov_y_deg: float = 18.0, fill: float = 0.9, centre_y: float = 0.5) -> "Camera":
        """Frame a head the way a portrait photo is: frontal, head and neck ~``fill`` of the height.

        ``verts`` (V, 3) are in head-model space (metres, y up, z toward the viewer). The camera
        sits on the +z side looking down -z, like a portrait lens (``fov_y_deg`` ~ 85 mm on full
        frame); ``centre_y`` places the box centre that far down the image.
        """
        if verts.dim() == 3:
            verts = verts[0]
        if verts.dim() != 2 or verts.shape[-1] != 3 or verts.shape[0] == 0:
            raise InputError(f"frame_head needs verts of shape (V, 3) with V > 0, got {tuple(verts.shape)}")
        width = height if width is None else width
        v = verts.detach()
        lo, hi = v.amin(0), v.amax(0)
        centre = (lo + hi) / 2
        tan_half = math.tan(math.radians(fov_y_deg) / 2)
        R = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=v.dtype, device=v.device))
        # Start from the bounding box, then correct for perspective from the projected extent.
        eye = centre.clone()
        eye[2] = hi[2] + float(hi[1] - lo[1]) / (2 * fill * tan_half)
        for _ in range(4):
            pc = (v - eye) @ R.T                             # camera frame
            y_n = pc[:, 1] / pc[:, 2] / tan_half             # [-1, 1] over the image height
            x_n = pc[:, 0] / pc[:, 2] / tan_half
            dist = abs(float(centre[2] - eye[2]))
            scale = float(y_n.max() - y_n.min()) / (2 * fill)
            eye[2] = centre[2] + dist * scale
            # Centre horizontally; put the vertical middle ``centre_y`` of the way down.
            eye[0] = eye[0] + float(x_n.max() + x_n.min()) / 2 * tan_half * dist
            eye[1] = eye[1] - (float(y_n.max() + y_n.min()) / 2 - (2 * centre_y - 1)) * tan_half * dist
        w2c = torch.eye(4, dtype=v.dtype, device=v.device)
        w2c[:3, :3] = R
        w2c[:3, 3] = -R @ eye
        return cls.from_fov(fov_y_deg, height, width, w2c, dtype=v.dtype, device=v.device)

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int | None:
        """The camera's own batch size, or None for a camera shared by every batch element."""
        if self.K.dim() == 3:
            return self.K.shape[0]
        if self.world_to_cam.dim() == 3:
            return self.world_to_cam.shape[0]
        return None

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    def to(self, device=None, dtype=None) -> "Camera":
        return Camera(self.K.to(device=device, dtype=dtype),
                      self.world_to_cam.to(device=device, dtype=dtype), self.height, self.width)

    def expand(self, batch: int) -> tuple[Tensor, Tensor]:
        """(B, 3, 3) intrinsics and (B, 4, 4) extrinsics for a batch of ``batch``."""
        own = self.batch_size
        if own is not None and own != batch:
            raise InputError(f"camera has batch size {own} but the meshes have {batch}")
        K = self.K if self.K.dim() == 3 else self.K.expand(batch, 3, 3)
        w2c = self.world_to_cam if self.world_to_cam.dim() == 3 else self.world_to_cam.expand(batch, 4, 4)
        return K, w2c

    def cam_to_world(self) -> Tensor:
        R = self.world_to_cam[..., :3, :3]
        t = self.world_to_cam[..., :3, 3:]
        out = torch.zeros_like(self.world_to_cam)
        out[..., :3, :3] = R.transpose(-1, -2)
        out[..., :3, 3:] = -R.transpose(-1, -2) @ t
        out[..., 3, 3] = 1
        return out

    # ------------------------------------------------------------------ geometry
    def pixel_rays(self, batch: int = 1) -> Tensor:
        """Camera-frame ray directions K^-1 [u+1/2, v+1/2, 1] (so z = 1): (B, H, W, 3)."""
        K, _ = self.expand(batch)
        dev, dt = self.K.device, self.K.dtype
        v, u = torch.meshgrid(torch.arange(self.height, device=dev, dtype=dt) + 0.5,
                              torch.arange(self.width, device=dev, dtype=dt) + 0.5, indexing="ij")
        pix = torch.stack([u, v, torch.ones_like(u)], -1)  # (H, W, 3)
        return apply_rows(torch.linalg.inv(K)[:, None, None], pix)

    def world_to_camera(self, points: Tensor) -> Tensor:
        """(B, ..., 3) world points to the camera frame."""
        _, w2c = self.expand(points.shape[0])
        shape = points.shape
        p = points.reshape(shape[0], -1, 3)
        out = apply_rows(w2c[:, None, :3, :3], p) + w2c[:, None, :3, 3]
        return out.reshape(shape)

    def camera_to_world(self, points: Tensor) -> Tensor:
        """(B, ..., 3) camera-frame points to the world."""
        _, w2c = self.expand(points.shape[0])
        shape = points.shape
        p = points.reshape(shape[0], -1, 3) - w2c[:, None, :3, 3]
        return apply_rows(w2c[:, None, :3, :3].transpose(-1, -2), p).reshape(shape)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """World points (B, ..., 3) -> continuous pixel coordinates (B, ..., 2) and depth (B, ...).

        Pixel coordinates follow the centre convention: the centre of pixel (u, v) is (u+.5, v+.5).
        """
        K, _ = self.expand(points.shape[0])
        pc = self.world_to_camera(points)
        shape = pc.shape
        q = apply_rows(K[:, None], pc.reshape(shape[0], -1, 3))
        z = pc[..., 2]
        uv = q[..., :2] / q[..., 2:3]
        return uv.reshape(*shape[:-1], 2), z

    def unproject(self, uv: Tensor, depth: Tensor) -> Tensor:
        """Continuous pixel coordinates (B, ..., 2) and depth (B, ...) -> world points (B, ..., 3)."""
        K, _ = self.expand(uv.shape[0])
        shape = uv.shape
        pix = torch.cat([uv, torch.ones_like(uv[..., :1])], -1).reshape(shape[0], -1, 3)
        rays = apply_rows(torch.linalg.inv(K)[:, None], pix)
        pc = rays * depth.reshape(shape[0], -1, 1)
        return self.camera_to_world(pc.reshape(*shape[:-1], 3))
