"""The Triton backend of the fused 3D-flow encoder (installed as ``fgp_fast.kernels``).

Importing this module registers backend ``"triton"`` with ``fgp_fast.ops``: on CUDA devices when
triton is installed, and on the CPU only under Triton's interpreter (``TRITON_INTERPRET=1`` set
before the kernels are first used; for tests). Without triton the module still imports and the
backend reports itself unavailable with the reason.

``flow_encode(..., out=)`` is the direct entry point (it also writes into a caller-owned tensor);
``torch.ops.fgp_triton.flow_encode`` / ``flow_encode_out`` are the custom ops torch.compile sees.
Two Triton kernels per frame: a tiled z-buffer rasteriser, then the encode (samples -> nearest
triangle -> surface field -> stacked flow, written once). Per-frame preparation (camera-frame
vertices, cluster refit, screen positions) is a few small torch ops.
"""
from __future__ import annotations

from ..ops.backends import register_backend
from . import clusters
from .launch import (TRITON_ERROR, backend_flow_encode, flow_encode, interpreting, kernels_module,
                     triton_rasterize, unavailable_reason)

PRIORITY = 5   # above "reference" (0), below "cpp" (10) and "cuda" (30)


def last_config() -> dict | None:
    """Block sizes the autotuner picked for the latest GPU launch (None before one / interpreted)."""
    from . import launch
    return launch.last_config


register_backend("triton", flow_encode=backend_flow_encode, available=unavailable_reason, priority=PRIORITY,
                 rasterize=triton_rasterize)

__all__ = ["flow_encode", "triton_rasterize", "unavailable_reason", "interpreting", "kernels_module",
           "last_config", "clusters", "TRITON_ERROR", "PRIORITY"]
