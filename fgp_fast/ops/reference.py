"""Plain-PyTorch reference of the 3D-flow ops: the executable form of DESIGN.md's flow section.

Inputs here are already validated (see ``fgp_fast.ops``). Every fused backend is tested against
these functions. They run on any device and in float32/float64.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..camera import Camera, apply_rows
from .flow_aux import build_aux, sample_points
from .geometry import face_normals, morton_order, point_triangle_dist2, projection_barycentric

Z_MIN = 1e-6  # triangles with a vertex at or behind this camera depth are not rasterised


class Raster(NamedTuple):
    depth: Tensor     # (B, H, W) camera z of the nearest hit, 0 off-mesh
    face_id: Tensor   # (B, H, W) int64, -1 off-mesh
    bary: Tensor      # (B, H, W, 3) perspective-correct barycentrics, 0 off-mesh
    mask: Tensor      # (B, H, W) bool


class SurfaceField(NamedTuple):
    p_src: Tensor     # (B, P, 3) the points carried onto the source mesh
    face_id: Tensor   # (B, P) int64 nearest target triangle
    bary: Tensor      # (B, P, 3) barycentrics of the projection onto that triangle's plane
    offset: Tensor    # (B, P) signed distance along the target face normal


# ---------------------------------------------------------------------------------------------
# rasterisation


def rasterize(verts: Tensor, faces: Tensor, camera: Camera) -> Raster:
    """Z-buffer rasterisation: nearest hit per pixel centre; both sides of every triangle.

    A pixel centre on an edge counts as inside; equal depths go to the lowest face index.
    """
    B, H, W = verts.shape[0], camera.height, camera.width
    dt, dev = verts.dtype, verts.device
    K, _ = camera.to(dtype=dt).expand(B)
    vc = camera.to(dtype=dt).world_to_camera(verts)
    faces = faces.long()
    F = faces.shape[0]
    tri = vc[:, faces]                                   # (B, F, 3, 3) camera frame
    z = tri[..., 2]
    proj = apply_rows(K[:, None, None], tri)
    uv = proj[..., :2] / torch.where(z > Z_MIN, z, torch.ones_like(z))[..., None]

    # Candidate pixel ranges: pixel x is covered when its centre x + 0.5 lies in [min u, max u].
    lo = torch.ceil(uv.amin(2) - 0.5).clamp(min=0)
    hi = torch.floor(uv.amax(2) - 0.5)
    hi = torch.minimum(hi, torch.tensor([W - 1, H - 1], dtype=dt, device=dev))
    ext = hi - lo + 1                                     # (B, F, 2) pixels per axis
    keep = (z > Z_MIN).all(-1) & (ext > 0).all(-1)
    b_idx, f_idx = keep.nonzero(as_tuple=True)
    if b_idx.numel() == 0:
        return _empty_raster(B, H, W, dt, dev)
    lo = lo[b_idx, f_idx].long()
    ext = ext[b_idx, f_idx].long()
    uv_t, z_t = uv[b_idx, f_idx], z[b_idx, f_idx]       # (T, 3, 2), (T, 3)

    # Bucket triangles by bounding-box size so each bucket enumerates a fixed S x S pixel grid.
    size = ext.amax(-1)
    bucket = torch.ceil(torch.log2(size.to(torch.float64))).long()
    cands = []
    for k in torch.unique(bucket).tolist():
        sel = (bucket == k).nonzero(as_tuple=True)[0]
        S = 1 << k
        per_chunk = max(1, (1 << 22) // (S * S))
        for start in range(0, sel.numel(), per_chunk):
            cands.append(_cover(sel[start:start + per_chunk], S, lo, ext, uv_t, z_t, b_idx, f_idx, H, W))
    pix = torch.cat([c[0] for c in cands])
    depth = torch.cat([c[1] for c in cands])
    face = torch.cat([c[2] for c in cands])
    bary = torch.cat([c[3] for c in cands])

    n_pix = B * H * W
    zbuf = torch.full((n_pix,), float("inf"), dtype=dt, device=dev).scatter_reduce(
        0, pix, depth, "amin")
    front = depth == zbuf[pix]
    pix, face, bary, depth = pix[front], face[front], bary[front], depth[front]
    fbuf = torch.full((n_pix,), F, dtype=torch.long, device=dev).scatter_reduce(0, pix, face, "amin")
    win = face == fbuf[pix]
    pix, face, bary, depth = pix[win], face[win], bary[win], depth[win]

    out_depth = torch.zeros(n_pix, dtype=dt, device=dev).index_put_((pix,), depth)
    out_face = torch.full((n_pix,), -1, dtype=torch.long, device=dev).index_put_((pix,), face)
    out_bary = torch.zeros(n_pix, 3, dtype=dt, device=dev).index_put_((pix,), bary)
    return Raster(out_depth.view(B, H, W), out_face.view(B, H, W), out_bary.view(B, H, W, 3),
                  (out_face >= 0).view(B, H, W))


def _cover(sel, S, lo, ext, uv_t, z_t, b_idx, f_idx, H, W):
    """Pixels of an S x S grid per triangle whose centres the triangle covers."""
    dt, dev = uv_t.dtype, uv_t.device
    oy, ox = torch.meshgrid(torch.arange(S, device=dev), torch.arange(S, device=dev), indexing="ij")
    ox, oy = ox.reshape(1, -1), oy.reshape(1, -1)
    inside_box = (ox < ext[sel, 0:1]) & (oy < ext[sel, 1:2])
    px = lo[sel, 0:1] + ox
    py = lo[sel, 1:2] + oy
    t, j = inside_box.nonzero(as_tuple=True)
    tri = sel[t]
    px, py = px[t, j], py[t, j]
    cx, cy = px.to(dt) + 0.5, py.to(dt) + 0.5
    q = uv_t[tri]                                         # (C, 3, 2)
    # Edge functions give screen-space barycentrics; the sign of the area makes both sides count.
    e0 = (q[:, 2, 0] - q[:, 1, 0]) * (cy - q[:, 1, 1]) - (q[:, 2, 1] - q[:, 1, 1]) * (cx - q[:, 1, 0])
    e1 = (q[:, 0, 0] - q[:, 2, 0]) * (cy - q[:, 2, 1]) - (q[:, 0, 1] - q[:, 2, 1]) * (cx - q[:, 2, 0])
    e2 = (q[:, 1, 0] - q[:, 0, 0]) * (cy - q[:, 0, 1]) - (q[:, 1, 1] - q[:, 0, 1]) * (cx - q[:, 0, 0])
    area = e0 + e1 + e2
    lam = torch.stack([e0, e1, e2], -1) / torch.where(area == 0, torch.ones_like(area), area)[:, None]
    inside = (area != 0) & (lam >= 0).all(-1)
    tri, px, py, lam = tri[inside], px[inside], py[inside], lam[inside]
    # Perspective-correct: screen barycentrics weight 1/z.
    w = lam / z_t[tri]
    inv_depth = w.sum(-1)
    bary = w / inv_depth[:, None]
    pix = (b_idx[tri] * H + py) * W + px
    return pix, 1.0 / inv_depth, f_idx[tri], bary


def _empty_raster(B, H, W, dt, dev) -> Raster:
    return Raster(torch.zeros(B, H, W, dtype=dt, device=dev),
                  torch.full((B, H, W), -1, dtype=torch.long, device=dev),
                  torch.zeros(B, H, W, 3, dtype=dt, device=dev),
                  torch.zeros(B, H, W, dtype=torch.bool, device=dev))


# ---------------------------------------------------------------------------------------------
# nearest triangle and the surface field

CLUSTER = 16          # triangles per cluster of the culling hierarchy
QUERY_CHUNK = 4096    # points per culling step
PAIR_CHUNK = 8192     # (point, cluster) pairs evaluated at once
UPPER_BOUND_CLUSTERS = 8  # clusters searched first to get a tight distance bound

# The tie rule (docs/tie_rule.md): every triangle whose distance d is within
# eps(d_min) = TIE_ABS + TIE_REL * d_min of the minimum counts as tied, and the lowest face index
# wins. eps is ~500x the float32 rounding of a point-triangle distance (<= 9u|x| + 3u d, u = 2^-24,
# |x| the coordinate magnitude) for coordinates within +-2 m, so exact ties (a vertex or edge
# shared by several triangles) are tied in every backend and dtype. Both are powers of two, so
# every backend computes the same bound from the same d_min.
TIE_ABS = 2.0 ** -17  # metres (7.6 um)
TIE_REL = 2.0 ** -14


def tie_bound2(best_d2: Tensor) -> Tensor:
    """Squared tie bound (d_min * (1 + TIE_REL) + TIE_ABS)^2 from d_min^2, in best_d2's dtype.

    The operations (sqrt, multiply, add, square; no fused multiply-add) are the ones every fused
    backend performs, so in float32 they all get the same bound bit for bit.
    """
    t = best_d2.sqrt() * (1 + TIE_REL) + TIE_ABS
    return t * t


def nearest_faces(points: Tensor, tri: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest triangle for each point under the tie rule: (face index (P,), squared distance to the
    mesh (P,), i.e. the minimum, which the chosen face is within the tie bound of).

    The answer is the lowest face index among the triangles whose squared distance is
    <= tie_bound2(minimum squared distance). Faces are grouped into spatial clusters whose boxes
    give distance lower bounds; a cluster is searched only if its bound can reach the tie bound of
    the best distance found so far, so the answer equals a brute-force search.
    """
    F, dev = tri.shape[0], tri.device
    order = morton_order(tri.mean(1))
    pad = (-F) % CLUSTER
    order = torch.cat([order, order[-1:].expand(pad)])   # repeats do not change the minimum
    cl_faces = order.view(-1, CLUSTER)                   # (nc, C)
    cl_tri = tri[cl_faces]                               # (nc, C, 3, 3)
    box_lo, box_hi = cl_tri.amin((1, 2)), cl_tri.amax((1, 2))
    out_face = torch.empty(points.shape[0], dtype=torch.long, device=dev)
    out_d2 = torch.empty(points.shape[0], dtype=tri.dtype, device=dev)
    for s in range(0, points.shape[0], QUERY_CHUNK):
        p = points[s:s + QUERY_CHUNK]
        gap = (box_lo[None] - p[:, None]).clamp(min=0) + (p[:, None] - box_hi[None]).clamp(min=0)
        lower = (gap ** 2).sum(-1)                       # (Q, nc)
        # Upper bound: exact distance to the few clusters with the smallest lower bounds.
        k = min(UPPER_BOUND_CLUSTERS, lower.shape[1])
        first = lower.topk(k, dim=1, largest=False).indices.reshape(-1)
        p_rep = p[:, None].expand(-1, k, -1).reshape(-1, 3)
        upper = _cluster_d2(p_rep, cl_tri[first]).amin(1).view(-1, k).amin(1)
        # Small relative slack keeps rounding in the bounds from dropping a tied cluster.
        qi, ci = (lower <= tie_bound2(upper)[:, None] * (1 + 1e-4) + 1e-12).nonzero(as_tuple=True)
        face, d2 = _window_min(p, qi, cl_tri[ci], cl_faces[ci], F)
        out_face[s:s + QUERY_CHUNK] = face
        out_d2[s:s + QUERY_CHUNK] = d2
    return out_face, out_d2


def _cluster_d2(p: Tensor, tri: Tensor) -> Tensor:
    """Squared distances (Q, C) from p (Q, 3) to each row's C triangles (Q, C, 3, 3)."""
    return point_triangle_dist2(p[:, None], tri[:, :, 0], tri[:, :, 1], tri[:, :, 2])


def _window_min(p: Tensor, qi: Tensor, tri: Tensor, faces: Tensor, F: int) -> tuple[Tensor, Tensor]:
    """The tie rule over (point qi[k], triangles tri[k] (C, 3, 3) with ids faces[k]) pairs: per point
    of p, the lowest face within tie_bound2 of its minimum, and that minimum."""
    Q, dev = p.shape[0], p.device
    d2 = torch.cat([_cluster_d2(p[qi[k:k + PAIR_CHUNK]], tri[k:k + PAIR_CHUNK])
                    for k in range(0, qi.numel(), PAIR_CHUNK)]) if qi.numel() else p.new_empty(0, faces.shape[1])
    best = torch.full((Q,), float("inf"), dtype=p.dtype, device=dev).scatter_reduce(0, qi, d2.amin(1), "amin")
    inside = d2 <= tie_bound2(best)[qi][:, None]
    big = torch.iinfo(torch.long).max
    pair_face = torch.where(inside, faces, torch.full_like(faces, big)).amin(1)
    face = torch.full((Q,), big, dtype=torch.long, device=dev).scatter_reduce(0, qi, pair_face, "amin")
    return face.clamp(max=F), best


def nearest_faces_brute_force(points: Tensor, tri: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """The same answer as ``nearest_faces`` by testing every triangle (for tests; slow)."""
    F = tri.shape[0]
    faces_idx = torch.arange(F, device=tri.device)
    out = []
    for s in range(0, points.shape[0], chunk):
        p = points[s:s + chunk]
        qi = torch.arange(p.shape[0], device=p.device)
        out.append(_window_min(p, qi, tri[None].expand(p.shape[0], -1, -1, -1),
                               faces_idx[None].expand(p.shape[0], -1), F))
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def surface_field(points: Tensor, verts_tgt: Tensor, verts_src: Tensor, faces: Tensor) -> SurfaceField:
    """GNARF surface field: carry world points near M_tgt onto M_src through the nearest triangle."""
    faces = faces.long()
    tri_t = verts_tgt[:, faces]                          # (B, F, 3, 3)
    tri_s = verts_src[:, faces]
    p_src, face_id, bary, offset = [], [], [], []
    for b in range(points.shape[0]):
        face, _ = nearest_faces(points[b], tri_t[b])
        tt, ts = tri_t[b, face], tri_s[b, face]          # (P, 3, 3)
        w = projection_barycentric(points[b], tt)
        n_t, n_s = face_normals(tt), face_normals(ts)
        on_plane_t = (w[:, :, None] * tt).sum(1)
        h = ((points[b] - on_plane_t) * n_t).sum(-1)
        p_src.append((w[:, :, None] * ts).sum(1) + h[:, None] * n_s)
        face_id.append(face)
        bary.append(w)
        offset.append(h)
    return SurfaceField(torch.stack(p_src), torch.stack(face_id), torch.stack(bary), torch.stack(offset))


# ---------------------------------------------------------------------------------------------
# the fused op, composed


def flow_encode(verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, camera: Camera, n_samples: int,
                delta: float, near: Tensor, far: Tensor, sampling: str, return_aux: bool,
                dtype: torch.dtype | None):
    """The 3D flow map (B, 3N, H, W): F[b, 3n+c, y, x] = (R_w2c (p_src - p_n))[c]."""
    B, H, W, N = verts_tgt.shape[0], camera.height, camera.width, n_samples
    cam = camera.to(dtype=verts_tgt.dtype)
    raster = rasterize(verts_tgt, faces, cam)
    points = sample_points(raster, cam, near, far, N, delta, sampling)    # (B, N, H, W, 3)
    field = surface_field(points.reshape(B, -1, 3), verts_tgt, verts_src, faces)
    _, w2c = cam.expand(B)
    flow_cam = apply_rows(w2c[:, None, :3, :3], field.p_src - points.reshape(B, -1, 3))
    flow = flow_cam.view(B, N, H, W, 3).permute(0, 1, 4, 2, 3).reshape(B, 3 * N, H, W)
    flow = flow.to(dtype or verts_tgt.dtype)
    if not return_aux:
        return flow
    return flow, build_aux(raster, points, field.p_src, field.face_id, field.offset)
