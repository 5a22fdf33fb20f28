// Argument checks shared by the CPU and CUDA torch bindings (never included by .cu files).
// Shape/dtype/device/contiguity are always checked; `validate` adds the data-dependent checks
// (index ranges, NaN, BVH structure), which on CUDA cost a device sync.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

#include <vector>

#include "flow_core.h"

namespace fgp {

constexpr int64_t kMaxSamples = 256;  // fgp_fast.ops.checks.MAX_SAMPLES
constexpr int64_t kMaxImage = 16384;
constexpr int64_t kMaxFaces = int64_t(1) << 24;  // keeps the BVH depth under the stack size

inline void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& dev) {
  TORCH_CHECK(t.defined(), "fgp: ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, "fgp: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == dev, "fgp: ", name, " is on ", t.device(), " but expected ", dev);
  TORCH_CHECK(t.is_contiguous(), "fgp: ", name, " must be contiguous");
}

inline void check_finite(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isfinite(t).all().item<bool>(), "fgp: ", name, " holds NaN or Inf");
}

// verts (B, V, 3) float32; returns (B, V).
inline std::pair<int64_t, int64_t> check_verts(const at::Tensor& v, const char* name, const at::Device& dev,
                                               bool validate) {
  TORCH_CHECK(v.defined() && v.dim() == 3 && v.size(2) == 3, "fgp: ", name, " must have shape (B, V, 3), got ",
              v.defined() ? v.sizes() : at::IntArrayRef{});
  TORCH_CHECK(v.size(0) > 0, "fgp: ", name, " has an empty batch");
  TORCH_CHECK(v.size(1) > 0, "fgp: ", name, " is an empty mesh (V = 0)");
  TORCH_CHECK(v.size(1) < (int64_t(1) << 31), "fgp: ", name, " has too many vertices");
  check_tensor(v, name, at::kFloat, dev);
  if (validate) check_finite(v, name);
  return {v.size(0), v.size(1)};
}

inline int64_t check_faces(const at::Tensor& f, int64_t V, const at::Device& dev, bool validate) {
  TORCH_CHECK(f.defined() && f.dim() == 2 && f.size(1) == 3, "fgp: faces must have shape (F, 3), got ",
              f.defined() ? f.sizes() : at::IntArrayRef{});
  TORCH_CHECK(f.size(0) > 0, "fgp: faces is empty (F = 0)");
  TORCH_CHECK(f.size(0) <= kMaxFaces, "fgp: at most ", kMaxFaces, " faces, got ", f.size(0));
  check_tensor(f, "faces", at::kInt, dev);
  if (validate) {
    auto mm = at::aminmax(f);
    const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < V, "fgp: faces index vertices in [", lo, ", ", hi, "] but the mesh has ", V,
                " vertices");
  }
  return f.size(0);
}

inline void check_camera(const at::Tensor& K, const at::Tensor& w2c, int64_t B, const at::Device& dev,
                         bool validate) {
  TORCH_CHECK(K.defined() && K.dim() == 3 && K.size(0) == B && K.size(1) == 3 && K.size(2) == 3,
              "fgp: K must have shape (B=", B, ", 3, 3)");
  TORCH_CHECK(w2c.defined() && w2c.dim() == 3 && w2c.size(0) == B && w2c.size(1) == 4 && w2c.size(2) == 4,
              "fgp: world_to_cam must have shape (B=", B, ", 4, 4)");
  check_tensor(K, "K", at::kFloat, dev);
  check_tensor(w2c, "world_to_cam", at::kFloat, dev);
  if (validate) {
    check_finite(K, "K");
    check_finite(w2c, "world_to_cam");
  }
}

inline void check_image(int64_t H, int64_t W) {
  TORCH_CHECK(H >= 1 && H <= kMaxImage && W >= 1 && W <= kMaxImage, "fgp: image size must be in [1, ",
              kMaxImage, "], got ", H, "x", W);
}

// nodes (B, M, 8) float32 and tris (B, F, kTriStride) float32 of a refit BVH; returns M. With validate
// (on host copies, linear time: bvh_check_nodes) the tree shape, boxes and triangles are checked
// against verts (B, V, 3) and faces, so a corrupt or crafted BVH can send no traversal out of
// bounds, into a cycle or down exponentially many paths, and a stale one is caught.
inline int64_t check_bvh(const at::Tensor& nodes, const at::Tensor& tris, int64_t B, int64_t F,
                         const at::Device& dev, bool validate, const at::Tensor& verts, const at::Tensor& faces) {
  TORCH_CHECK(nodes.defined() && nodes.dim() == 3 && nodes.size(0) == B && nodes.size(1) >= 1 &&
                  nodes.size(2) == 8,
              "fgp: bvh nodes must have shape (B=", B, ", M, 8)");
  TORCH_CHECK(nodes.size(1) < (int64_t(1) << 31), "fgp: too many bvh nodes");
  TORCH_CHECK(tris.defined() && tris.dim() == 3 && tris.size(0) == B && tris.size(1) == F && tris.size(2) == kTriStride,
              "fgp: bvh tris must have shape (B=", B, ", F=", F, ", ", kTriStride, ")");
  check_tensor(nodes, "bvh nodes", at::kFloat, dev);
  check_tensor(tris, "bvh tris", at::kFloat, dev);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(nodes.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(tris.data_ptr()) % 16 == 0,
              "fgp: bvh tensors must be 16-byte aligned");
  const int64_t M = nodes.size(1);
  if (validate) {
    const at::Tensor n = nodes.cpu(), t = tris.cpu(), v = verts.cpu(), f = faces.cpu();
    const int64_t V = v.size(1);
    for (int64_t b = 0; b < B; ++b) {
      const char* err = bvh_check_nodes(reinterpret_cast<const BVHNode*>(n.data_ptr<float>()) + b * M * 2, M,
                                        t.data_ptr<float>() + b * F * kTriStride, F, v.data_ptr<float>() + b * V * 3,
                                        f.data_ptr<int>());
      TORCH_CHECK(err == nullptr, "fgp: bvh is corrupt (", err, "); build it with MeshBVH / bvh_build and refit it");
    }
  }
  return M;
}

// bvh_refit arguments (CPU and CUDA alike). With validate, the topology's tree shape is checked
// (bvh_check_topology, linear time) before any refit walks it.
inline void check_refit(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& topo, const at::Tensor& prim,
                        const at::Tensor& nodes, const at::Tensor& tris, const at::Tensor& scratch, bool validate) {
  TORCH_CHECK(verts.defined(), "fgp: verts is undefined");
  const at::Device dev = verts.device();
  auto [B, V] = check_verts(verts, "verts", dev, validate);
  const int64_t F = check_faces(faces, V, dev, validate);
  TORCH_CHECK(topo.defined() && topo.dim() == 2 && topo.size(1) == 4 && topo.size(0) >= 1 &&
                  topo.size(0) < 2 * F,
              "fgp: topo must have shape (M, 4) with 1 <= M < 2F");
  check_tensor(topo, "topo", at::kInt, dev);
  TORCH_CHECK(prim.defined() && prim.dim() == 1 && prim.size(0) == F, "fgp: prim must have shape (F=", F, ",)");
  check_tensor(prim, "prim", at::kInt, dev);
  const int64_t M = topo.size(0);
  TORCH_CHECK(nodes.defined() && nodes.dim() == 3 && nodes.size(0) == B && nodes.size(1) == M && nodes.size(2) == 8,
              "fgp: nodes must have shape (B=", B, ", M=", M, ", 8)");
  check_tensor(nodes, "nodes", at::kFloat, dev);
  TORCH_CHECK(tris.defined() && tris.dim() == 3 && tris.size(0) == B && tris.size(1) == F && tris.size(2) == kTriStride,
              "fgp: tris must have shape (B=", B, ", F=", F, ", ", kTriStride, ")");
  check_tensor(tris, "tris", at::kFloat, dev);
  TORCH_CHECK(scratch.defined() && scratch.dim() == 2 && scratch.size(0) == B && scratch.size(1) == M,
              "fgp: scratch must have shape (B=", B, ", M=", M, ")");
  check_tensor(scratch, "scratch", at::kInt, dev);
  if (validate) {
    const at::Tensor t = topo.cpu(), pr = prim.cpu();
    const int* ti = t.data_ptr<int>();
    const char* err = bvh_check_topology(ti, ti + 1, ti + 2, 4, M, F);
    TORCH_CHECK(err == nullptr, "fgp: topo is corrupt (", err, ")");
    std::vector<char> seen(F, 0);
    const int* p = pr.data_ptr<int>();
    for (int64_t k = 0; k < F; ++k)
      TORCH_CHECK(p[k] >= 0 && p[k] < F && !seen[p[k]]++, "fgp: prim is not a permutation of the faces");
  }
}

inline int out_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kOutF32;
    case at::kHalf: return kOutF16;
    case at::kBFloat16: return kOutBF16;
    case at::kDouble: return kOutF64;
    default: TORCH_CHECK(false, "fgp: flow output dtype must be float32, float16, bfloat16 or float64, got ", t);
  }
  return 0;
}

// All flow_encode arguments except the output; returns {B, V, F, M}.
struct FlowDims {
  int64_t B, V, F, M;
};
inline FlowDims check_flow(const at::Tensor& vt, const at::Tensor& vs, const at::Tensor& faces,
                           const at::Tensor& K, const at::Tensor& w2c, const at::Tensor& near,
                           const at::Tensor& far, const at::Tensor& nodes, const at::Tensor& tris,
                           int64_t H, int64_t W, int64_t N, double delta, bool validate) {
  TORCH_CHECK(vt.defined(), "fgp: verts_tgt is undefined");
  const at::Device dev = vt.device();
  auto [B, V] = check_verts(vt, "verts_tgt", dev, validate);
  check_verts(vs, "verts_src", dev, validate);
  TORCH_CHECK(vs.sizes() == vt.sizes(), "fgp: verts_src ", vs.sizes(), " and verts_tgt ", vt.sizes(), " differ");
  const int64_t F = check_faces(faces, V, dev, validate);
  check_camera(K, w2c, B, dev, validate);
  for (auto* t : {&near, &far}) {
    const char* name = t == &near ? "near" : "far";
    TORCH_CHECK(t->defined() && t->dim() == 1 && t->size(0) == B, "fgp: ", name, " must have shape (B=", B, ",)");
    check_tensor(*t, name, at::kFloat, dev);
    if (validate) check_finite(*t, name);
  }
  check_image(H, W);
  TORCH_CHECK(N >= 1 && N <= kMaxSamples, "fgp: n_samples must be in [1, ", kMaxSamples, "], got ", N);
  TORCH_CHECK(std::isfinite(delta) && delta > 0, "fgp: delta must be finite and > 0, got ", delta);
  const int64_t M = check_bvh(nodes, tris, B, F, dev, validate, vt, faces);
  return {B, V, F, M};
}

// surface_field arguments; returns {B, V, F, M}.
inline FlowDims check_surface_field(const at::Tensor& points, const at::Tensor& vt, const at::Tensor& vs,
                                    const at::Tensor& faces, const at::Tensor& nodes, const at::Tensor& tris,
                                    bool validate) {
  TORCH_CHECK(vt.defined(), "fgp: verts_tgt is undefined");
  const at::Device dev = vt.device();
  auto [B, V] = check_verts(vt, "verts_tgt", dev, validate);
  check_verts(vs, "verts_src", dev, validate);
  TORCH_CHECK(vs.sizes() == vt.sizes(), "fgp: verts_src ", vs.sizes(), " and verts_tgt ", vt.sizes(), " differ");
  TORCH_CHECK(points.defined() && points.dim() == 3 && points.size(0) == B && points.size(2) == 3,
              "fgp: points must have shape (B=", B, ", P, 3)");
  check_tensor(points, "points", at::kFloat, dev);
  if (validate) check_finite(points, "points");
  const int64_t F = check_faces(faces, V, dev, validate);
  const int64_t M = check_bvh(nodes, tris, B, F, dev, validate, vt, faces);
  return {B, V, F, M};
}

inline void check_flow_out(const at::Tensor& out, const at::Tensor& zbuf, int64_t B, int64_t N, int64_t H,
                           int64_t W, const at::Device& dev) {
  TORCH_CHECK(out.defined() && out.dim() == 4 && out.size(0) == B && out.size(1) == 3 * N && out.size(2) == H &&
                  out.size(3) == W,
              "fgp: out must have shape (B=", B, ", 3N=", 3 * N, ", H=", H, ", W=", W, ")");
  TORCH_CHECK(out.device() == dev, "fgp: out is on ", out.device(), " but expected ", dev);
  TORCH_CHECK(out.is_contiguous(), "fgp: out must be contiguous");
  out_kind(out.scalar_type());
  TORCH_CHECK(zbuf.defined() && zbuf.dim() == 3 && zbuf.size(0) == B && zbuf.size(1) == H && zbuf.size(2) == W,
              "fgp: zbuf must have shape (B, H, W)");
  check_tensor(zbuf, "zbuf", at::kLong, dev);
}

inline CamParams cam_params_host(const at::Tensor& K, const at::Tensor& w2c, int64_t b) {
  CamParams c;
  cam_setup(K.data_ptr<float>() + 9 * b, w2c.data_ptr<float>() + 16 * b, c);
  return c;
}

}  // namespace fgp
