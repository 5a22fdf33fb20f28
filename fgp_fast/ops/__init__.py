"""3D-flow ops: validated public entry points that dispatch to a backend.

``backend="auto"`` (the default everywhere) picks the fastest backend available for the inputs'
device; the fused ones compute in float32 whatever the input dtype. ``backend="reference"`` is
the plain-PyTorch specification (exact in the input dtype, slow) that every fused backend is
tested against with the one contract checker in ``fgp_fast.ops.testing``. Every entry point
validates its inputs (``fgp_fast.ops.checks``) before dispatching, so all backends reject the
same inputs with the same errors, and all are safe to call from many threads.

| op | spec (``ops.reference``) | cpp | cuda | triton | tests |
| --- | --- | --- | --- | --- | --- |
| ``flow_encode`` | ``flow_encode`` | ``fgp.flow_encode`` | ``fgp.flow_encode`` | ``fgp_triton.flow_encode`` | test_ops_reference, test_native_cpu, test_native_cuda, test_triton, test_flow_encoder |
| ``FlowEncoder`` | ``flow_encode`` | ``fgp.flow_encode_out`` + BVH refit | ``fgp.flow_encode_out`` + BVH refit | Triton kernels + cluster refit | test_flow_encoder, test_native_cpu, test_native_cuda, test_triton |
| ``rasterize`` | ``rasterize`` | ``fgp.rasterize`` | ``fgp.rasterize`` | Triton z-buffer kernel | test_ops_reference, test_native_cpu, test_native_cuda, test_triton |
| ``surface_field`` | ``surface_field`` | ``fgp.surface_field`` (BVH) | ``fgp.surface_field`` (BVH) | - | test_ops_reference, test_native_cpu, test_native_cuda |
| ``native.MeshBVH`` | ``nearest_faces`` | ``fgp.bvh_build`` / ``fgp.bvh_refit`` | ``fgp.bvh_refit`` (built on the CPU) | - | test_native_cpu, test_native_cuda |

(``fgp.*`` are ``torch.ops.fgp.*``, ``fgp_triton.*`` are ``torch.ops.fgp_triton.*``.)

Where the code lives: ``reference.py`` (spec), ``checks.py`` (validation), ``backends.py``
(registry), ``native.py`` (cpp/cuda glue over ``csrc/``), ``triton.py`` (Triton glue over
``fgp_fast.kernels``, with ``triton_clusters.py``), ``encoder.py`` (``FlowEncoder``),
``flow_aux.py`` (sample points and ``FlowAux``), ``topology.py`` (a validated copy of faces),
``testing.py`` and ``scenes.py`` (the backend contract and its scenes).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..camera import Camera
from . import reference
from .backends import available_backends, backend_names, get_backend, register_backend
from .checks import check_camera, check_faces, check_flow_call, check_mesh_pair, check_points, check_verts
from .checks import resolve_near_far
from .encoder import FlowEncoder
from .flow_aux import FlowAux
from .reference import Raster, SurfaceField

__all__ = ["rasterize", "surface_field", "flow_encode", "FlowEncoder", "resolve_near_far", "Raster",
           "SurfaceField", "FlowAux", "available_backends", "backend_names", "register_backend"]

register_backend("reference", flow_encode=reference.flow_encode, available=lambda device: None,
                 priority=0, surface_field=reference.surface_field, rasterize=reference.rasterize)


def rasterize(verts: Tensor, faces: Tensor, camera: Camera, backend: str = "auto") -> Raster:
    """Nearest-hit rasterisation: depth, face_id (-1 off-mesh), barycentrics, mask."""
    check_verts(verts)
    check_faces(faces, verts.shape[1], verts.device)
    check_camera(camera, verts)
    return get_backend(backend, verts.device, "rasterize").rasterize(verts, faces, camera)


def surface_field(points: Tensor, verts_tgt: Tensor, verts_src: Tensor, faces: Tensor,
                  backend: str = "auto") -> SurfaceField:
    """Carry world points (B, P, 3) from the target mesh to the source mesh (DESIGN.md step 3)."""
    check_mesh_pair(verts_tgt, verts_src, faces)
    check_points(points, verts_tgt)
    impl = get_backend(backend, verts_tgt.device, "surface_field").surface_field
    return impl(points, verts_tgt, verts_src, faces)


def flow_encode(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, camera: Camera,
                n_samples: int = 20, delta: float = 0.01, near: float | None = None,
                far: float | None = None, sampling: str = "depth", backend: str = "auto",
                return_aux: bool = False, dtype: torch.dtype | None = None):
    """The 3D flow condition F (B, 3N, H, W), F[b, 3n+c, y, x] = n-th sample's flow, component c.

    Head pixels sample N depths within +-delta of the rendered target depth, other pixels (and all
    pixels with ``sampling="uniform"``) sample [near, far]; each sample is carried to the source
    mesh through the nearest target triangle and its displacement is expressed in the target
    camera frame. ``dtype`` picks the output dtype (default: the vertices'). With ``return_aux``
    it returns ``(flow, aux)``, aux a ``FlowAux`` (depth, face_id, mask, bary, points, p_src,
    sample_face_id, offset). For per-frame use on one topology, ``FlowEncoder`` keeps its state.
    """
    n_samples, delta, dtype = check_flow_call(verts_tgt, verts_src, faces, camera, n_samples, delta, near, far,
                                              sampling, dtype)
    impl = get_backend(backend, verts_tgt.device).flow_encode
    near_t, far_t = resolve_near_far(verts_tgt, camera, near, far)
    return impl(verts_tgt, verts_src, faces, camera, n_samples, delta, near_t, far_t, sampling,
                return_aux, dtype)
