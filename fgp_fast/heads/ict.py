"""ICT-FaceKit Light head (MIT licence), bundled; neck rig derived here from the geometry.

Joints: `global` (root) and `neck`.
- root pivot: the centroid of the mesh's open boundary, the cut at the base of the neck. The global
  rotation turns the whole mesh about it.
- neck pivot: the centre of the neck's cross-section halfway up the neck band: the midpoint of its
  frontmost (throat) and backmost (nape) vertices, both on the midline.
- neck band: from the highest vertex of the neck-base cut (y_base) to the chin landmark (y_top).
  Neck weight w = smoothstep((y - y_base) / (y_top - y_base)) on the template's height: 0 at and
  below the cut (shoulders stay), 1 on the head; C1 in between. Mouth socket, eye sockets and
  eyeballs have weight 1.
Both pivots are vertex averages, so they follow identity and expression like FLAME's regressor.
"""
from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import torch

from .base import HeadModel
from ..errors import InputError

__all__ = ["ICTHead", "ict_asset_path", "derive_neck_rig"]

_KEYS = (
    "v_template", "faces", "uv", "faces_uv", "shapedirs", "exprdirs", "expression_names",
    "region", "region_names", "landmarks_68",
)  # fmt: skip
_RIGID_REGIONS = ("mouth_socket", "eye_socket_left", "eye_socket_right", "eyeball_left", "eyeball_right")
_CHIN_LANDMARK = 8  # Multi-PIE 68: the chin tip


def ict_asset_path():
    return resources.files("fgp_fast") / "assets" / "ict_facekit_head.npz"


@functools.lru_cache(maxsize=4)
def _load_npz(path: str) -> dict:
    """Arrays of an ICT npz, bases as float32; read once per process."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"ICT head model file not found: {path}") from None
    except Exception as e:
        raise InputError(f"could not read ICT head model file {path}: {e}") from e
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise InputError(f"ICT head model file {path} lacks keys: {', '.join(missing)}")
    for k in ("shapedirs", "exprdirs"):
        data[k] = data[k].astype(np.float32)
    return data


def _boundary_vertices(faces: np.ndarray, n_vert: int) -> np.ndarray:
    """Vertices on edges used by exactly one face."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    e.sort(axis=1)
    keys, counts = np.unique(e[:, 0] * n_vert + e[:, 1], return_counts=True)
    once = keys[counts == 1]
    return np.unique(np.concatenate([once // n_vert, once % n_vert]))


def derive_neck_rig(v: np.ndarray, faces: np.ndarray, rigid: np.ndarray, chin_vertex: int):
    """-> joint_regressor (2, V), weights (V, 2), (y_base, y_top). See the module docstring."""
    n_vert = v.shape[0]
    y = v[:, 1].astype(np.float64)
    y_top = y[chin_vertex]
    cut = _boundary_vertices(faces, n_vert)
    cut = cut[y[cut] < y_top]
    if cut.size == 0:
        raise InputError("ICT mesh has no open boundary below the chin (neck base) to rig from")
    y_base = y[cut].max()
    band = y_top - y_base
    y_mid = 0.5 * (y_base + y_top)
    ring = np.flatnonzero(np.abs(y - y_mid) < 0.05 * band)
    if ring.size < 4:
        raise InputError("ICT mesh has too few vertices around the middle of the neck")
    z = v[ring, 2]
    throat, nape = ring[z.argmax()], ring[z.argmin()]

    regressor = np.zeros((2, n_vert))
    regressor[0, cut] = 1.0 / cut.size
    regressor[1, [throat, nape]] = 0.5

    t = np.clip((y - y_base) / band, 0.0, 1.0)
    w = t * t * (3 - 2 * t)
    w[rigid] = 1.0
    return regressor, np.stack([1 - w, w], axis=1), (float(y_base), float(y_top))


def _vertex_embedding(faces: np.ndarray, vertex_ids: np.ndarray):
    """Each vertex as (first face containing it, one-hot barycentrics)."""
    flat = faces.reshape(-1)
    first = np.array([np.flatnonzero(flat == i)[0] for i in vertex_ids])
    bary = np.zeros((len(vertex_ids), 3))
    bary[np.arange(len(vertex_ids)), first % 3] = 1.0
    return first // 3, bary


class ICTHead(HeadModel):
    """ICT-FaceKit Light: 17,202 vertices, 50 identity and 53 ARKit-named expression blendshapes."""

    name = "ict"

    def __init__(self, path=None, n_shape: int | None = None):
        path = str(path) if path is not None else str(ict_asset_path())
        d = _load_npz(path)
        n_file = d["shapedirs"].shape[2]
        n_shape = n_file if n_shape is None else max(0, min(n_shape, n_file))
        self.region_names = tuple(str(n) for n in d["region_names"])
        rigid = np.isin(d["region"], [i for i, n in enumerate(self.region_names) if n in _RIGID_REGIONS])
        self.landmarks_68 = torch.as_tensor(d["landmarks_68"].astype(np.int64))
        regressor, weights, self.neck_band = derive_neck_rig(
            d["v_template"], d["faces"], rigid, int(d["landmarks_68"][_CHIN_LANDMARK])
        )
        lm_faces, lm_bary = _vertex_embedding(d["faces"], d["landmarks_68"])
        super().__init__(
            v_template=d["v_template"],
            faces=d["faces"],
            shapedirs=d["shapedirs"][:, :, :n_shape],
            exprdirs=d["exprdirs"],
            joint_names=("global", "neck"),
            parents=(-1, 0),
            joint_regressor=regressor,
            skinning_weights=weights,  # float64: rows sum to 1 to rounding
            expression_names=tuple(str(n) for n in d["expression_names"]),
            landmark_faces=lm_faces,
            landmark_bary=lm_bary,
        )
        self.uv = torch.as_tensor(d["uv"])
        self.faces_uv = torch.as_tensor(d["faces_uv"].astype(np.int64))
        self.region = torch.as_tensor(d["region"].astype(np.int64))
        self.source = str(d["source"]) if "source" in d else ""

    def to(self, device=None, dtype: torch.dtype | None = None) -> ICTHead:
        super().to(device, dtype)
        self.uv = self.uv.to(device=self.device, dtype=dtype)
        for k in ("faces_uv", "region", "landmarks_68"):
            setattr(self, k, getattr(self, k).to(self.device))
        return self

    def uv_charts(self) -> torch.Tensor:
        """(F,) chart ids for ``fgp_fast.render.bake_texture``: the UV tile (floor u), with each eyeball
        on its own, because the eyeballs' UVs reuse the face's unit square."""
        tile = torch.floor(self.uv[self.faces_uv[:, 0], 0]).long()
        region = self.region[self.faces[:, 0].long()]
        charts = tile.clone()
        for k, name in enumerate(("eyeball_left", "eyeball_right")):
            charts[region == self.region_names.index(name)] = int(tile.max()) + 1 + k
        return charts
