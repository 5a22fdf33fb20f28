// CPU (OpenMP) kernels on raw pointers; no torch, so CMake's native tests link them directly.
// All arrays are contiguous; shapes in the comments.
#pragma once
#include "flow_core.h"

namespace fgp {
namespace cpu {

// verts (B,V,3) -> nodes (B,M,2 halves), tris (B,F,12).
void refit(const float* verts, int64_t B, int64_t V, const int* faces, int64_t F, const int* topo,
           const int* prim, int64_t M, BVHNode* nodes, float* tris);

// Packed z-buffer (B,H,W) of verts (B,V,3); cams (B).
void raster_zbuf(const float* verts, int64_t B, int64_t V, const int* faces, int64_t F,
                 const CamParams* cams, int H, int W, uint64_t* zbuf);

// depth (B,H,W), face (B,H,W) int64, bary (B,H,W,3), mask (B,H,W) from the z-buffer.
void raster_resolve(const float* verts, int64_t B, int64_t V, const int* faces, const CamParams* cams,
                    int H, int W, const uint64_t* zbuf, float* depth, int64_t* face, float* bary,
                    bool* mask);

// points (B,P,3) -> p_src (B,P,3), face (B,P), bary (B,P,3), offset (B,P).
void surface_field(const float* points, int64_t B, int64_t P, const float* vt, const float* vs,
                   int64_t V, const int* faces, int64_t F, const BVHNode* nodes, int64_t M,
                   const float* tris, float* p_src, int64_t* face, float* bary, float* offset);

// The fused encoder: out (B, 3N, H, W) of `kind`. zbuf (B,H,W) is scratch (unused if uniform).
void flow_encode(const float* vt, const float* vs, int64_t B, int64_t V, const int* faces, int64_t F,
                 const CamParams* cams, const float* near, const float* far, const BVHNode* nodes,
                 int64_t M, const float* tris, int N, float delta, bool uniform, int H, int W,
                 uint64_t* zbuf, void* out, int kind);

}  // namespace cpu
}  // namespace fgp
