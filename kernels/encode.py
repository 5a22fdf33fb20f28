"""Triton kernels of the fused encoder: depth-guided samples -> surface field -> stacked flow.

Imported lazily (by ``fgp_fast.ops.triton``) because ``triton.jit`` decides at decoration
time whether a kernel is compiled or run by the interpreter (``TRITON_INTERPRET=1``).

One program = one screen tile (TILE_H x TILE_W pixels) x one sample index n x one batch element.
All arithmetic is float32 in the target camera frame (meshes are moved there in torch first;
rigid motions keep distances, and the flow R (p_src - p) is then simply p_src_cam - p_cam).

Nearest triangle, per sample p, under the tie rule (docs/tie_rule.md: the lowest face index within
the tie bound of the minimum distance):
  seed   head pixels: the rasterised face (the sample lies on its ray, |t|*||ray|| from it), an
         exact candidate and an upper bound;
  pass A tiles with background samples: upper bound min_c |p - rep_c|^2 over all clusters
         (rep_c lies on a triangle of cluster c), CB clusters per vector step;
  pass B every cluster whose AABB lower bound can reach some sample's tie bound (small relative
         slack against rounding; first a vector box-to-tile-box test of CB clusters at a time
         against the tile's largest bound, then per cluster and per sample) gets the dense
         BLOCK x C exact point-triangle test (Ericson's regions, the same operations as
         fgp_fast.ops.geometry, in CS-wide slices) and a running tie-rule state (the lowest face
         within the tie bound of the minimum).
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton import knobs

INTERPRETED = bool(knobs.runtime.interpret)   # how the kernels below were built

BIG_INT = tl.constexpr(2147483647)
INF = tl.constexpr(float("inf"))
SLACK_REL = tl.constexpr(1e-4)   # cull only when lower bound > tie bound * (1 + SLACK_REL) + SLACK_ABS
SLACK_ABS = tl.constexpr(1e-12)  # m^2
TIE_ABS = tl.constexpr(2.0 ** -17)   # the tie rule (docs/tie_rule.md; reference.TIE_ABS, TIE_REL)
TIE_REL = tl.constexpr(2.0 ** -14)
CB = tl.constexpr(64)   # cluster boxes tested per vector step (pass A and the first cull of pass B)


# Reductions go through tl.reduce with the standard combine functions (what tl.min / tl.sum do):
# Triton's interpreter recognises those by identity and runs numpy, even when triton.language was
# first imported without TRITON_INTERPRET (its own tl.min / tl.sum / tl.cdiv then cannot run).
@triton.jit
def _min1(x):
    return tl.reduce(x, 1, tl.standard._elementwise_min)


@triton.jit
def _min0(x):
    return tl.reduce(x, 0, tl.standard._elementwise_min)


@triton.jit
def _max0(x):
    return tl.reduce(x, 0, tl.standard._elementwise_max)


@triton.jit
def _count(mask):
    return tl.reduce(mask.to(tl.int32), 0, tl.standard._sum_combine)


@triton.jit
def _sdiv(num, den):
    return num / tl.where(den == 0, 1.0, den)


@triton.jit
def _closest_bary(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz):
    """Barycentrics (u, v, w) of the closest point of triangle abc to p (Ericson), broadcasting."""
    abx, aby, abz = bx - ax, by - ay, bz - az
    acx, acy, acz = cx - ax, cy - ay, cz - az
    apx, apy, apz = px - ax, py - ay, pz - az
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    bpx, bpy, bpz = px - bx, py - by, pz - bz
    d3 = abx * bpx + aby * bpy + abz * bpz
    d4 = acx * bpx + acy * bpy + acz * bpz
    cpx, cpy, cpz = px - cx, py - cy, pz - cz
    d5 = abx * cpx + aby * cpy + abz * cpz
    d6 = acx * cpx + acy * cpy + acz * cpz
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    zero = tl.full(d1.shape, 0.0, d1.dtype)
    one = zero + 1.0
    den = va + vb + vc
    v = _sdiv(vb, den)
    w = _sdiv(vc, den)
    u = 1.0 - v - w
    # Regions in reverse priority (the last assignment wins), as in geometry.py.
    t_bc = _sdiv(d4 - d3, (d4 - d3) + (d5 - d6))
    c_ = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)                    # edge BC
    u, v, w = tl.where(c_, zero, u), tl.where(c_, 1.0 - t_bc, v), tl.where(c_, t_bc, w)
    t_ac = _sdiv(d2, d2 - d6)
    c_ = (vb <= 0) & (d2 >= 0) & (d6 <= 0)                               # edge AC
    u, v, w = tl.where(c_, 1.0 - t_ac, u), tl.where(c_, zero, v), tl.where(c_, t_ac, w)
    c_ = (d6 >= 0) & (d5 <= d6)                                          # vertex C
    u, v, w = tl.where(c_, zero, u), tl.where(c_, zero, v), tl.where(c_, one, w)
    t_ab = _sdiv(d1, d1 - d3)
    c_ = (vc <= 0) & (d1 >= 0) & (d3 <= 0)                               # edge AB
    u, v, w = tl.where(c_, 1.0 - t_ab, u), tl.where(c_, t_ab, v), tl.where(c_, zero, w)
    c_ = (d3 >= 0) & (d4 <= d3)                                          # vertex B
    u, v, w = tl.where(c_, zero, u), tl.where(c_, one, v), tl.where(c_, zero, w)
    c_ = (d1 <= 0) & (d2 <= 0)                                           # vertex A
    u, v, w = tl.where(c_, one, u), tl.where(c_, zero, v), tl.where(c_, zero, w)
    return u, v, w


@triton.jit
def _tri_dist2(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz):
    """Squared distance from p to triangle abc, from the explicit residual p - q."""
    u, v, w = _closest_bary(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz)
    qx = u * ax + v * bx + w * cx
    qy = u * ay + v * by + w * cy
    qz = u * az + v * bz + w * cz
    ex, ey, ez = px - qx, py - qy, pz - qz
    return ex * ex + ey * ey + ez * ez


@triton.jit
def _tie_bound2(d2):
    """The tie rule's squared bound (docs/tie_rule.md; reference.tie_bound2)."""
    t = tl.sqrt_rn(d2) * (1.0 + TIE_REL) + TIE_ABS
    return t * t


@triton.jit
def _offer_slice(d2, fid, best, sel_f, sel2, forgot2, lost2):
    """Offer a (BLOCK, CS) slice of squared distances with face ids to the per-sample tie-rule state
    (the kept lowest face in the window, its d2, the least d2 of window members dropped for a
    higher face, and of those dropped before the kept face left the window: csrc/bvh.h hit_offer)."""
    nbest = tl.minimum(best, _min1(d2))
    bound2 = _tie_bound2(nbest)
    inside = d2 <= bound2[:, None]
    cf = _min1(tl.where(inside, fid, BIG_INT))
    is_c = fid == cf[:, None]
    c2 = _min1(tl.where(inside & is_c, d2, INF))
    c_forgot = _min1(tl.where(inside & (fid != cf[:, None]), d2, INF))
    evict = sel2 > bound2
    lost2 = tl.where(evict, tl.minimum(lost2, forgot2), lost2)
    forgot2 = tl.where(evict, INF, forgot2)
    sel_f = tl.where(evict, BIG_INT, sel_f)
    sel2 = tl.where(evict, INF, sel2)
    take = cf < sel_f
    other2 = tl.where(take, sel2, tl.where(cf == sel_f, INF, c2))
    forgot2 = tl.minimum(tl.minimum(forgot2, c_forgot), other2)
    sel2 = tl.where(take, c2, sel2)
    sel_f = tl.where(take, cf, sel_f)
    return nbest, sel_f, sel2, forgot2, lost2


@triton.jit
def _cluster_rows(ctri_ptr, cface_ptr, tbase, c, jj, C: tl.constexpr):
    """Columns jj of cluster c's 9 structure-of-arrays rows (1, len(jj)) each, and their face ids."""
    t = ctri_ptr + tbase + c * 9 * C + jj
    return (tl.load(t + 0 * C)[None, :], tl.load(t + 1 * C)[None, :], tl.load(t + 2 * C)[None, :],
            tl.load(t + 3 * C)[None, :], tl.load(t + 4 * C)[None, :], tl.load(t + 5 * C)[None, :],
            tl.load(t + 6 * C)[None, :], tl.load(t + 7 * C)[None, :], tl.load(t + 8 * C)[None, :],
            tl.load(cface_ptr + c * C + jj)[None, :])


@triton.jit
def _slice_d2(px, py, pz, ctri_ptr, cface_ptr, tbase, c, k, C: tl.constexpr, CS: tl.constexpr):
    """Squared distances (BLOCK, CS) from the samples to triangles k..k+CS of cluster c, face ids."""
    tax, tay, taz, tbx, tby, tbz, tcx, tcy, tcz, fid = _cluster_rows(ctri_ptr, cface_ptr, tbase, c,
                                                                     k + tl.arange(0, CS), C)
    d2 = _tri_dist2(px[:, None], py[:, None], pz[:, None], tax, tay, taz, tbx, tby, tbz, tcx, tcy, tcz)
    return d2, fid


@triton.jit
def _box_gap2(cmeta_ptr, mbase, c, x0, y0, z0, x1, y1, z1):
    """Squared distance from cluster c's box to the box [x0, x1] x [y0, y1] x [z0, z1] (a sample
    when x0 == x1 ...): a lower bound of its triangles' distances to anything in that box."""
    lox = tl.load(cmeta_ptr + mbase + c * 9 + 0)
    loy = tl.load(cmeta_ptr + mbase + c * 9 + 1)
    loz = tl.load(cmeta_ptr + mbase + c * 9 + 2)
    hix = tl.load(cmeta_ptr + mbase + c * 9 + 3)
    hiy = tl.load(cmeta_ptr + mbase + c * 9 + 4)
    hiz = tl.load(cmeta_ptr + mbase + c * 9 + 5)
    gx = tl.maximum(lox - x1, 0.0) + tl.maximum(x0 - hix, 0.0)
    gy = tl.maximum(loy - y1, 0.0) + tl.maximum(y0 - hiy, 0.0)
    gz = tl.maximum(loz - z1, 0.0) + tl.maximum(z0 - hiz, 0.0)
    return gx * gx + gy * gy + gz * gz


@triton.jit
def _box_lower(cmeta_ptr, mbase, c, px, py, pz):
    """Squared distance from each sample to cluster c's box (a lower bound of its triangles')."""
    return _box_gap2(cmeta_ptr, mbase, c, px, py, pz, px, py, pz)


@triton.jit
def _unit_normal(ax, ay, az, bx, by, bz, cx, cy, cz):
    ux, uy, uz = bx - ax, by - ay, bz - az
    vx, vy, vz = cx - ax, cy - ay, cz - az
    nx = uy * vz - uz * vy
    ny = uz * vx - ux * vz
    nz = ux * vy - uy * vx
    length = tl.sqrt(nx * nx + ny * ny + nz * nz)
    ok = length > 0
    inv = tl.where(ok, 1.0 / tl.where(ok, length, 1.0), 1.0)
    return nx * inv, ny * inv, nz * inv


@triton.jit
def _load_tri(v_ptr, faces_ptr, f, vbase, mask):
    """Vertices of faces f (int32 vector) from a (V, 3) float32 block starting at vbase."""
    f64 = f.to(tl.int64)
    i0 = tl.load(faces_ptr + f64 * 3 + 0, mask=mask, other=0).to(tl.int64) * 3 + vbase
    i1 = tl.load(faces_ptr + f64 * 3 + 1, mask=mask, other=0).to(tl.int64) * 3 + vbase
    i2 = tl.load(faces_ptr + f64 * 3 + 2, mask=mask, other=0).to(tl.int64) * 3 + vbase
    ax = tl.load(v_ptr + i0 + 0, mask=mask, other=0.0)
    ay = tl.load(v_ptr + i0 + 1, mask=mask, other=0.0)
    az = tl.load(v_ptr + i0 + 2, mask=mask, other=0.0)
    bx = tl.load(v_ptr + i1 + 0, mask=mask, other=0.0)
    by = tl.load(v_ptr + i1 + 1, mask=mask, other=0.0)
    bz = tl.load(v_ptr + i1 + 2, mask=mask, other=0.0)
    cx = tl.load(v_ptr + i2 + 0, mask=mask, other=0.0)
    cy = tl.load(v_ptr + i2 + 1, mask=mask, other=0.0)
    cz = tl.load(v_ptr + i2 + 2, mask=mask, other=0.0)
    return ax, ay, az, bx, by, bz, cx, cy, cz


@triton.jit
def _tile_pixels(pid_t, b64, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Tile ``pid_t`` of a row-major grid of TILE_H x TILE_W tiles: its column and row (tx, ty), each
    lane's pixel row and column, whether it is inside the image, and its flat (b, y, x) index."""
    tiles_w = (W + TILE_W - 1) // TILE_W
    ty = pid_t // tiles_w
    tx = pid_t % tiles_w
    i = tl.arange(0, TILE_H * TILE_W)
    y = ty * TILE_H + i // TILE_W
    x = tx * TILE_W + i % TILE_W
    valid = (y < H) & (x < W)
    return tx, ty, y, x, valid, (b64 * H + y) * W + x


@triton.jit
def flow_encode_kernel(
    out_ptr,                      # (B, 3N, H, W) any float dtype, written once per element
    psrc_ptr, fid_ptr, off_ptr,   # aux (B, N, H, W, 3) f32, (B, N, H, W) i32, (B, N, H, W) f32
    depth_ptr, rface_ptr,         # (B, H, W) f32 rendered depth, i32 rendered face (-1 off-mesh)
    kinv_ptr,                     # (B, 9) f32 K^-1
    near_ptr, far_ptr,            # (B,) f32
    vt_ptr, vs_ptr, faces_ptr,    # (B, V, 3) f32 target / source in the target camera frame; (F, 3) i32
    ctri_ptr, cface_ptr, cmeta_ptr,  # (B, NC, 9, C) f32; (NC, C) i32; (B, NC, 9) f32
    V, NC, H, W, N, nm1, s_off, delta,   # nm1 = max(N - 1, 1), s_off = 0.5 if N == 1 else 0
    UNIFORM: tl.constexpr, WRITE_AUX: tl.constexpr, C: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, CS: tl.constexpr,
):
    pid_t = tl.program_id(0)
    n = tl.program_id(1)
    b = tl.program_id(2)
    b64 = b.to(tl.int64)
    _, _, y, x, valid, pix = _tile_pixels(pid_t, b64, H, W, TILE_H, TILE_W)

    # ---- the sample: depth along the pixel ray (DESIGN.md step 2), camera frame
    d_ras = tl.load(depth_ptr + pix, mask=valid, other=0.0)
    rface = tl.load(rface_ptr + pix, mask=valid, other=-1)
    if UNIFORM:
        head = rface < -1          # never: every pixel samples [near, far]
    else:
        head = rface >= 0
    s = n.to(tl.float32) / nm1 + s_off
    near = tl.load(near_ptr + b)
    far = tl.load(far_ptr + b)
    d_uni = near + (far - near) * s
    d_head = d_ras - delta + 2.0 * delta * s
    d = tl.where(head, d_head, d_uni)
    k00 = tl.load(kinv_ptr + b * 9 + 0)
    k01 = tl.load(kinv_ptr + b * 9 + 1)
    k02 = tl.load(kinv_ptr + b * 9 + 2)
    k10 = tl.load(kinv_ptr + b * 9 + 3)
    k11 = tl.load(kinv_ptr + b * 9 + 4)
    k12 = tl.load(kinv_ptr + b * 9 + 5)
    k20 = tl.load(kinv_ptr + b * 9 + 6)
    k21 = tl.load(kinv_ptr + b * 9 + 7)
    k22 = tl.load(kinv_ptr + b * 9 + 8)
    u = x.to(tl.float32) + 0.5
    v = y.to(tl.float32) + 0.5
    px = d * (k00 * u + k01 * v + k02)
    py = d * (k10 * u + k11 * v + k12)
    pz = d * (k20 * u + k21 * v + k22)

    # ---- seed: head samples start from the rasterised face
    vbase = b64 * V * 3
    ax, ay, az, bx, by, bz, cx, cy, cz = _load_tri(vt_ptr, faces_ptr, tl.maximum(rface, 0), vbase, valid & head)
    seed = _tri_dist2(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz)
    best = tl.where(valid & head, seed, INF)
    best_f = tl.where(valid & head, rface, BIG_INT)
    sel2 = best
    forgot2 = tl.full(best.shape, INF, tl.float32)
    lost2 = forgot2
    bound = best

    mbase = b64 * NC * 9
    # ---- pass A: an upper bound for background samples from one point per cluster, CB clusters
    # per step (a BLOCK x CB distance tile)
    n_bg = _count(valid & (best == INF))
    if n_bg > 0:
        for c0 in range(0, NC, CB):
            cc = c0 + tl.arange(0, CB)
            ok = cc < NC
            rx = tl.load(cmeta_ptr + mbase + cc * 9 + 6, mask=ok, other=INF)[None, :]
            ry = tl.load(cmeta_ptr + mbase + cc * 9 + 7, mask=ok, other=INF)[None, :]
            rz = tl.load(cmeta_ptr + mbase + cc * 9 + 8, mask=ok, other=INF)[None, :]
            ex = px[:, None] - rx
            ey = py[:, None] - ry
            ez = pz[:, None] - rz
            bound = tl.minimum(bound, _min1(ex * ex + ey * ey + ez * ez))

    # ---- pass B: cull clusters by their boxes against the tie bound, exact dense test on the
    # survivors. CB cluster boxes at a time against the box of the tile's samples and the tile's
    # largest bound (one vector test culls most of them), then per surviving block each cluster:
    # the same scalar test with the bound found so far, the per-sample test, the dense test.
    tx0 = _min0(tl.where(valid, px, INF))
    ty0 = _min0(tl.where(valid, py, INF))
    tz0 = _min0(tl.where(valid, pz, INF))
    tx1 = _max0(tl.where(valid, px, -INF))
    ty1 = _max0(tl.where(valid, py, -INF))
    tz1 = _max0(tl.where(valid, pz, -INF))
    cull = _tie_bound2(bound) * (1.0 + SLACK_REL) + SLACK_ABS
    tile_bound = _max0(tl.where(valid, cull, 0.0))
    tbase = b64 * NC * 9 * C
    for c0 in range(0, NC, CB):
        cc = c0 + tl.arange(0, CB)
        ok = cc < NC
        blo_x = tl.load(cmeta_ptr + mbase + cc * 9 + 0, mask=ok, other=INF)
        blo_y = tl.load(cmeta_ptr + mbase + cc * 9 + 1, mask=ok, other=INF)
        blo_z = tl.load(cmeta_ptr + mbase + cc * 9 + 2, mask=ok, other=INF)
        bhi_x = tl.load(cmeta_ptr + mbase + cc * 9 + 3, mask=ok, other=INF)
        bhi_y = tl.load(cmeta_ptr + mbase + cc * 9 + 4, mask=ok, other=INF)
        bhi_z = tl.load(cmeta_ptr + mbase + cc * 9 + 5, mask=ok, other=INF)
        gx = tl.maximum(blo_x - tx1, 0.0) + tl.maximum(tx0 - bhi_x, 0.0)
        gy = tl.maximum(blo_y - ty1, 0.0) + tl.maximum(ty0 - bhi_y, 0.0)
        gz = tl.maximum(blo_z - tz1, 0.0) + tl.maximum(tz0 - bhi_z, 0.0)
        if _count(ok & (gx * gx + gy * gy + gz * gz <= tile_bound)) > 0:
            for c in range(c0, tl.minimum(c0 + CB, NC)):
                n_need = 0
                if _box_gap2(cmeta_ptr, mbase, c, tx0, ty0, tz0, tx1, ty1, tz1) <= tile_bound:
                    n_need = _count(valid & (_box_lower(cmeta_ptr, mbase, c, px, py, pz) <= cull))
                if n_need > 0:
                    for k in tl.static_range(0, C, CS):     # CS-wide slices keep the dense tile in registers
                        d2, fid = _slice_d2(px, py, pz, ctri_ptr, cface_ptr, tbase, c, k, C, CS)
                        best, best_f, sel2, forgot2, lost2 = _offer_slice(d2, fid, best, best_f, sel2, forgot2,
                                                                          lost2)
                    bound = tl.minimum(bound, best)
                    cull = _tie_bound2(bound) * (1.0 + SLACK_REL) + SLACK_ABS
                    tile_bound = _max0(tl.where(valid, cull, 0.0))

    # ---- rare: a window member dropped for a higher face may be inside the final window after the
    # kept face left it; then the lowest face within the final bound is searched directly.
    bound2 = _tie_bound2(best)
    lost = valid & (lost2 <= bound2)
    if _count(lost) > 0:
        reach = bound2 * (1.0 + SLACK_REL) + SLACK_ABS
        for c in range(0, NC):
            if _count(lost & (_box_lower(cmeta_ptr, mbase, c, px, py, pz) <= reach)) > 0:
                for k in tl.static_range(0, C, CS):
                    d2, fid = _slice_d2(px, py, pz, ctri_ptr, cface_ptr, tbase, c, k, C, CS)
                    low = _min1(tl.where(d2 <= bound2[:, None], fid, BIG_INT))
                    best_f = tl.where(lost, tl.minimum(best_f, low), best_f)

    # ---- surface field through the winner (DESIGN.md step 3) and the flow (step 4)
    f = tl.where(valid, best_f, 0)
    ax, ay, az, bx, by, bz, cx, cy, cz = _load_tri(vt_ptr, faces_ptr, f, vbase, valid)
    v0x, v0y, v0z = bx - ax, by - ay, bz - az
    v1x, v1y, v1z = cx - ax, cy - ay, cz - az
    v2x, v2y, v2z = px - ax, py - ay, pz - az
    d00 = v0x * v0x + v0y * v0y + v0z * v0z
    d01 = v0x * v1x + v0y * v1y + v0z * v1z
    d11 = v1x * v1x + v1y * v1y + v1z * v1z
    d20 = v2x * v0x + v2y * v0y + v2z * v0z
    d21 = v2x * v1x + v2y * v1y + v2z * v1z
    den = d00 * d11 - d01 * d01
    wv = _sdiv(d11 * d20 - d01 * d21, den)
    ww = _sdiv(d00 * d21 - d01 * d20, den)
    wu = 1.0 - wv - ww
    cu, cv, cw = _closest_bary(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz)
    plane = den > 0
    wu = tl.where(plane, wu, cu)
    wv = tl.where(plane, wv, cv)
    ww = tl.where(plane, ww, cw)
    ntx, nty, ntz = _unit_normal(ax, ay, az, bx, by, bz, cx, cy, cz)
    h = (px - (wu * ax + wv * bx + ww * cx)) * ntx \
        + (py - (wu * ay + wv * by + ww * cy)) * nty \
        + (pz - (wu * az + wv * bz + ww * cz)) * ntz
    sax, say, saz, sbx, sby, sbz, scx, scy, scz = _load_tri(vs_ptr, faces_ptr, f, vbase, valid)
    nsx, nsy, nsz = _unit_normal(sax, say, saz, sbx, sby, sbz, scx, scy, scz)
    qx = wu * sax + wv * sbx + ww * scx + h * nsx
    qy = wu * say + wv * sby + ww * scy + h * nsy
    qz = wu * saz + wv * sbz + ww * scz + h * nsz

    HW = H * W
    yx = y * W + x
    o = (b64 * 3 * N + 3 * n) * HW + yx
    ty_out = out_ptr.dtype.element_ty
    tl.store(out_ptr + o, (qx - px).to(ty_out), mask=valid)
    tl.store(out_ptr + o + HW, (qy - py).to(ty_out), mask=valid)
    tl.store(out_ptr + o + 2 * HW, (qz - pz).to(ty_out), mask=valid)
    if WRITE_AUX:
        a = (b64 * N + n) * HW + yx
        tl.store(psrc_ptr + a * 3 + 0, qx, mask=valid)
        tl.store(psrc_ptr + a * 3 + 1, qy, mask=valid)
        tl.store(psrc_ptr + a * 3 + 2, qz, mask=valid)
        tl.store(fid_ptr + a, best_f, mask=valid)
        tl.store(off_ptr + a, h, mask=valid)


@triton.jit
def _div(x, y):
    """IEEE round-to-nearest division (compiled Triton's fp32 '/' is approximate)."""
    if x.dtype == tl.float64:
        r = x / y
    else:
        r = tl.div_rn(x, y)
    return r


@triton.jit
def _raster_eval(cx, cy, u0, v0, z0, u1, v1, z1, u2, v2, z2):
    """Edge functions, inside test, perspective-correct weights: the reference's operations in its
    order (fgp_fast.ops.reference._cover), in the dtype of the inputs."""
    e0 = (u2 - u1) * (cy - v1) - (v2 - v1) * (cx - u1)
    e1 = (u0 - u2) * (cy - v2) - (v0 - v2) * (cx - u2)
    e2 = (u1 - u0) * (cy - v0) - (v1 - v0) * (cx - u0)
    area = e0 + e1 + e2
    den = tl.where(area == 0, 1.0, area)
    l0 = _div(e0, den)
    l1 = _div(e1, den)
    l2 = _div(e2, den)
    inside = (area != 0) & (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    # the reference's candidate pixel range: centre within the triangle's screen box
    inside = inside & (cx >= tl.minimum(tl.minimum(u0, u1), u2)) & (cx <= tl.maximum(tl.maximum(u0, u1), u2))
    inside = inside & (cy >= tl.minimum(tl.minimum(v0, v1), v2)) & (cy <= tl.maximum(tl.maximum(v0, v1), v2))
    w0 = _div(l0, z0)
    w1 = _div(l1, z1)
    w2 = _div(l2, z2)
    inv_depth = w0 + w1 + w2
    return inside, w0, w1, w2, inv_depth


@triton.jit
def rasterize_kernel(
    depth_ptr, face_ptr, bary_ptr,   # (B, H, W) depth (0 off-mesh), i32 face (-1), (B, H, W, 3) bary
    ctri_ptr, cface_ptr, cbox_ptr,   # (B, NC, 9, C) u0 v0 z0 u1 v1 z1 u2 v2 z2 (NaN: not rasterised);
                                     # (NC, C) i32 face ids; (B, NC, 4) screen box umin umax vmin vmax
    ftri_ptr,                        # (B, F, 9) the same per face, for the winner's barycentrics
    NC, F, H, W,
    WRITE_BARY: tl.constexpr, C: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
):
    """Z-buffer rasterisation of one TILE_H x TILE_W tile: nearest hit per pixel centre, both
    sides, a centre on an edge counts, equal depths go to the lowest face index."""
    BLOCK: tl.constexpr = TILE_H * TILE_W
    pid_t = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    tx, ty, y, x, valid, pix = _tile_pixels(pid_t, b64, H, W, TILE_H, TILE_W)
    dty = ctri_ptr.dtype.element_ty
    cx = x.to(dty) + 0.5
    cy = y.to(dty) + 0.5
    # the tile's pixel-centre range, for culling clusters by their screen boxes
    cx_lo = (tx * TILE_W).to(dty) + 0.5
    cx_hi = (tl.minimum(tx * TILE_W + TILE_W, W) - 1).to(dty) + 0.5
    cy_lo = (ty * TILE_H).to(dty) + 0.5
    cy_hi = (tl.minimum(ty * TILE_H + TILE_H, H) - 1).to(dty) + 0.5
    best = tl.full((BLOCK,), INF, dty)
    best_f = tl.full((BLOCK,), BIG_INT, tl.int32)
    j = tl.arange(0, C)
    tbase = b64 * NC * 9 * C
    for c in range(0, NC):
        bu0 = tl.load(cbox_ptr + (b64 * NC + c) * 4 + 0)
        bu1 = tl.load(cbox_ptr + (b64 * NC + c) * 4 + 1)
        bv0 = tl.load(cbox_ptr + (b64 * NC + c) * 4 + 2)
        bv1 = tl.load(cbox_ptr + (b64 * NC + c) * 4 + 3)
        if (bu1 >= cx_lo) & (bu0 <= cx_hi) & (bv1 >= cy_lo) & (bv0 <= cy_hi):
            u0, v0, z0, u1, v1, z1, u2, v2, z2, fid = _cluster_rows(ctri_ptr, cface_ptr, tbase, c, j, C)
            inside, w0, w1, w2, inv_depth = _raster_eval(cx[:, None], cy[:, None], u0, v0, z0, u1, v1, z1,
                                                         u2, v2, z2)
            depth = tl.where(inside, _div(tl.full(inv_depth.shape, 1.0, dty), inv_depth), INF)
            m = _min1(depth)
            mf = _min1(tl.where(inside & (depth == m[:, None]), fid, BIG_INT))
            better = (m < best) | ((m == best) & (mf < best_f))
            best = tl.where(better, m, best)
            best_f = tl.where(better, mf, best_f)
    hit = valid & (best_f < BIG_INT)
    tl.store(depth_ptr + pix, tl.where(hit, best, 0.0), mask=valid)
    tl.store(face_ptr + pix, tl.where(hit, best_f, -1), mask=valid)
    if WRITE_BARY:
        f = tl.where(hit, best_f, 0).to(tl.int64)
        q = ftri_ptr + (b64 * F + f) * 9
        inside, w0, w1, w2, inv_depth = _raster_eval(
            cx, cy, tl.load(q + 0, mask=hit, other=0.0), tl.load(q + 1, mask=hit, other=0.0),
            tl.load(q + 2, mask=hit, other=1.0), tl.load(q + 3, mask=hit, other=0.0),
            tl.load(q + 4, mask=hit, other=0.0), tl.load(q + 5, mask=hit, other=1.0),
            tl.load(q + 6, mask=hit, other=0.0), tl.load(q + 7, mask=hit, other=0.0),
            tl.load(q + 8, mask=hit, other=1.0))
        inv = tl.where(hit, inv_depth, 1.0)
        tl.store(bary_ptr + pix * 3 + 0, tl.where(hit, _div(w0, inv), 0.0), mask=valid)
        tl.store(bary_ptr + pix * 3 + 1, tl.where(hit, _div(w1, inv), 0.0), mask=valid)
        tl.store(bary_ptr + pix * 3 + 2, tl.where(hit, _div(w2, inv), 0.0), mask=valid)


RASTER_CONFIGS = [
    triton.Config({"TILE_H": th, "TILE_W": tw}, num_warps=nw)
    for th, tw, nw in ((8, 8, 4), (8, 8, 2), (8, 8, 8), (8, 16, 4), (8, 16, 8), (16, 16, 8))   # no spills on sm_90
]

rasterize_autotuned = triton.autotune(configs=RASTER_CONFIGS, key=["H", "W", "NC", "C", "WRITE_BARY"])(
    rasterize_kernel)


# (TILE_H, TILE_W, num_warps, CS): the dense tile is TILE_H*TILE_W x CS; each config compiles in
# ~5 s, so the list stays short.
AUTOTUNE_CONFIGS = [
    triton.Config({"TILE_H": th, "TILE_W": tw, "CS": cs}, num_warps=nw)
    for th, tw, nw, cs in ((8, 8, 4, 8), (4, 8, 2, 16), (8, 8, 4, 16), (8, 8, 4, 32), (8, 16, 4, 8),
                           (8, 16, 8, 16), (16, 16, 8, 8))
]



def _prune(configs, named_args, **kwargs):
    """Slices must tile a cluster: CS <= C (both powers of two)."""
    C = kwargs.get("C", named_args.get("C", 32))
    return [c for c in configs if c.kwargs["CS"] <= C] or [triton.Config({"TILE_H": 8, "TILE_W": 8, "CS": C},
                                                                         num_warps=4)]


flow_encode_autotuned = triton.autotune(configs=AUTOTUNE_CONFIGS, key=["H", "W", "N", "NC", "C", "UNIFORM"],
                                        prune_configs_by={"early_config_prune": _prune})(flow_encode_kernel)

INTERPRETER_TILE = (16, 16)   # few big programs: the interpreter pays per program and per op
