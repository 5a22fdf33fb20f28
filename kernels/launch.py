"""Host side of the Triton encoder: validation, per-frame preparation, launch, torch custom ops.

Per call: move both meshes into the target camera frame, refit the cluster hierarchy
(``clusters.py``), rasterise the target mesh (Triton kernel, the reference's semantics), then one
Triton launch computes every sample, its nearest target triangle, the surface field and the flow,
and writes each output element exactly once.

``torch.ops.fgp_triton.flow_encode`` / ``flow_encode_out`` are custom ops with fake kernels, so
``torch.compile`` can place them in a graph.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import torch
from torch import Tensor

from ..camera import Camera
from ..ops import reference
from ..ops.checks import OUT_DTYPES, check_camera, check_flow_args, check_mesh_pair
from . import clusters

def _find_triton() -> str | None:
    """Why triton cannot be used, or None. Nothing is imported here: ``triton.jit`` (and triton's
    own library functions) pick interpreter or compiler when they are first imported, so triton is
    imported only when the kernels are first needed."""
    if "triton" in sys.modules:
        return None if sys.modules["triton"] is not None else "triton is not importable (blocked)"
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError) as exc:
        return f"triton is not importable ({exc})"
    return None if found else "triton is not importable (not installed); pip install 'fgp_fast[triton]'"


TRITON_ERROR: str | None = _find_triton()
triton = None    # the module, once kernels_module() imported it
_encode = None   # fgp_fast.kernels.encode, imported on first use
last_config: dict | None = None   # the block sizes of the latest GPU launch (autotuned)


def kernels_module():
    """The module holding the Triton kernels, imported (and jitted) on first use."""
    global _encode, triton, TRITON_ERROR
    if _encode is None:
        if TRITON_ERROR is not None:
            raise RuntimeError(TRITON_ERROR)
        try:
            import triton as _triton
            from . import encode
        except Exception as exc:  # installed but broken (e.g. built for another torch/python)
            TRITON_ERROR = f"triton is not importable ({type(exc).__name__}: {exc})"
            raise RuntimeError(TRITON_ERROR) from exc
        triton, _encode = _triton, encode
    return _encode


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def interpreting() -> bool:
    """Whether the kernels run (or, not yet imported, would run) under Triton's interpreter."""
    if _encode is not None:
        return _encode.INTERPRETED
    return _env_interpret()


def unavailable_reason(device) -> str | None:
    if TRITON_ERROR is not None:
        return TRITON_ERROR
    device = torch.device(device)
    if device.type == "cpu":
        if not _env_interpret():
            return "Triton runs on the CPU only under its interpreter (set TRITON_INTERPRET=1; for tests)"
        if _encode is not None and not _encode.INTERPRETED:
            return ("the Triton kernels were built for the GPU (TRITON_INTERPRET was not set when "
                    "fgp_fast.kernels.encode was first imported), so they cannot run on the CPU")
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch reports no usable CUDA device"
        return None
    return f"the triton backend does not run on {device.type} devices"


# ---------------------------------------------------------------------------------------------
# validation (everything raises here, before any launch)


def _check_range(near: Tensor, far: Tensor, verts: Tensor) -> None:
    B = verts.shape[0]
    for name, t in (("near", near), ("far", far)):
        if not isinstance(t, Tensor) or t.shape != (B,):
            raise ValueError(f"{name} must be a tensor of shape ({B},)")
        if t.device != verts.device:
            raise ValueError(f"{name} is on {t.device} but the vertices are on {verts.device}")
        if not t.is_floating_point() or not torch.isfinite(t).all() or not (t > 0).all():
            raise ValueError(f"{name} must hold finite depths > 0")
    if not (near < far).all():
        raise ValueError("near must be < far")


def check_out(out: Tensor, B: int, N: int, H: int, W: int, device: torch.device) -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != (B, 3 * N, H, W):
        raise ValueError(f"out must have shape {(B, 3 * N, H, W)}, got {tuple(out.shape)}")
    if out.dtype not in OUT_DTYPES:
        raise TypeError(f"out must be one of {OUT_DTYPES}, got {out.dtype}")
    if out.device != device:
        raise ValueError(f"out is on {out.device} but the vertices are on {device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")


def _validate(verts_tgt, verts_src, faces, K, world_to_cam, near, far, height, width, n_samples, delta,
              uniform, dtype) -> Camera:
    check_mesh_pair(verts_tgt, verts_src, faces)
    camera = Camera(K, world_to_cam, height, width)
    check_camera(camera, verts_tgt)
    check_flow_args(n_samples, delta, None, None, "uniform" if uniform else "depth", dtype)
    _check_range(near, far, verts_tgt)
    reason = unavailable_reason(verts_tgt.device)
    if reason is not None:
        raise RuntimeError(f"backend 'triton' is not available on {verts_tgt.device}: {reason}")
    return camera


# ---------------------------------------------------------------------------------------------
# preparation and launch


@contextlib.contextmanager
def _interpret_env():
    """The interpreter checks TRITON_INTERPRET while it runs, too: keep it set around a launch of
    kernels that were built interpreted, even if the caller has unset it since."""
    prev = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = prev


RASTER_NAME = "triton z-buffer"


def _launch(kernel, tuned, grid_of, args, const, interp_const, gpu_options=None):
    """One launch: fixed blocks under the interpreter, the autotuner on the GPU. Returns the config."""
    if _encode.INTERPRETED:
        with _interpret_env():
            kernel[grid_of(interp_const["TILE_H"], interp_const["TILE_W"])](*args, **const, **interp_const)
        return None
    if os.environ.get("FGP_TRITON_AUTOTUNE", "1") == "0":   # one fixed config (quick GPU tests)
        fixed = tuned.configs[0] if len(tuned.configs) == 1 else _default_config(tuned, const)
        with torch.cuda.device(args[0].device):
            kernel[grid_of(fixed.kwargs["TILE_H"], fixed.kwargs["TILE_W"])](
                *args, **const, **fixed.kwargs, num_warps=fixed.num_warps, **(gpu_options or {}))
        return dict(fixed.kwargs, num_warps=fixed.num_warps, autotuned=False)
    with torch.cuda.device(args[0].device):
        tuned[lambda meta: grid_of(meta["TILE_H"], meta["TILE_W"])](*args, **const, **(gpu_options or {}))
    best = tuned.best_config
    cfg = dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages)
    timings = getattr(tuned, "configs_timings", None)
    if timings:
        cfg["tuning_ms"] = {str(c): float(t[0] if isinstance(t, (list, tuple)) else t) for c, t in timings.items()}
    return cfg


def _default_config(tuned, const):
    """The first listed config that fits (CS <= C): used when autotuning is off."""
    for cfg in tuned.configs:
        if cfg.kwargs.get("CS", 0) <= const.get("C", 1 << 30):
            return cfg
    return tuned.configs[0]


def _rasterize(verts: Tensor, faces: Tensor, cam: Camera, topo: clusters.ClusterTopology, bary: bool):
    """Triton z-buffer raster of ``verts`` (B, V, 3) in their dtype, with the reference's semantics:
    (depth (B, H, W) 0 off-mesh, face (B, H, W) int32 -1 off-mesh, bary (B, H, W, 3) or None)."""
    m = kernels_module()
    B, H, W = verts.shape[0], cam.height, cam.width
    dt, dev = verts.dtype, verts.device
    K, _ = cam.expand(B)
    # Screen positions exactly as the reference computes them (per triangle corner).
    tri = cam.world_to_camera(verts)[:, faces.long()]            # (B, F, 3, 3)
    z = tri[..., 2]
    proj = tri @ K.transpose(1, 2)[:, None]
    uv = proj[..., :2] / torch.where(z > reference.Z_MIN, z, torch.ones_like(z))[..., None]
    keep = (z > reference.Z_MIN).all(-1)                          # (B, F)
    ftri = torch.cat([uv, z[..., None]], -1)                      # (B, F, 3, [u v z])
    ftri = torch.where(keep[..., None, None], ftri, torch.full_like(ftri, float("nan")))
    ftri = ftri.reshape(B, -1, 9).contiguous()
    cf = topo.cluster_faces.long()
    ctri = ftri[:, cf].transpose(2, 3).contiguous()               # (B, NC, 9, C)
    inf = torch.full_like(uv[..., 0, 0], float("inf"))
    k = keep
    box = torch.stack([torch.where(k, uv[..., 0].amin(-1), inf), torch.where(k, uv[..., 0].amax(-1), -inf),
                       torch.where(k, uv[..., 1].amin(-1), inf), torch.where(k, uv[..., 1].amax(-1), -inf)], -1)
    cbox = torch.stack([box[:, cf, 0].amin(-1), box[:, cf, 1].amax(-1), box[:, cf, 2].amin(-1),
                        box[:, cf, 3].amax(-1)], -1).contiguous()  # (B, NC, 4)
    depth = torch.empty(B, H, W, dtype=dt, device=dev)
    face = torch.empty(B, H, W, dtype=torch.int32, device=dev)
    bary_t = torch.empty(B, H, W, 3, dtype=dt, device=dev) if bary else depth
    args = (depth, face, bary_t, ctri, topo.cluster_faces, cbox, ftri, topo.num_clusters, ftri.shape[1], H, W)
    cfg = _launch(m.rasterize_kernel, m.rasterize_autotuned,
                  lambda th, tw: (triton.cdiv(H, th) * triton.cdiv(W, tw), B), args,
                  dict(WRITE_BARY=bool(bary), C=topo.size), dict(zip(("TILE_H", "TILE_W"), m.INTERPRETER_TILE)),
                  gpu_options=dict(enable_fp_fusion=False))   # no FMA: the reference's roundings
    global last_raster_config
    if cfg is not None:
        last_raster_config = cfg
    return depth, face, (bary_t if bary else None)


last_raster_config: dict | None = None


def triton_rasterize(verts: Tensor, faces: Tensor, camera: Camera) -> reference.Raster:
    """The registry's ``rasterize`` (inputs validated by ``fgp_fast.ops.rasterize``)."""
    cam = camera.to(dtype=verts.dtype)
    topo = clusters.cached_topology(faces, verts.detach())
    depth, face, bary = _rasterize(verts.detach(), faces, cam, topo, True)
    return reference.Raster(depth, face.long(), bary, face >= 0)


def rasterize_fn():
    """The rasteriser the Triton encode uses: f(verts, faces, camera) -> Raster."""
    return triton_rasterize


def _run(verts_tgt, verts_src, faces, camera: Camera, near, far, n_samples, delta, uniform, out,
         aux: bool = False, cluster_size: int = clusters.CLUSTER):
    """Rasterise, prepare and launch; fills ``out``. With ``aux`` also returns the raster and the
    per-sample (p_src in camera frame, face id, offset)."""
    m = kernels_module()
    B, H, W, N = verts_tgt.shape[0], camera.height, camera.width, n_samples
    dev, dt = verts_tgt.device, verts_tgt.dtype
    vt, vs = verts_tgt.detach(), verts_src.detach()
    cam = camera.to(dtype=dt)
    K, w2c = cam.expand(B)
    kinv = torch.linalg.inv(K).to(torch.float32).reshape(B, 9).contiguous()
    vt_cam = cam.world_to_camera(vt).to(torch.float32).contiguous()
    vs_cam = cam.world_to_camera(vs).to(torch.float32).contiguous()
    topo = clusters.cached_topology(faces, vt_cam, cluster_size)
    frame = clusters.refit(topo, vt_cam)
    depth_dt, rface, bary = _rasterize(vt, faces, cam, topo, aux)
    depth = depth_dt.to(torch.float32).contiguous()
    near32 = near.to(device=dev, dtype=torch.float32).contiguous()
    far32 = far.to(device=dev, dtype=torch.float32).contiguous()
    if aux:
        psrc = torch.empty(B, N, H, W, 3, dtype=torch.float32, device=dev)
        fid = torch.empty(B, N, H, W, dtype=torch.int32, device=dev)
        off = torch.empty(B, N, H, W, dtype=torch.float32, device=dev)
    else:
        psrc, fid, off = depth, rface, depth   # never written (WRITE_AUX=False)
    args = (out, psrc, fid, off, depth, rface, kinv, near32, far32, vt_cam, vs_cam, topo.faces,
            frame.tri, topo.cluster_faces, frame.meta,
            vt_cam.shape[1], topo.num_clusters, H, W, N, float(max(N - 1, 1)), 0.5 if N == 1 else 0.0,
            float(delta))
    cfg = _launch(m.flow_encode_kernel, m.flow_encode_autotuned,
                  lambda th, tw: (triton.cdiv(H, th) * triton.cdiv(W, tw), N, B), args,
                  dict(UNIFORM=bool(uniform), WRITE_AUX=bool(aux), C=topo.size),
                  dict(TILE_H=m.INTERPRETER_TILE[0], TILE_W=m.INTERPRETER_TILE[1], CS=topo.size))
    global last_config
    if cfg is not None:
        last_config = dict(cfg, C=topo.size, raster=last_raster_config)
    if aux:
        raster = reference.Raster(depth_dt, rface.long(), bary, rface >= 0)
        return raster, psrc, fid, off
    return None


# ---------------------------------------------------------------------------------------------
# custom ops (what torch.compile sees)


@torch.library.custom_op("fgp_triton::flow_encode_out", mutates_args=("out",))
def flow_encode_out_op(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, K: Tensor, world_to_cam: Tensor,
                       near: Tensor, far: Tensor, n_samples: int, delta: float, uniform: bool, out: Tensor,
                       validate: bool = True) -> None:
    """Writes the flow (B, 3N, H, W) into ``out`` (its dtype is the output dtype)."""
    B, H, W = verts_tgt.shape[0], out.shape[-2], out.shape[-1]
    if validate:
        camera = _validate(verts_tgt, verts_src, faces, K, world_to_cam, near, far, H, W, n_samples, delta,
                           uniform, out.dtype)
        check_out(out, B, n_samples, H, W, verts_tgt.device)
    else:
        camera = Camera(K, world_to_cam, H, W)
    _run(verts_tgt, verts_src, faces, camera, near, far, n_samples, delta, uniform, out)


@flow_encode_out_op.register_fake
def _flow_encode_out_fake(verts_tgt, verts_src, faces, K, world_to_cam, near, far, n_samples, delta, uniform,
                          out, validate=True):
    return None


@torch.library.custom_op("fgp_triton::flow_encode", mutates_args=())
def flow_encode_op(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, K: Tensor, world_to_cam: Tensor,
                   near: Tensor, far: Tensor, height: int, width: int, n_samples: int, delta: float,
                   uniform: bool, dtype: torch.dtype, validate: bool = True) -> Tensor:
    """The flow (B, 3N, height, width) in ``dtype``."""
    if validate:
        camera = _validate(verts_tgt, verts_src, faces, K, world_to_cam, near, far, height, width, n_samples,
                           delta, uniform, dtype)
    else:
        camera = Camera(K, world_to_cam, height, width)
    out = torch.empty(verts_tgt.shape[0], 3 * n_samples, height, width, dtype=dtype, device=verts_tgt.device)
    _run(verts_tgt, verts_src, faces, camera, near, far, n_samples, delta, uniform, out)
    return out


@flow_encode_op.register_fake
def _flow_encode_fake(verts_tgt, verts_src, faces, K, world_to_cam, near, far, height, width, n_samples, delta,
                      uniform, dtype, validate=True):
    return verts_tgt.new_empty((verts_tgt.shape[0], 3 * n_samples, height, width), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Python entry points


def flow_encode(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, camera: Camera, n_samples: int = 20,
                delta: float = 0.01, near: float | None = None, far: float | None = None,
                sampling: str = "depth", return_aux: bool = False, dtype: torch.dtype | None = None,
                out: Tensor | None = None):
    """``fgp_fast.ops.flow_encode`` on the Triton backend, plus ``out=``: a caller-owned
    (B, 3N, H, W) contiguous tensor the flow is written into (its dtype is the output dtype; a
    given ``dtype`` must match it). Every input is validated before anything is launched."""
    from ..ops import resolve_near_far

    check_mesh_pair(verts_tgt, verts_src, faces)
    check_camera(camera, verts_tgt)
    if out is not None and dtype is None and isinstance(out, Tensor):
        dtype = out.dtype
    n_samples, delta = check_flow_args(n_samples, delta, near, far, sampling, dtype)
    near_t, far_t = resolve_near_far(verts_tgt, camera, near, far)
    B, H, W = verts_tgt.shape[0], camera.height, camera.width
    if out is not None:
        check_out(out, B, n_samples, H, W, verts_tgt.device)
        if out.dtype != dtype:
            raise TypeError(f"dtype={dtype} but out is {out.dtype}")
    reason = unavailable_reason(verts_tgt.device)
    if reason is not None:
        raise RuntimeError(f"backend 'triton' is not available on {verts_tgt.device}: {reason}")
    return _encode_validated(verts_tgt, verts_src, faces, camera, n_samples, delta, near_t, far_t, sampling,
                             return_aux, dtype, out)


def backend_flow_encode(verts_tgt, verts_src, faces, camera, n_samples, delta, near, far, sampling, return_aux,
                        dtype):
    """The registry's entry point: inputs already validated by ``fgp_fast.ops.flow_encode``."""
    return _encode_validated(verts_tgt, verts_src, faces, camera, n_samples, delta, near, far, sampling,
                             return_aux, dtype, None)


def _encode_validated(verts_tgt, verts_src, faces, camera, n_samples, delta, near, far, sampling, return_aux,
                      dtype, out):
    B, H, W, N = verts_tgt.shape[0], camera.height, camera.width, n_samples
    dtype = dtype or verts_tgt.dtype
    uniform = sampling == "uniform"
    K, w2c = camera.expand(B)
    # Not differentiable: the flow is a conditioning input, computed from detached vertices.
    verts_tgt, verts_src, K, w2c = verts_tgt.detach(), verts_src.detach(), K.detach(), w2c.detach()
    near, far = near.detach(), far.detach()
    if not return_aux:
        if out is None:
            return torch.ops.fgp_triton.flow_encode(verts_tgt, verts_src, faces, K, w2c, near, far, H, W, N,
                                                    float(delta), uniform, dtype, False)
        torch.ops.fgp_triton.flow_encode_out(verts_tgt, verts_src, faces, K, w2c, near, far, N, float(delta),
                                             uniform, out, False)
        return out
    if out is None:
        out = torch.empty(B, 3 * N, H, W, dtype=dtype, device=verts_tgt.device)
    raster, psrc_cam, fid, off = _run(verts_tgt, verts_src, faces, camera, near, far, N, delta, uniform, out,
                                      aux=True)
    dt = verts_tgt.dtype
    cam = camera.to(dtype=dt)
    depths = reference.sample_depths(raster, near.to(dt), far.to(dt), N, delta, sampling)
    points = cam.camera_to_world(depths[..., None] * cam.pixel_rays(B)[:, None])
    p_src = cam.camera_to_world(psrc_cam.to(dt).reshape(B, -1, 3)).view(B, N, H, W, 3)
    aux = {"depth": raster.depth, "face_id": raster.face_id, "mask": raster.mask, "bary": raster.bary,
           "points": points, "p_src": p_src, "sample_face_id": fid.long(), "offset": off.to(dt)}
    return out, aux


__all__ = ["flow_encode", "backend_flow_encode", "triton_rasterize", "unavailable_reason", "interpreting",
           "check_out", "kernels_module", "TRITON_ERROR"]
