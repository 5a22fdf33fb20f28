"""Input validation shared by every backend: bad input fails here, in Python, before any kernel."""
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


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_verts(verts: Tensor, name: str = "verts") -> None:
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
    if not torch.isfinite(verts).all():
        raise InputError(f"{name} holds NaN or Inf")


def check_faces(faces: Tensor, num_vertices: int, device: torch.device) -> None:
    if not isinstance(faces, Tensor):
        raise InputTypeError(f"faces must be a torch.Tensor, got {type(faces).__name__}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise InputError(f"faces must have shape (F, 3), got {_shape(faces)}")
    if faces.shape[0] == 0:
        raise InputError("faces is empty (F = 0): the mesh has no triangles")
    if faces.dtype not in (torch.int32, torch.int64):
        raise InputTypeError(f"faces must be int32 or int64, got {faces.dtype}")
    if faces.device != device:
        raise InputError(f"faces is on {faces.device} but the vertices are on {device}")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= num_vertices:
        raise InputError(f"faces index vertices in [{lo}, {hi}] but the mesh has {num_vertices} vertices")


def check_mesh_pair(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor) -> None:
    """Target and source meshes share topology, batch, dtype and device."""
    check_verts(verts_tgt, "verts_tgt")
    check_verts(verts_src, "verts_src")
    if verts_tgt.shape != verts_src.shape:
        raise InputError(f"verts_tgt {_shape(verts_tgt)} and verts_src {_shape(verts_src)} differ in shape")
    if verts_tgt.dtype != verts_src.dtype:
        raise InputTypeError(f"verts_tgt is {verts_tgt.dtype} but verts_src is {verts_src.dtype}")
    if verts_tgt.device != verts_src.device:
        raise InputError(f"verts_tgt is on {verts_tgt.device} but verts_src is on {verts_src.device}")
    check_faces(faces, verts_tgt.shape[1], verts_tgt.device)


def check_points(points: Tensor, verts: Tensor) -> None:
    if not isinstance(points, Tensor):
        raise InputTypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != verts.shape[0]:
        raise InputError(f"points must have shape (B={verts.shape[0]}, P, 3), got {_shape(points)}")
    if points.dtype != verts.dtype:
        raise InputTypeError(f"points are {points.dtype} but the vertices are {verts.dtype}")
    if points.device != verts.device:
        raise InputError(f"points are on {points.device} but the vertices are on {verts.device}")
    if not torch.isfinite(points).all():
        raise InputError("points hold NaN or Inf")


def check_camera(camera: Camera, verts: Tensor) -> None:
    if not isinstance(camera, Camera):
        raise InputTypeError(f"camera must be a fgp_fast.camera.Camera, got {type(camera).__name__}")
    if camera.device != verts.device:
        raise InputError(f"camera is on {camera.device} but the vertices are on {verts.device}")
    camera.expand(verts.shape[0])  # raises on a batch mismatch


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_flow_args(n_samples, delta, near, far, sampling, dtype) -> tuple[int, float]:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int):
        raise InputTypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
    if not 1 <= n_samples <= MAX_SAMPLES:
        raise InputError(f"n_samples must be in [1, {MAX_SAMPLES}], got {n_samples}")
    delta = _positive_float(delta, "delta")
    if (near is None) != (far is None):
        raise InputError("give both near and far, or neither (then they come from the target mesh)")
    if near is not None:
        near, far = _positive_float(near, "near"), _positive_float(far, "far")
        if not near < far:
            raise InputError(f"near must be < far, got near={near}, far={far}")
    if sampling not in SAMPLING_MODES:
        raise InputError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if dtype is not None and dtype not in OUT_DTYPES:
        raise InputTypeError(f"dtype must be one of {OUT_DTYPES}, got {dtype}")
    return n_samples, delta
