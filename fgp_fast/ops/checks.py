"""Input validation shared by every backend: bad input fails here, in Python, before any kernel.

Two kinds of check: metadata (types, shapes, dtypes, devices: host-only, always run) and data
(NaN/Inf, magnitudes, index ranges, singular cameras: each reads tensor values, which syncs a GPU).
``data=False`` skips the second kind, for callers that validated the data already or capture a
CUDA graph. ``check_flow_call`` is the one path ``ops.flow_encode`` and ``ops.FlowEncoder`` share.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..camera import Camera
from ..errors import InputError, InputTypeError

MAX_SAMPLES = 256  # 3N output channels; past this the map is no longer a sensible condition
FLOAT_DTYPES = (torch.float32, torch.float64)
OUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SAMPLING_MODES = ("depth", "uniform")
# Largest |coordinate| (metres) and |near|/|far| accepted: the fused backends compute in float32, and
# their products of four coordinates (plane equations, squared areas) must stay finite.
MAX_COORD = 1e6
MAX_INTRINSIC = 1e8   # largest |K| entry (pixels)
ORTHO_TOL = 1e-4      # |R R^T - I| allowed for world_to_cam's rotation


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_verts(verts: Tensor, name: str = "verts", data: bool = True) -> None:
    if not isinstance(verts, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(verts).__name__}")
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise InputError(f"{name} must have shape (B, V, 3), got {_shape(verts)}")
    if verts.shape[0] == 0:
        raise InputError(f"{name} has an empty batch (B = 0)")
    if verts.shape[1] == 0:
        raise InputError(f"{name} is an empty mesh (V = 0)")
    if verts.dtype not in FLOAT_DTYPES:
        raise InputTypeError(f"{name} must be float32 or float64, got {verts.dtype}")
    if data:
        _check_magnitude(verts, name, MAX_COORD)


def _check_magnitude(t: Tensor, name: str, limit: float) -> None:
    """One read of max |t|: NaN/Inf and values past ``limit`` both fail (NaN propagates through amax)."""
    if t.numel() == 0 or t.device.type == "meta":
        return
    biggest = float(t.detach().abs().amax())
    if not math.isfinite(biggest):
        raise InputError(f"{name} holds NaN or Inf")
    if biggest > limit:
        raise InputError(f"{name} holds values up to {biggest:.3g}; |{name}| must be <= {limit:g} "
                         "(larger ones overflow the float32 arithmetic of the fused backends)")


def check_faces(faces: Tensor, num_vertices: int, device: torch.device, data: bool = True) -> None:
    check_faces_tensor(faces)
    if faces.device != device:
        raise InputError(f"faces is on {faces.device} but the vertices are on {device}")
    if data and faces.device.type != "meta":
        lo, hi = (int(x) for x in torch.aminmax(faces))
        check_face_range(lo, hi, num_vertices)


def check_face_range(lo: int, hi: int, num_vertices: int) -> None:
    if lo < 0 or hi >= num_vertices:
        raise InputError(f"faces index vertices in [{lo}, {hi}] but the mesh has {num_vertices} vertices")


def check_faces_tensor(faces: Tensor) -> None:
    """Type, shape and dtype of faces (F, 3) (not their values: see check_faces)."""
    if not isinstance(faces, Tensor):
        raise InputTypeError(f"faces must be a torch.Tensor, got {type(faces).__name__}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise InputError(f"faces must have shape (F, 3), got {_shape(faces)}")
    if faces.shape[0] == 0:
        raise InputError("faces is empty (F = 0): the mesh has no triangles")
    if faces.dtype not in (torch.int32, torch.int64):
        raise InputTypeError(f"faces must be int32 or int64, got {faces.dtype}")
    if faces.shape[0] >= 2 ** 31:
        raise InputError(f"faces has {faces.shape[0]} triangles; at most 2**31 - 1 are supported")


def check_mesh_pair(verts_tgt: Tensor, verts_src: Tensor, faces, data: bool = True) -> None:
    """Target and source meshes share topology, batch, dtype and device. ``faces`` is a tensor or a
    ``Topology`` (validated once, so only its vertex count and device are checked here)."""
    check_verts(verts_tgt, "verts_tgt", data)
    check_verts(verts_src, "verts_src", data)
    if verts_tgt.shape != verts_src.shape:
        raise InputError(f"verts_tgt {_shape(verts_tgt)} and verts_src {_shape(verts_src)} differ in shape")
    if verts_tgt.dtype != verts_src.dtype:
        raise InputTypeError(f"verts_tgt is {verts_tgt.dtype} but verts_src is {verts_src.dtype}")
    if verts_tgt.device != verts_src.device:
        raise InputError(f"verts_tgt is on {verts_tgt.device} but verts_src is on {verts_src.device}")
    if isinstance(faces, Tensor) or not hasattr(faces, "check_mesh"):
        check_faces(faces, verts_tgt.shape[1], verts_tgt.device, data)
    else:
        faces.check_mesh(verts_tgt.shape[1], verts_tgt.device)


def check_points(points: Tensor, verts: Tensor, data: bool = True) -> None:
    if not isinstance(points, Tensor):
        raise InputTypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != verts.shape[0]:
        raise InputError(f"points must have shape (B={verts.shape[0]}, P, 3), got {_shape(points)}")
    if points.dtype not in FLOAT_DTYPES:
        raise InputTypeError(f"points must be float32 or float64, got {points.dtype}")
    if points.dtype != verts.dtype:
        raise InputTypeError(f"points are {points.dtype} but the vertices are {verts.dtype}")
    if points.device != verts.device:
        raise InputError(f"points are on {points.device} but the vertices are on {verts.device}")
    if data:
        _check_magnitude(points, "points", MAX_COORD)


def check_camera(camera: Camera, verts: Tensor, data: bool = True) -> None:
    if not isinstance(camera, Camera):
        raise InputTypeError(f"camera must be a fgp_fast.camera.Camera, got {type(camera).__name__}")
    if camera.device != verts.device:
        raise InputError(f"camera is on {camera.device} but the vertices are on {verts.device}")
    camera.expand(verts.shape[0])  # raises on a batch mismatch
    if data and camera.device.type != "meta":
        check_camera_values(camera.K, camera.world_to_cam)


def check_camera_values(K: Tensor, world_to_cam: Tensor) -> None:
    """A pinhole K (last row [0, 0, 1], invertible, bounded) and a rigid, bounded world_to_cam."""
    K, w2c = K.detach().double(), world_to_cam.detach().double()
    _check_magnitude(K, "K", MAX_INTRINSIC)
    _check_magnitude(w2c[..., :3, 3], "world_to_cam's translation", MAX_COORD)
    last = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype, device=K.device)
    if not bool((K[..., 2, :] == last).all()):
        raise InputError("K must be a pinhole matrix with last row [0, 0, 1]")
    top = K[..., :2, :2]
    det = top[..., 0, 0] * top[..., 1, 1] - top[..., 0, 1] * top[..., 1, 0]
    scale = top.abs().amax((-1, -2))
    if not bool((det.abs() > 1e-9 * scale * scale).all()):
        raise InputError("K is singular (zero or degenerate focal lengths): no pixel rays exist")
    R = w2c[..., :3, :3]
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    err = float((R @ R.transpose(-1, -2) - eye).abs().amax())
    if not err <= ORTHO_TOL:
        raise InputError(f"world_to_cam's rotation is not orthonormal (|R R^T - I| = {err:.3g}); "
                         "the camera must be rigid")


def _positive_float(value, name: str, limit: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a finite number > 0, got {value}")
    if value > limit:
        raise InputError(f"{name} must be <= {limit:g}, got {value:g}")
    return value


def check_flow_args(n_samples, delta, near, far, sampling, dtype) -> tuple[int, float]:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int):
        raise InputTypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
    if not 1 <= n_samples <= MAX_SAMPLES:
        raise InputError(f"n_samples must be in [1, {MAX_SAMPLES}], got {n_samples}")
    delta = _positive_float(delta, "delta", MAX_COORD)
    if (near is None) != (far is None):
        raise InputError("give both near and far, or neither (then they come from the target mesh)")
    if near is not None:
        near, far = _positive_float(near, "near", MAX_COORD), _positive_float(far, "far", MAX_COORD)
        if not near < far:
            raise InputError(f"near must be < far, got near={near}, far={far}")
    if sampling not in SAMPLING_MODES:
        raise InputError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if dtype is not None and dtype not in OUT_DTYPES:
        raise InputTypeError(f"dtype must be one of {OUT_DTYPES}, got {dtype}")
    return n_samples, delta


def flow_dtype(dtype: torch.dtype | None, verts: Tensor, out: Tensor | None = None) -> torch.dtype:
    """The one output-dtype rule: ``dtype`` if given, else ``out``'s, else the vertices'; a given
    ``dtype`` and ``out`` must agree."""
    if out is None:
        return dtype or verts.dtype
    if not isinstance(out, Tensor):
        raise InputTypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype not in OUT_DTYPES:
        raise InputTypeError(f"out must be one of {OUT_DTYPES}, got {out.dtype}")
    if dtype is not None and out.dtype != dtype:
        raise InputTypeError(f"dtype={dtype} but out is {out.dtype}")
    return out.dtype


def check_out(out: Tensor, shape: tuple, device: torch.device) -> None:
    if tuple(out.shape) != tuple(shape):
        raise InputError(f"out must have shape {tuple(shape)}, got {_shape(out)}")
    if out.device != device:
        raise InputError(f"out is on {out.device} but the vertices are on {device}")
    if not out.is_contiguous():
        raise InputError("out must be contiguous")


def check_flow_call(verts_tgt: Tensor, verts_src: Tensor, faces, camera: Camera, n_samples, delta, near, far,
                    sampling, dtype, out: Tensor | None = None, data: bool = True) -> tuple[int, float, torch.dtype]:
    """Every check of a flow-encode call (``ops.flow_encode`` and ``ops.FlowEncoder`` alike).

    Returns (n_samples, delta, output dtype). ``faces`` is a tensor or a validated ``Topology``.
    """
    check_mesh_pair(verts_tgt, verts_src, faces, data)
    check_camera(camera, verts_tgt, data)
    n_samples, delta = check_flow_args(n_samples, delta, near, far, sampling, dtype)
    dtype = flow_dtype(dtype, verts_tgt, out)
    if out is not None:
        check_out(out, (verts_tgt.shape[0], 3 * n_samples, camera.height, camera.width), verts_tgt.device)
    return n_samples, delta, dtype


def resolve_near_far(verts_tgt: Tensor, camera: Camera, near, far, out: tuple[Tensor, Tensor] | None = None,
                     scratch: Tensor | None = None, data: bool = True) -> tuple[Tensor, Tensor]:
    """(B,) background depth ranges in the vertices' dtype: the given numbers, or the target mesh's
    camera-depth range (which must be in front of the camera).

    With ``out`` (two (B,) tensors) and ``scratch`` ((B, V, 1), the vertices' dtype) nothing is
    allocated and nothing is copied from the host: numbers are written by ``fill_``. ``data=False``
    skips the in-front check, which reads the result back.
    """
    B, dt, dev = verts_tgt.shape[0], verts_tgt.dtype, verts_tgt.device
    near_t, far_t = out if out is not None else (torch.empty(B, dtype=dt, device=dev),
                                                 torch.empty(B, dtype=dt, device=dev))
    if near is not None:
        near_t.fill_(near)
        far_t.fill_(far)
        return near_t, far_t
    _, w2c = camera.expand(B)
    if w2c.dtype != dt:
        w2c = w2c.to(dt)
    if scratch is None:
        scratch = torch.empty(B, verts_tgt.shape[1], 1, dtype=dt, device=dev)
    # z = v . R[2] + t[2] for every vertex, in one batched GEMV.
    torch.baddbmm(w2c[:, 2:3, 3:4], verts_tgt.detach(), w2c[:, 2:3, :3].transpose(1, 2), out=scratch)
    torch.amin(scratch[..., 0], 1, out=near_t)
    torch.amax(scratch[..., 0], 1, out=far_t)
    if data and dev.type != "meta" and not bool((near_t > 0).all()):
        raise InputError("the target mesh is not wholly in front of the camera (a vertex has depth "
                         "<= 0), so no default [near, far] exists; pass near= and far=")
    return near_t, far_t
