"""Backend registry: the dispatch point that fused implementations plug into.

A backend registers a ``flow_encode`` implementation (and optionally ``surface_field``,
``rasterize`` and an ``encoder`` factory for ``ops.FlowEncoder``) with an
``available(device) -> None | reason`` probe and a priority that ``"auto"`` uses to pick the
fastest one that can run on the inputs' device.

``encoder(topology, n_samples, delta, sampling)`` returns an object whose
``encode(verts_tgt, verts_src, camera, near, far, out)`` writes the flow into ``out`` (inputs
validated, ``near``/``far`` resolved (B,) tensors in the vertices' dtype); a backend without one
is run through its ``flow_encode``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from ..errors import BackendUnavailableError, InputError


@dataclass(frozen=True)
class Backend:
    name: str
    flow_encode: Callable
    available: Callable[[torch.device], Optional[str]]
    priority: int = 0
    surface_field: Optional[Callable] = None
    rasterize: Optional[Callable] = None
    encoder: Optional[Callable] = None


_BACKENDS: dict[str, Backend] = {}
_IMPORT_ERRORS: dict[str, str] = {}
# Backends that live in optional modules; importing the module registers them.
_LAZY_MODULES = {"cpp": "fgp_fast.ops.native", "cuda": "fgp_fast.ops.native",
                 "triton": "fgp_fast.ops.triton"}


def register_backend(name: str, *, flow_encode: Callable, available: Callable, priority: int = 0,
                     surface_field: Callable | None = None, rasterize: Callable | None = None,
                     encoder: Callable | None = None) -> None:
    _BACKENDS[name] = Backend(name, flow_encode, available, priority, surface_field, rasterize, encoder)


def _load_lazy() -> None:
    import importlib

    for module in set(_LAZY_MODULES.values()):
        if module in _IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken optional backend must not break the others
            _IMPORT_ERRORS[module] = f"{type(exc).__name__}: {exc}"


def backend_names() -> list[str]:
    _load_lazy()
    return sorted(set(_BACKENDS) | set(_LAZY_MODULES))


def implemented_ops(name: str) -> set[str]:
    """The ops backend ``name`` registered (whether or not it can run here); empty if unknown."""
    _load_lazy()
    b = _BACKENDS.get(name)
    if b is None:
        return set()
    return {op for op in ("flow_encode", "surface_field", "rasterize") if getattr(b, op) is not None}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first."""
    _load_lazy()
    device = torch.device(device)
    ok = [b for b in _BACKENDS.values() if b.available(device) is None]
    return [b.name for b in sorted(ok, key=lambda b: -b.priority)]


def get_backend(name: str, device: torch.device | str, op: str = "flow_encode") -> Backend:
    """The backend called ``name`` (or the best for ``auto``), or a clear error saying why not."""
    _load_lazy()
    device = torch.device(device)
    if name == "auto":
        for candidate in available_backends(device):
            if getattr(_BACKENDS[candidate], op) is not None:
                return _BACKENDS[candidate]
        raise BackendUnavailableError(f"no backend implements {op} on {device}")
    if name not in _BACKENDS:
        if name in _LAZY_MODULES:
            module = _LAZY_MODULES[name]
            why = _IMPORT_ERRORS.get(module, "it registered no such backend")
            raise BackendUnavailableError(f"backend {name!r} is not available: importing {module} failed ({why})")
        raise InputError(f"unknown backend {name!r}; valid: {['auto'] + backend_names()}")
    backend = _BACKENDS[name]
    reason = backend.available(device)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not available on {device}: {reason}")
    if getattr(backend, op) is None:
        raise BackendUnavailableError(f"backend {name!r} does not implement {op}")
    return backend
