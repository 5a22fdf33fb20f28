// BVH build (binned SAH, once per topology) and CPU refit. No torch: also built by CMake.
#include "bvh.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

namespace fgp {
namespace {

constexpr int kBins = 16;
constexpr int kSahDepth = 32;  // past this depth split at the median: bounds the tree depth

struct Box {
  float lo[3] = {FLT_MAX, FLT_MAX, FLT_MAX};
  float hi[3] = {-FLT_MAX, -FLT_MAX, -FLT_MAX};
  void grow(const float* l, const float* h) {
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], l[a]);
      hi[a] = std::max(hi[a], h[a]);
    }
  }
  void grow(const float* p) { grow(p, p); }
  float area() const {
    if (lo[0] > hi[0]) return 0.f;
    const float dx = hi[0] - lo[0], dy = hi[1] - lo[1], dz = hi[2] - lo[2];
    return dx * dy + dy * dz + dz * dx;
  }
};

struct Builder {
  std::vector<float> lo, hi, cen;  // per face, 3 each
  std::vector<int> prim;
  std::vector<int> topo;  // 4 per node
  int max_depth = 0;
  int leaf_size = 4;

  int add_node(int parent) {
    topo.insert(topo.end(), {0, 0, parent, 0});
    return static_cast<int>(topo.size() / 4) - 1;
  }

  void median_split(int start, int end, int axis, int& mid) {
    mid = start + (end - start) / 2;
    const float* c = cen.data();
    std::nth_element(prim.begin() + start, prim.begin() + mid, prim.begin() + end, [&](int a, int b) {
      const float ca = c[3 * a + axis], cb = c[3 * b + axis];
      return ca < cb || (ca == cb && a < b);
    });
  }

  int build(int start, int end, int parent, int depth) {
    const int node = add_node(parent);
    max_depth = std::max(max_depth, depth);
    const int count = end - start;
    if (count <= leaf_size) {
      topo[4 * node] = ~start;
      topo[4 * node + 1] = end;
      return node;
    }
    Box cb;
    for (int i = start; i < end; ++i) cb.grow(&cen[3 * prim[i]]);
    int axis = 0;
    float ext[3];
    for (int a = 0; a < 3; ++a) ext[a] = cb.hi[a] - cb.lo[a];
    if (ext[1] > ext[axis]) axis = 1;
    if (ext[2] > ext[axis]) axis = 2;
    int mid = -1;
    if (depth < kSahDepth && ext[axis] > 0.f) {
      // Binned SAH over all three axes.
      float best_cost = FLT_MAX;
      int best_axis = -1, best_split = -1;
      for (int a = 0; a < 3; ++a) {
        if (!(ext[a] > 0.f)) continue;
        Box bins[kBins];
        int counts[kBins] = {0};
        const float scale = kBins / ext[a];
        for (int i = start; i < end; ++i) {
          const int f = prim[i];
          int b = static_cast<int>((cen[3 * f + a] - cb.lo[a]) * scale);
          b = std::min(std::max(b, 0), kBins - 1);
          counts[b]++;
          bins[b].grow(&lo[3 * f], &hi[3 * f]);
        }
        float right_area[kBins];
        int right_count[kBins];
        Box acc;
        int n = 0;
        for (int b = kBins - 1; b > 0; --b) {
          acc.grow(bins[b].lo, bins[b].hi);
          n += counts[b];
          right_area[b] = acc.area();
          right_count[b] = n;
        }
        Box left;
        int nl = 0;
        for (int b = 0; b < kBins - 1; ++b) {
          left.grow(bins[b].lo, bins[b].hi);
          nl += counts[b];
          const int nr = right_count[b + 1];
          if (nl == 0 || nr == 0) continue;
          const float cost = nl * left.area() + nr * right_area[b + 1];
          if (cost < best_cost) {
            best_cost = cost;
            best_axis = a;
            best_split = b;
          }
        }
      }
      if (best_axis >= 0) {
        const float scale = kBins / ext[best_axis];
        const float l0 = cb.lo[best_axis];
        auto it = std::partition(prim.begin() + start, prim.begin() + end, [&](int f) {
          int b = static_cast<int>((cen[3 * f + best_axis] - l0) * scale);
          b = std::min(std::max(b, 0), kBins - 1);
          return b <= best_split;
        });
        mid = static_cast<int>(it - prim.begin());
        // partition() order depends only on the input order: deterministic. Sort each side so
        // the leaf order does not depend on partition internals across library versions.
        std::sort(prim.begin() + start, prim.begin() + mid);
        std::sort(prim.begin() + mid, prim.begin() + end);
        if (mid == start || mid == end) mid = -1;
      }
    }
    if (mid < 0) median_split(start, end, axis, mid);
    const int left = build(start, mid, node, depth + 1);
    const int right = build(mid, end, node, depth + 1);
    topo[4 * node] = left;
    topo[4 * node + 1] = right;
    return node;
  }
};

}  // namespace

int bvh_build(const float* verts, int64_t V, const int* faces, int64_t F, int leaf_size, int* topo_out,
              int* prim_out, int* depth_out) {
  (void)V;
  Builder b;
  b.leaf_size = std::max(1, leaf_size);
  b.lo.resize(3 * F);
  b.hi.resize(3 * F);
  b.cen.resize(3 * F);
  b.prim.resize(F);
  for (int64_t f = 0; f < F; ++f) {
    for (int a = 0; a < 3; ++a) {
      const float x = verts[3 * faces[3 * f] + a], y = verts[3 * faces[3 * f + 1] + a],
                  z = verts[3 * faces[3 * f + 2] + a];
      b.lo[3 * f + a] = std::min(x, std::min(y, z));
      b.hi[3 * f + a] = std::max(x, std::max(y, z));
      b.cen[3 * f + a] = 0.5f * (b.lo[3 * f + a] + b.hi[3 * f + a]);
    }
    b.prim[f] = static_cast<int>(f);
  }
  b.topo.reserve(8 * F);
  b.build(0, static_cast<int>(F), -1, 0);
  const int M = static_cast<int>(b.topo.size() / 4);
  if (topo_out != nullptr) std::copy(b.topo.begin(), b.topo.end(), topo_out);
  if (prim_out != nullptr) std::copy(b.prim.begin(), b.prim.end(), prim_out);
  if (depth_out != nullptr) *depth_out = b.max_depth;
  return M;
}

void bvh_refit_cpu(const float* verts, const int* faces, const int* topo, const int* prim, int64_t F,
                   int64_t M, BVHNode* nodes, float* tris) {
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < F; ++k) {
    const int f = prim[k];
    Vec3 v[3];
    for (int j = 0; j < 3; ++j) {
      const float* p = verts + 3 * static_cast<int64_t>(faces[3 * f + j]);
      v[j] = Vec3{p[0], p[1], p[2]};
    }
    store_tri(tris + k * kTriStride, v[0], v[1], v[2], f);
  }
  // Children always come after their parent, so one reverse sweep is bottom-up.
  for (int64_t n = M - 1; n >= 0; --n) {
    const int li = topo[4 * n], ui = topo[4 * n + 1];
    float lo[3] = {FLT_MAX, FLT_MAX, FLT_MAX}, hi[3] = {-FLT_MAX, -FLT_MAX, -FLT_MAX};
    if (li < 0) {
      for (int k = ~li; k < ui; ++k) {
        const float* t = tris + static_cast<int64_t>(k) * kTriStride;
        for (int j = 0; j < 3; ++j)
          for (int a = 0; a < 3; ++a) {
            lo[a] = std::min(lo[a], t[4 * j + a]);
            hi[a] = std::max(hi[a], t[4 * j + a]);
          }
      }
      for (int a = 0; a < 3; ++a) {
        const float pad = box_pad(lo[a], hi[a]);
        lo[a] -= pad;
        hi[a] += pad;
      }
    } else {
      for (int c : {li, ui}) {
        const BVHNode& cl = nodes[2 * c];
        const BVHNode& cu = nodes[2 * c + 1];
        lo[0] = std::min(lo[0], cl.x); lo[1] = std::min(lo[1], cl.y); lo[2] = std::min(lo[2], cl.z);
        hi[0] = std::max(hi[0], cu.x); hi[1] = std::max(hi[1], cu.y); hi[2] = std::max(hi[2], cu.z);
      }
    }
    nodes[2 * n] = BVHNode{lo[0], lo[1], lo[2], li};
    nodes[2 * n + 1] = BVHNode{hi[0], hi[1], hi[2], ui};
  }
}

const char* bvh_check_topology(const int* left, const int* right, const int* parent, int64_t stride, int64_t M,
                               int64_t F) {
  if (M < 1) return "the tree has no nodes";
  std::vector<int> parents(M, 0), depth(M, 0);
  std::vector<int64_t> cover(F + 1, 0);
  int64_t leaf_tris = 0;
  for (int64_t k = 0; k < M; ++k) {
    const int l = left[k * stride], r = right[k * stride];
    if (l < 0) {
      const int64_t start = ~static_cast<int64_t>(l);
      if (!(start < r && r <= F)) return "a leaf's triangle range is empty or outside [0, F)";
      cover[start] += 1;
      cover[r] -= 1;
      leaf_tris += r - start;
      continue;
    }
    if (!(l > k && r > k && l < M && r < M)) return "a child index is not after its parent or is out of range";
    if (l == r) return "a node has the same child twice";
    for (int c : {l, r}) {
      if (++parents[c] > 1) return "a node has more than one parent";
      depth[c] = depth[k] + 1;  // parents come first, so depth[k] is final
      if (depth[c] >= kBVHMaxDepth) return "the tree is deeper than the traversal stack allows";
      if (parent != nullptr && parent[c * stride] != k) return "a parent link does not match the child links";
    }
  }
  for (int64_t k = 1; k < M; ++k)
    if (parents[k] != 1) return "a node is unreachable from the root";
  if (parent != nullptr && parent[0] != -1) return "the root has a parent link";
  if (leaf_tris != F) return "the leaves do not cover every triangle exactly once";
  int64_t run = 0;
  for (int64_t k = 0; k < F; ++k)
    if ((run += cover[k]) != 1) return "the leaves do not cover every triangle exactly once";
  return nullptr;
}

const char* bvh_check_nodes(const BVHNode* nodes, int64_t M, const float* tris, int64_t F, const float* verts,
                            const int* faces) {
  const int* links = reinterpret_cast<const int*>(nodes);  // node k: 8 words, links at words 3 and 7
  if (const char* err = bvh_check_topology(links + 3, links + 7, nullptr, 8, M, F)) return err;
  std::vector<char> seen(F, 0);
  for (int64_t k = 0; k < F; ++k) {
    const float* t = tris + k * kTriStride;
    const int64_t f = static_cast<int64_t>(float_bits(t[3]));
    if (!(f >= 0 && f < F) || seen[f]++) return "the triangles are not a permutation of the faces";
    if (verts == nullptr) continue;
    for (int j = 0; j < 3; ++j)
      for (int a = 0; a < 3; ++a)
        if (!(t[4 * j + a] == verts[3 * static_cast<int64_t>(faces[3 * f + j]) + a]))
          return "the triangles differ from verts[faces] (refit the BVH to these vertices)";
    // The stored bounds prune exact tests: they must be the refit's, bit for bit.
    float want[kTriStride];
    store_tri(want, Vec3{t[0], t[1], t[2]}, Vec3{t[4], t[5], t[6]}, Vec3{t[8], t[9], t[10]}, static_cast<int>(f));
    if (std::memcmp(want + 12, t + 12, (kTriStride - 12) * sizeof(float)) != 0)
      return "a triangle's stored bound differs from its vertices' (refit the BVH)";
  }
  auto inside = [](const BVHNode& lo, const BVHNode& hi, const float* p) {
    return lo.x <= p[0] && p[0] <= hi.x && lo.y <= p[1] && p[1] <= hi.y && lo.z <= p[2] && p[2] <= hi.z;
  };
  for (int64_t k = 0; k < M; ++k) {
    const BVHNode& lo = nodes[2 * k];
    const BVHNode& hi = nodes[2 * k + 1];
    for (float x : {lo.x, lo.y, lo.z, hi.x, hi.y, hi.z})
      if (!std::isfinite(x)) return "a box is not finite";
  }
  for (int64_t k = 0; k < M; ++k) {
    const BVHNode& lo = nodes[2 * k];
    const BVHNode& hi = nodes[2 * k + 1];
    if (lo.i < 0) {
      for (int64_t t = ~static_cast<int64_t>(lo.i); t < hi.i; ++t)
        for (int j = 0; j < 3; ++j)
          if (!inside(lo, hi, tris + t * kTriStride + 4 * j)) return "a leaf box does not hold its triangles";
    } else {
      for (int c : {lo.i, hi.i}) {
        const float clo[3] = {nodes[2 * c].x, nodes[2 * c].y, nodes[2 * c].z};
        const float chi[3] = {nodes[2 * c + 1].x, nodes[2 * c + 1].y, nodes[2 * c + 1].z};
        if (!inside(lo, hi, clo) || !inside(lo, hi, chi)) return "a box does not hold its children's boxes";
      }
    }
  }
  return nullptr;
}

}  // namespace fgp
