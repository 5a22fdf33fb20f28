#include "cpu/kernels.h"

#include <algorithm>
#include <vector>

namespace fgp {
namespace cpu {

void refit(const float* verts, int64_t B, int64_t V, const int* faces, int64_t F, const int* topo,
           const int* prim, int64_t M, BVHNode* nodes, float* tris) {
  for (int64_t b = 0; b < B; ++b)
    bvh_refit_cpu(verts + b * V * 3, faces, topo, prim, F, M, nodes + b * M * 2, tris + b * F * kTriStride);
}

// Rows are cut into bands; each band's triangles are listed in face order, so a band rasterises
// its triangles sequentially and a strict key minimum gives the reference's z-test exactly.
void raster_zbuf(const float* verts, int64_t B, int64_t V, const int* faces, int64_t F,
                 const CamParams* cams, int H, int W, uint64_t* zbuf) {
  constexpr int kBand = 8;
  const int bands = (H + kBand - 1) / kBand;
  std::vector<ScreenTri> st(F);
  std::vector<char> ok(F);
  std::vector<int> band_start(bands + 1), band_faces;
  for (int64_t b = 0; b < B; ++b) {
    const float* v = verts + b * V * 3;
#pragma omp parallel for schedule(static)
    for (int64_t f = 0; f < F; ++f) {
      Vec3 p0, p1, p2;
      load_face(v, faces, static_cast<int>(f), p0, p1, p2);
      ok[f] = screen_tri(cams[b], p0, p1, p2, H, W, st[f]);
    }
    std::fill(band_start.begin(), band_start.end(), 0);
    for (int64_t f = 0; f < F; ++f)
      if (ok[f])
        for (int k = st[f].y0 / kBand; k <= st[f].y1 / kBand; ++k) band_start[k + 1]++;
    for (int k = 0; k < bands; ++k) band_start[k + 1] += band_start[k];
    band_faces.resize(band_start[bands]);
    std::vector<int> fill(band_start.begin(), band_start.end() - 1);
    for (int64_t f = 0; f < F; ++f)
      if (ok[f])
        for (int k = st[f].y0 / kBand; k <= st[f].y1 / kBand; ++k) band_faces[fill[k]++] = static_cast<int>(f);
    uint64_t* z = zbuf + b * H * W;
#pragma omp parallel for schedule(dynamic, 1)
    for (int k = 0; k < bands; ++k) {
      const int r0 = k * kBand, r1 = std::min(H, r0 + kBand) - 1;
      for (int64_t i = static_cast<int64_t>(r0) * W; i < static_cast<int64_t>(r1 + 1) * W; ++i) z[i] = kEmptyKey;
      for (int j = band_start[k]; j < band_start[k + 1]; ++j) {
        const int f = band_faces[j];
        const ScreenTri& s = st[f];
        const int y0 = std::max(s.y0, r0), y1 = std::min(s.y1, r1);
        for (int y = y0; y <= y1; ++y)
          for (int x = s.x0; x <= s.x1; ++x) {
            float depth;
            Vec3 bary;
            if (!raster_pixel(s, x, y, depth, bary)) continue;
            const uint64_t key = depth_key(depth, f);
            uint64_t& slot = z[static_cast<int64_t>(y) * W + x];
            if (key < slot) slot = key;
          }
      }
    }
  }
}

void raster_resolve(const float* verts, int64_t B, int64_t V, const int* faces, const CamParams* cams,
                    int H, int W, const uint64_t* zbuf, float* depth, int64_t* face, float* bary,
                    bool* mask) {
  const int64_t HW = static_cast<int64_t>(H) * W;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B * HW; ++i) {
    const int64_t b = i / HW, pix = i % HW;
    int f = -1;
    float d = 0.f;
    Vec3 w{0.f, 0.f, 0.f};
    const bool hit = resolve_pixel(cams[b], verts + b * V * 3, faces, zbuf[i], static_cast<int>(pix % W),
                                   static_cast<int>(pix / W), H, W, f, d, w);
    if (!hit) {
      f = -1;
      d = 0.f;
      w = Vec3{0.f, 0.f, 0.f};
    }
    depth[i] = d;
    face[i] = f;
    bary[3 * i] = w.x;
    bary[3 * i + 1] = w.y;
    bary[3 * i + 2] = w.z;
    mask[i] = hit;
  }
}

void surface_field(const float* points, int64_t B, int64_t P, const float* vt, const float* vs,
                   int64_t V, const int* faces, int64_t F, const BVHNode* nodes, int64_t M,
                   const float* tris, float* p_src, int64_t* face, float* bary, float* offset) {
  constexpr int64_t kChunk = 256;  // consecutive points share nearest triangles: seed with the last
  const int64_t chunks = (P + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t c = 0; c < B * chunks; ++c) {
    const int64_t b = c / chunks, p0 = (c % chunks) * kChunk, p1 = std::min(P, p0 + kChunk);
    const float* vtb = vt + b * V * 3;
    const float* vsb = vs + b * V * 3;
    int prev = -1;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t i = b * P + p;
      const Vec3 q = Vec3{points[3 * i], points[3 * i + 1], points[3 * i + 2]};
      Hit hit = no_hit();
      if (prev >= 0) offer_face(vtb, faces, prev, q, hit);
      bvh_nearest(nodes + b * M * 2, tris + b * F * kTriStride, q, hit);
      Field fd{Vec3{NAN, NAN, NAN}, Vec3{NAN, NAN, NAN}, NAN};
      if (hit.face >= 0 && hit.face < F) {
        fd = surface_field_at(vtb, vsb, faces, hit.face, q);
        prev = hit.face;
      }
      p_src[3 * i] = fd.p_src.x;
      p_src[3 * i + 1] = fd.p_src.y;
      p_src[3 * i + 2] = fd.p_src.z;
      face[i] = hit.face < F ? hit.face : -1;
      bary[3 * i] = fd.bary.x;
      bary[3 * i + 1] = fd.bary.y;
      bary[3 * i + 2] = fd.bary.z;
      offset[i] = fd.offset;
    }
  }
}

void flow_encode(const float* vt, const float* vs, int64_t B, int64_t V, const int* faces, int64_t F,
                 const CamParams* cams, const float* near, const float* far, const BVHNode* nodes,
                 int64_t M, const float* tris, int N, float delta, bool uniform, int H, int W,
                 uint64_t* zbuf, void* out, int kind) {
  if (!uniform) raster_zbuf(vt, B, V, faces, F, cams, H, W, zbuf);
  // One task per tile (flow_kernel's warp): its background samples share shortlists.
  const int tiles_x = (W + kTileW - 1) / kTileW, tiles_y = (H + kTileH - 1) / kTileH;
  const int64_t tiles = static_cast<int64_t>(tiles_x) * tiles_y;
#pragma omp parallel
  {
    std::vector<ListEntry> list(kListCapCpu);
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < B * tiles; ++t) {
      const int64_t b = t / tiles;
      const int ty = static_cast<int>(t % tiles / tiles_x), tx = static_cast<int>(t % tiles_x);
      const FlowPixelArgs A = flow_args(b, nodes, M, tris, vt, vs, V, faces, F, zbuf, uniform, near, far, delta,
                                        N, H, W, out, kind);
      flow_tile(A, cams[b], tx * kTileW, ty * kTileH, list.data(), kListCapCpu);
    }
  }
}

}  // namespace cpu
}  // namespace fgp
