// BVH over a fixed-topology triangle mesh: built once per topology on the CPU (binned SAH), refit
// per frame (CPU here, CUDA in cuda/kernels.cu), queried by nearest-child-first stack traversal.
//
// Layout (per batch element):
//   nodes: 2*M BVHNode halves; node k = {lower, upper} = 32 bytes, one aligned load pair.
//          inner: lower.i = left child, upper.i = right child (children come after the parent).
//          leaf:  lower.i = ~start (negative), upper.i = end, a range of leaf-ordered triangles.
//   tris:  F x 12 floats in leaf order: a.xyz, face id (int bits), b.xyz, 0, c.xyz, 0.
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
// lost-member pass, an exact point-triangle test; the tile shortlist's shared walk starts an
// iteration / handles an inner node / queues a leaf / steps through queued triangles / pops /
// filters 32 list entries, a
// sample offers a shortlist entry (plane-and-ball prefilter).
// FGP_TRACE_LANE(lane) says whose work follows in a tile (kTraceShared: the tile's own).
enum TraceEvent : int {
  kTraceSample, kTraceSeed, kTraceIter, kTraceInner, kTraceLeaf, kTraceTri, kTracePop, kTraceResolve, kTraceExact,
  kTraceTile, kTraceTileInner, kTraceTileQueue, kTraceTileStep, kTraceTilePop, kTraceFilter, kTraceList, kTraceListPlane,
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
constexpr int kTriStride = 12;

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


FGP_HD void load_tri(const float* __restrict__ tris, int k, Vec3& a, Vec3& b, Vec3& c, int& face) {
#ifdef __CUDA_ARCH__
  const float4* t4 = reinterpret_cast<const float4*>(tris) + 3 * k;
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
// divisions) is skipped when the triangle's own box, padded like the leaf boxes so it stays a
// lower bound of the computed distance, is already beyond the tie bound: for far samples most
// triangles of a visited leaf are.
FGP_HD void offer_tri(const float* __restrict__ tris, int k, Vec3 p, Hit& hit) {
  FGP_TRACE(kTraceTri);
  Vec3 a, b, c;
  int face;
  load_tri(tris, k, a, b, c, face);
  Vec3 lo, hi;
  tri_box(a, b, c, lo, hi);
  if (box_dist2(p, lo, hi) > hit.bound2) return;
  FGP_TRACE(kTraceExact);
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
      const float dl = node_dist2(nodes, li, p), dr = node_dist2(nodes, ui, p);
      int near_node = li, far_node = ui;
      float dn = dl, df = dr;
      if (dr < dl) {
        near_node = ui; far_node = li; dn = dr; df = dl;
      }
      if (df <= hit.bound2 && sp < kBVHStack) {
        stack_node[sp] = far_node;
        stack_d2[sp] = df;
        ++sp;
      }
      if (!(dn <= hit.bound2)) break;
      node = near_node;
      load_node(nodes, node, lo, hi, li, ui);
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
        Vec3 a, b, c;
        int face;
        load_tri(tris, k, a, b, c, face);
        FGP_TRACE(kTraceExact);
        if (face < hit.face && point_triangle_dist2(p, a, b, c) <= bound2) hit.face = face;
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
// Background samples of one tile (a warp's 8x4 pixels at one sample index) lie within a few mm of
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
  Vec3 n;       // unit normal (0 for a degenerate triangle)
  float delta;  // the vertices' largest distance from the plane through m along n
  Vec3 m;       // centroid
  float rho;    // the vertices' largest distance from m: the triangle lies in the ball (m, rho)
  int k;        // leaf-ordered triangle
  float tile2;  // box_box_dist2 of its padded box to the tile's box
};
// Entries a tile's list may hold (a longer one: per-sample traversal, same answers). CUDA keeps
// the list in shared memory (40 B an entry; 2 warps a block: 30 KB); the CPU's is on the heap.
#ifndef FGP_LIST_CAP_CUDA
#define FGP_LIST_CAP_CUDA 384
#endif
constexpr int kListCapCuda = FGP_LIST_CAP_CUDA;
constexpr int kListCapCpu = 1024;
constexpr int kWarpLanes = 32;           // a leaf is handled in chunks of this many triangles

FGP_HD ListEntry list_entry(Vec3 a, Vec3 b, Vec3 c, int k, float tile2) {
  ListEntry e;
  e.m = (1.f / 3.f) * ((a + b) + c);
  const Vec3 nn = cross(b - a, c - a);
  const float len = sqrtf(dot(nn, nn));
  e.n = len > 0.f ? (1.f / len) * nn : Vec3{0.f, 0.f, 0.f};
  const Vec3 da = a - e.m, db = b - e.m, dc = c - e.m;
  e.delta = fmax3(fabsf(dot(da, e.n)), fabsf(dot(db, e.n)), fabsf(dot(dc, e.n)));
  e.rho = sqrtf(fmax3(dot(da, da), dot(db, db), dot(dc, dc)));
  e.k = k;
  e.tile2 = tile2;
  return e;
}

// Lower bound of the computed squared distance from p = m + w to a listed triangle: with h = n.w and
// r the distance of p's projection on that plane from m, any point x of the triangle has
// |p - x|^2 >= (|h| - delta)+^2 + (r - rho)+^2 (x is within delta of the plane and within rho of
// m). Both terms are shrunk by the tie margins (docs/tie_rule.md), far more than the float error
// of this bound and of the exact test, so it stays below the computed distance. For far samples
// it is much tighter than a box: only triangles near the foot of p pass.
FGP_HD float list_lower2(const ListEntry& e, Vec3 w) {
  const float h = dot(w, e.n);
  const Vec3 q = w - h * e.n;
  const float r = sqrtf(dot(q, q));
  const float slack = kTieAbs + kTieRel * (fabsf(h) + r);
  const float u = fgp_max(fabsf(h) - e.delta - slack, 0.f), v = fgp_max(r - e.rho - slack, 0.f);
  return u * u + v * v;
}

// Leaves the walk has reached but not yet looked into, taken together so one step fills the
// warp's lanes (a leaf holds only a few triangles).
constexpr int kPendingLeaves = 8;
struct Pending {
  int start[kPendingLeaves], end[kPendingLeaves];
  int leaves = 0, tris = 0;
};

// The triangles of the pending leaves (at most kWarpLanes): the step first lowers the min-of-max
// bound with their vertices (a vertex is no nearer the tile's farthest point than its triangle's
// box is to the tile, so only triangles nearer than the bound are looked at), then appends the
// triangles still in reach, in order. False when the list would exceed cap. On CUDA every lane of
// the warp runs the walk in step and takes one triangle.
FGP_HD bool shortlist_step(const float* __restrict__ tris, Pending& pend, Vec3 lo, Vec3 hi, float& far2,
                           float& reach2, ListEntry* list, int& count, int cap) {
  FGP_TRACE(kTraceTileStep);
#ifdef __CUDA_ARCH__
  const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
  int k = -1;
  for (int i = 0, base = 0; i < pend.leaves; ++i) {
    const int len = pend.end[i] - pend.start[i];
    if (lane >= base && lane < base + len) k = pend.start[i] + lane - base;
    base += len;
  }
  const bool active = k >= 0;
  Vec3 a{0.f, 0.f, 0.f}, b = a, c = a, tlo, thi;
  int face;
  float d2 = INFINITY, f2 = INFINITY;
  if (active) {
    load_tri(tris, k, a, b, c, face);
    tri_box(a, b, c, tlo, thi);
    d2 = box_box_dist2(tlo, thi, lo, hi);
    if (d2 < far2) f2 = fmin3(box_far_dist2(a, lo, hi), box_far_dist2(b, lo, hi), box_far_dist2(c, lo, hi));
  }
  for (int off = 16; off > 0; off >>= 1) f2 = fminf(f2, __shfl_xor_sync(0xffffffffu, f2, off));
  if (f2 < far2) {
    far2 = f2;
    reach2 = tie_bound2(tie_bound2(f2));
  }
  pend.leaves = pend.tris = 0;
  const bool keep = active && d2 <= reach2;
  const unsigned mask = __ballot_sync(0xffffffffu, keep);
  const int kept = __popc(mask);
  if (count + kept > cap) return false;
  if (keep) list[count + __popc(mask & ((1u << lane) - 1u))] = list_entry(a, b, c, k, d2);
  count += kept;
  __syncwarp();
  return true;
#else
  float d2[kWarpLanes];
  float f2 = INFINITY;
  int t = 0;
  for (int i = 0; i < pend.leaves; ++i)
    for (int k = pend.start[i]; k < pend.end[i]; ++k, ++t) {
      Vec3 a, b, c, tlo, thi;
      int face;
      load_tri(tris, k, a, b, c, face);
      tri_box(a, b, c, tlo, thi);
      d2[t] = box_box_dist2(tlo, thi, lo, hi);
      if (d2[t] < far2)
        f2 = fgp_min(f2, fmin3(box_far_dist2(a, lo, hi), box_far_dist2(b, lo, hi), box_far_dist2(c, lo, hi)));
    }
  if (f2 < far2) {
    far2 = f2;
    reach2 = tie_bound2(tie_bound2(f2));
  }
  t = 0;
  for (int i = 0; i < pend.leaves; ++i)
    for (int k = pend.start[i]; k < pend.end[i]; ++k, ++t) {
      if (!(d2[t] <= reach2)) continue;
      if (count == cap) return false;
      Vec3 a, b, c;
      int face;
      load_tri(tris, k, a, b, c, face);
      list[count++] = list_entry(a, b, c, k, d2[t]);
    }
  pend.leaves = pend.tris = 0;
  return true;
#endif
}

// Queue triangles [start, end) of a reached leaf, stepping first when they would not fit; a leaf
// longer than the warp is stepped through in pieces. The first leaf is stepped at once, so the
// walk prunes with a finite bound from then on.
FGP_HD bool shortlist_leaf(const float* __restrict__ tris, Pending& pend, int start, int end, Vec3 lo, Vec3 hi,
                           float& far2, float& reach2, ListEntry* list, int& count, int cap) {
  FGP_TRACE(kTraceTileQueue);
  for (int k0 = start; k0 < end; k0 += kWarpLanes) {
    const int k1 = end - k0 > kWarpLanes ? k0 + kWarpLanes : end;
    if (pend.tris + (k1 - k0) > kWarpLanes || pend.leaves == kPendingLeaves)
      if (!shortlist_step(tris, pend, lo, hi, far2, reach2, list, count, cap)) return false;
    pend.start[pend.leaves] = k0;
    pend.end[pend.leaves] = k1;
    ++pend.leaves;
    pend.tris += k1 - k0;
    if (!(far2 < INFINITY) && !shortlist_step(tris, pend, lo, hi, far2, reach2, list, count, cap)) return false;
  }
  return true;
}

// Keep the entries within reach2, in order (on CUDA, 32 at a time across the warp: an entry
// moves only to an earlier slot, after its chunk has been read). Returns the new count.
FGP_HD int shortlist_filter(ListEntry* list, int count, float reach2) {
  int kept = 0;
#ifdef __CUDA_ARCH__
  const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
  for (int base = 0; base < count; base += 32) {
    FGP_TRACE(kTraceFilter);
    const int j = base + lane;
    ListEntry e;
    const bool keep = j < count && (e = list[j], e.tile2 <= reach2);
    __syncwarp();
    const unsigned mask = __ballot_sync(0xffffffffu, keep);
    if (keep) list[kept + __popc(mask & ((1u << lane) - 1u))] = e;
    kept += __popc(mask);
    __syncwarp();
  }
#else
  for (int base = 0; base < count; base += kWarpLanes) {
    FGP_TRACE(kTraceFilter);
    for (int j = base; j < count && j < base + kWarpLanes; ++j)
      if (list[j].tile2 <= reach2) list[kept++] = list[j];
  }
#endif
  return kept;
}

// The shortlist of the tile whose sample points span [lo, hi] (finite), nearest leaves first.
// Returns its length, or -1 when more than `cap` triangles stay in reach (the caller then
// traverses per sample). While-while order as bvh_search, with box-to-box distances. On CUDA the
// whole warp runs it in step (same values in every lane; leaves and the filter split across lanes).
FGP_HD int bvh_shortlist(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, Vec3 lo, Vec3 hi,
                         ListEntry* list, int cap) {
  int stack_node[kBVHStack];
  float stack_d2[kBVHStack];
  int sp = 0, count = 0, node = 0;
  float far2 = INFINITY;    // least box_far_dist2 of a vertex so far: the tile's min-of-max bound
  float reach2 = INFINITY;  // tie_bound2(tie_bound2(far2))
  Pending pend;
  while (true) {
    FGP_TRACE(kTraceTile);
    Vec3 nlo, nhi;
    int li, ui;
    load_node(nodes, node, nlo, nhi, li, ui);
    bool leaf = li < 0;
    while (!leaf) {
      FGP_TRACE(kTraceTileInner);
      Vec3 llo, lhi, rlo, rhi;
      int ll, lu, rl, ru;
      load_node(nodes, li, llo, lhi, ll, lu);
      load_node(nodes, ui, rlo, rhi, rl, ru);
      const float dl = box_box_dist2(llo, lhi, lo, hi), dr = box_box_dist2(rlo, rhi, lo, hi);
      const bool right_first = dr < dl;
      const int far_node = right_first ? li : ui;
      const float dn = right_first ? dr : dl, df = right_first ? dl : dr;
      if (df <= reach2 && sp < kBVHStack) {
        stack_node[sp] = far_node;
        stack_d2[sp] = df;
        ++sp;
      }
      if (!(dn <= reach2)) break;
      li = right_first ? rl : ll;
      ui = right_first ? ru : lu;
      leaf = li < 0;
    }
    if (leaf && !shortlist_leaf(tris, pend, ~li, ui, lo, hi, far2, reach2, list, count, cap)) return -1;
    if (!pop_within<kTraceTilePop>(stack_node, stack_d2, sp, reach2, node)) break;
  }
  if (pend.leaves > 0 && !shortlist_step(tris, pend, lo, hi, far2, reach2, list, count, cap)) return -1;
  return shortlist_filter(list, count, reach2);
}

// Offer the tile's shortlist to sample p (which must lie in the tile's box): every triangle of p's
// tie window is on it, so this replaces bvh_search; the lost-member pass stays as it is.
FGP_HD void offer_shortlist(const float* __restrict__ tris, const ListEntry* list, int count, Vec3 p, Hit& hit) {
  float bound2 = -1.f, bound = 0.f;
  for (int j = 0; j < count; ++j) {
    FGP_TRACE(kTraceList);
    const ListEntry& e = list[j];
    if (hit.bound2 != bound2) {
      bound2 = hit.bound2;
      bound = sqrtf(bound2);
    }
    // The ball first (|p - m| - rho is a lower bound of the distance; margins as list_lower2's).
    const Vec3 w = p - e.m;
    const float reach = (bound + e.rho) * (1.f + kTieRel) + kTieAbs;
    if (dot(w, w) > reach * reach) continue;
    FGP_TRACE(kTraceListPlane);
    if (list_lower2(e, w) > hit.bound2) continue;
    FGP_TRACE(kTraceExact);
    Vec3 a, b, c;
    int face;
    load_tri(tris, e.k, a, b, c, face);
    hit_offer(hit, face, point_triangle_dist2(p, a, b, c));
  }
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
