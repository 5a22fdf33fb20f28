"""Learning-free warp renderer: re-pose a source portrait by backward-warping it along the head's motion.

The backward map (for every target pixel, the source pixel it samples) is a 2D control mesh over
the whole target image (``fgp_fast.render.meshwarp``): the projected head vertices visible in both
views, lip and eyelid contour points, and rings around the head's outline that carry hair, ears
and the nearby background along and fade to no motion ``falloff`` pixels out. The map is
continuous and fold-free across the silhouette (no tears), and the background beyond the
outermost ring is exactly unmoved. Where the target mouth opens beyond the source's, the inner
mouth is filled (the driver's, warped and colour-matched, or a shaded cavity; see
``fgp_fast.render.mouth``).

``WarpResult.mask`` and ``valid`` (the target's head pixels, and those whose surface point the
source shows) come from a full-resolution raster of the target mesh, computed only when read.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as Fnn
from torch import Tensor

from ..camera import Camera
from ..ops import rasterize
from ..ops.checks import check_camera, check_faces, check_verts
from ..ops.reference import Z_MIN
from .eyes import EyeFill
from .features import FaceFeatures, features_for
from .meshwarp import ControlMesh, rasterize_map
from .mouth import MouthFill, MouthSource
from ..errors import InputError, InputTypeError

__all__ = ["WarpRenderer", "WarpResult", "warp_render"]

DEFAULT_FALLOFF = 0.25   # of the target image height
HAIR = 0.3               # of the falloff: the zone beyond the head's outline that follows it fully
DEFAULT_SPACING = 1 / 96  # control point spacing, of the source image height
LOWRES = 4               # the target z-buffer for control point visibility is this much coarser
MAP_STEP = 2             # the mesh's displacement is rasterised this much coarser (from 256 px up)
MIN_FALLOFF_PX = 2.0     # falloff=0 keeps the background still outside the head mask; the rings need room


class WarpResult:
    """The warp's output; unpacks like the tuple ``(image, mask, valid, grid)``.

    image (B, C, H, W): the rendered frame. backward_map (B, H, W, 2): the source pixel (centres at
    +0.5) each target pixel samples; displacement: the same minus the still background's map (0 far
    from the head). filled (B, 1, H, W) float: how much of each pixel the mouth and eye fills
    painted. mask (B, 1, H, W) bool: target head pixels; valid: head pixels whose surface point is
    visible in the source; grid (B, H, W, 2): ``backward_map`` as a ``grid_sample`` grid
    (align_corners=False). backward_map, mask, valid and grid are computed on first access.
    """

    def __init__(self, image: Tensor, displacement: Tensor, base: Tensor, filled: Tensor,
                 source_size: tuple[int, int], surface):
        self.image = image
        self.displacement = displacement  # (B, H, W, 2): backward_map minus the still background's map
        self._still_map = base
        self._backward_map = None
        self.filled = filled
        self._source_size = source_size
        self._surface = surface
        self._mask_valid = None

    @property
    def backward_map(self) -> Tensor:
        if self._backward_map is None:
            self._backward_map = self._still_map + self.displacement
        return self._backward_map

    def _masks(self):
        if self._mask_valid is None:
            self._mask_valid = self._surface()
        return self._mask_valid

    @property
    def mask(self) -> Tensor:
        return self._masks()[0]

    @property
    def valid(self) -> Tensor:
        return self._masks()[1]

    @property
    def grid(self) -> Tensor:
        Hs, Ws = self._source_size
        m = self.backward_map
        scale = torch.tensor([2.0 / Ws, 2.0 / Hs], dtype=m.dtype, device=m.device)
        return m * scale - 1

    def __iter__(self):
        return iter((self.image, self.mask, self.valid, self.grid))

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return tuple(self)[i]


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


def _scaled(camera: Camera, factor: int) -> tuple[Camera, float]:
    """``camera`` at 1/factor of its resolution (at least 16 px a side) and the scale used."""
    h = max(16, -(-camera.height // factor))
    s = h / camera.height
    w = max(1, round(camera.width * s))
    K = camera.K.clone()
    K[..., :2, :] *= s
    return Camera(K, camera.world_to_cam, h, w), s


def _tick(timings: dict, stage: str, since: float) -> float:
    now = time.perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - since
    return now


def _cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


class WarpRenderer:
    """Warp one source portrait (batch 1 or B) to target meshes; see the module docstring.

    source_image (1|B, C, H, W) is framed by ``camera_src`` and shows the mesh ``verts_src``
    (1|B, V, 3). Output images are framed by ``camera_tgt`` (default: ``camera_src``).
    ``falloff``: pixels beyond the head's outline over which the motion of hair and background
    fades out (default 0.15 x target height; 0 keeps every pixel off the target head still, which
    tears at the silhouette). ``depth_tol``: metres by which a surface point may differ from the
    source's rasterised depth and still count as visible in ``WarpResult.valid`` (default: two
    source pixel footprints at that depth). ``features``: the head's lip and eyelid contours and
    interiors (``fgp_fast.render.features``); "auto" finds them for the bundled head, None treats
    the mesh as generic (no mouth fill, no special eye handling). ``spacing``: control point
    spacing in source pixels (default: the source height / 96).
    """

    def __init__(self, source_image: Tensor, verts_src: Tensor, faces: Tensor, camera_src: Camera,
                 camera_tgt: Camera | None = None, falloff: float | None = None,
                 depth_tol: float | None = None, backend: str = "auto", *,
                 features: FaceFeatures | str | None = "auto", spacing: float | None = None):
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
        for name, value in (("falloff", falloff), ("depth_tol", depth_tol), ("spacing", spacing)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < float("inf")):
                raise InputError(f"{name} must be a finite number >= 0 or None, got {value!r}")
        if spacing is not None and spacing <= 0:
            raise InputError(f"spacing must be > 0 pixels, got {spacing!r}")
        if features == "auto":
            features = features_for(faces)
        elif features is not None and not isinstance(features, FaceFeatures):
            raise InputTypeError(f"features must be a FaceFeatures, 'auto' or None, got {type(features).__name__}")
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
        self.features = features
        self.spacing = DEFAULT_SPACING * camera_src.height if spacing is None else float(spacing)
        # The source view's z-buffer decides which source points are visible.
        self.source_raster = rasterize(verts_src, faces, self.camera_src, backend=backend)
        # Ring widths in source pixels (the target's scaled by the focal lengths' ratio).
        K_s, _ = self.camera_src.expand(batch)
        K_t, _ = self.camera_tgt.expand(batch)
        self.meshes = []
        for b in range(batch):
            scale = float(K_s[b, 1, 1] / K_t[b, 1, 1])
            reach = max(self.falloff, MIN_FALLOFF_PX) * scale
            self.meshes.append(ControlMesh(verts_src[b], faces, self.camera_src, b, self.source_raster.depth[b],
                                           features, self.spacing, HAIR * reach, (1 - HAIR) * reach))
        self._lowres, self._lowres_scale = _scaled(self.camera_tgt, LOWRES)
        occluders = np.unique(np.concatenate([m.occluders for m in self.meshes]))
        self._occluders = faces[torch.as_tensor(occluders, device=faces.device)] if len(occluders) else faces
        self._base = self._still_map(verts_src.dtype)
        self._step = MAP_STEP if min(camera_tgt.height, camera_tgt.width) >= 256 else 1
        self._still = [m.still_region(self._base, self._step) for m in self.meshes]
        self._fills = []
        if features is not None:  # the source's mouth and eyes, for painting openings it does not show
            for b, m in enumerate(self.meshes):
                image = source_image[b if source_image.shape[0] > 1 else 0]
                c = m.contour_src
                self._fills.append((MouthFill(image, c[features.inner_lips], c[features.outer_lips]),
                                    EyeFill(image, (c[features.eyes[0]], c[features.eyes[1]]))))
        self._cv2 = _cv2() if source_image.device.type == "cpu" and source_image.dtype == torch.float32 else None
        if self._cv2 is not None:  # HWC float32 and the still map in cv2's convention, once
            self._hwc = [img.permute(1, 2, 0).contiguous().numpy() for img in source_image]
            self._base_cv = (self._base.float() - 0.5).numpy()

    @property
    def batch_size(self) -> int:
        return self.verts_src.shape[0]

    def _still_map(self, dtype) -> Tensor:
        """(H, W, 2) source pixel per target pixel for still background (same normalised position)."""
        H, W, Hs, Ws = self.camera_tgt.height, self.camera_tgt.width, self.camera_src.height, self.camera_src.width
        dev = self.verts_src.device
        ys = (torch.arange(H, device=dev, dtype=dtype) + 0.5) * (Hs / H)
        xs = (torch.arange(W, device=dev, dtype=dtype) + 0.5) * (Ws / W)
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)

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

    # ------------------------------------------------------------------------------ surface
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

    def surface(self, verts_tgt: Tensor) -> tuple[Tensor, Tensor]:
        """(mask, valid) (B, 1, H, W) bool: target head pixels, and those whose surface point the source shows."""
        B = verts_tgt.shape[0]
        raster = rasterize(verts_tgt, self.faces, self.camera_tgt, backend=self.backend)
        tri_src = self.verts_src.expand(B, -1, -1)[:, self.faces.long()]          # (B, F, 3, 3)
        face = raster.face_id.clamp(min=0)
        corners = tri_src[torch.arange(B, device=verts_tgt.device)[:, None, None], face]
        p_src = (raster.bary[..., None] * corners).sum(-2)
        uv, z = self.camera_src.project(p_src)
        head = raster.mask & (z > Z_MIN)
        return raster.mask[:, None], (head & self._visible(uv, z, raster.face_id))[:, None]

    # ------------------------------------------------------------------------------ render
    def backward_map(self, verts_tgt: Tensor) -> Tensor:
        """(B, H, W, 2) the source pixel (centres at +0.5) each target pixel samples."""
        return self._base + self._map(verts_tgt, self._check_target(verts_tgt), {})[1]

    def _map(self, verts_tgt: Tensor, B: int, timings: dict):
        clock = time.perf_counter()
        depth_lr = rasterize(verts_tgt, self._occluders, self._lowres, backend=self.backend).depth
        depth_lr = depth_lr.detach().cpu().double().numpy()
        clock = _tick(timings, "raster", clock)
        meshes, maps = [], []
        for b in range(B):
            k = b if self.batch_size > 1 else 0
            meshes.append(self.meshes[k].build(verts_tgt[b], self.camera_tgt, b, depth_lr[b], self._lowres_scale))
            clock = _tick(timings, "mesh", clock)
            maps.append(rasterize_map(meshes[-1], self._base, self.backend, self._still[k], self._step))
            clock = _tick(timings, "map", clock)
        out = torch.stack(maps)  # displacements from the still map
        if self.falloff == 0:
            mask, _ = self.surface(verts_tgt)
            out = out * mask[:, 0, ..., None]
            _tick(timings, "map", clock)
        return meshes, out

    def _sample(self, displacement: Tensor) -> Tensor:
        B = displacement.shape[0]
        if self._cv2 is not None:
            cv2 = self._cv2
            frames = []
            for b in range(B):
                src = self._hwc[b if len(self._hwc) > 1 else 0]
                xy = self._base_cv + displacement[b].float().numpy()  # cv2: pixel centres at integers
                out = cv2.remap(src, xy, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                frames.append(torch.from_numpy(out.reshape(*out.shape[:2], -1)).permute(2, 0, 1))
            return torch.stack(frames) if B > 1 else frames[0][None]
        image = self.source_image.expand(B, -1, -1, -1)
        Hs, Ws = self.camera_src.height, self.camera_src.width
        scale = torch.tensor([2.0 / Ws, 2.0 / Hs], dtype=displacement.dtype, device=displacement.device)
        grid = ((self._base + displacement) * scale - 1).to(image.dtype)
        return Fnn.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def render(self, verts_tgt: Tensor, mouth_source: MouthSource | list | None = None,
               timings: dict | None = None) -> WarpResult:
        """Warp the source image to the target meshes verts_tgt (B, V, 3).

        ``mouth_source``: a ``MouthSource`` (or one per batch element) to take the inner mouth from
        where the target opens it wider than the source (relative driving: the driver frame);
        without one, a shaded cavity. ``timings``: a dict to add each stage's seconds to (raster,
        mesh, map, remap, fill).
        """
        B = self._check_target(verts_tgt)
        timings = {} if timings is None else timings
        mouths = self._mouth_sources(mouth_source, B)
        meshes, disp = self._map(verts_tgt, B, timings)
        clock = time.perf_counter()
        image = self._sample(disp)
        clock = _tick(timings, "remap", clock)
        filled = torch.zeros(B, 1, *image.shape[-2:], dtype=image.dtype, device=image.device)
        if self._fills:
            K_s, _ = self.camera_src.expand(B)
            K_t, _ = self.camera_tgt.expand(B)
            f = self.features
            for b, mesh in enumerate(meshes):
                mouth, eyes = self._fills[b if self.batch_size > 1 else 0]
                c, scale = mesh.contours, float(K_t[b, 1, 1] / K_s[b, 1, 1])
                for cover in (mouth(image[b], c[f.inner_lips], c[f.outer_lips], scale, mouths[b]),
                              eyes(image[b], (c[f.eyes[0]], c[f.eyes[1]]), scale)):
                    if cover is not None:
                        torch.maximum(filled[b, 0], cover, out=filled[b, 0])
            _tick(timings, "fill", clock)
        size = (self.camera_src.height, self.camera_src.width)
        return WarpResult(image, disp, self._base, filled, size, lambda: self.surface(verts_tgt))

    @staticmethod
    def _mouth_sources(mouth_source, B: int) -> list:
        if mouth_source is None or isinstance(mouth_source, MouthSource):
            return [mouth_source] * B
        if isinstance(mouth_source, (list, tuple)) and len(mouth_source) == B and all(
                m is None or isinstance(m, MouthSource) for m in mouth_source):
            return list(mouth_source)
        raise InputTypeError(f"mouth_source must be a MouthSource, a list of {B} (or None), "
                             f"got {type(mouth_source).__name__}")

    __call__ = render


def warp_render(source_image: Tensor, verts_src: Tensor, verts_tgt: Tensor, faces: Tensor, camera: Camera,
                camera_tgt: Camera | None = None, falloff: float | None = None,
                depth_tol: float | None = None, backend: str = "auto") -> WarpResult:
    """One-shot form of ``WarpRenderer(source_image, verts_src, faces, camera, ...).render(verts_tgt)``."""
    return WarpRenderer(source_image, verts_src, faces, camera, camera_tgt, falloff, depth_tol,
                        backend).render(verts_tgt)
