// Argument checks shared by the CPU and CUDA torch bindings (never included by .cu files).
// Shape/dtype/device/contiguity are always checked; `validate` adds the data-dependent checks
// (index ranges, NaN, BVH structure), which on CUDA cost a device sync.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

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

// nodes (B, M, 8) float32 and tris (B, F, 12) float32 of a refit BVH; returns M. With validate,
// the node links are checked (children after parents, leaf ranges inside [0, F]) so a corrupt
// BVH cannot send a traversal out of bounds or into a cycle.
inline int64_t check_bvh(const at::Tensor& nodes, const at::Tensor& tris, int64_t B, int64_t F,
                         const at::Device& dev, bool validate) {
  TORCH_CHECK(nodes.defined() && nodes.dim() == 3 && nodes.size(0) == B && nodes.size(1) >= 1 &&
                  nodes.size(2) == 8,
              "fgp: bvh nodes must have shape (B=", B, ", M, 8)");
  TORCH_CHECK(nodes.size(1) < (int64_t(1) << 31), "fgp: too many bvh nodes");
  TORCH_CHECK(tris.defined() && tris.dim() == 3 && tris.size(0) == B && tris.size(1) == F && tris.size(2) == 12,
              "fgp: bvh tris must have shape (B=", B, ", F=", F, ", 12)");
  check_tensor(nodes, "bvh nodes", at::kFloat, dev);
  check_tensor(tris, "bvh tris", at::kFloat, dev);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(nodes.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(tris.data_ptr()) % 16 == 0,
              "fgp: bvh tensors must be 16-byte aligned");
  const int64_t M = nodes.size(1);
  if (validate) {
    auto ni = nodes.view(at::kInt);
    auto li = ni.select(2, 3), ui = ni.select(2, 7);
    auto idx = at::arange(M, ni.options()).unsqueeze(0);
    auto leaf = li < 0;
    auto start = at::bitwise_not(li);
    auto inner_ok = (li > idx) & (li < M) & (ui > idx) & (ui < M);
    auto leaf_ok = (start >= 0) & (start < ui) & (ui <= F);
    TORCH_CHECK(at::where(leaf, leaf_ok, inner_ok).all().item<bool>(),
                "fgp: bvh nodes are corrupt (not built by fgp::bvh_build / refit for these faces)");
    auto face = tris.view(at::kInt).select(2, 3);
    TORCH_CHECK(((face >= 0) & (face < F)).all().item<bool>(), "fgp: bvh tris hold face ids out of range");
  }
  return M;
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
  const int64_t M = check_bvh(nodes, tris, B, F, dev, validate);
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
