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

constexpr int kBVHStack = 64;     // traversal stack; the build caps the depth below this
constexpr int kBVHMaxDepth = 56;  // SAH switches to median splits past 32, so depth stays small
constexpr int kTriStride = 12;

struct Hit {
  int face;   // original face index (INT_MAX-like when none)
  int tri;    // leaf-order index, -1 when none
  float d2;   // squared distance
};

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

// Offer leaf-ordered triangle k as a candidate (used to seed a query with a known-good bound).
FGP_HD void offer_tri(const float* __restrict__ tris, int k, Vec3 p, Hit& hit) {
  Vec3 a, b, c;
  int face;
  load_tri(tris, k, a, b, c, face);
  const float d2 = point_triangle_dist2(p, a, b, c);
  if (d2 < hit.d2 || (d2 == hit.d2 && face < hit.face)) hit = Hit{face, k, d2};
}

// Exact nearest triangle to p; ties go to the lowest original face index. `hit` may arrive seeded
// with a candidate (its distance bounds the search). Children are visited nearest first; the
// other child's box distance rides on the stack so a stale entry is dropped without a reload.
// Boxes at exactly the best distance are still visited, so an equal-distance lower face is found.
FGP_HD void bvh_nearest_impl(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, Vec3 p,
                             Hit& hit);
FGP_HD void bvh_nearest(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, Vec3 p,
                        Hit& hit_io) {
  Hit hit = hit_io;  // a local copy stays in registers (no aliasing with the node/tri loads)
  bvh_nearest_impl(nodes, tris, p, hit);
  hit_io = hit;
}
FGP_HD void bvh_nearest_impl(const BVHNode* __restrict__ nodes, const float* __restrict__ tris, Vec3 p,
                             Hit& hit) {
  int stack_node[kBVHStack];
  float stack_d2[kBVHStack];
  int sp = 0;
  int node = 0;
  if (node_dist2(nodes, 0, p) > hit.d2) return;
  while (true) {
    Vec3 lo, hi;
    int li, ui;
    load_node(nodes, node, lo, hi, li, ui);
    if (li < 0) {
      for (int k = ~li; k < ui; ++k) offer_tri(tris, k, p, hit);
    } else {
      const float dl = node_dist2(nodes, li, p), dr = node_dist2(nodes, ui, p);
      int near_node = li, far_node = ui;
      float dn = dl, df = dr;
      if (dr < dl) {
        near_node = ui; far_node = li; dn = dr; df = dl;
      }
      if (df <= hit.d2 && sp < kBVHStack) {
        stack_node[sp] = far_node;
        stack_d2[sp] = df;
        ++sp;
      }
      if (dn <= hit.d2) {
        node = near_node;
        continue;
      }
    }
    // Pop the next entry still able to beat (or tie) the best distance.
    bool found = false;
    while (sp > 0) {
      --sp;
      if (stack_d2[sp] <= hit.d2) {
        node = stack_node[sp];
        found = true;
        break;
      }
    }
    if (!found) return;
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

}  // namespace fgp
