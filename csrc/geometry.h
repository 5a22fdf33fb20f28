// Point/triangle geometry shared by the CPU (C++/OpenMP) and CUDA code, so both compute the same
// function. Formulas follow fgp_fast/ops/geometry.py and reference.py operation by operation, so
// exact ties (shared edges, equal depths) resolve the same way as in the reference.
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define FGP_HD __host__ __device__ __forceinline__
#else
#define FGP_HD inline
#endif

namespace fgp {

struct Vec3 {
  float x, y, z;
};

FGP_HD Vec3 make_vec3(float x, float y, float z) { return Vec3{x, y, z}; }
FGP_HD Vec3 operator+(Vec3 a, Vec3 b) { return Vec3{a.x + b.x, a.y + b.y, a.z + b.z}; }
FGP_HD Vec3 operator-(Vec3 a, Vec3 b) { return Vec3{a.x - b.x, a.y - b.y, a.z - b.z}; }
FGP_HD Vec3 operator*(float s, Vec3 a) { return Vec3{s * a.x, s * a.y, s * a.z}; }
FGP_HD float dot(Vec3 a, Vec3 b) { return (a.x * b.x + a.y * b.y) + a.z * b.z; }
FGP_HD Vec3 cross(Vec3 a, Vec3 b) {
  return Vec3{a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
// min/max: CUDA intrinsics on the device; plain compares on the host, where fminf/fmaxf are
// library calls (NaN semantics) unless -ffinite-math-only, and sit in the traversal's hot loop.
#ifdef __CUDA_ARCH__
FGP_HD float fgp_min(float a, float b) { return fminf(a, b); }
FGP_HD float fgp_max(float a, float b) { return fmaxf(a, b); }
#else
FGP_HD float fgp_min(float a, float b) { return b < a ? b : a; }
FGP_HD float fgp_max(float a, float b) { return b > a ? b : a; }
#endif
FGP_HD float fmin3(float a, float b, float c) { return fgp_min(a, fgp_min(b, c)); }
FGP_HD float fmax3(float a, float b, float c) { return fgp_max(a, fgp_max(b, c)); }

// Division that leaves the numerator alone for a zero denominator (as _safe_div in geometry.py).
FGP_HD float safe_div(float num, float den) { return num / (den == 0.f ? 1.f : den); }

// Approximate division and reciprocal square root (a few ulps on CUDA, exact on the CPU) for
// bounds and directions whose margins are orders of magnitude above their error; never for the
// distances and fields the reference is compared with.
FGP_HD float approx_div(float num, float den) {
#ifdef __CUDA_ARCH__
  return __fdividef(num, den);
#else
  return num / den;
#endif
}
FGP_HD float approx_rsqrt(float x) {
#ifdef __CUDA_ARCH__
  return rsqrtf(x);
#else
  return 1.f / sqrtf(x);
#endif
}

// Barycentrics (u, v, w) of the point of triangle (a, b, c) closest to p: Ericson's region test
// (Real-Time Collision Detection, 5.1.5). Degenerate triangles land in a vertex or edge region.
// Approx: the divisions by approx_div (for a point on the triangle near the closest one, as the
// tile walk's v; the distances the answers use always take the exact form).
template <bool Approx>
FGP_HD float region_div(float num, float den) {
  return Approx ? approx_div(num, den == 0.f ? 1.f : den) : safe_div(num, den);
}

template <bool Approx = false>
FGP_HD Vec3 closest_point_bary_regions(Vec3 p, Vec3 a, Vec3 b, Vec3 c) {
  const Vec3 ab = b - a, ac = c - a, ap = p - a;
  const float d1 = dot(ab, ap), d2 = dot(ac, ap);
  if (d1 <= 0.f && d2 <= 0.f) return Vec3{1.f, 0.f, 0.f};  // vertex A
  const Vec3 bp = p - b;
  const float d3 = dot(ab, bp), d4 = dot(ac, bp);
  if (d3 >= 0.f && d4 <= d3) return Vec3{0.f, 1.f, 0.f};  // vertex B
  const float vc = d1 * d4 - d3 * d2;
  if (vc <= 0.f && d1 >= 0.f && d3 <= 0.f) {  // edge AB
    const float t = region_div<Approx>(d1, d1 - d3);
    return Vec3{1.f - t, t, 0.f};
  }
  const Vec3 cp = p - c;
  const float d5 = dot(ab, cp), d6 = dot(ac, cp);
  if (d6 >= 0.f && d5 <= d6) return Vec3{0.f, 0.f, 1.f};  // vertex C
  const float vb = d5 * d2 - d1 * d6;
  if (vb <= 0.f && d2 >= 0.f && d6 <= 0.f) {  // edge AC
    const float t = region_div<Approx>(d2, d2 - d6);
    return Vec3{1.f - t, 0.f, t};
  }
  const float va = d3 * d6 - d5 * d4;
  if (va <= 0.f && (d4 - d3) >= 0.f && (d5 - d6) >= 0.f) {  // edge BC
    const float t = region_div<Approx>(d4 - d3, (d4 - d3) + (d5 - d6));
    return Vec3{0.f, 1.f - t, t};
  }
  const float den = va + vb + vc;  // interior
  const float v = region_div<Approx>(vb, den), w = region_div<Approx>(vc, den);
  return Vec3{1.f - v - w, v, w};
}

// The same regions, tested all at once and the first that holds selected: every operand of a
// division is chosen before one pair of divisions, so no lane of a warp waits on another's region
// (a diverged warp ran every region's code, three edge divisions and two interior ones). The same
// expressions give the same bits as closest_point_bary_regions (test_core checks).
template <bool Approx = false>
FGP_HD Vec3 closest_point_bary_select(Vec3 p, Vec3 a, Vec3 b, Vec3 c) {
  const Vec3 ab = b - a, ac = c - a, ap = p - a, bp = p - b, cp = p - c;
  const float d1 = dot(ab, ap), d2 = dot(ac, ap);
  const float d3 = dot(ab, bp), d4 = dot(ac, bp);
  const float d5 = dot(ab, cp), d6 = dot(ac, cp);
  const float vc = d1 * d4 - d3 * d2, vb = d5 * d2 - d1 * d6, va = d3 * d6 - d5 * d4;
  const float e43 = d4 - d3, e56 = d5 - d6;
  const bool in_a = d1 <= 0.f && d2 <= 0.f;
  const bool in_b = d3 >= 0.f && d4 <= d3;
  const bool on_ab = vc <= 0.f && d1 >= 0.f && d3 <= 0.f;
  const bool in_c = d6 >= 0.f && d5 <= d6;
  const bool on_ac = vb <= 0.f && d2 >= 0.f && d6 <= 0.f;
  const bool on_bc = va <= 0.f && e43 >= 0.f && e56 >= 0.f;
  // the first division: the edge's t (AB, else AC, else BC) or the interior's v; the second: w
  const float sum = va + vb + vc;
  float num = vb, den = sum;
  if (on_bc) { num = e43; den = e43 + e56; }
  if (on_ac) { num = d2; den = d2 - d6; }
  if (on_ab) { num = d1; den = d1 - d3; }
  const float t = region_div<Approx>(num, den), w = region_div<Approx>(vc, sum);
  Vec3 out{1.f - t - w, t, w};                                  // interior
  if (on_bc) out = Vec3{0.f, 1.f - t, t};
  if (on_ac) out = Vec3{1.f - t, 0.f, t};
  if (in_c) out = Vec3{0.f, 0.f, 1.f};
  if (on_ab) out = Vec3{1.f - t, t, 0.f};
  if (in_b) out = Vec3{0.f, 1.f, 0.f};
  if (in_a) out = Vec3{1.f, 0.f, 0.f};
  return out;
}

// CUDA takes the select form (warps diverge across regions), the CPU the early-out one (it
// predicts its branches and skips the work of the regions after the one that holds).
template <bool Approx = false>
FGP_HD Vec3 closest_point_bary(Vec3 p, Vec3 a, Vec3 b, Vec3 c) {
#ifdef __CUDA_ARCH__
  return closest_point_bary_select<Approx>(p, a, b, c);
#else
  return closest_point_bary_regions<Approx>(p, a, b, c);
#endif
}

FGP_HD Vec3 bary_point(Vec3 w, Vec3 a, Vec3 b, Vec3 c) {
  return (w.x * a + w.y * b) + w.z * c;
}

// Squared point-triangle distance from the explicit residual p - q (not from the region algebra,
// which cancels badly far from the triangle).
FGP_HD float point_triangle_dist2(Vec3 p, Vec3 a, Vec3 b, Vec3 c) {
  const Vec3 q = bary_point(closest_point_bary(p, a, b, c), a, b, c);
  const Vec3 r = p - q;
  return dot(r, r);
}

// Unit face normal; zero for a degenerate triangle.
FGP_HD Vec3 face_normal(Vec3 a, Vec3 b, Vec3 c) {
  const Vec3 n = cross(b - a, c - a);
  const float len = sqrtf(dot(n, n));
  if (!(len > 0.f)) return n;
  return Vec3{n.x / len, n.y / len, n.z / len};
}

// Barycentrics of p's orthogonal projection onto the triangle's plane, not clamped; the
// closest-point barycentrics for a degenerate triangle (no plane).
FGP_HD Vec3 projection_bary(Vec3 p, Vec3 a, Vec3 b, Vec3 c) {
  const Vec3 v0 = b - a, v1 = c - a, v2 = p - a;
  const float d00 = dot(v0, v0), d01 = dot(v0, v1), d11 = dot(v1, v1);
  const float d20 = dot(v2, v0), d21 = dot(v2, v1);
  const float den = d00 * d11 - d01 * d01;
  if (!(den > 0.f)) return closest_point_bary(p, a, b, c);
  const float v = (d11 * d20 - d01 * d21) / den;
  const float w = (d00 * d21 - d01 * d20) / den;
  return Vec3{1.f - v - w, v, w};
}

// Moller-Trumbore ray/triangle intersection, both sides. Returns false on a miss; on a hit t is
// the ray parameter and (u, v, w) the barycentrics of the hit point.
FGP_HD bool ray_triangle(Vec3 o, Vec3 d, Vec3 a, Vec3 b, Vec3 c, float& t, Vec3& bary) {
  const Vec3 e1 = b - a, e2 = c - a;
  const Vec3 pv = cross(d, e2);
  const float det = dot(e1, pv);
  if (det == 0.f) return false;
  const float inv = 1.f / det;
  const Vec3 tv = o - a;
  const float u = dot(tv, pv) * inv;
  if (u < 0.f || u > 1.f) return false;
  const Vec3 qv = cross(tv, e1);
  const float v = dot(d, qv) * inv;
  if (v < 0.f || u + v > 1.f) return false;
  t = dot(e2, qv) * inv;
  bary = Vec3{1.f - u - v, u, v};
  return true;
}

// Squared distance from p to an axis-aligned box (0 inside).
FGP_HD float box_dist2(Vec3 p, Vec3 lo, Vec3 hi) {
  const float dx = fgp_max(fgp_max(lo.x - p.x, p.x - hi.x), 0.f);
  const float dy = fgp_max(fgp_max(lo.y - p.y, p.y - hi.y), 0.f);
  const float dz = fgp_max(fgp_max(lo.z - p.z, p.z - hi.z), 0.f);
  return (dx * dx + dy * dy) + dz * dz;
}

// Squared distance between two axis-aligned boxes (0 when they overlap): a lower bound of
// box_dist2(p, blo, bhi) for every p in [alo, ahi] under float rounding (each step is monotone).
FGP_HD float box_box_dist2(Vec3 alo, Vec3 ahi, Vec3 blo, Vec3 bhi) {
  const float dx = fgp_max(fgp_max(blo.x - ahi.x, alo.x - bhi.x), 0.f);
  const float dy = fgp_max(fgp_max(blo.y - ahi.y, alo.y - bhi.y), 0.f);
  const float dz = fgp_max(fgp_max(blo.z - ahi.z, alo.z - bhi.z), 0.f);
  return (dx * dx + dy * dy) + dz * dz;
}

// Squared distance from v to the farthest point of the box [lo, hi].
FGP_HD float box_far_dist2(Vec3 v, Vec3 lo, Vec3 hi) {
  const float dx = fgp_max(fabsf(v.x - lo.x), fabsf(v.x - hi.x));
  const float dy = fgp_max(fabsf(v.y - lo.y), fabsf(v.y - hi.y));
  const float dz = fgp_max(fabsf(v.z - lo.z), fabsf(v.z - hi.z));
  return (dx * dx + dy * dy) + dz * dz;
}

// ------------------------------------------------------------------ output conversion
// Round-to-nearest-even float -> half / bfloat16 bits, written without torch/CUDA half types so
// the CPU kernels stay torch-free (same results as torch's conversions, NaN kept NaN).
FGP_HD uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  union { float f; uint32_t u; } cvt;
  cvt.f = f;
  return cvt.u;
#endif
}
FGP_HD float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  union { float f; uint32_t u; } cvt;
  cvt.u = u;
  return cvt.f;
#endif
}

FGP_HD uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

FGP_HD uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (a < 0x38800000u) {  // subnormal half (or zero): add a magic number to round in the FPU
    const float r = bits_float(a) + 0.5f;  // 0.5 = 2^-1: the result's low bits are the half
    return static_cast<uint16_t>(sign | (float_bits(r) - 0x3f000000u));
  }
  const uint32_t mant_odd = (a >> 13) & 1u;
  a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return static_cast<uint16_t>(sign | (a >> 13));
}

}  // namespace fgp
