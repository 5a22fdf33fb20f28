"""Batched point/triangle geometry in plain PyTorch (the executable form of DESIGN.md's maths)."""
from __future__ import annotations

import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    return num / torch.where(den == 0, torch.ones_like(den), den)


def closest_point_barycentric(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Barycentrics (..., 3) of the point of triangle (a, b, c) closest to p (Ericson's region test).

    All inputs broadcast over leading dimensions. Degenerate triangles fall into a vertex or an
    edge region, so no division by zero reaches the result.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    zero, one = torch.zeros_like(d1), torch.ones_like(d1)
    # Interior (the fallback); each region below overrides it, the earliest test in Ericson's order last.
    den = va + vb + vc
    v_in, w_in = _safe_div(vb, den), _safe_div(vc, den)
    bary = torch.stack([1 - v_in - w_in, v_in, w_in], -1)

    def pick(cond: Tensor, u: Tensor, v: Tensor, w: Tensor) -> None:
        nonlocal bary
        bary = torch.where(cond[..., None], torch.stack([u, v, w], -1), bary)

    t_bc = _safe_div(d4 - d3, (d4 - d3) + (d5 - d6))
    pick((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), zero, 1 - t_bc, t_bc)        # edge BC
    t_ac = _safe_div(d2, d2 - d6)
    pick((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - t_ac, zero, t_ac)                   # edge AC
    pick((d6 >= 0) & (d5 <= d6), zero, zero, one)                                     # vertex C
    t_ab = _safe_div(d1, d1 - d3)
    pick((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - t_ab, t_ab, zero)                   # edge AB
    pick((d3 >= 0) & (d4 <= d3), zero, one, zero)                                     # vertex B
    pick((d1 <= 0) & (d2 <= 0), one, zero, zero)                                      # vertex A
    return bary


def point_triangle_dist2(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Squared distance from p to triangle (a, b, c), from the explicit residual p - q."""
    w = closest_point_barycentric(p, a, b, c)
    q = w[..., :1] * a + w[..., 1:2] * b + w[..., 2:] * c
    return ((p - q) ** 2).sum(-1)


def face_normals(tri: Tensor) -> Tensor:
    """Unit normals (..., 3) of triangles (..., 3, 3); zero for degenerate triangles."""
    n = torch.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :], dim=-1)
    length = n.norm(dim=-1, keepdim=True)
    return torch.where(length > 0, n / torch.where(length > 0, length, torch.ones_like(length)), n)


def projection_barycentric(p: Tensor, tri: Tensor) -> Tensor:
    """Barycentrics of p's orthogonal projection onto the plane of tri (..., 3, 3), not clamped.

    For a degenerate triangle (no plane) it returns the closest-point barycentrics instead.
    """
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    v0, v1, v2 = b - a, c - a, p - a
    d00, d01, d11 = _dot(v0, v0), _dot(v0, v1), _dot(v1, v1)
    d20, d21 = _dot(v2, v0), _dot(v2, v1)
    den = d00 * d11 - d01 * d01
    v = _safe_div(d11 * d20 - d01 * d21, den)
    w = _safe_div(d00 * d21 - d01 * d20, den)
    proj = torch.stack([1 - v - w, v, w], -1)
    return torch.where((den > 0)[..., None], proj, closest_point_barycentric(p, a, b, c))


def morton_order(centroids: Tensor) -> Tensor:
    """Order of points (P, 3) along a 3D Morton curve (10 bits per axis), stable on equal codes.

    Consecutive faces in this order are spatially close, which makes tight clusters for culling.
    """
    lo, hi = centroids.amin(0), centroids.amax(0)
    q = ((centroids - lo) / (hi - lo).clamp(min=1e-12) * 1023).long().clamp(0, 1023)
    code = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    for bit in range(10):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
    return torch.argsort(code, stable=True)
