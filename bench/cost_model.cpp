// Cost-model driver (built and run by bench/cost_model.py): runs the CUDA flow kernel's per-pixel
// code, fgp::flow_pixel from csrc/flow_core.h with the same arguments flow_kernel passes, on the
// CPU, with the header's FGP_TRACE hook recording every traversal event of every lane. Lanes are
// grouped into warps of 8x4 pixels, two to an 8x8 tile, as flow_kernel's blocks launch them (the
// tile's shared walks are charged to its first warp, which runs them), and each warp is replayed
// in lockstep: lanes meet at every sample and every loop iteration, and an
// iteration costs, per event kind, the event's instruction count times the most events of that
// kind any lane has in it (divergent lanes wait). Instruction counts per event come from the
// SASS of the sm_90 build (cost_model.py --calibrate).
//
// Input (argv[1], binary): int32 V F M H W N, float32 near far delta, K[9], w2c[16], vt (V,3),
// vs (V,3), faces (F,3) int32, nodes (M,8), tris (F,kTriStride), zbuf (H,W) uint64; argv[2]: costs, one
// number per event (kTraceEvents of them) then the per-sample and per-pixel fixed costs.
// Output: JSON on stdout.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace cost_model {
// The tile being replayed: each lane's events, and the tile's shared events per sample index (the
// shortlist walk, run by one lane of the warp).
struct Tile {
  std::vector<std::vector<int>> lanes;
  std::vector<std::vector<int>> shared;
  std::vector<int>* events = nullptr;
  int samples0 = 0;  // sample markers lane 0 has recorded: the index the shared work belongs to
};
thread_local Tile* tile = nullptr;
inline void set_lane(int lane) {
  if (lane >= 0) {
    tile->events = &tile->lanes[lane];
    return;
  }
  tile->events = &tile->shared[tile->samples0];
}
inline void trace(int event) {
  if (event == 0 && tile->events == &tile->lanes[0]) tile->samples0++;  // 0: kTraceSample
  tile->events->push_back(event);
}
}  // namespace cost_model
#define FGP_TRACE(event) (::cost_model::trace(event))
#define FGP_TRACE_LANE(lane) (::cost_model::set_lane(lane))
#include "flow_core.h"

using namespace fgp;

namespace {

template <class T>
void read(FILE* f, T* dst, size_t n) {
  if (fread(dst, sizeof(T), n, f) != n) {
    fprintf(stderr, "cost_model: input file is truncated\n");
    exit(2);
  }
}

struct Stats {
  double by_event[kTraceEvents] = {};  // warp-instructions charged to each event
  double samples = 0, nodes = 0, tris = 0, boxed = 0, seeds = 0, resolves = 0, listed = 0, shortlisted = 0;
  double warp_instr = 0, lane_instr = 0;  // warps whose lanes are all of this class, or mixed
};

constexpr int kWarp = 32;
constexpr int kLoops = 3;  // traversal loop, lost-member pass, shortlist loop

// One lane's events of one sample, cut into iterations of each loop (a loop marker opens one).
struct LaneSample {
  std::vector<std::vector<int>> iters[kLoops];  // per loop, per iteration: count per event
  std::vector<int> prologue = std::vector<int>(kTraceEvents, 0);
};

void split(const std::vector<int>& ev, size_t& pos, LaneSample& ls) {
  int loop = -1;
  for (; pos < ev.size(); ++pos) {
    const int e = ev[pos];
    if (e == kTraceSample) return;
    if (e == kTraceIter || e == kTraceResolve || e == kTraceList) {
      loop = e == kTraceIter ? 0 : (e == kTraceResolve ? 1 : 2);
      ls.iters[loop].emplace_back(kTraceEvents, 0);
    }
    if (loop < 0) ls.prologue[e]++;
    else ls.iters[loop].back()[e]++;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: cost_model INPUT COSTS\n");
    return 2;
  }
  FILE* f = fopen(argv[1], "rb");
  if (!f) {
    perror(argv[1]);
    return 2;
  }
  int dims[6];
  read(f, dims, 6);
  const int V = dims[0], F = dims[1], M = dims[2], H = dims[3], W = dims[4], N = dims[5];
  float scal[3], K[9], w2c[16];
  read(f, scal, 3);
  read(f, K, 9);
  read(f, w2c, 16);
  std::vector<float> vt(3 * V), vs(3 * V), tris(size_t(F) * kTriStride);
  std::vector<int> faces(3 * F);
  std::vector<BVHNode> nodes(2 * size_t(M));
  std::vector<uint64_t> zbuf(size_t(H) * W);
  read(f, vt.data(), vt.size());
  read(f, vs.data(), vs.size());
  read(f, faces.data(), faces.size());
  read(f, nodes.data(), nodes.size());
  read(f, tris.data(), tris.size());
  read(f, zbuf.data(), zbuf.size());
  fclose(f);
  double cost[kTraceEvents + 2];
  FILE* c = fopen(argv[2], "r");
  if (!c) {
    perror(argv[2]);
    return 2;
  }
  for (double& x : cost)
    if (fscanf(c, "%lf", &x) != 1) {
      fprintf(stderr, "cost_model: %s needs %d numbers\n", argv[2], kTraceEvents + 2);
      return 2;
    }
  fclose(c);
  const double c_sample = cost[kTraceEvents], c_pixel = cost[kTraceEvents + 1];

  CamParams cam;
  cam_setup(K, w2c, cam);
  std::vector<float> out(size_t(3) * N * H * W);
  const float near_ = scal[0], far_ = scal[1];
  const FlowPixelArgs A = flow_args(0, nodes.data(), M, tris.data(), vt.data(), vs.data(), V, faces.data(), F,
                                    zbuf.data(), false, &near_, &far_, scal[2], N, H, W, out.data(), kOutF32);
  const int tiles_x = (W + kTileW - 1) / kTileW, tiles_y = (H + kTileH - 1) / kTileH;
  // classes: 0 head, 1 background (per sample); warp cost split by the warp's mix (0 all head,
  // 1 all background, 2 mixed)
  Stats cls[2], mix[3];
  double fixed_instr = 0, fixed_lane = 0, shared_instr = 0, active_total = 0, shared_runs = 0, overflows = 0,
         list_total = 0, tile_nodes = 0, tile_tris = 0, tile_descents = 0;
#pragma omp parallel
  {
    Stats my_cls[2], my_mix[3];
    double my_fixed = 0, my_fixed_lane = 0, my_shared = 0, active_extra = 0, my_runs = 0, my_over = 0,
           my_list = 0, my_tnodes = 0, my_ttris = 0, my_tdesc = 0;
    cost_model::Tile tl;
    tl.lanes.resize(kTileLanes);
    tl.shared.resize(N + 1);
    cost_model::tile = &tl;
    std::vector<ListEntry> list(kListCapCuda);
    std::vector<LaneSample> ls(kTileLanes);
#pragma omp for schedule(dynamic, 4)
    for (int w = 0; w < tiles_x * tiles_y; ++w) {
      const int x0 = (w % tiles_x) * kTileW, y0 = (w / tiles_x) * kTileH;
      for (auto& v : tl.lanes) v.clear();
      for (auto& v : tl.shared) v.clear();
      tl.samples0 = 0;
      tl.events = &tl.lanes[0];
      flow_tile(A, cam, x0, y0, list.data(), kListCapCuda);  // as flow_kernel
      // The tile is a block of kTileWarps warps (rows 0-3, 4-7); the first one walks.
      bool head[kTileLanes];
      int lanes = 0;
      std::vector<int> wl[kTileWarps];
      for (int j = 0; j < kTileH && y0 + j < H; ++j)
        for (int i = 0; i < kTileW && x0 + i < W; ++i, ++lanes) {
          head[lanes] = zbuf[size_t(y0 + j) * W + x0 + i] != kEmptyKey;
          wl[j / (kTileH / kTileWarps)].push_back(lanes);
        }
      int kinds[kTileWarps];
      for (int w = 0; w < kTileWarps; ++w) {
        int heads = 0;
        for (int l : wl[w]) heads += head[l];
        const int nl = static_cast<int>(wl[w].size());
        kinds[w] = heads == nl ? 0 : (heads == 0 ? 1 : 2);
        if (nl == 0) continue;
        my_fixed += c_pixel;
        my_fixed_lane += c_pixel * nl;
      }
      std::vector<size_t> pos(lanes, 1);  // past the first sample marker
      for (int n = 0; n < N; ++n) {
        // the shared shortlist walk of sample index n (lane 0 had recorded n sample markers)
        const std::vector<int>& sh = tl.shared[n];
        double walk = 0;
        if (!sh.empty()) {
          for (int e : sh) {
            walk += cost[e];
            my_mix[kinds[0]].by_event[e] += cost[e];
          }
          walk -= cost[kTraceSample];
          my_mix[kinds[0]].by_event[kTraceSample] -= cost[kTraceSample];
          my_shared += walk;
          my_runs += 1;
          int tn = 0, tt = 0, td = 0;
          for (int e : sh) {
            tn += e == kTraceTile;       // chunks of <= 32 frontier children
            td += e == kTraceTileProbe;  // the descent's leaf (a walk without seeds)
            tt += e == kTraceTileStep;  // chunks of <= 32 triangles
          }
          my_tnodes += tn;
          my_tdesc += td > 0;
          my_ttris += tt;
        }
        int listed_max = -1;
        for (int w = 0; w < kTileWarps; ++w) {
          const std::vector<int>& L = wl[w];
          if (L.empty()) continue;
          const int kind = kinds[w];
          double warp = c_sample, useful = c_sample * L.size();
          if (w == 0) {
            warp += walk;
            useful += walk;  // strict: the walk's work counted once (every lane runs it in step)
            active_extra += walk * (L.size() - 1);
          }
          for (int l : L) {
            ls[l] = LaneSample();
            split(tl.lanes[l], pos[l], ls[l]);
            ++pos[l];
            Stats& s = my_cls[head[l] ? 0 : 1];
            s.samples += 1;
            s.seeds += ls[l].prologue[kTraceSeed];
            for (int lp = 0; lp < kLoops; ++lp)
              for (auto& it : ls[l].iters[lp]) {
                s.nodes += it[kTraceInner] + it[kTraceLeaf] + it[kTraceResolve];
                s.tris += it[kTraceExact];
                s.boxed += it[kTraceTri];
                s.listed += it[kTraceList];
              }
            s.resolves += !ls[l].iters[1].empty();
            const int nl = static_cast<int>(ls[l].iters[2].size());
            s.shortlisted += nl > 0;
            listed_max = std::max(listed_max, nl);
          }
          // prologue (seeds): per event, the busiest lane
          for (int e = 0; e < kTraceEvents; ++e) {
            int most = 0;
            for (int l : L) {
              most = std::max(most, ls[l].prologue[e]);
              useful += cost[e] * ls[l].prologue[e];
            }
            warp += cost[e] * most;
            my_mix[kind].by_event[e] += cost[e] * most;
          }
          for (int lp = 0; lp < kLoops; ++lp) {
            size_t iters = 0;
            for (int l : L) iters = std::max(iters, ls[l].iters[lp].size());
            for (size_t i = 0; i < iters; ++i)
              for (int e = 0; e < kTraceEvents; ++e) {
                int most = 0;
                for (int l : L)
                  if (i < ls[l].iters[lp].size()) {
                    const int k = ls[l].iters[lp][i][e];
                    most = std::max(most, k);
                    useful += cost[e] * k;
                  }
                warp += cost[e] * most;
                my_mix[kind].by_event[e] += cost[e] * most;
              }
          }
          my_mix[kind].warp_instr += warp;
          my_mix[kind].lane_instr += useful;
          my_mix[kind].samples += L.size();
        }
        if (!sh.empty()) {  // every member lane walks the whole list; none did: it overflowed
          my_list += listed_max > 0 ? listed_max : 0;
          my_over += listed_max <= 0;
        }
      }
    }
#pragma omp critical
    {
      for (int k = 0; k < 2; ++k) {
        cls[k].samples += my_cls[k].samples;
        cls[k].nodes += my_cls[k].nodes;
        cls[k].tris += my_cls[k].tris;
        cls[k].boxed += my_cls[k].boxed;
        cls[k].seeds += my_cls[k].seeds;
        cls[k].resolves += my_cls[k].resolves;
        cls[k].listed += my_cls[k].listed;
        cls[k].shortlisted += my_cls[k].shortlisted;
      }
      for (int k = 0; k < 3; ++k) {
        for (int e = 0; e < kTraceEvents; ++e) mix[k].by_event[e] += my_mix[k].by_event[e];
        mix[k].warp_instr += my_mix[k].warp_instr;
        mix[k].lane_instr += my_mix[k].lane_instr;
        mix[k].samples += my_mix[k].samples;
      }
      fixed_instr += my_fixed;
      fixed_lane += my_fixed_lane;
      shared_instr += my_shared;
      active_total += active_extra;
      shared_runs += my_runs;
      overflows += my_over;
      list_total += my_list;
      tile_nodes += my_tnodes;
      tile_descents += my_tdesc;
      tile_tris += my_ttris;
    }
  }
  double warp_total = fixed_instr, lane_total = fixed_lane;
  for (auto& m : mix) {
    warp_total += m.warp_instr;
    lane_total += m.lane_instr;
  }
  printf("{\n");
  const char* names[2] = {"head", "background"};
  for (int k = 0; k < 2; ++k) {
    const double s = cls[k].samples > 0 ? cls[k].samples : 1;
    printf("  \"%s\": {\"samples\": %.0f, \"nodes_per_sample\": %.3f, \"tris_per_sample\": %.3f, "
           "\"tri_boxes_per_sample\": %.3f, \"seeds_per_sample\": %.3f, \"lost_member_passes\": %.0f, "
           "\"list_entries_per_sample\": %.3f, \"shortlisted_fraction\": %.4f},\n",
           names[k], cls[k].samples, cls[k].nodes / s, cls[k].tris / s, cls[k].boxed / s, cls[k].seeds / s,
           cls[k].resolves, cls[k].listed / s, cls[k].shortlisted / s);
  }
  const char* mixes[3] = {"head_warps", "background_warps", "mixed_warps"};
  for (int k = 0; k < 3; ++k)
    printf("  \"%s\": {\"lane_samples\": %.0f, \"warp_instructions\": %.6e, \"lane_efficiency\": %.4f},\n", mixes[k],
           mix[k].samples, mix[k].warp_instr, mix[k].warp_instr > 0 ? mix[k].lane_instr / (kWarp * mix[k].warp_instr) : 0.0);
  const double runs = shared_runs > 0 ? shared_runs : 1;
  printf("  \"tiles\": {\"shortlist_walks\": %.0f, \"overflows\": %.0f, \"list_length\": %.2f, \"walk_chunks\": %.2f, "
         "\"descents\": %.3f, \"walk_steps\": %.2f, \"shared_warp_instructions\": %.6e},\n",
         shared_runs, overflows, list_total / std::max(1.0, shared_runs - overflows), tile_nodes / runs, tile_descents / runs, tile_tris / runs,
         shared_instr);
  printf("  \"by_event\": [");  // per warp mix (head, background, mixed), per event
  for (int k = 0; k < 3; ++k) {
    printf("%s[", k ? ", " : "");
    for (int e = 0; e < kTraceEvents; ++e) printf("%s%.6e", e ? ", " : "", mix[k].by_event[e]);
    printf("]");
  }
  printf("],\n");
  printf("  \"warp_instructions\": %.6e,\n  \"lane_efficiency\": %.4f,\n  \"active_lane_efficiency\": %.4f\n}\n",
         warp_total, lane_total / (kWarp * warp_total), (lane_total + active_total) / (kWarp * warp_total));
  return 0;
}
