// CUDA launchers on raw pointers and a stream; no torch (kernels.cu compiles on its own).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fgp {
namespace cuda {

// verts (B,V,3) -> nodes (B,M,8 floats), tris (B,F,12). counters (B,M) int scratch.
cudaError_t refit(const float* verts, int64_t B, int64_t V, const int* faces, int64_t F, const int* topo,
                  const int* prim, int64_t M, float* nodes, float* tris, int* counters, cudaStream_t stream);

// K (B,9), w2c (B,16) on the device. zbuf (B,H,W) packed keys.
cudaError_t raster_zbuf(const float* verts, int64_t B, int64_t V, const int* faces, int64_t F, const float* K,
                        const float* w2c, int H, int W, uint64_t* zbuf, cudaStream_t stream);

cudaError_t raster_resolve(const float* verts, int64_t B, int64_t V, const int* faces, const float* K,
                           const float* w2c, int H, int W, const uint64_t* zbuf, float* depth, int64_t* face,
                           float* bary, bool* mask, cudaStream_t stream);

cudaError_t surface_field(const float* points, int64_t B, int64_t P, const float* vt, const float* vs, int64_t V,
                          const int* faces, int64_t F, const float* nodes, int64_t M, const float* tris,
                          float* p_src, int64_t* face, float* bary, float* offset, cudaStream_t stream);

// Rasterise (unless uniform) then one thread per pixel writes its 3N channels.
cudaError_t flow_encode(const float* vt, const float* vs, int64_t B, int64_t V, const int* faces, int64_t F,
                        const float* K, const float* w2c, const float* near, const float* far, const float* nodes,
                        int64_t M, const float* tris, int N, float delta, bool uniform, int H, int W,
                        uint64_t* zbuf, void* out, int kind, cudaStream_t stream);

}  // namespace cuda
}  // namespace fgp
