"""``FlowEncoder``: the per-frame form of ``ops.flow_encode`` for one topology, on any backend.

It validates through the same ``check_flow_call`` and resolves near/far through the same
``resolve_near_far`` as ``ops.flow_encode``, so both accept and reject exactly the same inputs and
give the same dtype; what it adds is state kept across frames: a private, validated copy of the
faces, the backend's per-topology structures (a BVH refit in place, cluster hierarchy) and scratch
buffers, and ``out=``.
"""
from __future__ import annotations

import threading

import torch
from torch import Tensor

from ..camera import Camera
from .backends import get_backend
from .checks import check_flow_args, check_flow_call, resolve_near_far
from .topology import Topology


class _ViaFlowEncode:
    """The encoder of a backend without per-topology state: its ``flow_encode``, copied into out."""

    def __init__(self, backend, topology: Topology, n_samples: int, delta: float, sampling: str):
        self.backend, self.topology = backend, topology
        self.n_samples, self.delta, self.sampling = n_samples, delta, sampling

    def encode(self, verts_tgt, verts_src, camera, near, far, out):
        flow = self.backend.flow_encode(verts_tgt, verts_src, self.topology.faces, camera, self.n_samples,
                                        self.delta, near, far, self.sampling, False, out.dtype)
        return out.copy_(flow)


class FlowEncoder:
    """Fused 3D-flow encoder for one topology, reused across frames.

    ``FlowEncoder(faces, backend="auto", n_samples=20, delta=0.01, sampling="depth", dtype=None)``
    then ``enc(verts_tgt, verts_src, camera, near=None, far=None, out=None)`` returns what
    ``ops.flow_encode`` returns for the same arguments on that backend: the (B, 3N, H, W) flow in
    ``dtype`` (default: ``out``'s dtype, else the vertices'). The faces fix the device; the
    backend is resolved for it when the encoder is made. With ``out=`` (contiguous, the right
    shape) the flow is written there; the cpp and cuda backends then allocate nothing.

    ``validate=False`` skips the checks that read tensor values (NaN/Inf, magnitudes, a singular
    camera, the mesh in front of the camera), each a GPU sync: for CUDA-graph capture, or once the
    inputs are known good. Shapes, dtypes and devices are always checked. Calls on one encoder are
    serialised by a lock (it reuses its buffers); use one encoder per thread for parallelism.
    """

    def __init__(self, faces: Tensor, backend: str = "auto", n_samples: int = 20, delta: float = 0.01,
                 sampling: str = "depth", dtype: torch.dtype | None = None, validate: bool = True):
        self.n_samples, self.delta = check_flow_args(n_samples, delta, None, None, sampling, dtype)
        self.sampling, self.dtype, self.validate = sampling, dtype, bool(validate)
        self.topology = Topology(faces)
        self._backend = get_backend(backend, self.topology.device, "flow_encode")
        make = self._backend.encoder or (lambda *a: _ViaFlowEncode(self._backend, *a))
        self._impl = make(self.topology, self.n_samples, self.delta, sampling)
        self._buf: dict = {}
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """The backend this encoder runs on (``"auto"`` resolved)."""
        return self._backend.name

    @property
    def device(self) -> torch.device:
        return self.topology.device

    def _buffer(self, name: str, shape, dtype) -> Tensor:
        t = self._buf.get(name)
        if t is None or t.shape != torch.Size(shape) or t.dtype != dtype:
            t = self._buf[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return t

    def __call__(self, verts_tgt: Tensor, verts_src: Tensor, camera: Camera, near: float | None = None,
                 far: float | None = None, out: Tensor | None = None) -> Tensor:
        with self._lock:
            return self._encode(verts_tgt, verts_src, camera, near, far, out)

    encode = __call__

    def _encode(self, verts_tgt, verts_src, camera, near, far, out):
        _, _, dtype = check_flow_call(verts_tgt, verts_src, self.topology, camera, self.n_samples, self.delta,
                                      near, far, self.sampling, self.dtype, out, data=self.validate)
        B, V, dt = verts_tgt.shape[0], verts_tgt.shape[1], verts_tgt.dtype
        near_t, far_t = resolve_near_far(verts_tgt, camera, near, far,
                                         out=(self._buffer("near", (B,), dt), self._buffer("far", (B,), dt)),
                                         scratch=self._buffer("z", (B, V, 1), dt), data=self.validate)
        if out is None:
            out = torch.empty((B, 3 * self.n_samples, camera.height, camera.width), dtype=dtype, device=self.device)
        return self._impl.encode(verts_tgt, verts_src, camera, near_t, far_t, out)
