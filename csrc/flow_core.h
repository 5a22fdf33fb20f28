// Per-pixel / per-point pieces of the fused flow encoder, shared by the CPU and CUDA kernels.
// Each mirrors fgp_fast/ops/reference.py operation by operation (same float32 expressions), so
// depth ties and edge pixels resolve the same way.
#pragma once
#include "bvh.h"

namespace fgp {

constexpr float kZMin = 1e-6f;  // reference.Z_MIN
constexpr uint64_t kEmptyKey = ~0ull;

enum OutKind : int { kOutF32 = 0, kOutF16 = 1, kOutBF16 = 2, kOutF64 = 3 };

struct CamParams {
  float R[9];     // world -> camera rotation, row major
  float t[3];
  float K[9];
  float Kinv[9];
};

// K^-1 by the adjugate in double (K is well conditioned; float32 result).
FGP_HD void cam_setup(const float* K, const float* w2c, CamParams& c) {
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      c.R[3 * i + j] = w2c[4 * i + j];
      c.K[3 * i + j] = K[3 * i + j];
    }
    c.t[i] = w2c[4 * i + 3];
  }
  const double a = K[0], b = K[1], cc = K[2], d = K[3], e = K[4], f = K[5], g = K[6], h = K[7],
               k = K[8];
  const double A = e * k - f * h, Bv = -(d * k - f * g), C = d * h - e * g;
  const double det = a * A + b * Bv + cc * C;
  const double inv = det != 0.0 ? 1.0 / det : 0.0;
  const double m[9] = {A, -(b * k - cc * h), b * f - cc * e,
                       Bv, a * k - cc * g, -(a * f - cc * d),
                       C, -(a * h - b * g), a * e - b * d};
  for (int i = 0; i < 9; ++i) c.Kinv[i] = static_cast<float>(m[i] * inv);
}

FGP_HD Vec3 to_camera(const CamParams& c, Vec3 p) {
  return Vec3{(c.R[0] * p.x + c.R[1] * p.y) + c.R[2] * p.z + c.t[0],
              (c.R[3] * p.x + c.R[4] * p.y) + c.R[5] * p.z + c.t[1],
              (c.R[6] * p.x + c.R[7] * p.y) + c.R[8] * p.z + c.t[2]};
}
// (p - t) @ R, as Camera.camera_to_world.
FGP_HD Vec3 to_world(const CamParams& c, Vec3 p) {
  const Vec3 q = Vec3{p.x - c.t[0], p.y - c.t[1], p.z - c.t[2]};
  return Vec3{(q.x * c.R[0] + q.y * c.R[3]) + q.z * c.R[6],
              (q.x * c.R[1] + q.y * c.R[4]) + q.z * c.R[7],
              (q.x * c.R[2] + q.y * c.R[5]) + q.z * c.R[8]};
}
FGP_HD Vec3 rotate(const CamParams& c, Vec3 v) {
  return Vec3{(c.R[0] * v.x + c.R[1] * v.y) + c.R[2] * v.z,
              (c.R[3] * v.x + c.R[4] * v.y) + c.R[5] * v.z,
              (c.R[6] * v.x + c.R[7] * v.y) + c.R[8] * v.z};
}
// K^-1 [u + 1/2, v + 1/2, 1].
FGP_HD Vec3 pixel_ray(const CamParams& c, int x, int y) {
  const float u = static_cast<float>(x) + 0.5f, v = static_cast<float>(y) + 0.5f;
  return Vec3{(c.Kinv[0] * u + c.Kinv[1] * v) + c.Kinv[2], (c.Kinv[3] * u + c.Kinv[4] * v) + c.Kinv[5],
              (c.Kinv[6] * u + c.Kinv[7] * v) + c.Kinv[8]};
}

FGP_HD Vec3 load_vert(const float* __restrict__ verts, int i) {
  const float* v = verts + 3 * static_cast<int64_t>(i);
  return Vec3{v[0], v[1], v[2]};
}
FGP_HD void load_face(const float* __restrict__ verts, const int* __restrict__ faces, int f, Vec3& a,
                      Vec3& b, Vec3& c) {
  const int* fi = faces + 3 * static_cast<int64_t>(f);
  a = load_vert(verts, fi[0]);
  b = load_vert(verts, fi[1]);
  c = load_vert(verts, fi[2]);
}

// ------------------------------------------------------------------ rasterisation
struct ScreenTri {
  float x[3], y[3], z[3];
  int x0, x1, y0, y1;  // inclusive pixel range whose centres the box covers
};

// Project a world triangle; false when it is skipped (a vertex at z <= Z_MIN, or no pixel centre
// inside its box).
FGP_HD bool screen_tri(const CamParams& c, Vec3 a, Vec3 b, Vec3 cc, int H, int W, ScreenTri& s) {
  const Vec3 v[3] = {to_camera(c, a), to_camera(c, b), to_camera(c, cc)};
  for (int i = 0; i < 3; ++i) {
    if (!(v[i].z > kZMin)) return false;
    const float pu = (v[i].x * c.K[0] + v[i].y * c.K[1]) + v[i].z * c.K[2];
    const float pv = (v[i].x * c.K[3] + v[i].y * c.K[4]) + v[i].z * c.K[5];
    s.x[i] = pu / v[i].z;
    s.y[i] = pv / v[i].z;
    s.z[i] = v[i].z;
  }
  const float lx = ceilf(fmin3(s.x[0], s.x[1], s.x[2]) - 0.5f);
  const float hx = floorf(fmax3(s.x[0], s.x[1], s.x[2]) - 0.5f);
  const float ly = ceilf(fmin3(s.y[0], s.y[1], s.y[2]) - 0.5f);
  const float hy = floorf(fmax3(s.y[0], s.y[1], s.y[2]) - 0.5f);
  // Compare in float before converting: boxes far off screen must not overflow an int.
  const float x0 = fgp_max(lx, 0.f), y0 = fgp_max(ly, 0.f);
  const float x1 = fgp_min(hx, static_cast<float>(W - 1)), y1 = fgp_min(hy, static_cast<float>(H - 1));
  if (!(x1 - x0 + 1.f > 0.f) || !(y1 - y0 + 1.f > 0.f)) return false;
  s.x0 = static_cast<int>(x0);
  s.x1 = static_cast<int>(x1);
  s.y0 = static_cast<int>(y0);
  s.y1 = static_cast<int>(y1);
  return true;
}

// Coverage of pixel (px, py) by s (both sides; a centre on an edge is inside) with the
// perspective-correct depth and barycentrics.
FGP_HD bool raster_pixel(const ScreenTri& s, int px, int py, float& depth, Vec3& bary) {
  const float cx = static_cast<float>(px) + 0.5f, cy = static_cast<float>(py) + 0.5f;
  const float e0 = (s.x[2] - s.x[1]) * (cy - s.y[1]) - (s.y[2] - s.y[1]) * (cx - s.x[1]);
  const float e1 = (s.x[0] - s.x[2]) * (cy - s.y[2]) - (s.y[0] - s.y[2]) * (cx - s.x[2]);
  const float e2 = (s.x[1] - s.x[0]) * (cy - s.y[0]) - (s.y[1] - s.y[0]) * (cx - s.x[0]);
  const float area = (e0 + e1) + e2;
  if (area == 0.f) return false;
  const float l0 = e0 / area, l1 = e1 / area, l2 = e2 / area;
  if (!(l0 >= 0.f && l1 >= 0.f && l2 >= 0.f)) return false;
  const float w0 = l0 / s.z[0], w1 = l1 / s.z[1], w2 = l2 / s.z[2];
  const float inv = (w0 + w1) + w2;
  depth = 1.f / inv;
  bary = Vec3{w0 / inv, w1 / inv, w2 / inv};
  return true;
}

// Packed z-buffer key: positive float depth bits order like the depths; the low word breaks ties
// toward the lowest face index. min() over keys = the reference's z-test.
FGP_HD uint64_t depth_key(float depth, int face) {
  return (static_cast<uint64_t>(float_bits(depth)) << 32) | static_cast<uint32_t>(face);
}

// Depth and barycentrics of the pixel's winning face (recomputed from its id, as the CUDA
// barycentric pass does). False for an empty pixel.
FGP_HD bool resolve_pixel(const CamParams& c, const float* __restrict__ verts,
                          const int* __restrict__ faces, uint64_t key, int px, int py, int H, int W,
                          int& face, float& depth, Vec3& bary) {
  if (key == kEmptyKey) return false;
  face = static_cast<int>(key & 0xffffffffu);
  Vec3 a, b, cc;
  load_face(verts, faces, face, a, b, cc);
  ScreenTri s;
  if (!screen_tri(c, a, b, cc, H, W, s)) return false;
  return raster_pixel(s, px, py, depth, bary);
}

// ------------------------------------------------------------------ surface field
FGP_HD void offer_face(const float* __restrict__ verts, const int* __restrict__ faces, int f, Vec3 p,
                       Hit& hit) {
  Vec3 a, b, c;
  load_face(verts, faces, f, a, b, c);
  FGP_TRACE(kTraceSeed);
  hit_offer(hit, f, point_triangle_dist2(p, a, b, c));
}

struct Field {
  Vec3 p_src, bary;
  float offset;
};

// GNARF field through face f (DESIGN.md step 3).
FGP_HD Field surface_field_at(const float* __restrict__ vt, const float* __restrict__ vs,
                              const int* __restrict__ faces, int f, Vec3 p) {
  Vec3 a, b, c, as, bs, cs;
  load_face(vt, faces, f, a, b, c);
  load_face(vs, faces, f, as, bs, cs);
  const Vec3 w = projection_bary(p, a, b, c);
  const Vec3 nt = face_normal(a, b, c), ns = face_normal(as, bs, cs);
  const float h = dot(p - bary_point(w, a, b, c), nt);
  Field out;
  out.p_src = bary_point(w, as, bs, cs) + h * ns;
  out.bary = w;
  out.offset = h;
  return out;
}

FGP_HD void store_out(void* __restrict__ out, int kind, int64_t i, float v) {
  switch (kind) {
    case kOutF16: static_cast<uint16_t*>(out)[i] = float_to_half_bits(v); break;
    case kOutBF16: static_cast<uint16_t*>(out)[i] = float_to_bf16_bits(v); break;
    case kOutF64: static_cast<double*>(out)[i] = static_cast<double>(v); break;
    default: static_cast<float*>(out)[i] = v; break;
  }
}

// Everything one pixel of the fused encoder needs (pointers already offset to batch element b).
struct FlowPixelArgs {
  const BVHNode* nodes;
  const float* tris;
  const float* vt;
  const float* vs;
  const int* faces;
  const uint64_t* zbuf;  // (H, W) keys, or null for uniform sampling
  float near, far, delta;
  int N, H, W, F;
  void* out;             // (3N, H, W) of this batch element
  int kind;
};

// The arguments of batch element b, from the batched buffers both backends hold: nodes (B, M, 2)
// node halves, tris (B, F, kTriStride), vt/vs (B, V, 3), zbuf (B, H, W), out (B, 3N, H, W).
FGP_HD FlowPixelArgs flow_args(int64_t b, const BVHNode* nodes, int64_t M, const float* tris, const float* vt,
                               const float* vs, int64_t V, const int* faces, int64_t F, const uint64_t* zbuf,
                               bool uniform, const float* near, const float* far, float delta, int N, int H,
                               int W, void* out, int kind) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t elem = kind == kOutF64 ? 8 : (kind == kOutF32 ? 4 : 2);
  FlowPixelArgs A;
  A.nodes = nodes + b * M * 2;
  A.tris = tris + b * F * kTriStride;
  A.vt = vt + b * V * 3;
  A.vs = vs + b * V * 3;
  A.faces = faces;
  A.zbuf = uniform ? nullptr : zbuf + b * HW;
  A.near = near[b];
  A.far = far[b];
  A.delta = delta;
  A.N = N;
  A.H = H;
  A.W = W;
  A.F = static_cast<int>(F);
  A.out = static_cast<char*>(out) + b * 3 * N * HW * elem;
  A.kind = kind;
  return A;
}

// One pixel's ray and sample range: around the rendered depth for a head pixel (whose rendered
// face seeds the first query), over [near, far] for a background one.
struct PixelRay {
  Vec3 ray;
  float lo, span;
  int64_t pix;
  int face0;
  bool head;
};

FGP_HD PixelRay pixel_setup(const FlowPixelArgs& A, const CamParams& cam, int x, int y) {
  PixelRay r;
  r.pix = static_cast<int64_t>(y) * A.W + x;
  r.ray = pixel_ray(cam, x, y);
  r.face0 = -1;
  r.head = false;
  float depth = 0.f;
  if (A.zbuf != nullptr) {
    Vec3 bary;
    r.head = resolve_pixel(cam, A.vt, A.faces, A.zbuf[r.pix], x, y, A.H, A.W, r.face0, depth, bary);
  }
  r.lo = r.head ? depth - A.delta : A.near;
  r.span = r.head ? 2.f * A.delta : A.far - A.near;
  return r;
}

// World position of sample n of the ray.
FGP_HD Vec3 sample_point(const FlowPixelArgs& A, const CamParams& cam, const PixelRay& r, int n) {
  const float s = A.N == 1 ? 0.5f : static_cast<float>(n) / static_cast<float>(A.N - 1);
  const float d = r.lo + r.span * s;
  return to_world(cam, d * r.ray);
}

// Whether sample pw of ray r joins its tile's shortlist: background samples (head samples lie on
// the surface, where a per-sample search is short) with a finite position.
FGP_HD bool tile_member(const PixelRay& r, Vec3 pw) {
  return !r.head && fabsf(pw.x) < INFINITY && fabsf(pw.y) < INFINITY && fabsf(pw.z) < INFINITY;  // NaN: false
}

// Sample n of ray r at pw: nearest triangle (seeded with `prev`, the previous sample's face;
// through the tile's shortlist when count >= 0, else by traversal), field, rotate into the camera
// frame, store. Returns the next sample's seed.
FGP_HD int flow_sample(const FlowPixelArgs& A, const CamParams& cam, const PixelRay& r, Vec3 pw, int n, int prev,
                       const ListEntry* list, int count) {
  Hit hit = no_hit();
  if (prev >= 0 && count < 0) offer_face(A.vt, A.faces, prev, pw, hit);  // (a list starts with a nearer one)
  if (count >= 0) {
    offer_shortlist(A.tris, list, count, pw, hit);
  } else {
    bvh_nearest(A.nodes, A.tris, pw, hit);
  }
  Vec3 f = Vec3{NAN, NAN, NAN};
  if (hit.face >= 0 && hit.face < A.F) {
    const Field fd = surface_field_at(A.vt, A.vs, A.faces, hit.face, pw);
    f = rotate(cam, fd.p_src - pw);
    prev = hit.face;
  }
  const int64_t hw = static_cast<int64_t>(A.H) * A.W;
  const int64_t o = static_cast<int64_t>(3 * n) * hw + r.pix;
  store_out(A.out, A.kind, o, f.x);
  store_out(A.out, A.kind, o + hw, f.y);
  store_out(A.out, A.kind, o + 2 * hw, f.z);
  return prev;
}

// Seed the tile's cell with a member sample's previous face (the nearest triangle one sample back
// along its ray: near this sample's nearest too). On CUDA every lane calls it with its own.
FGP_HD void tile_seed(const FlowPixelArgs& A, TileCell& C, float& far2, bool member, int prev) {
  const bool seeded = member && prev >= 0 && prev < A.F;
  StepTri t{};
  if (seeded) {
    Vec3 a, b, c;
    load_face(A.vt, A.faces, prev, a, b, c);
    t = step_tri(a, b, c, C);
  }
  float reach2 = INFINITY;  // (bvh_shortlist derives it from far2)
  cell_update(C, far2, reach2, seeded, t);
}

// flow_kernel's block: a tile of kTileW x kTileH pixels (two warps of 8x4), whose background samples
// of one index share a shortlist when at least kTileMinShared of them do (fewer: per-sample
// traversal is cheaper). The first warp walks for both: a tile of 8x8 halves the walks of 8x4 ones
// and its lists are only 40 % longer (bench/RESULTS.md); 16x8 lists are 2.6 times as long.
constexpr int kTileW = 8, kTileH = 8, kTileLanes = kTileW * kTileH, kTileWarps = kTileLanes / 32;
#ifndef FGP_TILE_MIN_SHARED
#define FGP_TILE_MIN_SHARED 8
#endif
constexpr int kTileMinShared = FGP_TILE_MIN_SHARED;

// The CPU (and cost-model) form of one block of flow_kernel: the tile at (x0, y0), clipped to the
// image, sample index by sample index (lanes in row order: the first 32 are the first warp's);
// `list` holds `cap` entries.
inline void flow_tile(const FlowPixelArgs& A, const CamParams& cam, int x0, int y0, ListEntry* list, int cap) {
  PixelRay r[kTileLanes];
  int prev[kTileLanes];
  FrontierNode frontier[2 * kFrontier];
  int lanes = 0;
  for (int j = 0; j < kTileH && y0 + j < A.H; ++j)
    for (int i = 0; i < kTileW && x0 + i < A.W; ++i) {
      r[lanes] = pixel_setup(A, cam, x0 + i, y0 + j);
      prev[lanes] = r[lanes].face0;
      ++lanes;
    }
  for (int n = 0; n < A.N; ++n) {
    Vec3 pw[kTileLanes];
    bool member[kTileLanes];
    Vec3 lo = Vec3{INFINITY, INFINITY, INFINITY}, hi = Vec3{-INFINITY, -INFINITY, -INFINITY};
    int members = 0;
    for (int l = 0; l < lanes; ++l) {
      pw[l] = sample_point(A, cam, r[l], n);
      member[l] = tile_member(r[l], pw[l]);
      if (!member[l]) continue;
      ++members;
      lo = Vec3{fgp_min(lo.x, pw[l].x), fgp_min(lo.y, pw[l].y), fgp_min(lo.z, pw[l].z)};
      hi = Vec3{fgp_max(hi.x, pw[l].x), fgp_max(hi.y, pw[l].y), fgp_max(hi.z, pw[l].z)};
    }
    int count = -1;
    if (members >= kTileMinShared) {
      FGP_TRACE_LANE(kTraceShared);
      FGP_TRACE(kTraceSample);
      FGP_TRACE(kTraceTileSeed);
      TileCell C = tile_cell(lo, hi);
      float far2 = INFINITY;
      for (int l = 0; l < lanes; ++l) tile_seed(A, C, far2, member[l], prev[l]);
      count = bvh_shortlist(A.nodes, A.tris, C, far2, list, cap, frontier);
    }
    for (int l = 0; l < lanes; ++l) {
      FGP_TRACE_LANE(l);
      FGP_TRACE(kTraceSample);
      prev[l] = flow_sample(A, cam, r[l], pw[l], n, prev[l], list, member[l] ? count : -1);
    }
  }
}

}  // namespace fgp
