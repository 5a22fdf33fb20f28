"""FLAME 2020 / 2023 / 2023-Open from a user-supplied file (never shipped).

Official pickles load without chumpy or scipy: a restricted unpickler admits only numpy array
reconstruction and turns chumpy objects and scipy sparse matrices into plain numpy arrays.
Nothing else in the stream is importable, so a malicious pickle cannot run code.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np

from .base import HeadModel
from ..errors import InputError

__all__ = ["FLAMEHead", "convert_flame_to_npz", "read_flame"]

FLAME_URL = "https://flame.is.tue.mpg.de"
_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
_FLAME_SHAPE = 300  # FLAME's shapedirs: 300 identity components, then expression
_JOINTS = ("global", "neck", "jaw", "eye_left", "eye_right")

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
# Object-graph plumbing of protocol-2 pickles: object creation, sets (chumpy state), bytes (py3).
_BUILTIN_GLOBALS = {
    ("copy_reg", "_reconstructor"): ("copyreg", "_reconstructor"),
    ("copyreg", "_reconstructor"): ("copyreg", "_reconstructor"),
    ("__builtin__", "object"): ("builtins", "object"),
    ("builtins", "object"): ("builtins", "object"),
    ("__builtin__", "set"): ("builtins", "set"),
    ("builtins", "set"): ("builtins", "set"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


class _ChStub:
    """Stands in for any chumpy class; a plain `Ch` keeps its value in state['x']."""

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}

    def array(self) -> np.ndarray:
        if "x" not in self.state:
            raise InputError(f"chumpy {type(self).__name__} object without a stored value")
        return np.asarray(self.state["x"])


class _SparseStub:
    """Stands in for a scipy.sparse csc/csr/coo matrix; densified from its pickled state."""

    fmt = ""

    def __setstate__(self, state):
        self.state = state

    def array(self) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape", s.get("shape")))
        data = np.asarray(s["data"])
        dense = np.zeros(shape, dtype=data.dtype)
        if self.fmt == "coo":
            row, col = s["coords"] if "coords" in s else (s["row"], s["col"])
        else:
            indptr, indices = np.asarray(s["indptr"]), np.asarray(s["indices"])
            outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
            row, col = (indices, outer) if self.fmt == "csc" else (outer, indices)
        np.add.at(dense, (np.asarray(row), np.asarray(col)), data)
        return dense


_SPARSE_STUBS = {
    f"{fmt}_{kind}": type(f"{fmt}_{kind}", (_SparseStub,), {"fmt": fmt})
    for fmt in ("csc", "csr", "coo")
    for kind in ("matrix", "array")
}


def _import(module: str, name: str):
    return getattr(importlib.import_module(module), name)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module.replace("numpy._core", "numpy.core"), name) in _NUMPY_GLOBALS:
            return _import(module, name)
        if (module, name) in _BUILTIN_GLOBALS:
            return _import(*_BUILTIN_GLOBALS[module, name])
        if module == "chumpy" or module.startswith("chumpy."):
            return type(name, (_ChStub,), {})
        if module.startswith("scipy.sparse") and name in _SPARSE_STUBS:
            return _SPARSE_STUBS[name]
        raise pickle.UnpicklingError(f"FLAME pickle references a forbidden global {module}.{name}")


def _as_array(obj, key: str, path) -> np.ndarray:
    if isinstance(obj, (_ChStub, _SparseStub)):
        obj = obj.array()
    arr = np.asarray(obj)
    if arr.dtype == object:
        raise InputError(f"FLAME file {path}: {key!r} is not a numeric array")
    return arr


def _missing_file(path) -> str:
    return (
        f"FLAME model file not found: {path}. FLAME is not shipped with fgp_fast: register at "
        f"{FLAME_URL}, download FLAME 2020 / 2023 (generic_model.pkl / flame2023.pkl) and pass its "
        f"location with load_head_model('flame', path=...)"
    )


def read_flame(path) -> dict[str, np.ndarray]:
    """The arrays of a FLAME `.pkl` (official) or `.npz` (from `convert_flame_to_npz`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(_missing_file(path))
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        else:
            with open(path, "rb") as fh:
                raw = _RestrictedUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"could not read FLAME file {path}: {e}") from e
    except Exception as e:
        raise InputError(f"could not read FLAME file {path}: {e}") from e
    if not isinstance(raw, dict):
        raise InputError(f"FLAME file {path} does not hold a dict of arrays")
    missing = [k for k in _KEYS if k not in raw]
    if missing:
        raise InputError(f"FLAME file {path} lacks keys: {', '.join(missing)}")
    return {k: _as_array(raw[k], k, path) for k in _KEYS}


def convert_flame_to_npz(pkl_path, out_path) -> Path:
    """Write the arrays FLAMEHead needs as a plain `.npz` (no pickle needed to read it back)."""
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise InputError(f"output path must end in .npz, got {out_path}")
    np.savez(out_path, **read_flame(pkl_path))
    return out_path


def _parents(kintree: np.ndarray, path) -> tuple[int, ...]:
    col = {int(j): i for i, j in enumerate(kintree[1])}
    parents = [-1] + [col.get(int(p), -2) for p in kintree[0, 1:]]
    if any(not (0 <= p < j) for j, p in enumerate(parents) if j):
        raise InputError(f"FLAME file {path}: kintree_table is not a tree ordered parent-first")
    return tuple(parents)


class FLAMEHead(HeadModel):
    """FLAME: 5023 vertices, joints global / neck / jaw / eye_left / eye_right, pose blendshapes."""

    name = "flame"

    def __init__(self, path=None, n_shape: int = 300, n_expression: int = 100):
        if path is None:
            raise InputError(_missing_file("(no path given)"))
        d = read_flame(path)
        total = d["shapedirs"].shape[2]
        n_shape = max(0, min(n_shape, _FLAME_SHAPE, total))
        n_expression = max(0, min(n_expression, total - min(_FLAME_SHAPE, total)))
        n_joints = d["kintree_table"].shape[1]
        if n_joints != len(_JOINTS) or d["posedirs"].shape[2] != 9 * (n_joints - 1):
            raise InputError(f"FLAME file {path}: expected {len(_JOINTS)} joints and 36 pose blendshapes")
        super().__init__(
            v_template=d["v_template"],
            faces=d["f"],
            shapedirs=d["shapedirs"][:, :, :n_shape],
            exprdirs=d["shapedirs"][:, :, _FLAME_SHAPE : _FLAME_SHAPE + n_expression],
            posedirs=d["posedirs"],
            joint_names=_JOINTS,
            parents=_parents(d["kintree_table"], path),
            joint_regressor=d["J_regressor"],
            skinning_weights=d["weights"],
        )
