// Native unit tests of the torch-free core (geometry, BVH, CPU kernels); run by ctest.
#include <cmath>
#include <algorithm>
#include <array>
#include <cstdio>
#include <random>
#include <vector>

#include "bvh.h"
#include "cpu/kernels.h"

using namespace fgp;

static int failures = 0;
#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                       \
    }                                                                   \
  } while (0)

static bool near(float a, float b, float tol = 1e-6f) { return std::fabs(a - b) <= tol; }

static void test_geometry() {
  const Vec3 a{0, 0, 0}, b{1, 0, 0}, c{0, 1, 0};
  // Interior, each vertex region, each edge region.
  CHECK(near(point_triangle_dist2(Vec3{0.25f, 0.25f, 2}, a, b, c), 4.f));
  Vec3 w = closest_point_bary(Vec3{-1, -1, 0}, a, b, c);
  CHECK(w.x == 1.f && w.y == 0.f && w.z == 0.f);
  w = closest_point_bary(Vec3{2, -0.5f, 0}, a, b, c);
  CHECK(w.y == 1.f);
  w = closest_point_bary(Vec3{-0.5f, 2, 0}, a, b, c);
  CHECK(w.z == 1.f);
  w = closest_point_bary(Vec3{0.5f, -1, 0}, a, b, c);
  CHECK(near(w.x, 0.5f) && near(w.y, 0.5f) && w.z == 0.f);
  w = closest_point_bary(Vec3{-1, 0.5f, 0}, a, b, c);
  CHECK(near(w.x, 0.5f) && w.y == 0.f && near(w.z, 0.5f));
  w = closest_point_bary(Vec3{1, 1, 0}, a, b, c);
  CHECK(w.x == 0.f && near(w.y, 0.5f) && near(w.z, 0.5f));
  CHECK(near(point_triangle_dist2(Vec3{1, 1, 0}, a, b, c), 0.5f));
  // Degenerate triangle: no NaN.
  CHECK(std::isfinite(point_triangle_dist2(Vec3{1, 2, 3}, a, a, a)));
  // Projection barycentrics are not clamped.
  w = projection_bary(Vec3{2, 3, 5}, a, b, c);
  CHECK(near(w.y, 2.f) && near(w.z, 3.f) && near(w.x, -4.f));
  const Vec3 n = face_normal(a, b, c);
  CHECK(n.x == 0.f && n.y == 0.f && n.z == 1.f);
  const Vec3 nz = face_normal(a, a, b);
  CHECK(nz.x == 0.f && nz.y == 0.f && nz.z == 0.f);
  float t;
  Vec3 hb;
  CHECK(ray_triangle(Vec3{0.2f, 0.3f, 5}, Vec3{0, 0, -1}, a, b, c, t, hb) && near(t, 5.f) && near(hb.y, 0.2f));
  CHECK(!ray_triangle(Vec3{2, 2, 5}, Vec3{0, 0, -1}, a, b, c, t, hb));
  // Half / bfloat16 rounding (round to nearest even).
  CHECK(float_to_half_bits(1.f) == 0x3c00);
  CHECK(float_to_half_bits(-2.f) == 0xc000);
  CHECK(float_to_half_bits(65504.f) == 0x7bff);
  CHECK(float_to_half_bits(1e6f) == 0x7c00);
  CHECK(float_to_half_bits(5.96046448e-8f) == 0x0001);
  CHECK(float_to_half_bits(1.f + 1.f / 2048) == 0x3c00);  // tie rounds to even
  CHECK(float_to_bf16_bits(1.f) == 0x3f80);
  CHECK(float_to_bf16_bits(NAN) & 0x7f80);
}

struct Mesh {
  std::vector<float> v;
  std::vector<int> f;
};

// The select form of the region test (CUDA's) gives the bits of the early-out form (the CPU's):
// random triangles and points, points on the region boundaries (vertices, edge lines, the
// triangle's plane), degenerate and flat triangles, non-finite coordinates; both Approx forms.
static bool same_bits(Vec3 u, Vec3 v) {
  return float_bits(u.x) == float_bits(v.x) && float_bits(u.y) == float_bits(v.y) &&
         float_bits(u.z) == float_bits(v.z);
}

static void test_region_forms_agree() {
  std::mt19937 rng(12345);
  std::normal_distribution<float> g(0.f, 1.f);
  std::uniform_int_distribution<int> pick(0, 9);
  auto rnd = [&] { return Vec3{g(rng), g(rng), g(rng)}; };
  int mismatches = 0, cases = 0;
  int regions[7] = {0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < 400000; ++i) {
    Vec3 a = rnd(), b = rnd(), c = rnd(), p = rnd();
    switch (pick(rng)) {
      case 0: p = a; break;                                       // on a vertex
      case 1: p = a + 0.5f * (b - a); break;                      // on an edge
      case 2: p = a + 0.3f * (b - a) + 0.3f * (c - a); break;     // in the plane, inside
      case 3: b = a; break;                                       // degenerate
      case 4: c = a + 2.f * (b - a); break;                       // collinear (flat)
      case 5: p = a + 1e-7f * rnd(); break;                       // next to a vertex
      case 6: p = Vec3{p.x * 1e4f, p.y * 1e4f, p.z}; break;     // far away
      case 7: if (i % 97 == 0) p.x = (i % 2) ? NAN : INFINITY; break;
      default: break;
    }
    const Vec3 r = closest_point_bary_regions(p, a, b, c), s = closest_point_bary_select(p, a, b, c);
    const Vec3 ra = closest_point_bary_regions<true>(p, a, b, c), sa = closest_point_bary_select<true>(p, a, b, c);
    mismatches += !same_bits(r, s) + !same_bits(ra, sa);
    ++cases;
    const int k = r.x == 1.f ? 0 : r.y == 1.f ? 1 : r.z == 1.f ? 2 : r.z == 0.f ? 3 : r.y == 0.f ? 4 : r.x == 0.f ? 5 : 6;
    ++regions[k];
  }
  CHECK(mismatches == 0);
  for (int k = 0; k < 7; ++k) CHECK(regions[k] > 1000);  // every region was reached
  if (mismatches) std::printf("region forms: %d of %d cases differ\n", mismatches, 2 * cases);
}

// The stored triangle bound never exceeds the computed distance (it prunes exact tests), and it is
// tight where it should be: mm-sized triangles up to a metre from the origin (float rounding of the
// coordinates), slivers and degenerate ones, points on, near and far from them, across an edge.
static void test_tri_bound_is_a_lower_bound() {
  std::mt19937 rng(777);
  std::normal_distribution<float> g(0.f, 1.f);
  std::uniform_int_distribution<int> pick(0, 7);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  auto rnd = [&] { return Vec3{g(rng), g(rng), g(rng)}; };
  int above = 0, pruned = 0, edge_cases = 0, edge_tight = 0, nan_pruned = 0;
  for (int i = 0; i < 400000; ++i) {
    const Vec3 o = 0.5f * rnd();
    const float size = std::pow(10.f, -3.f + 2.f * unit(rng));
    Vec3 a = o + size * rnd(), b = o + size * rnd(), c = o + size * rnd();
    const int kind = pick(rng);
    if (kind == 0) b = a;                                  // degenerate
    if (kind == 1) c = a + 1.5f * (b - a) + 1e-6f * rnd(); // sliver
    const Vec3 inside = a + 0.25f * (b - a) + 0.25f * (c - a);
    const TriBound t = tri_bound(a, b, c);
    Vec3 p = o + 0.01f * rnd();
    if (kind == 2) p = inside;                                    // on the triangle
    if (kind == 3) p = inside + (size * 1e-3f) * rnd();           // next to it
    if (kind == 4) p = inside + (3.f * size) * rnd();             // near: a neighbour's sample
    if (kind == 5) p = a + 1e-7f * rnd();                         // at a vertex
    if (kind == 6) p = o + 10.f * rnd();                          // far
    if (kind == 7) {  // beside edge ab's middle, above the plane: the distance to that edge
      const Vec3 mid = a + 0.5f * (b - a);
      p = mid + (size * unit(rng)) * t.e[0] + (size * (unit(rng) - 0.5f)) * t.n;
    }
    const float lb = tri_lower2(t, p), d2 = point_triangle_dist2(p, a, b, c);
    above += lb > d2;
    pruned += lb > 0.f;
    if (kind == 7 && t.n.x * t.n.x + t.n.y * t.n.y + t.n.z * t.n.z > 0.5f && d2 > 1e-10f) {
      ++edge_cases;
      edge_tight += std::sqrt(lb) >= std::sqrt(d2) * (1.f - 3.f * kTieRel) - 3.f * kTieAbs;
    }
  }
  const TriBound t = tri_bound(Vec3{0.f, 0.f, 0.f}, Vec3{1.f, 0.f, 0.f}, Vec3{0.f, 1.f, 0.f});
  nan_pruned += tri_lower2(t, Vec3{NAN, 0.f, 0.f}) > 0.f;
  nan_pruned += tri_lower2(t, Vec3{INFINITY, 0.f, 0.f}) > 0.f;
  CHECK(above == 0);
  CHECK(pruned > 100000);                 // a bound of 0 would pass the first check
  CHECK(edge_cases > 30000);
  CHECK(edge_tight > 0.99 * edge_cases);  // across an edge it is the distance, less the margins
  CHECK(nan_pruned == 0);                 // a non-finite point is never pruned (the exact test decides)
  if (above) std::printf("tri bound: %d cases above the distance\n", above);
  if (edge_tight <= 0.99 * edge_cases) std::printf("tri bound: tight on %d of %d edge cases\n", edge_tight, edge_cases);
}

static Mesh soup(std::mt19937& rng, int n) {
  std::normal_distribution<float> g(0.f, 1.f);
  Mesh m;
  for (int i = 0; i < n; ++i) {
    const float cx = 0.1f * g(rng), cy = 0.1f * g(rng), cz = 0.1f * g(rng);
    for (int j = 0; j < 3; ++j) {
      m.v.push_back(cx + 0.02f * g(rng));
      m.v.push_back(cy + 0.02f * g(rng));
      m.v.push_back(cz + 0.02f * g(rng));
      m.f.push_back(3 * i + j);
    }
  }
  return m;
}

// The tie rule by its definition: the minimum over all faces, then the lowest face within the bound.
static Hit brute(const Mesh& m, Vec3 p) {
  const int F = static_cast<int>(m.f.size() / 3);
  std::vector<float> d2(F);
  Hit h = no_hit();
  for (int f = 0; f < F; ++f) {
    Vec3 a, b, c;
    load_face(m.v.data(), m.f.data(), f, a, b, c);
    d2[f] = point_triangle_dist2(p, a, b, c);
    h.best2 = std::fmin(h.best2, d2[f]);
  }
  h.bound2 = tie_bound2(h.best2);
  for (int f = 0; f < F && h.face == kNoFace; ++f)
    if (d2[f] <= h.bound2) h.face = f;
  return h;
}

// A mesh's BVH (leaf size 4), refitted to the mesh's vertices.
struct Tree {
  std::vector<int> topo, prim;
  std::vector<BVHNode> nodes;
  std::vector<float> tri;
  int M = 0, depth = 0;

  explicit Tree(const Mesh& m) {
    const int64_t F = m.f.size() / 3, V = m.v.size() / 3;
    topo.resize(8 * F);
    prim.resize(F);
    M = bvh_build(m.v.data(), V, m.f.data(), F, 4, topo.data(), prim.data(), &depth);
    nodes.resize(2 * M);
    tri.resize(F * kTriStride);
    refit(m);
  }
  void refit(const Mesh& m) {
    bvh_refit_cpu(m.v.data(), m.f.data(), topo.data(), prim.data(), m.f.size() / 3, M, nodes.data(), tri.data());
  }
};

static void test_bvh() {
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.f, 1.f);
  Mesh m = soup(rng, 2000);
  const int64_t F = m.f.size() / 3;
  Tree t(m);
  CHECK(t.M >= 1 && t.M < 2 * F && t.depth < kBVHMaxDepth);
  std::vector<int> seen(F, 0);
  for (int k = 0; k < F; ++k) seen[t.prim[k]]++;
  for (int k = 0; k < F; ++k) CHECK(seen[k] == 1);
  for (int i = 0; i < 2000; ++i) {
    const Vec3 p{0.15f * g(rng), 0.15f * g(rng), 0.15f * g(rng)};
    Hit h = no_hit();
    bvh_nearest(t.nodes.data(), t.tri.data(), p, h);
    const Hit b = brute(m, p);
    CHECK(h.face == b.face && h.best2 == b.best2);
  }
  // Refit to moved vertices equals a rebuild on them.
  Mesh moved = m;
  for (auto& x : moved.v) x += 0.01f * g(rng);
  t.refit(moved);
  const Tree rebuilt(moved);
  for (int i = 0; i < 2000; ++i) {
    const Vec3 p{0.15f * g(rng), 0.15f * g(rng), 0.15f * g(rng)};
    Hit h1 = no_hit(), h2 = no_hit();
    bvh_nearest(t.nodes.data(), t.tri.data(), p, h1);
    bvh_nearest(rebuilt.nodes.data(), rebuilt.tri.data(), p, h2);
    CHECK(h1.face == h2.face && h1.best2 == h2.best2);
  }
}

// A bumpy grid with its faces shuffled: points above vertices and far away see many exact ties
// (a shared vertex or edge), which the tie rule must resolve to the brute-force answer.
static Mesh bumpy_grid(std::mt19937& rng) {
  const int n = 24;
  Mesh m;
  for (int i = 0; i <= n; ++i)
    for (int j = 0; j <= n; ++j) {
      const float x = 0.01f * i - 0.12f, y = 0.01f * j - 0.12f;
      m.v.insert(m.v.end(), {x, y, 0.02f * std::sin(9 * x) * std::cos(7 * y)});
    }
  std::vector<std::array<int, 3>> tris;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const int a = i * (n + 1) + j, b = a + n + 1, c = b + 1, d = a + 1;
      tris.push_back({a, b, c});
      tris.push_back({a, c, d});
    }
  std::shuffle(tris.begin(), tris.end(), rng);
  for (auto& t : tris) m.f.insert(m.f.end(), t.begin(), t.end());
  return m;
}

static void test_ties_match_brute_force() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const Mesh m = bumpy_grid(rng);
  const int64_t F = m.f.size() / 3, V = m.v.size() / 3;
  const Tree t(m);
  int mismatches = 0, multi = 0;
  for (int i = 0; i < 4000; ++i) {
    Vec3 p;
    if (i % 2 == 0) {  // above (or below) a vertex
      const int v = static_cast<int>((U(rng) * 0.5f + 0.5f) * (V - 1));
      p = Vec3{m.v[3 * v], m.v[3 * v + 1], m.v[3 * v + 2] + 0.3f * U(rng)};
    } else {  // far away
      p = Vec3{U(rng), U(rng), U(rng)};
    }
    Hit h = no_hit();
    bvh_nearest(t.nodes.data(), t.tri.data(), p, h);
    const Hit b = brute(m, p);
    mismatches += h.face != b.face || h.best2 != b.best2;
    int tied = 0;
    for (int f = 0; f < F; ++f) {
      Vec3 a, bb, c;
      load_face(m.v.data(), m.f.data(), f, a, bb, c);
      tied += point_triangle_dist2(p, a, bb, c) <= b.bound2;
    }
    multi += tied > 1;
  }
  CHECK(mismatches == 0);
  CHECK(multi > 1000);  // the case really is full of ties
}

// Tile shortlists (bvh_shortlist + offer_shortlist) give every point of a tile the brute-force
// answer: clusters of 32 points of random spread and distance over the tie-rich grid and a
// triangle soup, with a long list and with a cap so small that most walks give up (-1). The
// list's lower bound never exceeds a computed distance.
static void test_shortlist_matches_brute_force() {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  Mesh meshes[2] = {bumpy_grid(rng), soup(rng, 600)};
  int mismatches = 0, walks = 0, gave_up = 0, bound_errors = 0, points = 0, missing = 0;
  for (const Mesh& m : meshes) {
    const int64_t V = m.v.size() / 3;
    const Tree tree(m);
    const BVHNode* nodes = tree.nodes.data();
    const float* tri = tree.tri.data();
    std::vector<ListEntry> list(kListCapCpu);
    for (int t = 0; t < 120; ++t) {
      const float dist = 0.02f + 0.4f * (0.5f * U(rng) + 0.5f), spread = std::pow(10.f, -3.5f + 2.f * (0.5f * U(rng) + 0.5f));
      const int v = static_cast<int>((U(rng) * 0.5f + 0.5f) * (V - 1));
      const Vec3 c{m.v[3 * v] + dist * U(rng), m.v[3 * v + 1] + dist * U(rng), m.v[3 * v + 2] + dist * U(rng)};
      Vec3 p[kTileLanes];
      Vec3 lo{INFINITY, INFINITY, INFINITY}, hi{-INFINITY, -INFINITY, -INFINITY};
      for (auto& q : p) {
        q = Vec3{c.x + spread * U(rng), c.y + spread * U(rng), c.z + spread * U(rng)};
        lo = Vec3{std::fmin(lo.x, q.x), std::fmin(lo.y, q.y), std::fmin(lo.z, q.z)};
        hi = Vec3{std::fmax(hi.x, q.x), std::fmax(hi.y, q.y), std::fmax(hi.z, q.z)};
      }
      const int cap = t % 3 == 0 ? 6 : kListCapCpu;
      // Half the walks start from seeds (any triangles are valid ones: here random faces, one of
      // them near), half from the descent.
      TileCell C = tile_cell(lo, hi);
      float far2 = INFINITY, reach2 = INFINITY;
      if (t % 2 == 0)
        for (int sd = 0; sd < 4; ++sd) {
          const int f = sd == 0 ? brute(m, c).face : static_cast<int>((U(rng) * 0.5f + 0.5f) * (m.f.size() / 3 - 1));
          Vec3 a, bb, cc;
          load_face(m.v.data(), m.f.data(), f, a, bb, cc);
          cell_update(C, far2, reach2, true, step_tri(a, bb, cc, C));
        }
      FrontierNode frontier[2 * kFrontier];
      const int count = bvh_shortlist(nodes, tri, C, far2, list.data(), cap, frontier);
      ++walks;
      if (count < 0) {
        ++gave_up;
        continue;
      }
      for (const Vec3& q : p) {
        Hit h = no_hit();
        offer_shortlist(tri, list.data(), count, q, h);
        const Hit b = brute(m, q);
        mismatches += h.face != b.face || h.best2 != b.best2;
        ++points;
        // Every member of q's tie window is listed (not only the winner).
        std::vector<char> listed(m.f.size() / 3, 0);
        for (int j = 0; j < count; ++j) {
          Vec3 a, bb, cc;
          int face;
          load_tri(tri, list[j].k, a, bb, cc, face);
          listed[face] = 1;
        }
        for (size_t f = 0; f < listed.size(); ++f) {
          Vec3 a, bb, cc;
          load_face(m.v.data(), m.f.data(), static_cast<int>(f), a, bb, cc);
          missing += !listed[f] && point_triangle_dist2(q, a, bb, cc) <= b.bound2;
        }
        for (int j = 0; j < count; ++j) {
          Vec3 a, bb, cc;
          int face;
          load_tri(tri, list[j].k, a, bb, cc, face);
          bound_errors += tri_lower2(load_tri_bound(tri, list[j].k), q) > point_triangle_dist2(q, a, bb, cc);
        }
      }
    }
  }
  CHECK(mismatches == 0);
  CHECK(missing == 0);
  CHECK(bound_errors == 0);
  CHECK(points > 3000);
  CHECK(gave_up > 0 && gave_up < walks);  // both paths ran
}

static void test_flow_kernel_writes_everything() {
  std::mt19937 rng(2);
  Mesh m = soup(rng, 300);
  const int64_t F = m.f.size() / 3, V = m.v.size() / 3;
  const Tree t(m);
  const float K[9] = {40, 0, 16, 0, 40, 12, 0, 0, 1};
  const float w2c[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0.6f, 0, 0, 0, 1};
  CamParams cam;
  cam_setup(K, w2c, cam);
  const int H = 24, W = 32, N = 4;
  std::vector<uint64_t> zbuf(H * W);
  std::vector<float> out(3 * N * H * W, NAN);
  const float near_ = 0.3f, far_ = 0.9f;
  cpu::flow_encode(m.v.data(), m.v.data(), 1, V, m.f.data(), F, &cam, &near_, &far_, t.nodes.data(), t.M, t.tri.data(), N,
                   0.01f, false, H, W, zbuf.data(), out.data(), kOutF32);
  int covered = 0;
  for (auto k : zbuf) covered += k != kEmptyKey;
  CHECK(covered > 0);
  for (float x : out) CHECK(std::isfinite(x) && std::fabs(x) < 1e-5f);  // identical meshes: zero flow
}

int main() {
  test_geometry();
  test_region_forms_agree();
  test_tri_bound_is_a_lower_bound();
  test_bvh();
  test_ties_match_brute_force();
  test_shortlist_matches_brute_force();
  test_flow_kernel_writes_everything();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all native tests passed\n");
  return 0;
}
