"""A seamless backward map: a 2D control mesh over the target image, rebuilt and rasterised per frame.

Control points, each with a target position and the source position it samples:

- head: mesh vertices visible and front-facing in the source (one per ``spacing``-pixel cell of the
  source image) and the lip and eyelid contour points, kept in a frame where they are visible and
  front-facing in the target too. Eyeball and mouth-interior vertices count as visible only inside
  the eye or inner-lip opening of that view (a depth test cannot tell a lid from the eyeball it
  rests on).
- rings: level sets of the distance to the source's head mask: just outside the silhouette, at the
  edge of a ``hair`` zone, and ``RINGS`` more out to ``falloff`` beyond it, with points every few
  pixels along them; plus still points just outside the image border. A ring point moves like the
  silhouette vertices near it (a smooth kernel average of their projected motion), fully up to the
  hair zone's edge and fading to no motion at the last ring: hair and ears follow the head's side,
  the collar follows the shoulders, and everything beyond the last ring stays exactly where it is.

The points are triangulated (Delaunay) in the target image; points of triangles that would flip
are dropped and the rest re-triangulated, so the piecewise-linear map is continuous and folds
nowhere except inside the mouth and eye openings (contour points are never dropped; the mouth fill
paints over them). What the source does not show (the side of the head turning into view) is
stretched from the nearest source pixels instead of being torn or doubled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..camera import Camera
from .features import FaceFeatures
from .polygon import inside_polygon, soft_inside

__all__ = ["ControlMesh", "FrameMesh", "rasterize_map", "RINGS"]

RINGS = 5          # ring intervals of the fade, from the hair zone's edge to the still ring
NEIGHBOURS = 16    # silhouette vertices a ring point's motion averages
SILHOUETTE = 2.5   # pixels: vertices this close to the mask's edge are the silhouette
MIN_COS = 0.2      # control vertices must face the camera at least this much in both views
COS_BAND = 0.1     # ... and are trusted fully this much above that (a soft edge: no popping)
MAX_PASSES = 3     # rounds of freeing the points of folded or over-stretched triangles
STRETCH = (0.3, 5.0)  # source/target area ratios past which a triangle's points are interpolated


@dataclass
class FrameMesh:
    """One frame's control mesh: target points (N, 2), their source points (N, 2) in pixels (centres
    at +0.5), the triangles (T, 3) that move (those with a vertex off the still ring), how many
    points were interpolated to avoid folds, and the contour points' target positions (P, 2)
    (None for a generic mesh)."""
    target: np.ndarray
    source: np.ndarray
    triangles: np.ndarray
    dropped: int
    contours: np.ndarray | None = None
    used: np.ndarray | None = None   # the points the triangles use, sorted (None: found from them)


def _project(points: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    q = pc @ K.T
    return q[:, :2] / q[:, 2:3], pc[:, 2]


def _camera_arrays(camera: Camera, b: int) -> tuple[np.ndarray, np.ndarray]:
    K = camera.K if camera.K.dim() == 2 else camera.K[b]
    w2c = camera.world_to_cam if camera.world_to_cam.dim() == 2 else camera.world_to_cam[b]
    return K.detach().cpu().double().numpy(), w2c.detach().cpu().double().numpy()


def _face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return np.cross(b - a, c - a)


def _cos_to_camera(normals: np.ndarray, points: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    eye = -w2c[:3, :3].T @ w2c[:3, 3]
    view = eye - points
    return (normals * view).sum(1) / (np.linalg.norm(normals, axis=1) * np.linalg.norm(view, axis=1) + 1e-30)


def _resample(curve: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` along a polyline (N, 2) (at least one)."""
    seg = np.hypot(*np.diff(curve, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    at = np.arange(0.0, arc[-1], step) if arc[-1] > step else np.array([0.0])
    return np.stack([np.interp(at, arc, curve[:, 0]), np.interp(at, arc, curve[:, 1])], 1)


def _level_points(dist: np.ndarray, level: float, step: float) -> np.ndarray:
    """Points every ``step`` pixels along the ``level`` set of ``dist`` (H, W) (pixel centres at +0.5)."""
    from skimage.measure import find_contours

    out = [_resample(c[:, ::-1] + 0.5, step) for c in find_contours(dist, level)
           if len(c) > 1 and np.hypot(*np.diff(c, axis=0).T).sum() >= 2 * step]
    return np.concatenate(out) if out else np.zeros((0, 2))


def _border_points(height: int, width: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points around the image a pixel outside it (so every pixel centre is triangulated) and the
    axis each may slide along (zero at the corners)."""
    def side(n):
        return np.linspace(-1.0, n + 1.0, max(2, int(math.ceil((n + 2) / step)) + 1))

    xs, ys = side(width), side(height)[1:-1]
    pts = np.concatenate([np.stack([xs, np.full_like(xs, -1.0)], 1), np.stack([xs, np.full_like(xs, height + 1.0)], 1),
                          np.stack([np.full_like(ys, -1.0), ys], 1), np.stack([np.full_like(ys, width + 1.0), ys], 1)])
    axes = np.concatenate([np.tile([1.0, 0.0], (2 * len(xs), 1)), np.tile([0.0, 1.0], (2 * len(ys), 1))])
    corner = ((pts[:, 0] == -1) | (pts[:, 0] == width + 1)) & ((pts[:, 1] == -1) | (pts[:, 1] == height + 1))
    axes[corner] = 0.0
    return pts, axes


def _signed_area(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


def _fade(t: np.ndarray) -> np.ndarray:
    """1 at t <= 0 to 0 at t >= 1, linearly: the smallest steepest slope, so the least squeeze."""
    return 1 - np.clip(t, 0, 1)


def _thin(ids: np.ndarray, uv: np.ndarray, cos: np.ndarray, spacing: float) -> np.ndarray:
    """One vertex per spacing x spacing cell: the one facing the camera most."""
    if len(ids) == 0:
        return ids
    ids = ids[np.argsort(-cos[ids], kind="stable")]
    cell = np.floor(uv[ids] / spacing).astype(np.int64)
    _, first = np.unique(cell[:, 0] * 1_000_003 + cell[:, 1], return_index=True)
    return np.sort(ids[first])


class ControlMesh:
    """The control mesh of one source (one batch element): chosen once, built per frame.

    ``verts`` (V, 3) and ``faces`` (F, 3): the source mesh; ``camera``/``b``: its view; ``depth``
    (H, W): the source z-buffer (0 off the mesh); ``features``: the head's contours and interiors
    (None: a generic mesh); ``spacing``: control point spacing, ``hair`` and ``falloff``: the ring
    zone widths, all in source pixels.
    """

    def __init__(self, verts: Tensor, faces: Tensor, camera: Camera, b: int, depth: Tensor,
                 features: FaceFeatures | None, spacing: float, hair: float, falloff: float):
        vs = verts.detach().cpu().double().numpy()
        fc = faces.detach().cpu().long().numpy()
        self.faces, self.features = fc, features
        K, w2c = _camera_arrays(camera, b)
        self.size_src = (camera.height, camera.width)
        uv, z = _project(vs, K, w2c)
        normals = np.zeros_like(vs)
        fn = _face_normals(vs, fc)
        for k in range(3):
            np.add.at(normals, fc[:, k], fn)
        cos = _cos_to_camera(normals, vs, w2c)
        H, W = camera.height, camera.width
        depth = depth.detach().cpu().double().numpy()
        ix, iy = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H) & (z > 0)
        zb = np.where(inside, depth[iy.clip(0, H - 1), ix.clip(0, W - 1)], 0.0)
        visible = inside & (zb > 0) & (z <= zb + 2.5 * z / K[1, 1])
        # Face winding sets the normals' sign: take the one most visible vertices agree with.
        self.sign = -1.0 if visible.any() and float(np.median(cos[visible])) < 0 else 1.0
        cos = cos * self.sign

        # Head control points: general vertices, then each interior's (seen through its opening).
        special = np.zeros(len(vs), bool)
        interiors = []
        if features is not None:
            self.contour_src, _ = _project(features.points(verts.detach().cpu().double()[None], faces)[0].numpy(),
                                           K, w2c)
            for verts_of, loop in zip((features.mouth_interior, *features.eye_interiors),
                                      (features.inner_lips, *features.eyes)):
                special[verts_of] = True
                seen = verts_of[visible[verts_of] & (cos[verts_of] > 0)
                                & inside_polygon(uv[verts_of], self.contour_src[loop])]
                interiors.append((_thin(seen, uv, cos, spacing / 2), loop))
        general = _thin(np.flatnonzero(visible & (cos > MIN_COS) & ~special), uv, cos, spacing)
        if features is not None:  # keep general points clear of the contours (no slivers)
            gap = ((uv[general, None] - self.contour_src[None]) ** 2).sum(-1).min(1)
            general = general[gap >= (0.6 * spacing) ** 2]
        self.ids = np.concatenate([general] + [ids for ids, _ in interiors]).astype(np.int64)
        self.interiors, start = [], len(general)
        for ids, loop in interiors:
            self.interiors.append((np.arange(start, start + len(ids)), loop))
            start += len(ids)
        self.src_uv = uv[self.ids]
        self._adjacency(fc)

        # Rings: level sets of the distance to the mask, and the silhouette vertices they follow.
        from .fill import distance_to_mask

        mask = torch.as_tensor(depth > 0)[None]
        outside = distance_to_mask(mask)[0].double().numpy()
        inward = distance_to_mask(~mask)[0].double().numpy()
        levels = hair + falloff * np.arange(RINGS + 1) / RINGS
        levels = np.maximum.accumulate(np.maximum(levels, 1.0 + np.arange(len(levels))))  # distinct rings
        step = max(2 * spacing, 1.0)
        rings = [_level_points(outside, lv, max(step, (lv - levels[max(k - 1, 0)]) * 0.8))
                 for k, lv in enumerate(levels)]
        follow = _fade((levels - hair) / max(falloff, 1e-9))
        follow[-1] = 0.0
        self.outside, self.reach = outside, float(levels[-1])
        # Border points slide along the border (the image stays covered), like rings at their distance.
        border, tangent = _border_points(H, W, step)
        at = np.floor(border).astype(np.int64)
        # (fading out two border steps early, so no border triangle reaches past the last ring)
        b_follow = _fade((outside[at[:, 1].clip(0, H - 1), at[:, 0].clip(0, W - 1)] - hair)
                         / max(falloff - 2 * step, 1e-9))
        b_follow[(tangent == 0).all(1)] = 0.0  # corners
        slide = b_follow > 0
        moving = rings[:-1] + [border[slide]]
        self.ring_src = np.concatenate(moving + [rings[-1], border[~slide]])
        self.ring_follow = np.concatenate([np.full(len(r), f) for r, f in zip(rings[:-1], follow[:-1])]
                                          + [b_follow[slide]])
        self.ring_axes = np.concatenate([np.ones((len(self.ring_follow) - int(slide.sum()), 2)), tangent[slide]])
        self.n_moving_ring = len(self.ring_follow)
        on_edge = inside & (inward[iy.clip(0, H - 1), ix.clip(0, W - 1)] <= SILHOUETTE)
        self.silhouette = _thin(np.flatnonzero(on_edge), uv, -z, spacing / 2)
        self.silhouette_src = uv[self.silhouette]
        self._ring_weights()
        contour = self.contour_src if features is not None else np.zeros((0, 2))
        self.n_head = len(self.ids) + len(contour)
        self.points_src = np.concatenate([self.src_uv, contour, self.ring_src])
        self._triangulate()
        # Occluders for the target's visibility test: the faces the source shows.
        self.occluders = np.flatnonzero(visible[fc].any(1) & ~special[fc].any(1))

    def still_region(self, base: Tensor, step: int = 1) -> Tensor:
        """(h, w) bool on the grid ``step`` times coarser than the target: the pixels whose
        still-background source point (``base`` (H, W, 2), read at the coarse pixel centres) lies
        beyond the last ring, which the map leaves exactly where they are."""
        Hs, Ws = self.size_src
        H, W = base.shape[:2]
        h, w = -(-H // step), -(-W // step)
        # base is linear in the pixel: evaluate it at the coarse centres.
        x0, dx = base[0, 0, 0], base[0, 1, 0] - base[0, 0, 0] if W > 1 else base.new_tensor(Ws / W)
        y0, dy = base[0, 0, 1], base[1, 0, 1] - base[0, 0, 1] if H > 1 else base.new_tensor(Hs / H)
        cx = x0 + dx * ((torch.arange(w, device=base.device, dtype=base.dtype) + 0.5) * step - 0.5)
        cy = y0 + dy * ((torch.arange(h, device=base.device, dtype=base.dtype) + 0.5) * step - 0.5)
        ix = cx.floor().long().clamp(0, Ws - 1).cpu()[None, :].expand(h, w)
        iy = cy.floor().long().clamp(0, Hs - 1).cpu()[:, None].expand(h, w)
        far = torch.as_tensor(self.outside >= self.reach)
        return far[iy, ix].to(base.device)

    def _adjacency(self, faces: np.ndarray) -> None:
        """Faces around each control vertex (padded with a zero-normal slot), for per-frame normals."""
        flat = faces.reshape(-1)
        order = np.argsort(flat, kind="stable")
        starts = np.searchsorted(flat[order], self.ids)
        ends = np.searchsorted(flat[order], self.ids, side="right")
        deg = max(1, int((ends - starts).max()) if len(self.ids) else 1)
        adj = np.full((len(self.ids), deg), -1, np.int64)
        for k in range(deg):
            has = starts + k < ends
            adj[has, k] = order[starts[has] + k] // 3
        extra = self.features.point_faces.numpy() if self.features is not None else np.zeros(0, np.int64)
        used = np.unique(np.concatenate([adj[adj >= 0], extra]))
        self.normal_faces = used
        self.adj_local = np.where(adj >= 0, np.searchsorted(used, np.maximum(adj, 0)), len(used))
        self.contour_local = np.searchsorted(used, extra)

    def _ring_weights(self) -> None:
        """Each moving ring point averages its NEIGHBOURS nearest silhouette vertices (in the source)
        with weights that reach zero at the farthest, so the average changes smoothly along the ring."""
        n = self.n_moving_ring
        pts = self.silhouette_src
        if len(pts) == 0:
            self.ring_nbr = np.zeros((n, 1), np.int64)
            self.ring_w = np.zeros((n, 1))
            return
        k = min(NEIGHBOURS, len(pts))
        d2 = ((self.ring_src[:n, None] - pts[None]) ** 2).sum(-1)
        nbr = np.argpartition(d2, k - 1, axis=1)[:, :k]
        dn = np.take_along_axis(d2, nbr, 1)
        reach = dn.max(1, keepdims=True) * 1.0001 + 1e-9
        w = (1 - dn / reach) ** 2
        self.ring_nbr, self.ring_w = nbr, w / w.sum(1, keepdims=True)

    def _triangulate(self) -> None:
        """One Delaunay triangulation of every point in the source image, used for every frame."""
        from scipy.sparse import csr_matrix
        from scipy.spatial import Delaunay

        pts = self.points_src
        tri = Delaunay(pts).simplices.astype(np.int64)
        area = _signed_area(pts, tri)
        tri[area < 0] = tri[area < 0][:, [0, 2, 1]]
        self.triangles = tri
        self.area_src = np.abs(area)
        n = len(pts)
        # Cotangent weights: the discrete harmonic interpolation they define reproduces affine motion
        # exactly, and they are >= 0 on a Delaunay triangulation.
        rows, cols, vals = [], [], []
        for k in range(3):
            i, j, o = tri[:, k], tri[:, (k + 1) % 3], tri[:, (k + 2) % 3]
            u, v = pts[i] - pts[o], pts[j] - pts[o]
            cot = (u * v).sum(1) / np.maximum(np.abs(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]), 1e-12)
            rows += [i, j]
            cols += [j, i]
            vals += [0.5 * cot, 0.5 * cot]
        w = csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        w.data = np.maximum(w.data, 1e-3)  # duplicates were summed: each edge holds both angles' share
        self.degree = np.asarray(w.sum(1)).ravel()
        coo = w.tocoo()
        self.edges = (coo.row.astype(np.int64), coo.col.astype(np.int64))
        self.edge_weights = coo.data
        still = np.zeros(n, bool)
        still[self.n_head + self.n_moving_ring:] = True
        self.still = still
        self.moving = tri[~still[tri].all(1)]   # the triangles with a point that moves
        self.moving_used = np.unique(self.moving)

    # ---------------------------------------------------------------------------- per frame
    def build(self, verts: Tensor, camera: Camera, b: int, depth_lr: np.ndarray, lr_scale: float) -> FrameMesh:
        """The control mesh for target vertices ``verts`` (V, 3) seen by ``camera``; ``depth_lr`` is
        the target z-buffer at ``lr_scale`` times the target resolution (0 off the mesh)."""
        vt = verts.detach().cpu().double().numpy()
        K, w2c = _camera_arrays(camera, b)
        Hs, Ws = self.size_src
        to_tgt = np.array([camera.width / Ws, camera.height / Hs])  # still background: same normalised spot
        n_c, n_h, n_r = len(self.ids), self.n_head, self.n_moving_ring

        # Where each point wants to go, and how much to trust that (1: exactly; 0: interpolate).
        base = self.points_src * to_tgt
        want = base.copy()
        trust = np.ones(len(want))
        fn = _face_normals(vt, self.faces[self.normal_faces])
        fn = np.concatenate([fn, np.zeros((1, 3))]) * self.sign
        pts = vt[self.ids]
        uv, z = _project(pts, K, w2c)
        cos = _cos_to_camera(fn[self.adj_local].sum(1), pts, w2c)
        want[:n_c] = uv
        trust[:n_c] = _ramp((cos - MIN_COS) / COS_BAND) * self._unoccluded(uv, z, cos, depth_lr, lr_scale, K)
        if self.features is not None:
            cp = self.features.points(verts.detach().cpu().double()[None], torch.as_tensor(self.faces))[0].numpy()
            cuv, _ = _project(cp, K, w2c)
            for rows, loop in self.interiors:  # seen only through the opening, in both views
                trust[rows] = _ramp(cos[rows] / COS_BAND) * soft_inside(uv[rows], cuv[loop])
            want[n_c:n_h] = cuv
            # Contours are always kept: their faces may lie on the inner lid or lip (normals
            # meaningless), and a closing lid covers its own lower contour by a hair.
        if len(self.silhouette):  # rings: the kernel average of the silhouette's motion, faded outward
            motion = _project(vt[self.silhouette], K, w2c)[0] - self.silhouette_src * to_tgt
            ring_motion = (self.ring_w[..., None] * motion[self.ring_nbr]).sum(1)
            ring = want[n_h:n_h + n_r] + self.ring_follow[:, None] * self.ring_axes * ring_motion
            inner = (self.ring_axes == 1).all(1)  # rings stay inside the image, off the border's line
            ring[inner] = np.clip(ring[inner], 0.0, [camera.width, camera.height])
            want[n_h:n_h + n_r] = ring

        # Interpolate the untrusted points' motion from their neighbours', as much as they are not
        # trusted; where a triangle still folds, or is stretched or squeezed past STRETCH, trust its
        # points (and two rings of neighbours) less, and again. Every step is continuous in the
        # pose, so the map does not pop from one frame to the next.
        protected = self.still.copy()
        protected[n_c:n_h] = True                                # contours
        protected[n_h:n_h + n_r] = (self.ring_axes != 1).any(1)  # the border slides only along itself
        motion = want - base
        pos = want
        for attempt in range(MAX_PASSES):
            pos = base + self._harmonic(motion, trust)
            if attempt == MAX_PASSES - 1:
                break
            bad = self._badness(pos)
            bad[protected] = 0.0
            for _ in range(2):  # a fold or a sliver is rarely one point wide
                np.maximum.at(bad, self.edges[0], bad[self.edges[1]].copy())
            bad[protected] = 0.0
            if not bad.any():
                break
            trust = trust * (1 - bad)
        freed = int((trust < 0.5).sum())
        contours = want[n_c:n_h].copy() if self.features is not None else None
        return FrameMesh(pos, self.points_src, self.moving, freed, contours, self.moving_used)

    def _badness(self, pos: np.ndarray) -> np.ndarray:
        """Per point, 0..1: how far its worst triangle is past STRETCH (fully at half the stretch or
        twice the squeeze bound, or folded), ramped in log area ratio."""
        at = _signed_area(pos, self.triangles)
        with np.errstate(divide="ignore"):
            log_ratio = np.log(self.area_src) - np.log(np.maximum(at, 1e-300))
        width = np.log(2.0)
        tri = np.maximum(np.clip((np.log(STRETCH[0]) - log_ratio) / width, 0, 1),
                         np.clip((log_ratio - np.log(STRETCH[1])) / width, 0, 1))
        tri = np.where((at <= 0) & (self.area_src > 1e-6), 1.0, np.where(self.area_src > 1e-6, tri, 0.0))
        out = np.zeros(len(pos))
        for k in range(3):
            np.maximum.at(out, self.triangles[:, k], tri)
        return out

    def _harmonic(self, motion: np.ndarray, trust: np.ndarray) -> np.ndarray:
        """``motion`` (N, 2) smoothed where it is not trusted: fully trusted points keep theirs, the
        others minimise the cotangent-weighted Dirichlet energy plus a pull toward their own motion
        of strength degree * trust / (1 - trust) (0 when not trusted at all)."""
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import spsolve

        free = trust < 1
        f = np.flatnonzero(free)
        if len(f) == 0:
            return motion
        pull = self.degree[f] * trust[f] / (1 - trust[f])
        # Assembled from the edge list (slicing the sparse matrix per call cost more than the solve).
        at = np.full(len(trust), -1)
        at[f] = np.arange(len(f))
        i, j = self.edges
        mine = free[i]
        i, j, w = i[mine], j[mine], self.edge_weights[mine]
        inner = free[j]
        rhs = pull[:, None] * motion[f]
        np.add.at(rhs, at[i[~inner]], w[~inner, None] * motion[j[~inner]])  # the fixed neighbours' pull
        diag = np.arange(len(f))
        lap = csc_matrix((np.concatenate([-w[inner], self.degree[f] + pull]),
                          (np.concatenate([at[i[inner]], diag]), np.concatenate([at[j[inner]], diag]))),
                         shape=(len(f), len(f)))
        out = motion.copy()
        out[f] = spsolve(lap, rhs).reshape(-1, 2)
        return out

    @staticmethod
    def _unoccluded(uv, z, cos, depth_lr, lr_scale, K) -> np.ndarray:
        """1 where a point is in front of (or within a tolerance of) the target z-buffer, falling to 0
        over one more tolerance behind it. The z-buffer is read bilinearly (empty pixels far away),
        so the answer changes smoothly as points cross its pixels."""
        h, w = depth_lr.shape
        zbuf = np.where(depth_lr > 0, depth_lr, 1e6)
        x = np.clip(uv[:, 0] * lr_scale - 0.5, 0, w - 1)
        y = np.clip(uv[:, 1] * lr_scale - 0.5, 0, h - 1)
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        fx, fy = x - x0, y - y0
        zb = ((zbuf[y0, x0] * (1 - fx) + zbuf[y0, x1] * fx) * (1 - fy)
              + (zbuf[y1, x0] * (1 - fx) + zbuf[y1, x1] * fx) * fy)
        # A low-resolution pixel spans (z / f) / lr_scale metres; slanted surfaces change depth faster.
        tol = 2.0 * z / (K[1, 1] * lr_scale) / np.maximum(cos, 0.25)
        return _ramp((zb + 2 * tol - z) / tol)


def _ramp(t: np.ndarray) -> np.ndarray:
    return np.clip(t, 0.0, 1.0)


def rasterize_map(mesh: FrameMesh, base: Tensor, backend: str, still: Tensor | None = None,
                  step: int = 1) -> Tensor:
    """The dense backward map's displacement from ``base`` (H, W, 2): the source pixel each target
    pixel samples is ``base + displacement``.

    The control mesh's piecewise-linear map on its moving triangles and ``base`` (the still map, a
    linear function of the pixel) elsewhere. The mesh's displacement from ``base`` is rasterised on
    a grid ``step`` times coarser (``still`` (h, w): coarse pixels forced to no displacement) and
    upsampled bilinearly: exact inside triangles, smooth across their edges, and exactly ``base``
    wherever the four nearest coarse pixels are still or off the mesh.
    """
    from ..ops import rasterize

    H, W = base.shape[:2]
    dev, dt = base.device, base.dtype
    disp = torch.zeros(H, W, 2, dtype=dt, device=dev)
    if len(mesh.triangles):
        to_src = np.array([float(base[0, 1, 0] - base[0, 0, 0]), float(base[1, 0, 1] - base[0, 0, 1])])
        origin = base[0, 0].double().cpu().numpy() - 0.5 * to_src  # base at pixel coordinate (0, 0)
        moved = mesh.source - (origin + mesh.target * to_src)         # per-point displacement from base
        hc, wc = -(-H // step), -(-W // step)
        pts = mesh.target / step                                      # coarse pixel coordinates
        used = mesh.used if mesh.used is not None else np.unique(mesh.triangles)
        lo = np.floor(pts[used].min(0)).clip(0, [wc, hc]).astype(int)
        hi = np.ceil(pts[used].max(0)).clip(0, [wc, hc]).astype(int)
        w, h = int(hi[0] - lo[0]), int(hi[1] - lo[1])
        if w > 0 and h > 0:
            p = torch.as_tensor(pts - lo, dtype=torch.float32)
            verts = torch.cat([p, torch.ones(len(p), 1)], 1)[None].to(dev)
            cam = Camera(torch.eye(3, device=dev), torch.eye(4, device=dev), h, w)
            faces = torch.as_tensor(mesh.triangles, device=dev)
            face = rasterize(verts, faces, cam, backend=backend).face_id[0]
            # Each triangle's displacement as an affine function of the (coarse) pixel: cheaper to
            # gather per pixel than three corners and barycentrics.
            coef = torch.as_tensor(_affine(pts - lo, moved, mesh.triangles), dtype=torch.float32, device=dev)
            ys = torch.arange(h, device=dev, dtype=torch.float32)[:, None, None] + 0.5
            xs = torch.arange(w, device=dev, dtype=torch.float32)[None, :, None] + 0.5
            c = coef.index_select(0, face.clamp(min=0).reshape(-1)).view(h, w, 3, 2)
            vals = torch.addcmul(torch.addcmul(c[:, :, 2], c[:, :, 0], xs), c[:, :, 1], ys)
            keep = face >= 0
            if still is not None:
                keep &= ~still[lo[1]:hi[1], lo[0]:hi[0]]
            coarse = torch.zeros(hc, wc, 2, device=dev)
            coarse[lo[1]:hi[1], lo[0]:hi[0]] = vals * keep[..., None]
            disp = _upsample(coarse, H, W).to(dt)
    return disp


def _affine(points: np.ndarray, values: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T, 3, 2) coefficients (a, b, c) per triangle with value(x, y) = a x + b y + c matching
    ``values`` (N, 2) at its corners ``points`` (N, 2); degenerate triangles get their mean value.
    Cramer's rule on the edge vectors (batched 3x3 solves took ~12 ms of a 40 ms frame)."""
    P, V = points[triangles].astype(np.float64), values[triangles].astype(np.float64)   # (T, 3, 2)
    e1, e2 = P[:, 1] - P[:, 0], P[:, 2] - P[:, 0]                      # (T, 2)
    d1, d2 = V[:, 1] - V[:, 0], V[:, 2] - V[:, 0]                      # (T, 2): per output channel
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]                     # = det [[x, y, 1]] of the corners
    ok = np.abs(det) > 1e-9
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)[:, None]
    a = (d1 * e2[:, 1:2] - d2 * e1[:, 1:2]) * inv
    b = (d2 * e1[:, 0:1] - d1 * e2[:, 0:1]) * inv
    c = np.where(ok[:, None], V[:, 0] - a * P[:, 0, 0:1] - b * P[:, 0, 1:2], V.mean(1))
    return np.stack([a, b, c], 1)


def _upsample(coarse: Tensor, H: int, W: int) -> Tensor:
    """Bilinear (pixel centres aligned) upsampling of an (h, w, 2) field to (H, W, 2)."""
    if coarse.shape[:2] == (H, W):
        return coarse
    if coarse.device.type == "cpu":
        try:
            import cv2
        except ImportError:
            pass
        else:
            return torch.from_numpy(cv2.resize(coarse.numpy(), (W, H), interpolation=cv2.INTER_LINEAR))
    import torch.nn.functional as Fnn

    up = Fnn.interpolate(coarse.permute(2, 0, 1)[None], size=(H, W), mode="bilinear", align_corners=False)
    return up[0].permute(1, 2, 0)
