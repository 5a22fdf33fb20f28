// BVH over a fixed-topology triangle mesh: built once per topology on the CPU (binned SAH), refit
// per frame (CPU here, CUDA in cuda/kernels.cu), queried by nearest-child-first stack traversal.
//
// Layout (per batch element):
//   nodes: 2*M BVHNode halves; node k = {lower, upper} = 32 bytes, one aligned load pair.
//          inner: lower.i = left child, upper.i = right child (children come after the parent).
//          leaf:  lower.i = ~start (negative), upper.i = end, a range of leaf-ordered triangles.
//   tris:  F x 32 floats in leaf order: a.xyz, face id (int bits), b.xyz, 0, c.xyz, 0, then the
//          triangle's bound (TriBound, 5 float4), written by the refit.
// Topology (shared by the batch): topo M x 4 ints {lower.i, upper.i, parent, 0}; prim[k] = face
// of leaf-ordered triangle k.
#pragma once
#include "geometry.h"

namespace fgp {

struct BVHNode {
  float x, y, z;
  int i;
};

// Cost-model hook (bench/cost_model.py): its driver defines FGP_TRACE(event) before including
// this header to record the traversal's work; every real build compiles it to nothing.
// Events: a sample starts, a seed triangle is tested, a traversal iteration starts, it handles an
// inner node / a leaf, a triangle is offered (box prefilter), a stack pop, an iteration of the
// lost-member pass, an exact point-triangle test; the tile shortlist's shared walk tests a chunk
// of <= 32 frontier children / takes a step of the descent to the first leaf / queues a leaf /
// steps through <= 32 queued triangles / takes the samples' previous faces as seeds / steps
// through the descent's leaf / filters 32 list entries; a sample offers a shortlist entry / passes its ball test (plane bound next).
// FGP_TRACE_LANE(lane) says whose work follows in a tile (kTraceShared: the tile's own).
enum TraceEvent : int {
  kTraceSample, kTraceSeed, kTraceIter, kTraceInner, kTraceLeaf, kTraceTri, kTracePop, kTraceResolve, kTraceExact,
  kTraceTile, kTraceTileInner, kTraceTileQueue, kTraceTileStep, kTraceTileSeed, kTraceTileProbe, kTraceFilter, kTraceList, kTraceListPlane,
  kTraceEvents
};
constexpr int kTraceShared = -1;
#ifndef FGP_TRACE
#define FGP_TRACE(event) ((void)0)
#endif
#ifndef FGP_TRACE_LANE
#define FGP_TRACE_LANE(lane) ((void)0)
#endif

constexpr int kBVHStack = 64;     // traversal stack; the build caps the depth below this
constexpr int kBVHMaxDepth = 56;  // SAH switches to median splits past 32, so depth stays small
constexpr int kTriStride = 32;  // 12 vertex floats and a TriBound

// ------------------------------------------------------------------ the tie rule
// The answer for a point is the lowest face index among the triangles whose squared distance is
// <= tie_bound2(minimum squared distance) (docs/tie_rule.md; fgp_fast.ops.reference.tie_bound2):
// exact ties (a vertex or edge shared by several triangles) stay ties under any float rounding.
constexpr float kTieAbs = 7.62939453125e-06f;  // 2^-17 m, reference.TIE_ABS
constexpr float kTieRel = 6.103515625e-05f;  // 2^-14, reference.TIE_REL

// (d * (1 + rel) + abs)^2 for d = sqrt(d2): the reference's operations, so the same bits.
FGP_HD float tie_bound2(float d2) {
  const float t = sqrtf(d2) * (1.f + kTieRel) + kTieAbs;
  return t * t;
}

// Running state of one query under the tie rule. Every triangle within the final window is
// offered (the search prunes only boxes farther than the current bound, which only shrinks), but
// when the kept face leaves the window (a closer triangle arrived) the window members that were
// dropped for having a higher face may still be inside it: `lost2` records that, and
// bvh_resolve_lost() then finds the lowest face of the final window directly (rare).
struct Hit {
  int face;       // lowest face within the window so far (kNoFace: none)
  float best2;    // minimum squared distance so far
  float bound2;   // tie_bound2(best2): a triangle farther than this is in no later window
  float sel2;     // squared distance of `face`
  float forgot2;  // least squared distance of the window members dropped for a higher face
  float lost2;    // least forgot2 at the moments `face` left the window
};

constexpr int kNoFace = 0x7fffffff;
FGP_HD Hit no_hit() { return Hit{kNoFace, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY}; }

FGP_HD void hit_offer(Hit& h, int face, float d2) {
  if (!(d2 <= h.bound2)) return;  // also NaN
  if (d2 < h.best2) {
    h.best2 = d2;
    h.bound2 = tie_bound2(d2);
    if (!(h.sel2 <= h.bound2)) {  // the kept face left the window: start it afresh from `face`
      h.lost2 = fgp_min(h.lost2, h.forgot2);
      h.forgot2 = INFINITY;
      h.face = face;
      h.sel2 = d2;
      return;
    }
  }
  if (face < h.face) {
    h.forgot2 = fgp_min(h.forgot2, h.sel2);
    h.face = face;
    h.sel2 = d2;
  } else if (face != h.face) {
    h.forgot2 = fgp_min(h.forgot2, d2);
  }
}

// Whether a dropped window member may be lower than `face` and still inside the final window.
FGP_HD bool hit_lost(const Hit& h) { return h.lost2 <= h.bound2; }


// Where triangle a, b, c lies, for a lower bound of a point's distance to it that needs no vertex
// loads and no division: in the slab |n.x - d| <= delta around its plane (n unit, 0 for a degenerate
// triangle; delta the vertices' largest |n.v - d|, rounding-small unless the triangle is a sliver
// whose n is poorly determined) and in the half-spaces e_i.x <= o_i of its edges (e_i = edge x n,
// unit, so orthogonal to n and pointing out; o_i the vertices' largest e_i.v). The refit stores it
// beside the vertices (IEEE operations only, so the CPU and CUDA refits write the same bits;
// bvh_check_nodes recomputes it).
struct TriBound {
  Vec3 n;
  float d;
  Vec3 e[3];
  float o[3];
  float delta;
};
constexpr int kTriBoundFloats = 20;  // 5 float4: (n, d), (e_i, o_i), (delta, 0, 0, 0)

FGP_HD TriBound tri_bound(Vec3 a, Vec3 b, Vec3 c) {
  TriBound t;
  const Vec3 m = (1.f / 3.f) * ((a + b) + c);
  const Vec3 nn = cross(b - a, c - a);
  const float len = sqrtf(dot(nn, nn));
  t.n = len > 0.f ? Vec3{nn.x / len, nn.y / len, nn.z / len} : Vec3{0.f, 0.f, 0.f};
  t.d = dot(t.n, m);
  const Vec3 v[3] = {a, b, c};
  for (int i = 0; i < 3; ++i) {
    const Vec3 en = cross(v[i == 2 ? 0 : i + 1] - v[i], t.n);  // out of a counter-clockwise (a, b, c) about n
    const float l = sqrtf(dot(en, en));
    t.e[i] = l > 0.f ? Vec3{en.x / l, en.y / l, en.z / l} : Vec3{0.f, 0.f, 0.f};
    t.o[i] = fmax3(dot(t.e[i], a), dot(t.e[i], b), dot(t.e[i], c));
  }
  t.delta = fmax3(fabsf(dot(t.n, a) - t.d), fabsf(dot(t.n, b) - t.d), fabsf(dot(t.n, c) - t.d));
  return t;
}

// Lower bound of the computed squared distance from p to the triangle of bound t: any point x of
// the triangle has |p - x|^2 >= (n.(p - x))^2 + (e_i.(p - x))^2 (n, e_i orthonormal) >=
// (|h| - delta)+^2 + out+^2 with h = n.p - d and out = max_i e_i.p - o_i. Both terms are shrunk by
// the tie margins (docs/tie_rule.md), far more than the float error of the bound (unit lengths and
// orthogonality to ulps, the dots) and of the exact test, so it stays below the computed distance.
// It is the distance itself where p's foot is across one edge, and a fraction of it beyond a vertex
// (at least sin of half the vertex's angle): near the surface it leaves a quarter of the triangles
// whose boxes are within the tie bound (the neighbours of p's foot). NaN (non-finite input) passes.
FGP_HD float tri_lower2(const TriBound& t, Vec3 p) {
  const float h = dot(t.n, p) - t.d;
  const float out = fmax3(dot(t.e[0], p) - t.o[0], dot(t.e[1], p) - t.o[1], dot(t.e[2], p) - t.o[2]);
  const float slack = kTieAbs + kTieRel * (fabsf(h) + fabsf(out));
  const float u = fgp_max(fabsf(h) - t.delta - slack, 0.f), v = fgp_max(out - slack, 0.f);
  return u * u + v * v;
}

FGP_HD TriBound load_tri_bound(const float* __restrict__ tris, int k) {
  float f[kTriBoundFloats];
#ifdef __CUDA_ARCH__
  const float4* t4 = reinterpret_cast<const float4*>(tris) + (kTriStride / 4) * k + 3;
  for (int j = 0; j < kTriBoundFloats / 4; ++j) {
    const float4 x = __ldg(t4 + j);
    f[4 * j] = x.x;
    f[4 * j + 1] = x.y;
    f[4 * j + 2] = x.z;
    f[4 * j + 3] = x.w;
  }
#else
  const float* t = tris + static_cast<int64_t>(k) * kTriStride + 12;
  for (int j = 0; j < kTriBoundFloats; ++j) f[j] = t[j];
#endif
  TriBound b;
  b.n = Vec3{f[0], f[1], f[2]};
  b.d = f[3];
  for (int i = 0; i < 3; ++i) {
    b.e[i] = Vec3{f[4 + 4 * i], f[5 + 4 * i], f[6 + 4 * i]};
    b.o[i] = f[7 + 4 * i];
  }
  b.delta = f[16];
  return b;
}

// Write triangle a, b, c (face f) as leaf-ordered triangle record t (kTriStride floats).
FGP_HD void store_tri(float* t, Vec3 a, Vec3 b, Vec3 c, int f) {
  const Vec3 v[3] = {a, b, c};
  for (int j = 0; j < 3; ++j) {
    t[4 * j] = v[j].x;
    t[4 * j + 1] = v[j].y;
    t[4 * j + 2] = v[j].z;
    t[4 * j + 3] = 0.f;
  }
  t[3] = bits_float(static_cast<uint32_t>(f));
  const TriBound tb = tri_bound(a, b, c);
  float* o = t + 12;
  const Vec3 vec[4] = {tb.n, tb.e[0], tb.e[1], tb.e[2]};
  const float w[4] = {tb.d, tb.o[0], tb.o[1], tb.o[2]};
  for (int j = 0; j < 4; ++j) {
    o[4 * j] = vec[j].x;
    o[4 * j + 1] = vec[j].y;
    o[4 * j + 2] = vec[j].z;
    o[4 * j + 3] = w[j];
  }
  o[16] = tb.delta;
  o[17] = o[18] = o[19] = 0.f;
}

FGP_HD void load_tri(const float* __restrict__ tris, int k, Vec3& a, Vec3& b, Vec3& c, int& face) {
#ifdef __CUDA_ARCH__
  const float4* t4 = reinterpret_cast<const float4*>(tris) + (kTriStride / 4) * k;
  const float4 p = __ldg(t4), q = __ldg(t4 + 1), r = __ldg(t4 + 2);
  a = Vec3{p.x, p.y, p.z};
  b = Vec3{q.x, q.y, q.z};
  c = Vec3{r.x, r.y, r.z};
  face = __float_as_int(p.w);
#else
  const float* t = tris + static_cast<int64_t>(k) * kTriStride;
  a = Vec3{t[0], t[1], t[2]};
  b = Vec3{t[4], t[5], t[6]};
  c = Vec3{t[8], t[9], t[10]};
  face = static_cast<int>(float_bits(t[3]));
#endif
}

FGP_HD void load_node(const BVHNode* __restrict__ nodes, int k, Vec3& lo, Vec3& hi, int& li, int& ui) {
#ifdef __CUDA_ARCH__
  const float4* n4 = reinterpret_cast<const float4*>(nodes) + 2 * k;
  const float4 l = __ldg(n4), u = __ldg(n4 + 1);
  lo = Vec3{l.x, l.y, l.z};
  hi = Vec3{u.x, u.y, u.z};
  li = __float_as_int(l.w);
  ui = __float_as_int(u.w);
#else
  const BVHNode l = nodes[2 * k], u = nodes[2 * k + 1];
  lo = Vec3{l.x, l.y, l.z};
  hi = Vec3{u.x, u.y, u.z};
  li = l.i;
  ui = u.i;
#endif
}

// Leaf boxes are padded by a few ulps of their coordinates: a closest point computed in float
// can land an ulp outside its triangle's exact box, and the pruning test (box distance <= best)
// must stay a true lower bound, so the answer (lowest (distance, face)) never depends on the tree.
FGP_HD float box_pad(float lo, float hi) { return (fabsf(lo) + fabsf(hi)) * 4e-7f + 1e-30f; }

// The padded box of triangle a, b, c (a lower bound of any computed distance to it, as a leaf box).
FGP_HD void tri_box(Vec3 a, Vec3 b, Vec3 c, Vec3& lo, Vec3& hi) {
  lo = Vec3{fmin3(a.x, b.x, c.x), fmin3(a.y, b.y, c.y), fmin3(a.z, b.z, c.z)};
  hi = Vec3{fmax3(a.x, b.x, c.x), fmax3(a.y, b.y, c.y), fmax3(a.z, b.z, c.z)};
  const Vec3 pad = Vec3{box_pad(lo.x, hi.x), box_pad(lo.y, hi.y), box_pad(lo.z, hi.z)};
  lo = lo - pad;
  hi = hi + pad;
}

FGP_HD float node_dist2(const BVHNode* __restrict__ nodes, int k, Vec3 p) {
  Vec3 lo, hi;
  int li, ui;
  load_node(nodes, k, lo, hi, li, ui);
  return box_dist2(p, lo, hi);
}

// Pop the most recent stack entry whose box distance is still within bound2 into node (stale
// entries are dropped without reloading their boxes); false when none is left. Both traversals
// pop this way; Event names the counter the cost model charges.
template <int Event>
FGP_HD bool pop_within(const int* stack_node, const float* stack_d2, int& sp, float bound2, int& node) {
  while (sp > 0) {
    FGP_TRACE(Event);
    --sp;
    if (stack_d2[sp] <= bound2) {
      node = stack_node[sp];
      return true;
    }
  }
  return false;
}

// Offer leaf-ordered triangle k as a candidate. The exact test (Ericson's regions, several
// divisions) and the vertices' loads are skipped when the triangle's stored bound is already beyond
// the tie bound: for 85 % of the triangles of the leaves a head sample visits on the ICT head (a
// box test skips 43 %; bench/cost_model.py).
FGP_HD void offer_tri(const float* __restrict__ tris, int k, Vec3 p, Hit& hit) {
  FGP_TRACE(kTraceTri);
  if (tri_lower2(load_tri_bound(tris, k), p) > hit.bound2) return;
  FGP_TRACE(kTraceExact);
  Vec3 a, b, c;
  int face;
  load_tri(tris, k, a, b, c, face);
  hit_offer(hit, face, point_triangle_dist2(p, a, b, c));
}

// The answer under the tie rule for p. `hit` may arrive seeded with candidates (their distance
// bounds the search). A box is skipped only when it is farther than the tie bound, so every
// triangle of the final window is offered. "While-while" order (Aila & Laine): each iteration
// descends through inner nodes, nearest child first (the other child's box distance rides on the
// stack so a stale entry is dropped without a reload), until it reaches a leaf, tests the leaf's
// triangles, then pops the next entry still within the bound; lanes of a warp thus run the
// descent and the triangle tests as separate phases instead of interleaving them.
FGP_HD void bvh_search(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, Vec3 p, Hit& hit) {
  int stack_node[kBVHStack];
  float stack_d2[kBVHStack];
  int sp = 0;
  int node = 0;
  if (node_dist2(nodes, 0, p) > hit.bound2) return;
  while (true) {
    FGP_TRACE(kTraceIter);
    Vec3 lo, hi;
    int li, ui;
    load_node(nodes, node, lo, hi, li, ui);
    bool leaf = li < 0;
    while (!leaf) {
      FGP_TRACE(kTraceInner);
      // Both children whole: the near one's child indices come from this load, not a second one.
      Vec3 llo, lhi, rlo, rhi;
      int lli, lui, rli, rui;
      load_node(nodes, li, llo, lhi, lli, lui);
      load_node(nodes, ui, rlo, rhi, rli, rui);
      const float dl = box_dist2(p, llo, lhi), dr = box_dist2(p, rlo, rhi);
      const bool right = dr < dl;
      const int far_node = right ? li : ui;
      const float dn = right ? dr : dl, df = right ? dl : dr;
      if (df <= hit.bound2 && sp < kBVHStack) {
        stack_node[sp] = far_node;
        stack_d2[sp] = df;
        ++sp;
      }
      if (!(dn <= hit.bound2)) break;
      li = right ? rli : lli;
      ui = right ? rui : lui;
      leaf = li < 0;
    }
    if (leaf) {
      FGP_TRACE(kTraceLeaf);
      for (int k = ~li; k < ui; ++k) offer_tri(tris, k, p, hit);
    }
    // Pop the next entry still able to reach the tie bound.
    if (!pop_within<kTracePop>(stack_node, stack_d2, sp, hit.bound2, node)) return;
  }
}

// The lowest face among the triangles within hit.bound2 of p: every box within the bound is
// visited (no ordering needed). Used when the single pass lost a window member (hit_lost).
FGP_HD void bvh_resolve_lost(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, Vec3 p, Hit& hit) {
  int stack[kBVHStack];
  int sp = 0;
  stack[sp++] = 0;
  const float bound2 = hit.bound2;
  while (sp > 0) {
    FGP_TRACE(kTraceResolve);
    const int node = stack[--sp];
    Vec3 lo, hi;
    int li, ui;
    load_node(nodes, node, lo, hi, li, ui);
    if (!(box_dist2(p, lo, hi) <= bound2)) continue;
    if (li < 0) {
      for (int k = ~li; k < ui; ++k) {
        if (tri_lower2(load_tri_bound(tris, k), p) > bound2) continue;
        Vec3 a, b, c;
        int face;
        load_tri(tris, k, a, b, c, face);
        if (face >= hit.face) continue;
        FGP_TRACE(kTraceExact);
        if (point_triangle_dist2(p, a, b, c) <= bound2) hit.face = face;
      }
    } else if (sp + 2 <= kBVHStack) {
      stack[sp++] = ui;
      stack[sp++] = li;
    }
  }
  hit.lost2 = INFINITY;
}

FGP_HD void bvh_nearest(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, Vec3 p, Hit& hit_io) {
  Hit hit = hit_io;  // a local copy stays in registers (no aliasing with the node/tri loads)
  bvh_search(nodes, tris, p, hit);
  if (hit_lost(hit)) bvh_resolve_lost(nodes, tris, p, hit);
  hit_io = hit;
}

// ------------------------------------------------------------------ tile shortlist
// Background samples of one tile (a block's 8x8 pixels at one sample index) lie within a few mm of
// each other and usually centimetres from the mesh, so their nearest-triangle searches walk nearly
// the same part of the tree. The tile does that walk once, against the box of its sample points,
// and lists every triangle that can be in any sample's tie window; each sample then offers the
// list (box prefilter, exact test) instead of traversing, and all lanes run the same list.
//
// Exactness: for a vertex v of any triangle t, every sample p of the tile has computed
// d2(p, t) <= tie_bound2(box_far_dist2(v, box)) =: U2 (the exact distance is at most |p - v|, the
// float test adds far less than the tie margin; docs/tie_rule.md), so every sample's minimum is
// <= U2 and its tie window lies within reach2 = tie_bound2(U2). A triangle whose padded box is
// farther than reach2 from the tile's box is in no window (box_box_dist2 is a lower bound of each
// sample's computed distance, as in offer_tri); the walk prunes with the least U2 found so far and
// the list is filtered by the final one.
struct ListEntry {
  int k;        // leaf-ordered triangle
  float tile2;  // box_box_dist2 of its padded box to the tile's box
  Vec3 u;       // unit direction from the triangle's point nearest the tile's centre to the centre
  float s;      // max of u.x over the triangle (0 with u = 0: no half-space)
};
// Entries a tile's list may hold (a longer one: per-sample traversal, same answers; lists hold
// ~14 on the ICT head, and a cap of 256 overflows no more often than 512). CUDA keeps the list in
// shared memory (24 B an entry: 6 KB a block); the CPU's is on the heap.
#ifndef FGP_LIST_CAP_CUDA
#define FGP_LIST_CAP_CUDA 256
#endif
constexpr int kListCapCuda = FGP_LIST_CAP_CUDA;
constexpr int kListCapCpu = 1024;
constexpr int kWarpLanes = 32;           // a leaf is handled in chunks of this many triangles

// The tile's cell: the box of its sample points and a point v on the mesh (the closest point to the
// box's centre among the triangles the walk has reached so far), for cell_beyond.
struct TileCell {
  Vec3 lo, hi, c, h;  // box, centre, half extents
  Vec3 v;             // the point on the mesh
  float v2;           // |c - v|^2; INFINITY while there is no v
  Vec3 kw;            // K (c - v) / |c - v|
  float thr;          // K |c - v| + K |h|^2 / (2 |c - v|) + kCellAbs; INFINITY: nothing is beyond
};

// Margins of cell_beyond: a set must be farther than T(T(|p - v|)) (T(d) = d (1 + TIE_REL) + TIE_ABS:
// once for the tie window, once for float rounding, as reach2) and TIE_ABS more;
// K = 1 + 2^-12 > (1 + TIE_REL)^2.
constexpr float kCellAbs = 3.f * kTieAbs;
constexpr float kCellK = 1.f + 2.44140625e-04f;

FGP_HD void cell_set_v(TileCell& C, Vec3 v, float v2) {
  C.v = v;
  C.v2 = v2;
  const float d = v2 * approx_rsqrt(v2);  // (approximate: thr's margin is 10^4 times its error)
  if (!(d > 0.f)) {
    C.kw = Vec3{0.f, 0.f, 0.f};
    C.thr = INFINITY;
    return;
  }
  const float inv = approx_div(1.f, d);
  C.kw = (kCellK * inv) * (C.c - v);
  C.thr = kCellK * d + (0.5f * kCellK * inv) * dot(C.h, C.h) + kCellAbs;
}

FGP_HD TileCell tile_cell(Vec3 lo, Vec3 hi) {
  TileCell C;
  C.lo = lo;
  C.hi = hi;
  C.c = 0.5f * (lo + hi);
  C.h = 0.5f * (hi - lo);
  C.v = C.c;
  C.v2 = INFINITY;
  C.kw = Vec3{0.f, 0.f, 0.f};
  C.thr = INFINITY;
  return C;
}

// Whether a set lying in the half-space u.x <= s (|u| <= 1) is in no sample's tie window. For a
// sample p = c + e of the cell every x of the set has |p - x| >= u.p - s, and p's minimum distance
// is at most |p - v| <= D + w.e + |e|^2 / (2 D) (D = |c - v|, w = (c - v) / D; squaring shows it
// for every e). So the set is beyond when u.c - s + (u - K w).e > K (D + |e|^2 / (2 D)) + margins for
// every e of the box, i.e. u.c - s - sum_i |u_i - K w_i| h_i > thr. Far from the mesh this is far
// tighter than the tile's min-of-max bound: that takes every sample at the box's farthest corner,
// this follows how both distances change across the box (nearly in step for far samples).
FGP_HD bool cell_beyond(const TileCell& C, Vec3 u, float s) {
  const float spread = (fabsf(u.x - C.kw.x) * C.h.x + fabsf(u.y - C.kw.y) * C.h.y) + fabsf(u.z - C.kw.z) * C.h.z;
  return (dot(u, C.c) - s) - spread > C.thr;
}

// cell_beyond for the box [lo, hi], in the direction from its point nearest the cell's centre.
FGP_HD bool cell_beyond_box(const TileCell& C, Vec3 lo, Vec3 hi) {
  if (!(C.thr < INFINITY)) return false;
  const Vec3 q = Vec3{fgp_min(fgp_max(C.c.x, lo.x), hi.x), fgp_min(fgp_max(C.c.y, lo.y), hi.y),
                      fgp_min(fgp_max(C.c.z, lo.z), hi.z)};
  const Vec3 g = C.c - q;
  const float g2 = dot(g, g);
  if (!(g2 > 0.f)) return false;
  const Vec3 u = approx_rsqrt(g2) * g;  // s below is the box's support along this u, whatever its rounding
  const float s = (fgp_max(u.x * lo.x, u.x * hi.x) + fgp_max(u.y * lo.y, u.y * hi.y)) + fgp_max(u.z * lo.z, u.z * hi.z);
  return cell_beyond(C, u, s);
}

// The list entry of reached triangle k (vertices a, b, c) with the tile's direction u.
FGP_HD ListEntry list_entry(Vec3 a, Vec3 b, Vec3 c, int k, float tile2, Vec3 u) {
  ListEntry e;
  e.u = u;
  e.s = fmax3(dot(u, a), dot(u, b), dot(u, c));  // u.q for the nearest point q, without q's rounding
  e.k = k;
  e.tile2 = tile2;
  return e;
}

// Leaves the walk has reached but not yet looked into, taken together so one step fills the
// warp's lanes (a leaf holds only a few triangles).
struct Pending {
  int tris = 0;  // queued triangles (<= kWarpLanes)
#ifdef __CUDA_ARCH__
  int k = -1;    // this lane's queued triangle (lanes 0 .. tris-1 hold one)
#else
  int start[kWarpLanes], end[kWarpLanes];  // the queued pieces of leaves, in order
  int leaves = 0;
#endif
};

// What a reached triangle tells the tile: its point q nearest the cell's centre (a v candidate),
// the direction u from q to the centre (the triangle lies in u.x <= u.q) and its box distance.
struct StepTri {
  Vec3 a, b, c, u, q;
  float tile2;  // box_box_dist2 of its padded box to the cell's box
  float c2;     // |centre - q|^2
};

FGP_HD StepTri step_tri(Vec3 a, Vec3 b, Vec3 c, const TileCell& C) {
  StepTri t;
  t.a = a;
  t.b = b;
  t.c = c;
  Vec3 tlo, thi;
  tri_box(a, b, c, tlo, thi);
  t.tile2 = box_box_dist2(tlo, thi, C.lo, C.hi);
  t.q = bary_point(closest_point_bary<true>(C.c, a, b, c), a, b, c);  // any point of t serves as v
  const Vec3 g = C.c - t.q;
  t.c2 = dot(g, g);
  t.u = t.c2 > 0.f ? approx_rsqrt(t.c2) * g : Vec3{0.f, 0.f, 0.f};  // s is t's support along any u
  return t;
}

// Lower the cell's bounds with a triangle (on CUDA, with every active lane's triangle at once; all
// lanes call it): the min-of-max bound far2 (the least distance from a vertex to the box's farthest
// corner; reach2 = tie_bound2(tie_bound2(far2)), docs/tie_rule.md) and v, the nearest point to the
// centre so far (lowest lane on equal distances, so the CPU's order gives the same v).
FGP_HD void cell_update(TileCell& C, float& far2, float& reach2, bool active, const StepTri& t) {
  float f2 = INFINITY, c2 = INFINITY;
  if (active) {
    c2 = t.c2;
    if (t.tile2 < far2)
      f2 = fmin3(box_far_dist2(t.a, C.lo, C.hi), box_far_dist2(t.b, C.lo, C.hi), box_far_dist2(t.c, C.lo, C.hi));
  }
#ifdef __CUDA_ARCH__
  const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
  int best = lane;
  for (int off = 16; off > 0; off >>= 1) {
    f2 = fminf(f2, __shfl_xor_sync(0xffffffffu, f2, off));
    const float o2 = __shfl_xor_sync(0xffffffffu, c2, off);
    const int ob = __shfl_xor_sync(0xffffffffu, best, off);
    if (o2 < c2 || (o2 == c2 && ob < best)) {
      c2 = o2;
      best = ob;
    }
  }
  const Vec3 q = active ? t.q : C.c;
  const Vec3 v = Vec3{__shfl_sync(0xffffffffu, q.x, best), __shfl_sync(0xffffffffu, q.y, best),
                      __shfl_sync(0xffffffffu, q.z, best)};
#else
  const Vec3 v = t.q;
#endif
  if (f2 < far2) {
    far2 = f2;
    reach2 = tie_bound2(tie_bound2(f2));
  }
  if (c2 < C.v2) cell_set_v(C, v, c2);
}

// Whether a reached triangle may be in a sample's window, as far as the bounds so far tell.
FGP_HD bool step_keep(const StepTri& t, const TileCell& C, float reach2) {
  return t.tile2 <= reach2 && !cell_beyond(C, t.u, fmax3(dot(t.u, t.a), dot(t.u, t.b), dot(t.u, t.c)));
}

// The triangles of the pending leaves (at most kWarpLanes): the step lowers the cell's bounds with
// them, then appends the ones still in reach, in order. False when the list would exceed cap. On
// CUDA every lane of the warp runs the walk in step and takes one triangle.
FGP_HD bool shortlist_step(const float* __restrict__ tris, Pending& pend, TileCell& C, float& far2,
                           float& reach2, ListEntry* list, int& count, int cap) {
  FGP_TRACE(kTraceTileStep);
#ifdef __CUDA_ARCH__
  const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
  const int k = pend.k;
  const bool active = k >= 0;
  StepTri t{};
  if (active) {
    Vec3 a, b, c;
    int face;
    load_tri(tris, k, a, b, c, face);
    t = step_tri(a, b, c, C);
  }
  cell_update(C, far2, reach2, active, t);
  pend.k = -1;
  pend.tris = 0;
  const bool keep = active && step_keep(t, C, reach2);
  const unsigned mask = __ballot_sync(0xffffffffu, keep);
  const int kept = __popc(mask);
  if (count + kept > cap) return false;
  if (keep) list[count + __popc(mask & ((1u << lane) - 1u))] = list_entry(t.a, t.b, t.c, k, t.tile2, t.u);
  count += kept;
  __syncwarp();
  return true;
#else
  StepTri t[kWarpLanes];
  int n = 0;
  for (int i = 0; i < pend.leaves; ++i)
    for (int k = pend.start[i]; k < pend.end[i]; ++k, ++n) {
      Vec3 a, b, c;
      int face;
      load_tri(tris, k, a, b, c, face);
      t[n] = step_tri(a, b, c, C);
      cell_update(C, far2, reach2, true, t[n]);
    }
  n = 0;
  for (int i = 0; i < pend.leaves; ++i)
    for (int k = pend.start[i]; k < pend.end[i]; ++k, ++n) {
      if (!step_keep(t[n], C, reach2)) continue;
      if (count == cap) return false;
      list[count++] = list_entry(t[n].a, t[n].b, t[n].c, k, t[n].tile2, t[n].u);
    }
  pend.leaves = pend.tris = 0;
  return true;
#endif
}

// Queue triangles [start, end) of a reached leaf, stepping first when they would not fit; a leaf
// longer than the warp is stepped through in pieces.
FGP_HD bool shortlist_leaf(const float* __restrict__ tris, Pending& pend, int start, int end, TileCell& C,
                           float& far2, float& reach2, ListEntry* list, int& count, int cap) {
  FGP_TRACE(kTraceTileQueue);
  for (int k0 = start; k0 < end; k0 += kWarpLanes) {
    const int k1 = end - k0 > kWarpLanes ? k0 + kWarpLanes : end;
    if (pend.tris + (k1 - k0) > kWarpLanes && !shortlist_step(tris, pend, C, far2, reach2, list, count, cap))
      return false;
#ifdef __CUDA_ARCH__
    const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
    if (lane >= pend.tris && lane < pend.tris + (k1 - k0)) pend.k = k0 + (lane - pend.tris);
#else
    pend.start[pend.leaves] = k0;
    pend.end[pend.leaves] = k1;
    ++pend.leaves;
#endif
    pend.tris += k1 - k0;
  }
  return true;
}

// Whether a listed entry survives the final bounds.
FGP_HD bool entry_keep(const ListEntry& e, const TileCell& C, float reach2) {
  return e.tile2 <= reach2 && !cell_beyond(C, e.u, e.s);
}

// Keep the entries within the final bounds, in order, then move the one nearest the cell's centre
// (u.c - s is its distance) to the front, so every sample's search starts from a tight bound. On
// CUDA 32 entries at a time across the warp (an entry moves only to an earlier slot, after its
// chunk has been read). Returns the new count.
FGP_HD int shortlist_filter(ListEntry* list, int count, const TileCell& C, float reach2) {
  int kept = 0, front = 0;
  float front_d = INFINITY;
#ifdef __CUDA_ARCH__
  const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
  for (int base = 0; base < count; base += 32) {
    FGP_TRACE(kTraceFilter);
    const int j = base + lane;
    ListEntry e;
    const bool keep = j < count && (e = list[j], entry_keep(e, C, reach2));
    __syncwarp();
    const unsigned mask = __ballot_sync(0xffffffffu, keep);
    const int slot = kept + __popc(mask & ((1u << lane) - 1u));
    float d = INFINITY;
    if (keep) {
      list[slot] = e;
      d = dot(e.u, C.c) - e.s;
    }
    int at = slot;
    for (int off = 16; off > 0; off >>= 1) {
      const float od = __shfl_xor_sync(0xffffffffu, d, off);
      const int oa = __shfl_xor_sync(0xffffffffu, at, off);
      if (od < d || (od == d && oa < at)) {
        d = od;
        at = oa;
      }
    }
    if (d < front_d) {
      front_d = d;
      front = at;
    }
    kept += __popc(mask);
    __syncwarp();
  }
  if (front > 0 && lane == 0) {
    const ListEntry e = list[0];
    list[0] = list[front];
    list[front] = e;
  }
  __syncwarp();
#else
  for (int base = 0; base < count; base += kWarpLanes) {
    FGP_TRACE(kTraceFilter);
    for (int j = base; j < count && j < base + kWarpLanes; ++j)
      if (entry_keep(list[j], C, reach2)) {
        const float d = dot(list[j].u, C.c) - list[j].s;
        if (d < front_d) {
          front_d = d;
          front = kept;
        }
        list[kept++] = list[j];
      }
  }
  if (front > 0) {
    const ListEntry e = list[0];
    list[0] = list[front];
    list[front] = e;
  }
#endif
  return kept;
}

// Until a seed gives the cell a v: one nearest-child-first descent to a leaf, whose triangles set
// v and far2 (they are not listed here; the walk reaches them again).
FGP_HD void shortlist_descend(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, TileCell& C,
                              float& far2, float& reach2) {
  Vec3 lo, hi;
  int li, ui;
  load_node(nodes, 0, lo, hi, li, ui);
  while (li >= 0) {
    FGP_TRACE(kTraceTileInner);
    Vec3 llo, lhi, rlo, rhi;
    int ll, lu, rl, ru;
    load_node(nodes, li, llo, lhi, ll, lu);
    load_node(nodes, ui, rlo, rhi, rl, ru);
    const bool right = box_box_dist2(rlo, rhi, C.lo, C.hi) < box_box_dist2(llo, lhi, C.lo, C.hi);
    li = right ? rl : ll;
    ui = right ? ru : lu;
  }
  for (int k0 = ~li; k0 < ui; k0 += kWarpLanes) {
    FGP_TRACE(kTraceTileProbe);
#ifdef __CUDA_ARCH__
    const int k = k0 + ((threadIdx.y * blockDim.x + threadIdx.x) & 31);
    const bool active = k < ui;
    StepTri t{};
    if (active) {
      Vec3 a, b, c;
      int face;
      load_tri(tris, k, a, b, c, face);
      t = step_tri(a, b, c, C);
    }
    cell_update(C, far2, reach2, active, t);
#else
    for (int k = k0; k < ui && k < k0 + kWarpLanes; ++k) {
      Vec3 a, b, c;
      int face;
      load_tri(tris, k, a, b, c, face);
      cell_update(C, far2, reach2, true, step_tri(a, b, c, C));
    }
#endif
  }
}

// Inner nodes the walk's frontier may hold (more: the caller traverses per sample). 64 / 128 / 256
// leave 929 / 424 / 220 of the ICT head's 105,300 walks to per-sample traversal (2.06 / 2.01 /
// 1.98 G modelled, 8x4 tiles); on CUDA 2 x 256 x 8 B = 4 KB of shared memory per block.
constexpr int kFrontier = 256;
struct FrontierNode {
  int left, right;  // the children of a node that is in reach
};

// Grandchild j (0-3) of a frontier node: of its left (j < 2) or right child, the left (even j) or
// right one; a child that is a leaf stands for itself at even j and is absent at odd j. Testing
// grandchildren directly skips the children's own test (their boxes hold the grandchildren's, so
// it would seldom prune more) and halves the walk's steps.
FGP_HD bool frontier_grandchild(const BVHNode* __restrict__ nodes, FrontierNode fn, int j, Vec3& lo, Vec3& hi,
                                int& l, int& u) {
  const int child = (j & 2) ? fn.right : fn.left;
  load_node(nodes, child, lo, hi, l, u);
  if (l < 0) return (j & 1) == 0;
  load_node(nodes, (j & 1) ? u : l, lo, hi, l, u);
  return true;
}

// The shortlist of the cell C (its box finite; v and far2 possibly seeded by cell_update, e.g. with
// the samples' previous faces). Returns its length, or -1 when more than `cap` triangles or
// kFrontier nodes stay in reach (the caller then traverses per sample). Breadth first: each step
// tests the grandchildren of up to 8 frontier nodes against reach2 and cell_beyond_box (on CUDA one
// child per lane, scratch in shared memory; the CPU runs the same steps in the same order, its
// bounds without CUDA's approximate divisions, so a list may differ by a triangle at a margin,
// never an answer), keeps the inner ones that stay in reach for the next level and queues the
// leaves, whose triangles lower the bounds as they are stepped. scratch: 2 * kFrontier entries.
FGP_HD int bvh_shortlist(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, TileCell& C, float far2,
                         ListEntry* list, int cap, FrontierNode* scratch) {
  float reach2 = far2 < INFINITY ? tie_bound2(tie_bound2(far2)) : INFINITY;
  if (!(C.thr < INFINITY)) shortlist_descend(nodes, tris, C, far2, reach2);
  int count = 0;
  Pending pend;
  FrontierNode* cur = scratch;
  FrontierNode* nxt = scratch + kFrontier;
  {
    Vec3 lo, hi;
    int li, ui;
    load_node(nodes, 0, lo, hi, li, ui);
    if (li < 0) {  // a one-leaf tree
      if (!shortlist_leaf(tris, pend, ~li, ui, C, far2, reach2, list, count, cap)) return -1;
      if (pend.tris > 0 && !shortlist_step(tris, pend, C, far2, reach2, list, count, cap)) return -1;
      return shortlist_filter(list, count, C, reach2);
    }
#ifdef __CUDA_ARCH__
    if (((threadIdx.y * blockDim.x + threadIdx.x) & 31) == 0) cur[0] = FrontierNode{li, ui};
    __syncwarp();
#else
    cur[0] = FrontierNode{li, ui};
#endif
  }
  int fc = 1;
  while (fc > 0) {
    int nc = 0;
    for (int base = 0; base < fc; base += kWarpLanes / 4) {
      FGP_TRACE(kTraceTile);
#ifdef __CUDA_ARCH__
      const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
      const int i = base + (lane >> 2);
      bool ok = false;
      int l = 0, u = 0;
      Vec3 lo, hi;
      if (i < fc && frontier_grandchild(nodes, cur[i], lane & 3, lo, hi, l, u))
        ok = box_box_dist2(lo, hi, C.lo, C.hi) <= reach2 && !cell_beyond_box(C, lo, hi);
      const unsigned inner = __ballot_sync(0xffffffffu, ok && l >= 0), leaves = __ballot_sync(0xffffffffu, ok && l < 0);
      if (nc + __popc(inner) > kFrontier) return -1;
      if (ok && l >= 0) nxt[nc + __popc(inner & ((1u << lane) - 1u))] = FrontierNode{l, u};
      nc += __popc(inner);
      for (unsigned m = leaves; m != 0; m &= m - 1) {
        const int src = __ffs(m) - 1;
        const int start = ~__shfl_sync(0xffffffffu, l, src), end = __shfl_sync(0xffffffffu, u, src);
        if (!shortlist_leaf(tris, pend, start, end, C, far2, reach2, list, count, cap)) return -1;
      }
#else
      // As the warp: every grandchild of the chunk is tested with the bounds as they stand, then
      // the inner ones go to the next level and the leaves are queued, in lane order.
      bool ok[kWarpLanes];
      int l[kWarpLanes], u[kWarpLanes];
      const int lanes = fc - base < kWarpLanes / 4 ? 4 * (fc - base) : kWarpLanes;
      for (int j = 0; j < lanes; ++j) {
        Vec3 lo, hi;
        ok[j] = frontier_grandchild(nodes, cur[base + (j >> 2)], j & 3, lo, hi, l[j], u[j]) &&
                box_box_dist2(lo, hi, C.lo, C.hi) <= reach2 && !cell_beyond_box(C, lo, hi);
      }
      for (int j = 0; j < lanes; ++j)
        if (ok[j] && l[j] >= 0) {
          if (nc == kFrontier) return -1;
          nxt[nc++] = FrontierNode{l[j], u[j]};
        }
      for (int j = 0; j < lanes; ++j)
        if (ok[j] && l[j] < 0 && !shortlist_leaf(tris, pend, ~l[j], u[j], C, far2, reach2, list, count, cap))
          return -1;
#endif
    }
#ifdef __CUDA_ARCH__
    __syncwarp();
#endif
    FrontierNode* t = cur;
    cur = nxt;
    nxt = t;
    fc = nc;
  }
  if (pend.tris > 0 && !shortlist_step(tris, pend, C, far2, reach2, list, count, cap)) return -1;
  return shortlist_filter(list, count, C, reach2);
}

// Offer the tile's shortlist to sample p (which must lie in the tile's box): every triangle of p's
// tie window is on it, so this replaces bvh_nearest, the lost-member pass included.
FGP_HD void offer_shortlist(const float* __restrict__ tris, const ListEntry* list, int count, Vec3 p, Hit& hit) {
  float bound2 = -1.f, bound = 0.f;
  for (int j = 0; j < count; ++j) {
    FGP_TRACE(kTraceList);
    const ListEntry& e = list[j];
    if (hit.bound2 != bound2) {
      bound2 = hit.bound2;
      bound = sqrtf(bound2);
    }
    // The half-space toward the cell's centre first (u.p - s is a lower bound of the distance,
    // nearly the distance itself for a far sample; shrunk by the tie margins as tri_lower2's).
    const float h = dot(e.u, p) - e.s;
    if (h * (1.f - kTieRel) - kTieAbs > bound) continue;
    FGP_TRACE(kTraceListPlane);
    if (tri_lower2(load_tri_bound(tris, e.k), p) > hit.bound2) continue;
    FGP_TRACE(kTraceExact);
    Vec3 a, b, c;
    int face;
    load_tri(tris, e.k, a, b, c, face);
    hit_offer(hit, face, point_triangle_dist2(p, a, b, c));
  }
  if (!hit_lost(hit)) return;
  // A dropped window member may be lower than the kept face: the lowest face within the final
  // bound, again from the list (it holds the whole window; bvh_resolve_lost's job, without the tree).
  bound = sqrtf(hit.bound2);
  for (int j = 0; j < count; ++j) {
    FGP_TRACE(kTraceResolve);
    const ListEntry& e = list[j];
    const float h = dot(e.u, p) - e.s;
    if (h * (1.f - kTieRel) - kTieAbs > bound || tri_lower2(load_tri_bound(tris, e.k), p) > hit.bound2) continue;
    Vec3 a, b, c;
    int face;
    load_tri(tris, e.k, a, b, c, face);
    if (face >= hit.face) continue;
    FGP_TRACE(kTraceExact);
    if (point_triangle_dist2(p, a, b, c) <= hit.bound2) hit.face = face;
  }
  hit.lost2 = INFINITY;
}

// ------------------------------------------------------------------ CPU-side build and refit
// Build the topology for faces (F x 3, int32) over verts (V x 3). topo gets M x 4 ints, prim F
// ints. Returns M. Deterministic.
int bvh_build(const float* verts, int64_t V, const int* faces, int64_t F, int leaf_size,
              int* topo_out /* nullable: size 4*(2F) */, int* prim_out, int* depth_out);

// Gather the leaf-ordered triangles of one batch element and recompute every box, bottom-up.
void bvh_refit_cpu(const float* verts, const int* faces, const int* topo, const int* prim,
                   int64_t F, int64_t M, BVHNode* nodes, float* tris);

// Checks of a BVH that may come from anywhere (linear time, no recursion), run before any traversal
// by the validating ops. Each returns nullptr when sound, else what is wrong.
// Tree shape from the child links left[k * stride], right[k * stride] (a leaf: left = ~start,
// right = end): children after their parent, every node but the root exactly one parent, the leaf
// ranges a partition of [0, F), depth below kBVHMaxDepth; parent links (nullable) must match.
const char* bvh_check_topology(const int* left, const int* right, const int* parent, int64_t stride, int64_t M,
                               int64_t F);
// One batch element of refit data: the tree shape, every box finite and holding its children (a
// leaf: its triangles), the leaf-ordered triangles a permutation of the faces and, with verts
// (faces already range-checked), equal to verts[faces[face]].
const char* bvh_check_nodes(const BVHNode* nodes, int64_t M, const float* tris, int64_t F, const float* verts,
                            const int* faces);

}  // namespace fgp
