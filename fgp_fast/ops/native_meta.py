"""Fake (meta) kernels of the ``torch.ops.fgp.*`` ops: the real kernels' metadata checks, then shapes.

``torch.compile`` and meta tensors run these instead of the C++ kernels. They raise where the real
kernels' TORCH_CHECKs raise on metadata (shape, dtype, device, contiguity: csrc/ops_common.h), so a
call with one argument on ``meta`` and the rest on the CPU is a RuntimeError, not uninitialised
memory on the CPU. The data checks (NaN, index ranges, BVH structure) need values and stay with
the real kernels.
"""
from __future__ import annotations

import torch
from torch import Tensor

MAX_SAMPLES, MAX_IMAGE, MAX_FACES = 256, 16384, 1 << 24   # csrc/ops_common.h
TRI_STRIDE = 32   # csrc/bvh.h kTriStride: a leaf-ordered triangle's vertices, face id and bound
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _fail(msg: str):
    raise RuntimeError(f"fgp: {msg}")


def _tensor(t, name: str, dtype: torch.dtype, dev: torch.device) -> None:
    if not isinstance(t, Tensor):
        _fail(f"{name} is undefined")
    if t.dtype != dtype:
        _fail(f"{name} must be {dtype}, got {t.dtype}")
    if t.device != dev:
        _fail(f"{name} is on {t.device} but expected {dev}")
    if not t.is_contiguous():
        _fail(f"{name} must be contiguous")


def _verts(v, name: str, dev: torch.device) -> tuple[int, int]:
    if not isinstance(v, Tensor) or v.dim() != 3 or v.shape[2] != 3:
        _fail(f"{name} must have shape (B, V, 3)")
    if v.shape[0] == 0 or v.shape[1] == 0:
        _fail(f"{name} has an empty batch or mesh")
    _tensor(v, name, torch.float32, dev)
    return v.shape[0], v.shape[1]


def _faces(f, dev: torch.device) -> int:
    if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[1] != 3:
        _fail("faces must have shape (F, 3)")
    if not 0 < f.shape[0] <= MAX_FACES:
        _fail(f"faces must hold 1 to {MAX_FACES} triangles, got {f.shape[0]}")
    _tensor(f, "faces", torch.int32, dev)
    return f.shape[0]


def _camera(K, w2c, B: int, dev: torch.device) -> None:
    if not isinstance(K, Tensor) or tuple(K.shape) != (B, 3, 3):
        _fail(f"K must have shape (B={B}, 3, 3)")
    if not isinstance(w2c, Tensor) or tuple(w2c.shape) != (B, 4, 4):
        _fail(f"world_to_cam must have shape (B={B}, 4, 4)")
    _tensor(K, "K", torch.float32, dev)
    _tensor(w2c, "world_to_cam", torch.float32, dev)


def _image(H: int, W: int) -> None:
    if not (1 <= H <= MAX_IMAGE and 1 <= W <= MAX_IMAGE):
        _fail(f"image size must be in [1, {MAX_IMAGE}], got {H}x{W}")


def _bvh(nodes, tris, B: int, F: int, dev: torch.device) -> None:
    if not isinstance(nodes, Tensor) or nodes.dim() != 3 or nodes.shape[0] != B or nodes.shape[1] < 1 \
            or nodes.shape[2] != 8:
        _fail(f"bvh nodes must have shape (B={B}, M, 8)")
    if not isinstance(tris, Tensor) or tuple(tris.shape) != (B, F, TRI_STRIDE):
        _fail(f"bvh tris must have shape (B={B}, F={F}, {TRI_STRIDE})")
    _tensor(nodes, "bvh nodes", torch.float32, dev)
    _tensor(tris, "bvh tris", torch.float32, dev)


def _mesh_pair(vt, vs) -> tuple[int, torch.device]:
    if not isinstance(vt, Tensor):
        _fail("verts_tgt is undefined")
    B, _ = _verts(vt, "verts_tgt", vt.device)
    _verts(vs, "verts_src", vt.device)
    if vs.shape != vt.shape:
        _fail("verts_src and verts_tgt differ in shape")
    return B, vt.device


def _flow(vt, vs, faces, K, w2c, near, far, nodes, tris, H, W, N, delta) -> int:
    B, dev = _mesh_pair(vt, vs)
    F = _faces(faces, dev)
    _camera(K, w2c, B, dev)
    for name, t in (("near", near), ("far", far)):
        if not isinstance(t, Tensor) or tuple(t.shape) != (B,):
            _fail(f"{name} must have shape (B={B},)")
        _tensor(t, name, torch.float32, dev)
    _image(H, W)
    if not 1 <= N <= MAX_SAMPLES:
        _fail(f"n_samples must be in [1, {MAX_SAMPLES}], got {N}")
    if not (delta > 0 and delta != float("inf")):
        _fail(f"delta must be finite and > 0, got {delta}")
    _bvh(nodes, tris, B, F, dev)
    return B


def register() -> None:
    """Register the fake kernels (once the extension defined the ops)."""

    @torch.library.register_fake("fgp::bvh_build")
    def _bvh_build_fake(verts, faces, leaf_size=4):
        if not isinstance(verts, Tensor) or verts.dim() != 2 or verts.shape[1] != 3 or verts.shape[0] == 0:
            _fail("bvh_build verts must be (V, 3) with V > 0")
        if verts.device.type not in ("cpu", "meta"):
            _fail("bvh_build runs on the CPU")
        _tensor(verts, "verts", torch.float32, verts.device)
        _faces(faces, verts.device)
        if not 1 <= leaf_size <= 16:
            _fail("leaf_size must be in [1, 16]")
        M = torch.library.get_ctx().new_dynamic_size()
        return faces.new_empty((M, 4), dtype=torch.int32), faces.new_empty((faces.shape[0],), dtype=torch.int32)

    @torch.library.register_fake("fgp::bvh_refit")
    def _bvh_refit_fake(verts, faces, topo, prim, nodes, tris, scratch, validate=True):
        dev = verts.device if isinstance(verts, Tensor) else torch.device("cpu")
        B, _ = _verts(verts, "verts", dev)
        F = _faces(faces, dev)
        if not isinstance(topo, Tensor) or topo.dim() != 2 or topo.shape[1] != 4 or not 1 <= topo.shape[0] < 2 * F:
            _fail("topo must have shape (M, 4) with 1 <= M < 2F")
        _tensor(topo, "topo", torch.int32, dev)
        if not isinstance(prim, Tensor) or tuple(prim.shape) != (F,):
            _fail(f"prim must have shape (F={F},)")
        _tensor(prim, "prim", torch.int32, dev)
        M = topo.shape[0]
        if not isinstance(nodes, Tensor) or tuple(nodes.shape) != (B, M, 8):
            _fail(f"nodes must have shape (B={B}, M={M}, 8)")
        _bvh(nodes, tris, B, F, dev)
        if not isinstance(scratch, Tensor) or tuple(scratch.shape) != (B, M):
            _fail(f"scratch must have shape (B={B}, M={M})")
        _tensor(scratch, "scratch", torch.int32, dev)
        return None

    @torch.library.register_fake("fgp::rasterize")
    def _rasterize_fake(verts, faces, K, world_to_cam, height, width, validate=True):
        if not isinstance(verts, Tensor):
            _fail("verts is undefined")
        B, _ = _verts(verts, "verts", verts.device)
        _faces(faces, verts.device)
        _camera(K, world_to_cam, B, verts.device)
        _image(height, width)
        return (verts.new_empty((B, height, width)), verts.new_empty((B, height, width), dtype=torch.int64),
                verts.new_empty((B, height, width, 3)), verts.new_empty((B, height, width), dtype=torch.bool))

    @torch.library.register_fake("fgp::surface_field")
    def _surface_field_fake(points, verts_tgt, verts_src, faces, nodes, tris, validate=True):
        B, dev = _mesh_pair(verts_tgt, verts_src)
        if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[0] != B or points.shape[2] != 3:
            _fail(f"points must have shape (B={B}, P, 3)")
        _tensor(points, "points", torch.float32, dev)
        _bvh(nodes, tris, B, _faces(faces, dev), dev)
        P = points.shape[1]
        return (points.new_empty((B, P, 3)), points.new_empty((B, P), dtype=torch.int64),
                points.new_empty((B, P, 3)), points.new_empty((B, P)))

    @torch.library.register_fake("fgp::flow_encode_out")
    def _flow_encode_out_fake(verts_tgt, verts_src, faces, K, world_to_cam, near, far, nodes, tris, n_samples,
                              delta, uniform, zbuf, out, validate=True):
        H, W = (out.shape[2], out.shape[3]) if isinstance(out, Tensor) and out.dim() == 4 else (0, 0)
        B = _flow(verts_tgt, verts_src, faces, K, world_to_cam, near, far, nodes, tris, H, W, n_samples, delta)
        dev = verts_tgt.device
        if tuple(out.shape) != (B, 3 * n_samples, H, W):
            _fail(f"out must have shape (B={B}, 3N={3 * n_samples}, H, W)")
        if out.device != dev:
            _fail(f"out is on {out.device} but expected {dev}")
        if not out.is_contiguous():
            _fail("out must be contiguous")
        if out.dtype not in OUT_DTYPES:
            _fail(f"flow output dtype must be float32, float16, bfloat16 or float64, got {out.dtype}")
        if not isinstance(zbuf, Tensor) or tuple(zbuf.shape) != (B, H, W):
            _fail("zbuf must have shape (B, H, W)")
        _tensor(zbuf, "zbuf", torch.int64, dev)
        return None

    @torch.library.register_fake("fgp::flow_encode")
    def _flow_encode_fake(verts_tgt, verts_src, faces, K, world_to_cam, near, far, nodes, tris, height, width,
                          n_samples, delta, uniform, dtype, validate=True):
        B = _flow(verts_tgt, verts_src, faces, K, world_to_cam, near, far, nodes, tris, height, width, n_samples,
                  delta)
        if dtype not in OUT_DTYPES:
            _fail(f"flow output dtype must be float32, float16, bfloat16 or float64, got {dtype}")
        return verts_tgt.new_empty((B, 3 * n_samples, height, width), dtype=dtype)
