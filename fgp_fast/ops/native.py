"""Native backends "cpp" (C++/OpenMP, ``fgp_fast._C``) and "cuda" (``fgp_fast._C_cuda``).

The kernels are torch custom ops in the ``fgp`` namespace (``torch.ops.fgp.*``, see
csrc/cpu/ops.cpp) with fake kernels in ``native_meta.py``, so ``torch.compile`` and CUDA graphs can
capture them. ``MeshBVH`` owns the BVH of one topology (built once on the CPU, refit per frame on
the mesh's device); ``NativeEncoder`` (the state behind ``ops.FlowEncoder`` on these backends)
owns a BVH plus every scratch buffer, so a per-frame call allocates nothing beyond its output.
The stateless entry points share built BVHs through a locked cache but refit into per-call
buffers, so they are safe to call from many threads.

If the extension was not built, importing this module still works: the backends register and
report themselves unavailable with the import error as the reason.
"""
from __future__ import annotations

import importlib
import threading
from collections import OrderedDict

import torch
from torch import Tensor

from ..camera import Camera
from . import native_meta
from .native_meta import TRI_STRIDE
from .backends import register_backend
from .checks import check_points, check_verts
from .flow_aux import build_aux, sample_points
from .reference import Raster, SurfaceField
from .topology import Topology
from ..errors import BackendUnavailableError, InputError

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


if _C is not None:
    native_meta.register()   # fake kernels for torch.compile / meta tensors, checking like the real ones


# ---------------------------------------------------------------------------------------------
# BVH


def _as_batch(verts: Tensor) -> Tensor:
    return verts[None] if isinstance(verts, Tensor) and verts.dim() == 2 else verts


class _BuiltBVH:
    """The immutable part of a BVH: its topology and node layout (shared across threads)."""

    __slots__ = ("topology", "topo", "prim", "num_vertices", "device")

    def __init__(self, topology: Topology, build_verts: Tensor, num_vertices: int, leaf_size: int):
        self.topology, self.num_vertices, self.device = topology, num_vertices, topology.device
        build_v = build_verts.detach().to(device="cpu", dtype=torch.float32).contiguous()
        topo, prim = torch.ops.fgp.bvh_build(build_v, topology.faces.cpu(), leaf_size)
        self.topo, self.prim = topo.to(self.device), prim.to(self.device)


class MeshBVH:
    """The BVH of one triangle topology: built once (binned SAH, CPU), refit per frame.

    ``faces`` (F, 3) int (or a ``Topology``); ``verts`` (V, 3) or (B, V, 3) give the build
    positions (the first batch element) and the first refit. The tree stays valid for any vertex
    positions; only its quality depends on the build pose. Tensors live on ``verts``' device.
    The BVH keeps private copies of the faces (validated once) and of the refit vertices, so later
    in-place changes to the caller's tensors cannot reach the native kernels. One object is
    stateful (refit, then query): use it from one thread at a time.
    """

    def __init__(self, faces, verts: Tensor, leaf_size: int = LEAF_SIZE):
        _require_cpp()
        verts = _as_batch(verts)
        check_verts(verts)
        topology = faces if isinstance(faces, Topology) else Topology(faces)
        topology.check_mesh(verts.shape[1], verts.device)
        if verts.device.type == "cuda" and _C_cuda is None:
            raise BackendUnavailableError(f"MeshBVH on CUDA needs the cuda backend: {_CUDA_ERROR}")
        if isinstance(leaf_size, bool) or not isinstance(leaf_size, int) or not 1 <= leaf_size <= 16:
            raise InputError(f"leaf_size must be an int in [1, 16], got {leaf_size!r}")
        self._init(_BuiltBVH(topology, verts[0], verts.shape[1], leaf_size), verts, validate=False)

    @classmethod
    def _from_built(cls, built: _BuiltBVH, verts: Tensor) -> "MeshBVH":
        """A BVH with its own per-frame buffers over a shared build, refit to ``verts`` (validated)."""
        bvh = cls.__new__(cls)
        bvh._init(built, verts, validate=False)
        return bvh

    def _init(self, built: _BuiltBVH, verts: Tensor, validate: bool) -> None:
        self._built = built
        self.device = built.device
        self.num_vertices = built.num_vertices
        self.faces = built.topology.faces
        self.topo, self.prim = built.topo, built.prim
        self.nodes = self.tris = self._scratch = self.verts = None
        self.refit(verts, validate=validate)

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.topo.shape[0]

    def _ensure(self, B: int) -> None:
        if self.nodes is None or self.nodes.shape[0] != B:
            M, F, V = self.num_nodes, self.num_faces, self.num_vertices
            self.nodes = torch.empty((B, M, 8), dtype=torch.float32, device=self.device)
            self.tris = torch.empty((B, F, TRI_STRIDE), dtype=torch.float32, device=self.device)
            self._scratch = torch.empty((B, M), dtype=torch.int32, device=self.device)
            self.verts = torch.empty((B, V, 3), dtype=torch.float32, device=self.device)

    def refit(self, verts: Tensor, validate: bool = True) -> "MeshBVH":
        """Move the boxes to new vertex positions (B, V, 3) or (V, 3); the topology is kept.

        The positions are copied (as float32) into the BVH's own buffer; ``validate=False`` skips
        the data checks (NaN/Inf, magnitude) for callers that made them already.
        """
        verts = _as_batch(verts)
        if not isinstance(verts, Tensor) or verts.dim() != 3 or verts.shape[1:] != (self.num_vertices, 3):
            shape = tuple(verts.shape) if isinstance(verts, Tensor) else type(verts).__name__
            raise InputError(f"verts must be (B, {self.num_vertices}, 3), got {shape}")
        if verts.device != self.device:
            raise InputError(f"verts are on {verts.device} but the BVH lives on {self.device}")
        check_verts(verts, data=validate)
        self._ensure(verts.shape[0])
        self.verts.copy_(verts.detach())
        torch.ops.fgp.bvh_refit(self.verts, self.faces, self.topo, self.prim, self.nodes, self.tris, self._scratch,
                                False)
        return self

    def surface_field(self, points: Tensor, verts_src: Tensor, validate: bool = True) -> SurfaceField:
        """DESIGN.md step 3 for world points (B, P, 3) against the last refit's target mesh.

        ``points`` and ``verts_src`` share a float dtype, the results' (computed in float32).
        """
        verts_src = _as_batch(verts_src)
        if not isinstance(verts_src, Tensor) or verts_src.shape != self.verts.shape:
            shape = tuple(verts_src.shape) if isinstance(verts_src, Tensor) else type(verts_src).__name__
            raise InputError(f"verts_src must be {tuple(self.verts.shape)}, got {shape}")
        check_verts(verts_src, "verts_src", data=validate)
        if verts_src.device != self.device:
            raise InputError(f"verts_src is on {verts_src.device} but the BVH lives on {self.device}")
        check_points(points, verts_src, data=validate)
        dt = points.dtype
        out = torch.ops.fgp.surface_field(points.detach().to(torch.float32).contiguous(), self.verts,
                                          verts_src.detach().to(torch.float32).contiguous(), self.faces,
                                          self.nodes, self.tris, False)
        return SurfaceField(out[0].to(dt), out[1], out[2].to(dt), out[3].to(dt))


class _BVHCache:
    """Built BVHs of the last few topologies, keyed by the faces' content and device.

    Only the immutable build is shared: every call gets a ``MeshBVH`` with its own refit buffers,
    so concurrent calls on the same faces cannot overwrite each other's boxes. The lock guards
    the table (lookup, build, eviction).
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._lock = threading.Lock()
        self._table: "OrderedDict[tuple, tuple[Tensor, _BuiltBVH]]" = OrderedDict()

    def bvh(self, faces: Tensor, verts_tgt: Tensor) -> MeshBVH:
        """A MeshBVH for ``faces`` refit to ``verts_tgt`` (both validated by the caller)."""
        key = (faces.device, faces.dtype, tuple(faces.shape), faces.data_ptr(), faces._version,
               verts_tgt.shape[1])
        with self._lock:
            hit = self._table.get(key)
            if hit is not None and torch.equal(hit[0], faces):
                self._table.move_to_end(key)
                built = hit[1]
            else:
                copy = faces.detach().clone()
                built = _BuiltBVH(Topology(copy), verts_tgt[0], verts_tgt.shape[1], LEAF_SIZE)
                self._table[key] = (copy, built)
                while len(self._table) > self.size:
                    self._table.popitem(last=False)
        return MeshBVH._from_built(built, verts_tgt)

    def clear(self) -> None:
        with self._lock:
            self._table.clear()


_BVHS = _BVHCache()


# ---------------------------------------------------------------------------------------------
# backend entry points (inputs already validated by fgp_fast.ops)


def _cam32(camera: Camera, B: int) -> tuple[Tensor, Tensor]:
    K, w2c = camera.expand(B)
    return K.to(torch.float32).contiguous(), w2c.to(torch.float32).contiguous()


def native_rasterize(verts: Tensor, faces: Tensor, camera: Camera) -> Raster:
    K, w2c = _cam32(camera, verts.shape[0])
    d, f, b, m = torch.ops.fgp.rasterize(verts.detach().to(torch.float32).contiguous(),
                                         faces.to(torch.int32).contiguous(), K, w2c, camera.height, camera.width,
                                         False)
    return Raster(d.to(verts.dtype), f, b.to(verts.dtype), m)


def native_surface_field(points: Tensor, verts_tgt: Tensor, verts_src: Tensor, faces: Tensor) -> SurfaceField:
    return _BVHS.bvh(faces, verts_tgt).surface_field(points, verts_src, validate=False)


def native_flow_encode(verts_tgt, verts_src, faces, camera, n_samples, delta, near, far, sampling, return_aux,
                       dtype):
    bvh = _BVHS.bvh(faces, verts_tgt)
    B, N, H, W = verts_tgt.shape[0], n_samples, camera.height, camera.width
    K, w2c = _cam32(camera, B)
    vs = verts_src.detach().to(torch.float32).contiguous()
    near32 = near.to(device=verts_tgt.device, dtype=torch.float32).contiguous()
    far32 = far.to(device=verts_tgt.device, dtype=torch.float32).contiguous()
    flow = torch.ops.fgp.flow_encode(bvh.verts, vs, bvh.faces, K, w2c, near32, far32, bvh.nodes, bvh.tris, H, W,
                                     N, float(delta), sampling == "uniform", dtype or verts_tgt.dtype, False)
    if not return_aux:
        return flow
    raster = native_rasterize(verts_tgt, faces, camera)
    points = sample_points(raster, camera, near, far, N, delta, sampling)
    field = bvh.surface_field(points.reshape(B, -1, 3), verts_src, validate=False)
    return flow, build_aux(raster, points, field.p_src, field.face_id, field.offset)


class NativeEncoder:
    """The cpp/cuda state behind ``ops.FlowEncoder``: one BVH refit per frame and every scratch
    buffer, so a call allocates nothing beyond its output (nothing with ``out=``) and copies
    nothing from the host (capture-safe on CUDA)."""

    def __init__(self, topology: Topology, n_samples: int, delta: float, sampling: str):
        _require_cpp()
        self.topology, self.n_samples, self.delta, self.uniform = topology, n_samples, delta, sampling == "uniform"
        self.bvh: MeshBVH | None = None
        self._buf: dict = {}

    def _buffer(self, name: str, shape, dtype) -> Tensor:
        t = self._buf.get(name)
        if t is None or t.shape != torch.Size(shape) or t.dtype != dtype:
            t = self._buf[name] = torch.empty(shape, dtype=dtype, device=self.topology.device)
        return t

    def _f32(self, name: str, t: Tensor) -> Tensor:
        """``t`` as a contiguous float32 tensor: itself if it is one, else copied into a buffer."""
        if t.dtype == torch.float32 and t.is_contiguous():
            return t
        return self._buffer(name, t.shape, torch.float32).copy_(t)

    def encode(self, verts_tgt: Tensor, verts_src: Tensor, camera: Camera, near: Tensor, far: Tensor,
               out: Tensor) -> Tensor:
        """Write the flow into ``out`` (inputs validated by ``ops.FlowEncoder``)."""
        if self.bvh is None:   # built on the first frame's pose
            built = _BuiltBVH(self.topology, verts_tgt[0], verts_tgt.shape[1], LEAF_SIZE)
            self.bvh = MeshBVH._from_built(built, verts_tgt)
        else:
            self.bvh.refit(verts_tgt, validate=False)
        bvh, B, H, W = self.bvh, verts_tgt.shape[0], camera.height, camera.width
        K, w2c = camera.expand(B)
        K32 = self._buffer("K", (B, 3, 3), torch.float32).copy_(K)
        w2c32 = self._buffer("w2c", (B, 4, 4), torch.float32).copy_(w2c)
        zbuf = self._buffer("zbuf", (B, H, W), torch.int64)
        torch.ops.fgp.flow_encode_out(bvh.verts, self._f32("vs", verts_src.detach()), bvh.faces, K32, w2c32,
                                      self._f32("near", near), self._f32("far", far), bvh.nodes, bvh.tris,
                                      self.n_samples, self.delta, self.uniform, zbuf, out, False)
        return out


register_backend("cpp", flow_encode=native_flow_encode, available=cpp_unavailable_reason, priority=10,
                 surface_field=native_surface_field, rasterize=native_rasterize, encoder=NativeEncoder)
register_backend("cuda", flow_encode=native_flow_encode, available=cuda_unavailable_reason, priority=30,
                 surface_field=native_surface_field, rasterize=native_rasterize, encoder=NativeEncoder)
