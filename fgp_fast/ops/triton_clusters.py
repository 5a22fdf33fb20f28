"""The two-level hierarchy of the Triton backend, in plain torch: Morton-ordered triangle clusters.

Built once per topology (the face order along a 3D Morton curve of the build pose's centroids,
cut into clusters of ``C`` consecutive faces) and refit every frame (the cluster triangles gathered
into a structure-of-arrays layout the kernels load as C-wide vectors, plus each cluster's AABB and
one point on its first triangle, which gives a cheap distance upper bound). Correctness never
depends on the order, only culling quality does: a cluster is skipped only when its box's lower
bound cannot reach a sample's best distance.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from .geometry import morton_order

CLUSTER = 32   # triangles per cluster (the width of the dense point x triangle test)
_CACHE_SIZE = 4


@dataclass
class ClusterTopology:
    """Per-topology part: which faces form each cluster (padded by repeating the last face)."""
    faces: Tensor        # (F, 3) int32, contiguous
    cluster_faces: Tensor  # (NC, C) int32 original face indices
    size: int

    @property
    def num_clusters(self) -> int:
        return self.cluster_faces.shape[0]


@dataclass
class ClusterFrame:
    """Per-frame part (refit): triangle coordinates and bounds, float32, in the verts' frame."""
    tri: Tensor          # (B, NC, 9, C): rows v0x v0y v0z v1x ... v2z, C faces wide
    meta: Tensor         # (B, NC, 9): box lo xyz, box hi xyz, a point on the cluster's first triangle


def build(faces: Tensor, verts: Tensor, size: int = CLUSTER) -> ClusterTopology:
    """Cluster the faces of one topology; ``verts`` (V, 3) is the build pose (any pose works)."""
    faces32 = faces.to(torch.int32).contiguous()
    F = faces.shape[0]
    order = morton_order(verts[faces.long()].mean(1).float())
    pad = (-F) % size
    order = torch.cat([order, order[-1:].expand(pad)])   # repeats do not change any minimum
    return ClusterTopology(faces32, order.view(-1, size).to(torch.int32).contiguous(), size)


def refit(topo: ClusterTopology, verts: Tensor) -> ClusterFrame:
    """Gather each cluster's triangles of ``verts`` (B, V, 3) and bound them."""
    v = verts.to(torch.float32)
    B = v.shape[0]
    tri = v[:, topo.faces.long()[topo.cluster_faces.long()]]     # (B, NC, C, 3, 3)
    lo = tri.amin((2, 3))
    hi = tri.amax((2, 3))
    rep = tri[:, :, 0, 0]
    tri_soa = tri.reshape(B, topo.num_clusters, topo.size, 9).transpose(2, 3).contiguous()
    return ClusterFrame(tri_soa, torch.cat([lo, hi, rep], -1).contiguous())


class _TopologyCache:
    """The ClusterTopology of the last few faces tensors (immutable once built, so shared freely);
    the lock guards the table."""

    def __init__(self, size: int = _CACHE_SIZE):
        self.size = size
        self._lock = threading.Lock()
        self._table: "OrderedDict[tuple, tuple[Tensor, ClusterTopology]]" = OrderedDict()

    def get(self, faces: Tensor, verts: Tensor, size: int) -> ClusterTopology:
        # The entry holds the caller's tensor itself, so its storage (data_ptr) cannot be reused by
        # another tensor while cached, and any in-place change bumps _version: a key hit is the
        # same content without reading it (no device sync: the per-call path can be graph
        # captured). A miss compares contents (a new tensor of known faces) before building.
        key = (faces.device, faces.data_ptr(), tuple(faces.shape), tuple(faces.stride()), faces.dtype,
               faces._version, size)
        with self._lock:
            hit = self._table.get(key)
            if hit is not None:
                self._table.move_to_end(key)
                return hit[1]
            topo = next((t for k, (f, t) in self._table.items() if k[-1] == size and f._version == k[5]
                         and f.device == faces.device and f.shape == faces.shape and f.dtype == faces.dtype
                         and torch.equal(f, faces)), None)   # (an entry changed in place since: stale)
            if topo is None:
                topo = build(faces.detach().clone(), verts[0] if verts.dim() == 3 else verts, size)
            self._table[key] = (faces.detach(), topo)
            while len(self._table) > self.size:
                self._table.popitem(last=False)
            return topo

    def clear(self) -> None:
        with self._lock:
            self._table.clear()


TOPOLOGIES = _TopologyCache()


def cached_topology(faces: Tensor, verts: Tensor, size: int = CLUSTER) -> ClusterTopology:
    """One ClusterTopology per (faces content, device, cluster size), built from the first pose seen."""
    return TOPOLOGIES.get(faces, verts, size)
