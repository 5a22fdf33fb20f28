"""Native backends "cpp" (C++/OpenMP, ``fgp_fast._C``) and "cuda" (``fgp_fast._C_cuda``).

The kernels are torch custom ops in the ``fgp`` namespace (``torch.ops.fgp.*``, see
csrc/cpu/ops.cpp) with fake kernels registered here, so ``torch.compile`` and CUDA graphs can
capture them. ``MeshBVH`` owns the BVH of one topology (built once on the CPU, refit per frame on
the mesh's device); ``FlowEncoder`` owns a BVH plus every scratch buffer, so a per-frame call
allocates nothing beyond its output (and nothing at all with ``out=``).

If the extension was not built, importing this module still works: the backends register and
report themselves unavailable with the import error as the reason.
"""
from __future__ import annotations

import importlib
from collections import OrderedDict

import torch
from torch import Tensor

from ..camera import Camera
from .backends import register_backend
from .checks import MAX_SAMPLES, OUT_DTYPES, SAMPLING_MODES, check_faces, check_verts
from .reference import Raster, SurfaceField, sample_depths
from ..errors import BackendUnavailableError, InputError, InputTypeError

try:
    from .. import _C  # noqa: F401  (registers torch.ops.fgp.* and their CPU kernels)
    _C_ERROR = None
except ImportError as exc:  # not built (FGP_BUILD_NATIVE=0) or built for another torch
    _C, _C_ERROR = None, f"fgp_fast._C is not importable ({exc})"

_C_cuda = None
_CUDA_ERROR = "fgp_fast._C_cuda was not built (no CUDA at build time, or FGP_BUILD_CUDA=0)"
if _C is not None:
    try:  # registers the CUDA kernels for torch.ops.fgp.*
        _C_cuda = importlib.import_module("fgp_fast._C_cuda")
        _CUDA_ERROR = None
    except ModuleNotFoundError as exc:
        if exc.name != "fgp_fast._C_cuda":
            _CUDA_ERROR = f"fgp_fast._C_cuda is not importable ({exc})"
    except ImportError as exc:  # built against another torch/CUDA
        _CUDA_ERROR = f"fgp_fast._C_cuda is not importable ({exc})"
else:
    _CUDA_ERROR = _C_ERROR

LEAF_SIZE = 4


def cpp_unavailable_reason(device) -> str | None:
    if _C is None:
        return _C_ERROR
    if torch.device(device).type != "cpu":
        return "the cpp backend runs on the CPU only"
    return None


def cuda_unavailable_reason(device) -> str | None:
    if _C_cuda is None:
        return _CUDA_ERROR
    if torch.device(device).type != "cuda":
        return "the cuda backend runs on CUDA devices only"
    if not torch.cuda.is_available():
        return "torch reports no usable CUDA device"
    return None


def set_num_threads(n: int) -> None:
    """Threads of the C++ CPU kernels (their OpenMP pool may differ from torch's)."""
    _require_cpp()
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    _require_cpp()
    return _C.get_num_threads()


def _require_cpp() -> None:
    if _C is None:
        raise BackendUnavailableError(f"the native fgp extension is not available: {_C_ERROR}")


# ---------------------------------------------------------------------------------------------
# fake kernels (shapes only) for torch.compile / meta tensors

if _C is not None:
    @torch.library.register_fake("fgp::bvh_build")
    def _bvh_build_fake(verts, faces, leaf_size=4):
        M = torch.library.get_ctx().new_dynamic_size()
        return faces.new_empty((M, 4), dtype=torch.int32), faces.new_empty((faces.shape[0],), dtype=torch.int32)

    @torch.library.register_fake("fgp::bvh_refit")
    def _bvh_refit_fake(verts, faces, topo, prim, nodes, tris, scratch, validate=True):
        return None

    @torch.library.register_fake("fgp::rasterize")
    def _rasterize_fake(verts, faces, K, world_to_cam, height, width, validate=True):
        B = verts.shape[0]
        return (verts.new_empty((B, height, width)), verts.new_empty((B, height, width), dtype=torch.int64),
                verts.new_empty((B, height, width, 3)), verts.new_empty((B, height, width), dtype=torch.bool))

    @torch.library.register_fake("fgp::surface_field")
    def _surface_field_fake(points, verts_tgt, verts_src, faces, nodes, tris, validate=True):
        B, P = points.shape[0], points.shape[1]
        return (points.new_empty((B, P, 3)), points.new_empty((B, P), dtype=torch.int64),
                points.new_empty((B, P, 3)), points.new_empty((B, P)))

    @torch.library.register_fake("fgp::flow_encode_out")
    def _flow_encode_out_fake(verts_tgt, verts_src, faces, K, world_to_cam, near, far, nodes, tris, n_samples,
                              delta, uniform, zbuf, out, validate=True):
        return None

    @torch.library.register_fake("fgp::flow_encode")
    def _flow_encode_fake(verts_tgt, verts_src, faces, K, world_to_cam, near, far, nodes, tris, height, width,
                          n_samples, delta, uniform, dtype, validate=True):
        return verts_tgt.new_empty((verts_tgt.shape[0], 3 * n_samples, height, width), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# BVH and encoder objects


def _as_batch(verts: Tensor) -> Tensor:
    return verts[None] if verts.dim() == 2 else verts


class MeshBVH:
    """The BVH of one triangle topology: built once (binned SAH, CPU), refit per frame.

    ``faces`` (F, 3) int; ``verts`` (V, 3) or (B, V, 3) give the build positions (the first batch
    element) and the first refit. The tree stays valid for any vertex positions; only its quality
    depends on the build pose. Tensors live on ``verts``' device.
    """

    def __init__(self, faces: Tensor, verts: Tensor, leaf_size: int = LEAF_SIZE):
        _require_cpp()
        verts = _as_batch(verts)
        check_verts(verts)
        check_faces(faces, verts.shape[1], verts.device)
        if verts.device.type == "cuda" and _C_cuda is None:
            raise BackendUnavailableError(f"MeshBVH on CUDA needs the cuda backend: {_CUDA_ERROR}")
        self.device = verts.device
        self.num_vertices = verts.shape[1]
        self.faces = faces.to(dtype=torch.int32).contiguous()
        build_v = verts[0].detach().to(device="cpu", dtype=torch.float32).contiguous()
        topo, prim = torch.ops.fgp.bvh_build(build_v, self.faces.cpu(), leaf_size)
        self.topo, self.prim = topo.to(self.device), prim.to(self.device)
        self.nodes = self.tris = self._scratch = None
        self.verts = None
        self.refit(verts)

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.topo.shape[0]

    def _ensure(self, B: int) -> None:
        if self.nodes is None or self.nodes.shape[0] != B:
            M, F = self.num_nodes, self.num_faces
            self.nodes = torch.empty((B, M, 8), dtype=torch.float32, device=self.device)
            self.tris = torch.empty((B, F, 12), dtype=torch.float32, device=self.device)
            self._scratch = torch.empty((B, M), dtype=torch.int32, device=self.device)

    def refit(self, verts: Tensor, validate: bool = True) -> "MeshBVH":
        """Move the boxes to new vertex positions (B, V, 3) or (V, 3); the topology is kept."""
        verts = _as_batch(verts)
        if verts.dim() != 3 or verts.shape[1:] != (self.num_vertices, 3):
            raise InputError(f"verts must be (B, {self.num_vertices}, 3), got {tuple(verts.shape)}")
        if verts.device != self.device:
            raise InputError(f"verts are on {verts.device} but the BVH lives on {self.device}")
        if validate:
            check_verts(verts)
        verts = verts.detach().to(torch.float32).contiguous()
        self._ensure(verts.shape[0])
        torch.ops.fgp.bvh_refit(verts, self.faces, self.topo, self.prim, self.nodes, self.tris, self._scratch, False)
        self.verts = verts
        return self

    def surface_field(self, points: Tensor, verts_src: Tensor, validate: bool = True) -> SurfaceField:
        """DESIGN.md step 3 for world points (B, P, 3) against the last refit's target mesh."""
        verts_src = _as_batch(verts_src)
        if verts_src.shape != self.verts.shape:
            raise InputError(f"verts_src must be {tuple(self.verts.shape)}, got {tuple(verts_src.shape)}")
        dt = points.dtype
        out = torch.ops.fgp.surface_field(points.detach().to(torch.float32).contiguous(), self.verts,
                                          verts_src.detach().to(torch.float32).contiguous(), self.faces,
                                          self.nodes, self.tris, validate)
        return SurfaceField(out[0].to(dt), out[1], out[2].to(dt), out[3].to(dt))


class FlowEncoder:
    """Fused 3D-flow encoder for one topology that reuses its BVH and scratch across frames.

    ``enc(verts_tgt, verts_src, camera, near=None, far=None, out=None)`` returns the (B, 3N, H, W)
    flow of DESIGN.md in ``dtype`` (float32 default; float16/bfloat16/float64 written directly).
    With ``out=`` nothing is allocated. ``validate=True`` (default) adds the data checks (NaN,
    index range) each call; pass ``validate=False`` for CUDA-graph capture or the last bit of
    speed, since the checks sync a GPU.
    """

    def __init__(self, faces: Tensor, n_samples: int = 20, delta: float = 0.01, sampling: str = "depth",
                 dtype: torch.dtype | None = torch.float32, leaf_size: int = LEAF_SIZE, validate: bool = True):
        _require_cpp()
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or not 1 <= n_samples <= MAX_SAMPLES:
            raise InputError(f"n_samples must be an int in [1, {MAX_SAMPLES}], got {n_samples!r}")
        if not float(delta) > 0 or float(delta) == float("inf"):
            raise InputError(f"delta must be a finite number > 0, got {delta!r}")
        if sampling not in SAMPLING_MODES:
            raise InputError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if dtype is not None and dtype not in OUT_DTYPES:
            raise InputTypeError(f"dtype must be one of {OUT_DTYPES}, got {dtype}")
        self.faces_in = faces
        self.n_samples, self.delta, self.sampling, self.dtype = n_samples, float(delta), sampling, dtype
        self.leaf_size, self.validate = leaf_size, validate
        self.bvh: MeshBVH | None = None
        self._buf: dict = {}

    def _buffer(self, name: str, shape, dtype, device) -> Tensor:
        t = self._buf.get(name)
        if t is None or t.shape != torch.Size(shape) or t.dtype != dtype or t.device != device:
            t = self._buf[name] = torch.empty(shape, dtype=dtype, device=device)
        return t

    def __call__(self, verts_tgt: Tensor, verts_src: Tensor, camera: Camera, near=None, far=None,
                 out: Tensor | None = None) -> Tensor:
        return self.encode(verts_tgt, verts_src, camera, near, far, out)

    def encode(self, verts_tgt: Tensor, verts_src: Tensor, camera: Camera, near=None, far=None,
               out: Tensor | None = None) -> Tensor:
        if verts_tgt.dim() != 3 or verts_tgt.shape[-1] != 3 or verts_src.shape != verts_tgt.shape:
            raise InputError(f"verts_tgt and verts_src must both be (B, V, 3), got {tuple(verts_tgt.shape)} "
                             f"and {tuple(verts_src.shape)}")
        if verts_src.device != verts_tgt.device or camera.device != verts_tgt.device:
            raise InputError("verts_tgt, verts_src and the camera must be on one device")
        dev = verts_tgt.device
        unavailable = cpp_unavailable_reason(dev) if dev.type == "cpu" else cuda_unavailable_reason(dev)
        if unavailable is not None:
            raise BackendUnavailableError(unavailable)
        if self.validate:
            check_verts(verts_tgt, "verts_tgt")
            check_verts(verts_src, "verts_src")
        if self.bvh is None or self.bvh.device != dev:
            self.bvh = MeshBVH(self.faces_in.to(dev), verts_tgt, self.leaf_size)
        else:
            self.bvh.refit(verts_tgt, validate=False)
        bvh = self.bvh
        B, N, H, W = verts_tgt.shape[0], self.n_samples, camera.height, camera.width
        vt = bvh.verts
        vs = verts_src.detach()
        if vs.dtype != torch.float32 or not vs.is_contiguous():
            vs = vs.to(torch.float32).contiguous()
        K, w2c = camera.expand(B)
        K_buf = self._buffer("K", (B, 3, 3), torch.float32, dev)
        w2c_buf = self._buffer("w2c", (B, 4, 4), torch.float32, dev)
        K_buf.copy_(K)
        w2c_buf.copy_(w2c)
        near_buf = self._buffer("near", (B,), torch.float32, dev)
        far_buf = self._buffer("far", (B,), torch.float32, dev)
        if near is None and far is None:
            # Camera depth range of the target mesh, without temporaries: z = verts @ R[2] + t[2].
            z = self._buffer("z", (B, vt.shape[1], 1), torch.float32, dev)
            torch.baddbmm(w2c_buf[:, 2:3, 3:4], vt, w2c_buf[:, 2:3, :3].transpose(1, 2), out=z)
            torch.amin(z[..., 0], 1, out=near_buf)
            torch.amax(z[..., 0], 1, out=far_buf)
        elif near is not None and far is not None:
            near_buf.copy_(torch.as_tensor(near, dtype=torch.float32).expand(B))
            far_buf.copy_(torch.as_tensor(far, dtype=torch.float32).expand(B))
        else:
            raise InputError("give both near and far, or neither")
        dtype = self.dtype or verts_tgt.dtype
        shape = (B, 3 * N, H, W)
        if out is None:
            out = torch.empty(shape, dtype=dtype, device=dev)
        elif tuple(out.shape) != shape or out.device != dev or not out.is_contiguous() or out.dtype not in OUT_DTYPES:
            raise InputError(f"out must be a contiguous {shape} tensor of a float dtype on {dev}, got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        zbuf = self._buffer("zbuf", (B, H, W), torch.int64, dev)
        torch.ops.fgp.flow_encode_out(vt, vs, bvh.faces, K_buf, w2c_buf, near_buf, far_buf, bvh.nodes, bvh.tris,
                                      N, self.delta, self.sampling == "uniform", zbuf, out, self.validate)
        return out


# ---------------------------------------------------------------------------------------------
# backend entry points (inputs already validated by fgp_fast.ops)

_CACHE_SIZE = 4
_encoders: "OrderedDict[tuple, tuple[Tensor, dict]]" = OrderedDict()


def _cached_bvh(faces: Tensor, verts_tgt: Tensor) -> MeshBVH:
    """One MeshBVH per topology (faces content + device), refit to verts_tgt."""
    key = (faces.device, faces.data_ptr(), tuple(faces.shape), faces._version)
    hit = _encoders.get(key)
    if hit is not None and torch.equal(hit[0], faces):
        _encoders.move_to_end(key)
        return hit[1]["bvh"].refit(verts_tgt, validate=False)
    bvh = MeshBVH(faces, verts_tgt)
    _encoders[key] = (faces.clone(), {"bvh": bvh})
    while len(_encoders) > _CACHE_SIZE:
        _encoders.popitem(last=False)
    return bvh


def _cam32(camera: Camera, B: int) -> tuple[Tensor, Tensor]:
    K, w2c = camera.expand(B)
    return K.to(torch.float32).contiguous(), w2c.to(torch.float32).contiguous()


def native_rasterize(verts: Tensor, faces: Tensor, camera: Camera) -> Raster:
    K, w2c = _cam32(camera, verts.shape[0])
    d, f, b, m = torch.ops.fgp.rasterize(verts.detach().to(torch.float32).contiguous(),
                                         faces.to(torch.int32).contiguous(), K, w2c, camera.height, camera.width,
                                         True)
    return Raster(d.to(verts.dtype), f, b.to(verts.dtype), m)


def native_surface_field(points: Tensor, verts_tgt: Tensor, verts_src: Tensor, faces: Tensor) -> SurfaceField:
    return _cached_bvh(faces, verts_tgt).surface_field(points, verts_src)


def native_flow_encode(verts_tgt, verts_src, faces, camera, n_samples, delta, near, far, sampling, return_aux,
                       dtype):
    bvh = _cached_bvh(faces, verts_tgt)
    B, N, H, W = verts_tgt.shape[0], n_samples, camera.height, camera.width
    K, w2c = _cam32(camera, B)
    vs = verts_src.detach().to(torch.float32).contiguous()
    near32 = near.to(device=verts_tgt.device, dtype=torch.float32).contiguous()
    far32 = far.to(device=verts_tgt.device, dtype=torch.float32).contiguous()
    flow = torch.ops.fgp.flow_encode(bvh.verts, vs, bvh.faces, K, w2c, near32, far32, bvh.nodes, bvh.tris, H, W,
                                     N, float(delta), sampling == "uniform", dtype or verts_tgt.dtype, False)
    if not return_aux:
        return flow
    dt = verts_tgt.dtype
    raster = native_rasterize(verts_tgt, faces, camera)
    depths = sample_depths(raster, near.to(dt), far.to(dt), N, delta, sampling)
    cam = camera.to(dtype=dt)
    points = cam.camera_to_world(depths[..., None] * cam.pixel_rays(B)[:, None])
    field = bvh.surface_field(points.reshape(B, -1, 3), verts_src)
    aux = {"depth": raster.depth, "face_id": raster.face_id, "mask": raster.mask, "bary": raster.bary,
           "points": points, "p_src": field.p_src.view(B, N, H, W, 3),
           "sample_face_id": field.face_id.view(B, N, H, W), "offset": field.offset.view(B, N, H, W)}
    return flow, aux


register_backend("cpp", flow_encode=native_flow_encode, available=cpp_unavailable_reason, priority=10,
                 surface_field=native_surface_field, rasterize=native_rasterize)
register_backend("cuda", flow_encode=native_flow_encode, available=cuda_unavailable_reason, priority=30,
                 surface_field=native_surface_field, rasterize=native_rasterize)
