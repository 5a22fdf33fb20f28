// Torch op definitions (namespace fgp) and their CPU kernels. The CUDA kernels register for the
// same schemas from fgp_fast._C_cuda.
#include <Python.h>
#include <omp.h>

#include <vector>

#include "cpu/kernels.h"
#include "ops_common.h"

namespace fgp {
namespace {

std::vector<CamParams> cams_of(const at::Tensor& K, const at::Tensor& w2c, int64_t B) {
  std::vector<CamParams> cams(B);
  for (int64_t b = 0; b < B; ++b) cams[b] = cam_params_host(K, w2c, b);
  return cams;
}

std::tuple<at::Tensor, at::Tensor> bvh_build_cpu(const at::Tensor& verts, const at::Tensor& faces, int64_t leaf_size) {
  TORCH_CHECK(verts.defined() && verts.dim() == 2 && verts.size(1) == 3, "fgp: bvh_build verts must be (V, 3)");
  TORCH_CHECK(verts.size(0) > 0, "fgp: bvh_build got an empty mesh (V = 0)");
  const at::Device dev = verts.device();
  TORCH_CHECK(dev.is_cpu(), "fgp: bvh_build runs on the CPU");
  check_tensor(verts, "verts", at::kFloat, dev);
  check_finite(verts, "verts");
  const int64_t F = check_faces(faces, verts.size(0), dev, true);
  TORCH_CHECK(leaf_size >= 1 && leaf_size <= 16, "fgp: leaf_size must be in [1, 16]");
  std::vector<int> topo(4 * (2 * F));
  at::Tensor prim = at::empty({F}, faces.options());
  int depth = 0;
  const int M = bvh_build(verts.data_ptr<float>(), verts.size(0), faces.data_ptr<int>(), F,
                          static_cast<int>(leaf_size), topo.data(), prim.data_ptr<int>(), &depth);
  TORCH_CHECK(depth < kBVHMaxDepth, "fgp: BVH depth ", depth, " exceeds the traversal stack");
  at::Tensor t = at::empty({M, 4}, faces.options());
  std::copy(topo.begin(), topo.begin() + 4 * M, t.data_ptr<int>());
  return {t, prim};
}

void bvh_refit_cpu_op(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& topo, const at::Tensor& prim,
                      const at::Tensor& nodes, const at::Tensor& tris, const at::Tensor& scratch, bool validate) {
  check_refit(verts, faces, topo, prim, nodes, tris, scratch, validate);
  cpu::refit(verts.data_ptr<float>(), verts.size(0), verts.size(1), faces.data_ptr<int>(), faces.size(0),
             topo.data_ptr<int>(), prim.data_ptr<int>(), topo.size(0),
             reinterpret_cast<BVHNode*>(nodes.data_ptr<float>()), tris.data_ptr<float>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_cpu(const at::Tensor& verts,
                                                                       const at::Tensor& faces, const at::Tensor& K,
                                                                       const at::Tensor& w2c, int64_t H, int64_t W,
                                                                       bool validate) {
  TORCH_CHECK(verts.defined(), "fgp: verts is undefined");
  const at::Device dev = verts.device();
  auto [B, V] = check_verts(verts, "verts", dev, validate);
  const int64_t F = check_faces(faces, V, dev, validate);
  check_camera(K, w2c, B, dev, validate);
  check_image(H, W);
  auto cams = cams_of(K, w2c, B);
  auto fopt = verts.options();
  at::Tensor zbuf = at::empty({B, H, W}, fopt.dtype(at::kLong));
  at::Tensor depth = at::empty({B, H, W}, fopt), face = at::empty({B, H, W}, fopt.dtype(at::kLong)),
             bary = at::empty({B, H, W, 3}, fopt), mask = at::empty({B, H, W}, fopt.dtype(at::kBool));
  auto* zb = reinterpret_cast<uint64_t*>(zbuf.data_ptr<int64_t>());
  cpu::raster_zbuf(verts.data_ptr<float>(), B, V, faces.data_ptr<int>(), F, cams.data(), H, W, zb);
  cpu::raster_resolve(verts.data_ptr<float>(), B, V, faces.data_ptr<int>(), cams.data(), H, W, zb,
                      depth.data_ptr<float>(), face.data_ptr<int64_t>(), bary.data_ptr<float>(), mask.data_ptr<bool>());
  return {depth, face, bary, mask};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> surface_field_cpu(
    const at::Tensor& points, const at::Tensor& vt, const at::Tensor& vs, const at::Tensor& faces,
    const at::Tensor& nodes, const at::Tensor& tris, bool validate) {
  const auto [B, V, F, M] = check_surface_field(points, vt, vs, faces, nodes, tris, validate);
  const int64_t P = points.size(1);
  auto fopt = vt.options();
  at::Tensor p_src = at::empty({B, P, 3}, fopt), face = at::empty({B, P}, fopt.dtype(at::kLong)),
             bary = at::empty({B, P, 3}, fopt), offset = at::empty({B, P}, fopt);
  cpu::surface_field(points.data_ptr<float>(), B, P, vt.data_ptr<float>(), vs.data_ptr<float>(), V,
                     faces.data_ptr<int>(), F, reinterpret_cast<const BVHNode*>(nodes.data_ptr<float>()), M,
                     tris.data_ptr<float>(), p_src.data_ptr<float>(), face.data_ptr<int64_t>(),
                     bary.data_ptr<float>(), offset.data_ptr<float>());
  return {p_src, face, bary, offset};
}

void flow_encode_out_cpu(const at::Tensor& vt, const at::Tensor& vs, const at::Tensor& faces, const at::Tensor& K,
                         const at::Tensor& w2c, const at::Tensor& near, const at::Tensor& far,
                         const at::Tensor& nodes, const at::Tensor& tris, int64_t N, double delta, bool uniform,
                         const at::Tensor& zbuf, const at::Tensor& out, bool validate) {
  const int64_t H = out.defined() && out.dim() == 4 ? out.size(2) : 0;
  const int64_t W = out.defined() && out.dim() == 4 ? out.size(3) : 0;
  auto d = check_flow(vt, vs, faces, K, w2c, near, far, nodes, tris, H, W, N, delta, validate);
  check_flow_out(out, zbuf, d.B, N, H, W, vt.device());
  auto cams = cams_of(K, w2c, d.B);
  cpu::flow_encode(vt.data_ptr<float>(), vs.data_ptr<float>(), d.B, d.V, faces.data_ptr<int>(), d.F, cams.data(),
                   near.data_ptr<float>(), far.data_ptr<float>(),
                   reinterpret_cast<const BVHNode*>(nodes.data_ptr<float>()), d.M, tris.data_ptr<float>(),
                   static_cast<int>(N), static_cast<float>(delta), uniform, static_cast<int>(H), static_cast<int>(W),
                   reinterpret_cast<uint64_t*>(zbuf.data_ptr<int64_t>()), out.data_ptr(), out_kind(out.scalar_type()));
}

at::Tensor flow_encode_cpu(const at::Tensor& vt, const at::Tensor& vs, const at::Tensor& faces, const at::Tensor& K,
                           const at::Tensor& w2c, const at::Tensor& near, const at::Tensor& far,
                           const at::Tensor& nodes, const at::Tensor& tris, int64_t H, int64_t W, int64_t N,
                           double delta, bool uniform, at::ScalarType dtype, bool validate) {
  auto d = check_flow(vt, vs, faces, K, w2c, near, far, nodes, tris, H, W, N, delta, validate);
  out_kind(dtype);
  at::Tensor out = at::empty({d.B, 3 * N, H, W}, vt.options().dtype(dtype));
  at::Tensor zbuf = at::empty({d.B, H, W}, vt.options().dtype(at::kLong));
  flow_encode_out_cpu(vt, vs, faces, K, w2c, near, far, nodes, tris, N, delta, uniform, zbuf, out, false);
  return out;
}

}  // namespace
}  // namespace fgp

TORCH_LIBRARY(fgp, m) {
  m.def("bvh_build(Tensor verts, Tensor faces, int leaf_size=4) -> (Tensor topo, Tensor prim)");
  m.def("bvh_refit(Tensor verts, Tensor faces, Tensor topo, Tensor prim, Tensor(a!) nodes, Tensor(b!) tris, "
        "Tensor(c!) scratch, bool validate=True) -> ()");
  m.def("rasterize(Tensor verts, Tensor faces, Tensor K, Tensor world_to_cam, int height, int width, "
        "bool validate=True) -> (Tensor depth, Tensor face_id, Tensor bary, Tensor mask)");
  m.def("surface_field(Tensor points, Tensor verts_tgt, Tensor verts_src, Tensor faces, Tensor nodes, "
        "Tensor tris, bool validate=True) -> (Tensor p_src, Tensor face_id, Tensor bary, Tensor offset)");
  m.def("flow_encode_out(Tensor verts_tgt, Tensor verts_src, Tensor faces, Tensor K, Tensor world_to_cam, "
        "Tensor near, Tensor far, Tensor nodes, Tensor tris, int n_samples, float delta, bool uniform, "
        "Tensor(a!) zbuf, Tensor(b!) out, bool validate=True) -> ()");
  m.def("flow_encode(Tensor verts_tgt, Tensor verts_src, Tensor faces, Tensor K, Tensor world_to_cam, "
        "Tensor near, Tensor far, Tensor nodes, Tensor tris, int height, int width, int n_samples, float delta, "
        "bool uniform, ScalarType dtype, bool validate=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(fgp, CPU, m) {
  m.impl("bvh_build", &fgp::bvh_build_cpu);
  m.impl("bvh_refit", &fgp::bvh_refit_cpu_op);
  m.impl("rasterize", &fgp::rasterize_cpu);
  m.impl("surface_field", &fgp::surface_field_cpu);
  m.impl("flow_encode_out", &fgp::flow_encode_out_cpu);
  m.impl("flow_encode", &fgp::flow_encode_cpu);
}

// A bare Python module: importing it runs the registrations above. Thread control is exposed
// here because this extension's OpenMP pool is not necessarily torch's.
static PyObject* fgp_set_num_threads(PyObject*, PyObject* arg) {
  const long n = PyLong_AsLong(arg);
  if (n == -1 && PyErr_Occurred()) return nullptr;
  if (n < 1) {
    PyErr_SetString(PyExc_ValueError, "num_threads must be >= 1");
    return nullptr;
  }
  omp_set_num_threads(static_cast<int>(n));
  Py_RETURN_NONE;
}
static PyObject* fgp_get_num_threads(PyObject*, PyObject*) { return PyLong_FromLong(omp_get_max_threads()); }
static PyMethodDef fgp_methods[] = {
    {"set_num_threads", fgp_set_num_threads, METH_O, "Set the OpenMP threads of the fgp CPU kernels."},
    {"get_num_threads", fgp_get_num_threads, METH_NOARGS, "OpenMP threads of the fgp CPU kernels."},
    {nullptr, nullptr, 0, nullptr}};
static struct PyModuleDef fgp_module = {PyModuleDef_HEAD_INIT, "_C", "fgp_fast native CPU ops (torch.ops.fgp)", -1,
                                        fgp_methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fgp_module); }
