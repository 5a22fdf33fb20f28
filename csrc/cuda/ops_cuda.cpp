// CUDA kernels for the torch.ops.fgp schemas defined in csrc/cpu/ops.cpp (fgp_fast._C, which
// must be imported first). The launches go to torch's current stream, so CUDA graphs capture
// them; with validate=false nothing here syncs or allocates beyond the outputs.
#include <Python.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/kernels.h"
#include "ops_common.h"

namespace fgp {
namespace {

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fgp: CUDA ", what, " failed: ", cudaGetErrorString(err));
}

void check_on_cuda(const at::Tensor& t) {
  TORCH_CHECK(t.defined() && t.is_cuda(), "fgp: the CUDA kernels need CUDA tensors");
}

void bvh_refit_cuda(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& topo, const at::Tensor& prim,
                    const at::Tensor& nodes, const at::Tensor& tris, const at::Tensor& scratch, bool validate) {
  check_on_cuda(verts);
  check_refit(verts, faces, topo, prim, nodes, tris, scratch, validate);
  const at::Device dev = verts.device();
  const int64_t B = verts.size(0), V = verts.size(1), F = faces.size(0), M = topo.size(0);
  c10::cuda::CUDAGuard guard(dev);
  check_launch(cuda::refit(verts.data_ptr<float>(), B, V, faces.data_ptr<int>(), F, topo.data_ptr<int>(),
                           prim.data_ptr<int>(), M, nodes.data_ptr<float>(), tris.data_ptr<float>(),
                           scratch.data_ptr<int>(), stream_of(verts)),
               "bvh_refit");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_cuda(const at::Tensor& verts,
                                                                        const at::Tensor& faces, const at::Tensor& K,
                                                                        const at::Tensor& w2c, int64_t H, int64_t W,
                                                                        bool validate) {
  check_on_cuda(verts);
  const at::Device dev = verts.device();
  auto [B, V] = check_verts(verts, "verts", dev, validate);
  const int64_t F = check_faces(faces, V, dev, validate);
  check_camera(K, w2c, B, dev, validate);
  check_image(H, W);
  c10::cuda::CUDAGuard guard(dev);
  auto fopt = verts.options();
  at::Tensor zbuf = at::empty({B, H, W}, fopt.dtype(at::kLong));
  at::Tensor depth = at::empty({B, H, W}, fopt), face = at::empty({B, H, W}, fopt.dtype(at::kLong)),
             bary = at::empty({B, H, W, 3}, fopt), mask = at::empty({B, H, W}, fopt.dtype(at::kBool));
  auto* zb = reinterpret_cast<uint64_t*>(zbuf.data_ptr<int64_t>());
  const cudaStream_t s = stream_of(verts);
  check_launch(cuda::raster_zbuf(verts.data_ptr<float>(), B, V, faces.data_ptr<int>(), F, K.data_ptr<float>(),
                                 w2c.data_ptr<float>(), H, W, zb, s),
               "rasterize");
  check_launch(cuda::raster_resolve(verts.data_ptr<float>(), B, V, faces.data_ptr<int>(), K.data_ptr<float>(),
                                    w2c.data_ptr<float>(), H, W, zb, depth.data_ptr<float>(),
                                    face.data_ptr<int64_t>(), bary.data_ptr<float>(), mask.data_ptr<bool>(), s),
               "rasterize resolve");
  return {depth, face, bary, mask};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> surface_field_cuda(
    const at::Tensor& points, const at::Tensor& vt, const at::Tensor& vs, const at::Tensor& faces,
    const at::Tensor& nodes, const at::Tensor& tris, bool validate) {
  check_on_cuda(vt);
  const at::Device dev = vt.device();
  const auto [B, V, F, M] = check_surface_field(points, vt, vs, faces, nodes, tris, validate);
  const int64_t P = points.size(1);
  TORCH_CHECK(P < (int64_t(1) << 31) * 256, "fgp: too many points");
  c10::cuda::CUDAGuard guard(dev);
  auto fopt = vt.options();
  at::Tensor p_src = at::empty({B, P, 3}, fopt), face = at::empty({B, P}, fopt.dtype(at::kLong)),
             bary = at::empty({B, P, 3}, fopt), offset = at::empty({B, P}, fopt);
  check_launch(cuda::surface_field(points.data_ptr<float>(), B, P, vt.data_ptr<float>(), vs.data_ptr<float>(), V,
                                   faces.data_ptr<int>(), F, nodes.data_ptr<float>(), M, tris.data_ptr<float>(),
                                   p_src.data_ptr<float>(), face.data_ptr<int64_t>(), bary.data_ptr<float>(),
                                   offset.data_ptr<float>(), stream_of(vt)),
               "surface_field");
  return {p_src, face, bary, offset};
}

void flow_encode_out_cuda(const at::Tensor& vt, const at::Tensor& vs, const at::Tensor& faces, const at::Tensor& K,
                          const at::Tensor& w2c, const at::Tensor& near, const at::Tensor& far,
                          const at::Tensor& nodes, const at::Tensor& tris, int64_t N, double delta, bool uniform,
                          const at::Tensor& zbuf, const at::Tensor& out, bool validate) {
  check_on_cuda(vt);
  const int64_t H = out.defined() && out.dim() == 4 ? out.size(2) : 0;
  const int64_t W = out.defined() && out.dim() == 4 ? out.size(3) : 0;
  auto d = check_flow(vt, vs, faces, K, w2c, near, far, nodes, tris, H, W, N, delta, validate);
  check_flow_out(out, zbuf, d.B, N, H, W, vt.device());
  TORCH_CHECK(d.B <= 65535, "fgp: batch too large for one CUDA launch");
  c10::cuda::CUDAGuard guard(vt.device());
  check_launch(cuda::flow_encode(vt.data_ptr<float>(), vs.data_ptr<float>(), d.B, d.V, faces.data_ptr<int>(), d.F,
                                 K.data_ptr<float>(), w2c.data_ptr<float>(), near.data_ptr<float>(),
                                 far.data_ptr<float>(), nodes.data_ptr<float>(), d.M, tris.data_ptr<float>(),
                                 static_cast<int>(N), static_cast<float>(delta), uniform, static_cast<int>(H),
                                 static_cast<int>(W), reinterpret_cast<uint64_t*>(zbuf.data_ptr<int64_t>()),
                                 out.data_ptr(), out_kind(out.scalar_type()), stream_of(vt)),
               "flow_encode");
}

at::Tensor flow_encode_cuda(const at::Tensor& vt, const at::Tensor& vs, const at::Tensor& faces, const at::Tensor& K,
                            const at::Tensor& w2c, const at::Tensor& near, const at::Tensor& far,
                            const at::Tensor& nodes, const at::Tensor& tris, int64_t H, int64_t W, int64_t N,
                            double delta, bool uniform, at::ScalarType dtype, bool validate) {
  check_on_cuda(vt);
  auto d = check_flow(vt, vs, faces, K, w2c, near, far, nodes, tris, H, W, N, delta, validate);
  out_kind(dtype);
  at::Tensor out = at::empty({d.B, 3 * N, H, W}, vt.options().dtype(dtype));
  at::Tensor zbuf = at::empty({d.B, H, W}, vt.options().dtype(at::kLong));
  flow_encode_out_cuda(vt, vs, faces, K, w2c, near, far, nodes, tris, N, delta, uniform, zbuf, out, false);
  return out;
}

}  // namespace
}  // namespace fgp

TORCH_LIBRARY_IMPL(fgp, CUDA, m) {
  m.impl("bvh_refit", &fgp::bvh_refit_cuda);
  m.impl("rasterize", &fgp::rasterize_cuda);
  m.impl("surface_field", &fgp::surface_field_cuda);
  m.impl("flow_encode_out", &fgp::flow_encode_out_cuda);
  m.impl("flow_encode", &fgp::flow_encode_cuda);
}

static struct PyModuleDef fgp_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda",
                                             "fgp_fast native CUDA kernels for torch.ops.fgp", -1, nullptr};
PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&fgp_cuda_module); }
