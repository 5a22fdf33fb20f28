"""The Triton backend ("triton"): the torch glue that binds ``fgp_fast.kernels`` to the ops.

Per call: move both meshes into the target camera frame, refit the cluster hierarchy
(``triton_clusters.py``), rasterise the target mesh (a Triton z-buffer kernel with the
reference's semantics), then one Triton launch computes every sample, its nearest target triangle,
the surface field and the flow, and writes each output element exactly once.

The backend is available on CUDA devices when triton is installed, and on the CPU only under
Triton's interpreter (``TRITON_INTERPRET=1`` set before the kernels are first used; for tests).
Without triton this module still imports and the backend reports itself unavailable with the
reason. ``torch.ops.fgp_triton.flow_encode`` / ``flow_encode_out`` are custom ops with fake
kernels, so ``torch.compile`` can place them in a graph; ``ops.FlowEncoder(faces,
backend="triton")`` is the per-frame entry point (with ``out=``).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading

import torch
from torch import Tensor

from ..camera import Camera, apply_rows
from ..errors import BackendUnavailableError, InputError, InputTypeError
from . import triton_clusters as clusters
from . import triton_tuning as tuning
from .backends import register_backend
from .checks import check_camera, check_flow_args, check_mesh_pair, check_out, flow_dtype
from .flow_aux import build_aux, sample_points
from .reference import Z_MIN, Raster
from .topology import Topology

PRIORITY = 5   # above "reference" (0), below "cpp" (10) and "cuda" (30)
KERNELS = "fgp_fast.kernels.encode"


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


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


class TritonRuntime:
    """The kernels, imported (and jitted) on first use, and the block sizes the latest GPU launches
    picked. One per process (``RUNTIME``); its lock guards the import."""

    def __init__(self):
        self.error: str | None = _find_triton()
        self.triton = None          # the triton module, once imported
        self.kernels = None         # fgp_fast.kernels.encode, once imported
        self.last_config: dict | None = None          # the latest encode launch (autotuned)
        self.last_raster_config: dict | None = None   # the latest raster launch
        self._lock = threading.Lock()

    def load(self):
        """The kernel module; raises BackendUnavailableError with the reason if triton is unusable."""
        with self._lock:
            if self.kernels is None:
                if self.error is not None:
                    raise BackendUnavailableError(self.error)
                try:
                    import triton
                    kernels = importlib.import_module(KERNELS)
                except Exception as exc:  # installed but broken (e.g. built for another torch/python)
                    self.error = f"triton is not importable ({type(exc).__name__}: {exc})"
                    raise BackendUnavailableError(self.error) from exc
                self.triton, self.kernels = triton, kernels
            return self.kernels

    def interpreting(self) -> bool:
        """Whether the kernels run (or, not yet imported, would run) under Triton's interpreter."""
        if self.kernels is not None:
            return self.kernels.INTERPRETED
        return _env_interpret()

    def unavailable_reason(self, device) -> str | None:
        if self.error is not None:
            return self.error
        device = torch.device(device)
        if device.type == "cpu":
            if not _env_interpret():
                return "Triton runs on the CPU only under its interpreter (set TRITON_INTERPRET=1; for tests)"
            if self.kernels is not None and not self.kernels.INTERPRETED:
                return ("the Triton kernels were built for the GPU (TRITON_INTERPRET was not set when "
                        f"{KERNELS} was first imported), so they cannot run on the CPU")
            return None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "torch reports no usable CUDA device"
            return None
        return f"the triton backend does not run on {device.type} devices"


RUNTIME = TritonRuntime()


def kernels_module():
    """The module holding the Triton kernels, imported (and jitted) on first use."""
    return RUNTIME.load()


def interpreting() -> bool:
    return RUNTIME.interpreting()


def unavailable_reason(device) -> str | None:
    return RUNTIME.unavailable_reason(device)


def last_config() -> dict | None:
    """Block sizes the autotuner picked for the latest GPU launch (None before one / interpreted)."""
    return RUNTIME.last_config


def _require(device) -> None:
    reason = unavailable_reason(device)
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' is not available on {device}: {reason}")


# ---------------------------------------------------------------------------------------------
# launch


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


def _launch(kernel, tuned, grid_of, args, const, interp_const, gpu_options=None):
    """One launch: fixed blocks under the interpreter, the autotuner on the GPU. Returns the config."""
    if RUNTIME.kernels.INTERPRETED:
        with _interpret_env():
            kernel[grid_of(interp_const["TILE_H"], interp_const["TILE_W"])](*args, **const, **interp_const)
        return None
    return _launch_compiled(kernel, tuned, grid_of, args, const, gpu_options)


def _device(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"


def _launch_compiled(kernel, tuned, grid_of, args, const, gpu_options=None, cache=None, device_tag=None):
    """A compiled launch: the config on file for this autotune key (triton_tuning), else the
    autotuner (whose winner is recorded), or one fixed config with FGP_TRITON_AUTOTUNE=0. Python
    only: nothing here reads the device (the launch path stays graph-capturable)."""
    device, opts = args[0].device, gpu_options or {}

    def direct(cfg, how):
        with _device(device):
            kernel[grid_of(cfg.kwargs["TILE_H"], cfg.kwargs["TILE_W"])](
                *args, **const, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **opts)
        return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages, autotuned=how)

    if os.environ.get("FGP_TRITON_AUTOTUNE", "1") == "0":   # one fixed config (quick GPU tests)
        return direct(tuned.configs[0] if len(tuned.configs) == 1 else _default_config(tuned, const), False)
    cache = cache or tuning.CACHE
    named = dict(zip(tuned.arg_names, args), **const)
    key = cache.key(getattr(kernel, "__name__", type(kernel).__name__), device_tag or _device_tag(device),
                    RUNTIME.triton.__version__ if RUNTIME.triton else "?", {k: named[k] for k in tuned.keys})
    known = cache.lookup(key, tuned.configs)
    if known is not None:
        return direct(known, "cached")
    with _device(device):
        tuned[lambda meta: grid_of(meta["TILE_H"], meta["TILE_W"])](*args, **const, **opts)
    best = tuned.best_config
    cache.store(key, best)
    cfg = dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages, autotuned=True)
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
    m = RUNTIME.load()
    B, H, W = verts.shape[0], cam.height, cam.width
    dt, dev = verts.dtype, verts.device
    K, _ = cam.expand(B)
    # Screen positions exactly as the reference computes them (per triangle corner).
    tri = cam.world_to_camera(verts)[:, faces.long()]            # (B, F, 3, 3)
    z = tri[..., 2]
    proj = apply_rows(K[:, None, None], tri)
    uv = proj[..., :2] / torch.where(z > Z_MIN, z, torch.ones_like(z))[..., None]
    keep = (z > Z_MIN).all(-1)                                    # (B, F)
    ftri = torch.cat([uv, z[..., None]], -1)                      # (B, F, 3, [u v z])
    ftri = torch.where(keep[..., None, None], ftri, torch.full_like(ftri, float("nan")))
    ftri = ftri.reshape(B, -1, 9).contiguous()
    cf = topo.cluster_faces.long()
    ctri = ftri[:, cf].transpose(2, 3).contiguous()               # (B, NC, 9, C)
    inf = torch.full_like(uv[..., 0, 0], float("inf"))
    box = torch.stack([torch.where(keep, uv[..., 0].amin(-1), inf), torch.where(keep, uv[..., 0].amax(-1), -inf),
                       torch.where(keep, uv[..., 1].amin(-1), inf), torch.where(keep, uv[..., 1].amax(-1), -inf)],
                      -1)
    cbox = torch.stack([box[:, cf, 0].amin(-1), box[:, cf, 1].amax(-1), box[:, cf, 2].amin(-1),
                        box[:, cf, 3].amax(-1)], -1).contiguous()  # (B, NC, 4)
    depth = torch.empty(B, H, W, dtype=dt, device=dev)
    face = torch.empty(B, H, W, dtype=torch.int32, device=dev)
    bary_t = torch.empty(B, H, W, 3, dtype=dt, device=dev) if bary else depth
    args = (depth, face, bary_t, ctri, topo.cluster_faces, cbox, ftri, topo.num_clusters, ftri.shape[1], H, W)
    cdiv = RUNTIME.triton.cdiv
    cfg = _launch(m.rasterize_kernel, m.rasterize_autotuned, lambda th, tw: (cdiv(H, th) * cdiv(W, tw), B), args,
                  dict(WRITE_BARY=bool(bary), C=topo.size), dict(zip(("TILE_H", "TILE_W"), m.INTERPRETER_TILE)),
                  gpu_options=dict(enable_fp_fusion=False))   # no FMA: the reference's roundings
    if cfg is not None:
        RUNTIME.last_raster_config = cfg
    return depth, face, (bary_t if bary else None)


def triton_rasterize(verts: Tensor, faces: Tensor, camera: Camera) -> Raster:
    """The registry's ``rasterize`` (inputs validated by ``fgp_fast.ops.rasterize``)."""
    cam = _cam_as(camera, verts.dtype)
    topo = clusters.cached_topology(faces, verts.detach())
    depth, face, bary = _rasterize(verts.detach(), faces, cam, topo, True)
    return Raster(depth, face.long(), bary, face >= 0)


def _run(verts_tgt, verts_src, faces, camera: Camera, near, far, n_samples, delta, uniform, out,
         aux: bool = False, topo: clusters.ClusterTopology | None = None):
    """Rasterise, prepare and launch; fills ``out``. With ``aux`` also returns the raster and the
    per-sample (p_src in camera frame, face id, offset). ``topo``: the cluster hierarchy to use
    (default: the cached one of ``faces``)."""
    m = RUNTIME.load()
    B, H, W, N = verts_tgt.shape[0], camera.height, camera.width, n_samples
    dev, dt = verts_tgt.device, verts_tgt.dtype
    vt, vs = verts_tgt.detach(), verts_src.detach()
    cam = _cam_as(camera, dt)
    K, _ = cam.expand(B)
    # inv_ex: no singularity check (K was validated), so no device sync.
    kinv = torch.linalg.inv_ex(K)[0].to(torch.float32).reshape(B, 9).contiguous()
    vt_cam = cam.world_to_camera(vt).to(torch.float32).contiguous()
    vs_cam = cam.world_to_camera(vs).to(torch.float32).contiguous()
    if topo is None:
        topo = clusters.cached_topology(faces, vt_cam)
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
    cdiv = RUNTIME.triton.cdiv
    cfg = _launch(m.flow_encode_kernel, m.flow_encode_autotuned,
                  lambda th, tw: (cdiv(H, th) * cdiv(W, tw), N, B), args,
                  dict(UNIFORM=bool(uniform), WRITE_AUX=bool(aux), C=topo.size),
                  dict(TILE_H=m.INTERPRETER_TILE[0], TILE_W=m.INTERPRETER_TILE[1], CS=topo.size))
    if cfg is not None:
        RUNTIME.last_config = dict(cfg, C=topo.size, raster=RUNTIME.last_raster_config)
    if aux:
        return Raster(depth_dt, rface.long(), bary, rface >= 0), psrc, fid, off
    return None


# ---------------------------------------------------------------------------------------------
# custom ops (what torch.compile sees)


def _check_range(near: Tensor, far: Tensor, verts: Tensor, data: bool) -> None:
    B = verts.shape[0]
    for name, t in (("near", near), ("far", far)):
        if not isinstance(t, Tensor) or t.shape != (B,):
            raise InputError(f"{name} must be a tensor of shape ({B},)")
        if t.device != verts.device:
            raise InputError(f"{name} is on {t.device} but the vertices are on {verts.device}")
        if not t.is_floating_point():
            raise InputTypeError(f"{name} must be a float tensor, got {t.dtype}")
    if data and verts.device.type != "meta":
        if not (torch.isfinite(near).all() and torch.isfinite(far).all() and (near > 0).all() and (near < far).all()):
            raise InputError("near and far must hold finite depths with 0 < near < far")


def _check_op(verts_tgt, verts_src, faces, K, world_to_cam, near, far, height, width, n_samples, delta, uniform,
              dtype, out=None, data=True) -> Camera:
    """The raw ops' checks (the shared ones, plus near/far tensors and the output)."""
    check_mesh_pair(verts_tgt, verts_src, faces, data)
    if not isinstance(K, Tensor) or not isinstance(world_to_cam, Tensor):
        raise InputTypeError("K and world_to_cam must be tensors")
    camera = Camera(K, world_to_cam, height, width) if data else _unchecked_camera(K, world_to_cam, height, width)
    check_camera(camera, verts_tgt, data)
    check_flow_args(n_samples, delta, None, None, "uniform" if uniform else "depth", dtype)
    _check_range(near, far, verts_tgt, data)
    if out is not None:
        flow_dtype(None, verts_tgt, out)
        check_out(out, (verts_tgt.shape[0], 3 * n_samples, height, width), verts_tgt.device)
    return camera


def _unchecked_camera(K, world_to_cam, height, width) -> Camera:
    """A Camera without the constructor's value checks (they read the device, which a CUDA graph
    capture forbids); for cameras validated already."""
    cam = Camera.__new__(Camera)
    cam.K, cam.world_to_cam, cam.height, cam.width = K, world_to_cam, height, width
    return cam


def _cam_as(camera: Camera, dtype: torch.dtype) -> Camera:
    return _unchecked_camera(camera.K.to(dtype), camera.world_to_cam.to(dtype), camera.height, camera.width)


def _fake_devices(*tensors: Tensor) -> None:
    """What the real kernels check first: every tensor on one device (else a RuntimeError)."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise RuntimeError(f"fgp_triton: tensors on several devices: {sorted(map(str, devices))}")


@torch.library.custom_op("fgp_triton::flow_encode_out", mutates_args=("out",))
def flow_encode_out_op(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, K: Tensor, world_to_cam: Tensor,
                       near: Tensor, far: Tensor, n_samples: int, delta: float, uniform: bool, out: Tensor,
                       validate: bool = True) -> None:
    """Writes the flow (B, 3N, H, W) into ``out`` (its dtype is the output dtype)."""
    H, W = out.shape[-2], out.shape[-1]
    camera = _check_op(verts_tgt, verts_src, faces, K, world_to_cam, near, far, H, W, n_samples, delta, uniform,
                       out.dtype, out, validate)
    _require(verts_tgt.device)
    _run(verts_tgt, verts_src, faces, camera, near, far, n_samples, delta, uniform, out)


@flow_encode_out_op.register_fake
def _flow_encode_out_fake(verts_tgt, verts_src, faces, K, world_to_cam, near, far, n_samples, delta, uniform,
                          out, validate=True):
    _fake_devices(verts_tgt, verts_src, faces, K, world_to_cam, near, far, out)
    return None


@torch.library.custom_op("fgp_triton::flow_encode", mutates_args=())
def flow_encode_op(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, K: Tensor, world_to_cam: Tensor,
                   near: Tensor, far: Tensor, height: int, width: int, n_samples: int, delta: float,
                   uniform: bool, dtype: torch.dtype, validate: bool = True) -> Tensor:
    """The flow (B, 3N, height, width) in ``dtype``."""
    camera = _check_op(verts_tgt, verts_src, faces, K, world_to_cam, near, far, height, width, n_samples, delta,
                       uniform, dtype, None, validate)
    _require(verts_tgt.device)
    out = torch.empty(verts_tgt.shape[0], 3 * n_samples, height, width, dtype=dtype, device=verts_tgt.device)
    _run(verts_tgt, verts_src, faces, camera, near, far, n_samples, delta, uniform, out)
    return out


@flow_encode_op.register_fake
def _flow_encode_fake(verts_tgt, verts_src, faces, K, world_to_cam, near, far, height, width, n_samples, delta,
                      uniform, dtype, validate=True):
    _fake_devices(verts_tgt, verts_src, faces, K, world_to_cam, near, far)
    return verts_tgt.new_empty((verts_tgt.shape[0], 3 * n_samples, height, width), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# registry entry points (inputs validated by fgp_fast.ops)


def backend_flow_encode(verts_tgt, verts_src, faces, camera, n_samples, delta, near, far, sampling, return_aux,
                        dtype):
    B, H, W, N = verts_tgt.shape[0], camera.height, camera.width, n_samples
    dtype = dtype or verts_tgt.dtype
    uniform = sampling == "uniform"
    # Not differentiable: the flow is a conditioning input, computed from detached vertices.
    verts_tgt, verts_src, near, far = verts_tgt.detach(), verts_src.detach(), near.detach(), far.detach()
    if not return_aux:
        K, w2c = (t.detach() for t in camera.expand(B))
        return torch.ops.fgp_triton.flow_encode(verts_tgt, verts_src, faces, K, w2c, near, far, H, W, N,
                                                float(delta), uniform, dtype, False)
    out = torch.empty(B, 3 * N, H, W, dtype=dtype, device=verts_tgt.device)
    raster, psrc_cam, fid, off = _run(verts_tgt, verts_src, faces, camera, near, far, N, delta, uniform, out,
                                      aux=True)
    dt = verts_tgt.dtype
    cam = _cam_as(camera, dt)
    points = sample_points(raster, cam, near, far, N, delta, sampling)
    p_src = cam.camera_to_world(psrc_cam.to(dt).reshape(B, -1, 3))
    return out, build_aux(raster, points, p_src, fid, off)


class TritonEncoder:
    """The Triton state behind ``ops.FlowEncoder``: the cluster hierarchy of one topology, built
    on the first frame's pose and refit every frame."""

    def __init__(self, topology: Topology, n_samples: int, delta: float, sampling: str):
        self.topology, self.n_samples, self.delta, self.uniform = topology, n_samples, delta, sampling == "uniform"
        self.clusters: clusters.ClusterTopology | None = None

    def encode(self, verts_tgt: Tensor, verts_src: Tensor, camera: Camera, near: Tensor, far: Tensor,
               out: Tensor) -> Tensor:
        _require(verts_tgt.device)
        if self.clusters is None:   # ordered by the first frame's camera-frame pose, as the cached one is
            vt_cam = _cam_as(camera, verts_tgt.dtype).world_to_camera(verts_tgt.detach())
            self.clusters = clusters.build(self.topology.faces, vt_cam[0].to(torch.float32))
        _run(verts_tgt, verts_src, self.topology.faces, camera, near, far, self.n_samples, self.delta, self.uniform,
             out, topo=self.clusters)
        return out


register_backend("triton", flow_encode=backend_flow_encode, available=unavailable_reason, priority=PRIORITY,
                 rasterize=triton_rasterize, encoder=TritonEncoder)
