"""3D-flow ops: validated public entry points that dispatch to a backend.

``backend="reference"`` is the plain-PyTorch specification; fused backends ("cpp", "cuda",
"triton") register in ``fgp_fast.ops.backends`` and must match it. ``"auto"`` picks the fastest
available one for the inputs' device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..camera import Camera
from . import reference
from .backends import available_backends, backend_names, get_backend, register_backend
from .checks import check_camera, check_flow_args, check_mesh_pair, check_points, check_verts, check_faces
from .reference import Raster, SurfaceField
from ..errors import InputError

__all__ = ["rasterize", "surface_field", "flow_encode", "resolve_near_far", "Raster", "SurfaceField",
           "available_backends", "backend_names", "register_backend"]

register_backend("reference", flow_encode=reference.flow_encode, available=lambda device: None,
                 priority=0, surface_field=reference.surface_field, rasterize=reference.rasterize)


def rasterize(verts: Tensor, faces: Tensor, camera: Camera, backend: str = "reference") -> Raster:
    """Nearest-hit rasterisation: depth, face_id (-1 off-mesh), barycentrics, mask."""
    check_verts(verts)
    check_faces(faces, verts.shape[1], verts.device)
    check_camera(camera, verts)
    return get_backend(backend, verts.device, "rasterize").rasterize(verts, faces, camera)


def surface_field(points: Tensor, verts_tgt: Tensor, verts_src: Tensor, faces: Tensor,
                  backend: str = "reference") -> SurfaceField:
    """Carry world points (B, P, 3) from the target mesh to the source mesh (DESIGN.md step 3)."""
    check_mesh_pair(verts_tgt, verts_src, faces)
    check_points(points, verts_tgt)
    impl = get_backend(backend, verts_tgt.device, "surface_field").surface_field
    return impl(points, verts_tgt, verts_src, faces)


def resolve_near_far(verts_tgt: Tensor, camera: Camera, near, far) -> tuple[Tensor, Tensor]:
    """(B,) background depth ranges: the given numbers, or the target mesh's camera-depth range."""
    B = verts_tgt.shape[0]
    if near is not None:
        return (torch.full((B,), near, dtype=verts_tgt.dtype, device=verts_tgt.device),
                torch.full((B,), far, dtype=verts_tgt.dtype, device=verts_tgt.device))
    z = camera.to(dtype=verts_tgt.dtype).world_to_camera(verts_tgt)[..., 2]
    near_t, far_t = z.amin(1), z.amax(1)
    if (near_t <= 0).any():
        raise InputError("the target mesh is not wholly in front of the camera (a vertex has depth "
                         "<= 0), so no default [near, far] exists; pass near= and far=")
    return near_t, far_t


def flow_encode(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, camera: Camera,
                n_samples: int = 20, delta: float = 0.01, near: float | None = None,
                far: float | None = None, sampling: str = "depth", backend: str = "reference",
                return_aux: bool = False, dtype: torch.dtype | None = None):
    """The 3D flow condition F (B, 3N, H, W), F[b, 3n+c, y, x] = n-th sample's flow, component c.

    Head pixels sample N depths within +-delta of the rendered target depth, other pixels (and all
    pixels with ``sampling="uniform"``) sample [near, far]; each sample is carried to the source
    mesh through the nearest target triangle and its displacement is expressed in the target
    camera frame. ``dtype`` picks the output dtype (default: the vertices'). With ``return_aux``
    it returns ``(flow, aux)`` where aux holds depth, face_id, mask, bary, points, p_src,
    sample_face_id and offset.
    """
    check_mesh_pair(verts_tgt, verts_src, faces)
    check_camera(camera, verts_tgt)
    n_samples, delta = check_flow_args(n_samples, delta, near, far, sampling, dtype)
    impl = get_backend(backend, verts_tgt.device).flow_encode
    near_t, far_t = resolve_near_far(verts_tgt, camera, near, far)
    return impl(verts_tgt, verts_src, faces, camera, n_samples, delta, near_t, far_t, sampling,
                return_aux, dtype)
