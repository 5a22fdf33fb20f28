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
// lost-member pass, an exact point-triangle test.
enum TraceEvent : int {
  kTraceSample, kTraceSeed, kTraceIter, kTraceInner, kTraceLeaf, kTraceTri, kTracePop, kTraceResolve, kTraceExact,
  kTraceEvents
};
#ifndef FGP_TRACE
#define FGP_TRACE(event) ((void)0)
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

FGP_HD float node_dist2(const BVHNode* __restrict__ nodes, int k, Vec3 p) {
  Vec3 lo, hi;
  int li, ui;
  load_node(nodes, k, lo, hi, li, ui);
  return box_dist2(p, lo, hi);
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
  Vec3 lo = Vec3{fmin3(a.x, b.x, c.x), fmin3(a.y, b.y, c.y), fmin3(a.z, b.z, c.z)};
  Vec3 hi = Vec3{fmax3(a.x, b.x, c.x), fmax3(a.y, b.y, c.y), fmax3(a.z, b.z, c.z)};
  const Vec3 pad = Vec3{box_pad(lo.x, hi.x), box_pad(lo.y, hi.y), box_pad(lo.z, hi.z)};
  if (box_dist2(p, lo - pad, hi + pad) > hit.bound2) return;
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
    bool found = false;
    while (sp > 0) {
      FGP_TRACE(kTracePop);
      --sp;
      if (stack_d2[sp] <= hit.bound2) {
        node = stack_node[sp];
        found = true;
        break;
      }
    }
    if (!found) return;
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
