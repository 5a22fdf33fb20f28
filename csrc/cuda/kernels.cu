// CUDA kernels of the native core. Geometry and per-pixel logic come from the shared headers,
// so the CPU and CUDA paths compute the same function (built with -fmad=false so no FMA
// contraction changes the rounding: the same inputs give bit-identical boxes and distances). UNTESTED ON A GPU from the authoring
// machine: compile-checked with nvcc for sm_80/sm_90 only.
#include "cuda/kernels.h"
#include "flow_core.h"

namespace fgp {
namespace cuda {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// One thread per node; leaves gather their triangles and boxes, then walk up: the second child
// to arrive at a parent (atomic counter) merges both boxes, so every inner node is written once
// after both children. __threadfence publishes a node before its counter is bumped.
__global__ void refit_kernel(const float* __restrict__ verts, int64_t V, const int* __restrict__ faces, int64_t F,
                             const int* __restrict__ topo, const int* __restrict__ prim, int64_t M,
                             float* nodes_all, float* __restrict__ tris_all, int* counters_all) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (n >= M) return;
  const int li = topo[4 * n];
  if (li >= 0) return;  // inner nodes are written by their children's threads
  const int ui = topo[4 * n + 1];
  const float* v = verts + b * V * 3;
  float* tris = tris_all + b * F * kTriStride;
  volatile float* nodes = nodes_all + b * M * 8;
  int* counters = counters_all + b * M;
  float lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
  for (int k = ~li; k < ui; ++k) {
    const int f = prim[k];
    Vec3 q[3];
    for (int j = 0; j < 3; ++j) {
      const float* p = v + 3 * static_cast<int64_t>(faces[3 * f + j]);
      q[j] = Vec3{p[0], p[1], p[2]};
      for (int a = 0; a < 3; ++a) {
        lo[a] = fminf(lo[a], p[a]);
        hi[a] = fmaxf(hi[a], p[a]);
      }
    }
    store_tri(tris + static_cast<int64_t>(k) * kTriStride, q[0], q[1], q[2], f);
  }
  for (int a = 0; a < 3; ++a) {
    const float pad = box_pad(lo[a], hi[a]);
    lo[a] -= pad;
    hi[a] += pad;
  }
  int node = static_cast<int>(n);
  while (true) {
    volatile float* nd = nodes + 8 * static_cast<int64_t>(node);
    nd[0] = lo[0]; nd[1] = lo[1]; nd[2] = lo[2];
    nd[4] = hi[0]; nd[5] = hi[1]; nd[6] = hi[2];
    nd[3] = __int_as_float(topo[4 * node]);
    nd[7] = __int_as_float(topo[4 * node + 1]);
    __threadfence();
    const int parent = topo[4 * node + 2];
    if (parent < 0) return;
    if (atomicAdd(&counters[parent], 1) == 0) return;  // the sibling finishes the parent
    __threadfence();
    const int sib_l = topo[4 * parent], sib_r = topo[4 * parent + 1];
    const int sibling = sib_l == node ? sib_r : sib_l;
    volatile const float* sd = nodes + 8 * static_cast<int64_t>(sibling);
    for (int a = 0; a < 3; ++a) {
      lo[a] = fminf(lo[a], sd[a]);
      hi[a] = fmaxf(hi[a], sd[4 + a]);
    }
    node = parent;
  }
}

__device__ void load_cam(const float* K, const float* w2c, int64_t b, CamParams& c) {
  cam_setup(K + 9 * b, w2c + 16 * b, c);
}

__global__ void clear_keys(uint64_t* zbuf, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) zbuf[i] = kEmptyKey;
}

// One thread per triangle over its pixel box; atomicMin on the packed (depth | face) key is the
// z-test with the reference's tie rule, independent of thread order.
__global__ void raster_kernel(const float* __restrict__ verts, int64_t V, const int* __restrict__ faces, int64_t F,
                              const float* __restrict__ K, const float* __restrict__ w2c, int H, int W,
                              unsigned long long* zbuf) {
  const int64_t f = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (f >= F) return;
  CamParams cam;
  load_cam(K, w2c, b, cam);
  Vec3 p0, p1, p2;
  load_face(verts + b * V * 3, faces, static_cast<int>(f), p0, p1, p2);
  ScreenTri s;
  if (!screen_tri(cam, p0, p1, p2, H, W, s)) return;
  unsigned long long* z = zbuf + b * static_cast<int64_t>(H) * W;
  for (int y = s.y0; y <= s.y1; ++y)
    for (int x = s.x0; x <= s.x1; ++x) {
      float depth;
      Vec3 bary;
      if (!raster_pixel(s, x, y, depth, bary)) continue;
      const unsigned long long key = depth_key(depth, static_cast<int>(f));
      unsigned long long* slot = z + static_cast<int64_t>(y) * W + x;
      if (key < *slot) atomicMin(slot, key);
    }
}

__global__ void resolve_kernel(const float* __restrict__ verts, int64_t V, const int* __restrict__ faces,
                               const float* __restrict__ K, const float* __restrict__ w2c, int H, int W,
                               const uint64_t* __restrict__ zbuf, float* depth, int64_t* face, float* bary,
                               bool* mask) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  const int64_t b = blockIdx.z;
  if (x >= W || y >= H) return;
  CamParams cam;
  load_cam(K, w2c, b, cam);
  const int64_t i = (b * H + y) * static_cast<int64_t>(W) + x;
  int f = -1;
  float d = 0.f;
  Vec3 w{0.f, 0.f, 0.f};
  const bool hit = resolve_pixel(cam, verts + b * V * 3, faces, zbuf[i], x, y, H, W, f, d, w);
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

__global__ void surface_field_kernel(const float* __restrict__ points, int64_t P, const float* __restrict__ vt,
                                     const float* __restrict__ vs, int64_t V, const int* __restrict__ faces,
                                     int64_t F, const float* __restrict__ nodes, int64_t M,
                                     const float* __restrict__ tris, float* p_src, int64_t* face, float* bary,
                                     float* offset) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (p >= P) return;
  const int64_t i = b * P + p;
  const Vec3 q = Vec3{points[3 * i], points[3 * i + 1], points[3 * i + 2]};
  Hit hit = no_hit();
  bvh_nearest(reinterpret_cast<const BVHNode*>(nodes + b * M * 8), tris + b * F * kTriStride, q, hit);
  Field fd{Vec3{NAN, NAN, NAN}, Vec3{NAN, NAN, NAN}, NAN};
  const bool ok = hit.face >= 0 && hit.face < F;
  if (ok) fd = surface_field_at(vt + b * V * 3, vs + b * V * 3, faces, hit.face, q);
  p_src[3 * i] = fd.p_src.x;
  p_src[3 * i + 1] = fd.p_src.y;
  p_src[3 * i + 2] = fd.p_src.z;
  face[i] = ok ? hit.face : -1;
  bary[3 * i] = fd.bary.x;
  bary[3 * i + 1] = fd.bary.y;
  bary[3 * i + 2] = fd.bary.z;
  offset[i] = fd.offset;
}

// The box of the warp's members' sample points (+-inf where none) and how many there are; every
// lane of the warp calls it.
__device__ int tile_sample_box(bool member, Vec3 p, Vec3& lo, Vec3& hi) {
  lo = member ? p : Vec3{INFINITY, INFINITY, INFINITY};
  hi = member ? p : Vec3{-INFINITY, -INFINITY, -INFINITY};
  for (int off = 16; off > 0; off >>= 1) {
    lo.x = fminf(lo.x, __shfl_xor_sync(0xffffffffu, lo.x, off));
    lo.y = fminf(lo.y, __shfl_xor_sync(0xffffffffu, lo.y, off));
    lo.z = fminf(lo.z, __shfl_xor_sync(0xffffffffu, lo.z, off));
    hi.x = fmaxf(hi.x, __shfl_xor_sync(0xffffffffu, hi.x, off));
    hi.y = fmaxf(hi.y, __shfl_xor_sync(0xffffffffu, hi.y, off));
    hi.z = fmaxf(hi.z, __shfl_xor_sync(0xffffffffu, hi.z, off));
  }
  return __popc(__ballot_sync(0xffffffffu, member));
}

constexpr int kFlowBlockY = kTileH;  // a block is a tile: kTileW x kTileH threads, kTileWarps warps
static_assert(kTileW * kTileH == 64 && kTileWarps == 2, "a tile is a block of two warps");

// The block's scratch for its shared walks.
struct TileShared {
  ListEntry list[kListCapCuda];
  FrontierNode frontier[2 * kFrontier];
  float box[kTileWarps][6];
  int members[kTileWarps];
  int seed[32];  // the second warp's lanes' seeds (-1: none)
  int count;
};

// The block's shortlist for its members' samples of one index (every thread calls it), or -1 when
// fewer than kTileMinShared are members or the walk overflowed: both warps publish their members'
// box, the first seeds the cell with its lanes' previous faces and then the second warp's (the
// CPU's lane order) and walks into sh.list while the second waits at the barrier.
__device__ int block_shortlist(const FlowPixelArgs& A, TileShared& sh, bool member, Vec3 pw, int prev) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, warp = tid >> 5, lane = tid & 31;
  Vec3 lo, hi;
  const int members = tile_sample_box(member, pw, lo, hi);
  if (lane == 0) {
    const float b[6] = {lo.x, lo.y, lo.z, hi.x, hi.y, hi.z};
    for (int i = 0; i < 6; ++i) sh.box[warp][i] = b[i];
    sh.members[warp] = members;
  }
  if (warp == 1) sh.seed[lane] = member ? prev : -1;
  __syncthreads();
  if (sh.members[0] + sh.members[1] < kTileMinShared) return -1;  // block-uniform
  if (warp == 0) {
    lo = Vec3{fminf(sh.box[0][0], sh.box[1][0]), fminf(sh.box[0][1], sh.box[1][1]), fminf(sh.box[0][2], sh.box[1][2])};
    hi = Vec3{fmaxf(sh.box[0][3], sh.box[1][3]), fmaxf(sh.box[0][4], sh.box[1][4]), fmaxf(sh.box[0][5], sh.box[1][5])};
    TileCell C = tile_cell(lo, hi);
    float far2 = INFINITY;
    tile_seed(A, C, far2, member, prev);
    tile_seed(A, C, far2, sh.seed[lane] >= 0, sh.seed[lane]);
    const int count = bvh_shortlist(A.nodes, A.tris, C, far2, sh.list, kListCapCuda, sh.frontier);
    if (lane == 0) sh.count = count;
  }
  __syncthreads();
  return sh.count;
}

// One thread per pixel, one block per 8x8 tile (flow_tile is the CPU form of a block). The thread
// walks its N samples front to back, seeding each query with the previous sample's triangle; at
// each sample index the tile's background samples share one shortlist (block_shortlist) when
// enough of them are background. Threads outside the image stay in the loop (inactive) so the
// collectives see every thread.
__global__ void flow_kernel(const float* __restrict__ vt, const float* __restrict__ vs, int64_t V,
                            const int* __restrict__ faces, int64_t F, const float* __restrict__ K,
                            const float* __restrict__ w2c, const float* __restrict__ near,
                            const float* __restrict__ far, const float* __restrict__ nodes, int64_t M,
                            const float* __restrict__ tris, int N, float delta, bool uniform, int H, int W,
                            const uint64_t* __restrict__ zbuf, void* out, int kind) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  const int64_t b = blockIdx.z;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  __shared__ CamParams cam_s;
  __shared__ TileShared sh;
  if (tid == 0) load_cam(K, w2c, b, cam_s);
  __syncthreads();
  const bool live = x < W && y < H;
  const CamParams cam = cam_s;
  // nodes: (B, M, 2) 16-byte node halves, 8 floats per node
  const FlowPixelArgs A = flow_args(b, reinterpret_cast<const BVHNode*>(nodes), M, tris, vt, vs, V, faces, F, zbuf,
                                    uniform, near, far, delta, N, H, W, out, kind);
  PixelRay r{};
  int prev = -1;
  if (live) {
    r = pixel_setup(A, cam, x, y);
    prev = r.face0;
  }
  for (int n = 0; n < N; ++n) {
    const Vec3 pw = live ? sample_point(A, cam, r, n) : Vec3{0.f, 0.f, 0.f};
    const bool member = live && tile_member(r, pw);
    const int count = block_shortlist(A, sh, member, pw, prev);
    if (live) prev = flow_sample(A, cam, r, pw, n, prev, sh.list, member ? count : -1);
    __syncthreads();  // every thread is done with the list and the scratch before the next index
  }
}

}  // namespace

cudaError_t refit(const float* verts, int64_t B, int64_t V, const int* faces, int64_t F, const int* topo,
                  const int* prim, int64_t M, float* nodes, float* tris, int* counters, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(counters, 0, sizeof(int) * B * M, stream);
  if (err != cudaSuccess) return err;
  refit_kernel<<<dim3(blocks_for(M), static_cast<unsigned>(B)), kThreads, 0, stream>>>(
      verts, V, faces, F, topo, prim, M, nodes, tris, counters);
  return cudaGetLastError();
}

cudaError_t raster_zbuf(const float* verts, int64_t B, int64_t V, const int* faces, int64_t F, const float* K,
                        const float* w2c, int H, int W, uint64_t* zbuf, cudaStream_t stream) {
  const int64_t n = B * static_cast<int64_t>(H) * W;
  clear_keys<<<blocks_for(n), kThreads, 0, stream>>>(zbuf, n);
  raster_kernel<<<dim3(blocks_for(F), static_cast<unsigned>(B)), kThreads, 0, stream>>>(
      verts, V, faces, F, K, w2c, H, W, reinterpret_cast<unsigned long long*>(zbuf));
  return cudaGetLastError();
}

cudaError_t raster_resolve(const float* verts, int64_t B, int64_t V, const int* faces, const float* K,
                           const float* w2c, int H, int W, const uint64_t* zbuf, float* depth, int64_t* face,
                           float* bary, bool* mask, cudaStream_t stream) {
  const dim3 block(32, 8), grid((W + 31) / 32, (H + 7) / 8, static_cast<unsigned>(B));
  resolve_kernel<<<grid, block, 0, stream>>>(verts, V, faces, K, w2c, H, W, zbuf, depth, face, bary, mask);
  return cudaGetLastError();
}

cudaError_t surface_field(const float* points, int64_t B, int64_t P, const float* vt, const float* vs, int64_t V,
                          const int* faces, int64_t F, const float* nodes, int64_t M, const float* tris,
                          float* p_src, int64_t* face, float* bary, float* offset, cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  surface_field_kernel<<<dim3(blocks_for(P), static_cast<unsigned>(B)), kThreads, 0, stream>>>(
      points, P, vt, vs, V, faces, F, nodes, M, tris, p_src, face, bary, offset);
  return cudaGetLastError();
}

cudaError_t flow_encode(const float* vt, const float* vs, int64_t B, int64_t V, const int* faces, int64_t F,
                        const float* K, const float* w2c, const float* near, const float* far, const float* nodes,
                        int64_t M, const float* tris, int N, float delta, bool uniform, int H, int W,
                        uint64_t* zbuf, void* out, int kind, cudaStream_t stream) {
  if (!uniform) {
    cudaError_t err = raster_zbuf(vt, B, V, faces, F, K, w2c, H, W, zbuf, stream);
    if (err != cudaSuccess) return err;
  }
  const dim3 block(kTileW, kFlowBlockY), grid((W + kTileW - 1) / kTileW, (H + kFlowBlockY - 1) / kFlowBlockY,
                                                static_cast<unsigned>(B));
  flow_kernel<<<grid, block, 0, stream>>>(vt, vs, V, faces, F, K, w2c, near, far, nodes, M, tris, N, delta, uniform,
                                          H, W, zbuf, out, kind);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fgp
