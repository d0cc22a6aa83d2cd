#pragma once

#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "block_info.h"
#include "flash_params.h"
#include "tile_scheduler.h"

// The host side of the tile scheduler (tile_scheduler.h): how many tiles a launch has, and
// the L2 section of the causal tile order, searched per shape for persistent grids. Host
// only (it keeps a cache in a std::map); the launchers call it.

namespace fa_cute {

// K and V bytes of the (batch, head) pairs that one L2 section of the causal tile order
// may hold: the H100's L2 is 50 MB, and a section of all heads had each of the ~132
// concurrent tiles read its own head's K and V (docs/perf-notes.md, Hopper kernel: tile
// choices).
constexpr long long kCausalSectionL2Bytes = 32ll << 20;

// (batch, head) pairs per L2 section of the causal tile order; the launchers store it in
// FwdParams::causal_section, so that kernels do no 64-bit arithmetic for it (computed per
// tile, it made the d=256 Hopper kernel spill).
inline int causal_section(FwdParams const& params) {
  long long const num_bh = (long long)params.nheads * params.batch * (params.num_splits > 1 ? params.num_splits : 1);
  // K and V of one query head (bf16/fp16); GQA heads share them, so this overcounts.
  long long const kv_bytes = 4ll * params.seqlen_k * params.head_dim;
  long long const section = kCausalSectionL2Bytes / (kv_bytes > 0 ? kv_bytes : 1);
  return int(section < 1 ? 1 : section < num_bh ? section : num_bh);
}

// Query tiles of a launch, batch x heads x query blocks of kBlockM rows: what the split-KV
// rule spreads over the GPU.
inline long long fwd_query_tiles(FwdParams const& params, int block_m) {
  return (long long)((params.seqlen_q + block_m - 1) / block_m) * params.nheads * params.batch;
}

// Thread-block tiles of a launch, each query tile once per key split. The kernels number
// them in int, so a launch past kMaxLaunchTiles is refused here.
inline long long fwd_launch_tiles(FwdParams const& params, int block_m) {
  long long const tiles = fwd_query_tiles(params, block_m) * (params.num_splits > 1 ? params.num_splits : 1);
  if (tiles > kMaxLaunchTiles) {
    throw std::invalid_argument("batch * nheads * ceil(seqlen_q / " + std::to_string(block_m) +
                                ") * num_splits exceeds " + std::to_string(kMaxLaunchTiles) + " tiles");
  }
  return tiles;
}

// Work of the busiest CTA and of all CTAs of a persistent causal launch on `grid` CTAs
// with params.causal_section pairs per L2 section, a tile counted as its key blocks plus one
// (its Q load, pipeline fill and epilogue): what persistent_causal_section minimises.
// fold=false deals every tile one by one (the ctest's reference for the folded count).
struct PersistentLoad {
  long long busiest;
  long long total;
};

template <int kBlockM, int kBlockN>
PersistentLoad persistent_causal_load(FwdParams const& params, int grid, bool fold = true) {
  int const num_m_blocks = (params.seqlen_q + kBlockM - 1) / kBlockM;
  long long const num_bh = (long long)params.nheads * params.batch;
  long long const tiles = num_m_blocks * num_bh;
  std::vector<long long> load(grid > 0 ? grid : 1, 0);
  long long total = 0;
  auto deal = [&](long long first, long long last, long long times) {
    for (long long tile = first; tile < last; ++tile) {
      FwdTileCoord const coord(int(tile), num_m_blocks, params, /*is_causal=*/true);
      int const blocks = std::max(FwdKeyRange::of<kBlockM, kBlockN, false>(coord, params).num_blocks(), 0);
      // Within a round the zigzag is its own inverse: the CTA that takes tile round*g + pos
      // is persistent_tile(round, pos, g) - round*g.
      int const round = int(tile / grid);
      int const pos = int(tile - (long long)round * grid);
      load[persistent_tile(round, pos, grid) - (long long)round * grid] += times * (blocks + 1);
      total += times * (blocks + 1);
    }
  };
  // The full sections repeat one pattern of tile lengths, and the zigzag repeats every 2
  // rounds: over the lcm of the two, every CTA gets the same work again. So one such period
  // is dealt and counted `repeats` times, then the rest tile by tile (a large launch costs
  // at most two periods instead of all its tiles).
  long long const section_tiles = (long long)params.causal_section * num_m_blocks;
  long long const full_tiles = num_bh / params.causal_section * section_tiles;
  long long const period = std::lcm(section_tiles, 2LL * grid);
  long long const repeats = fold && period > 0 ? full_tiles / period : 0;
  if (repeats > 0) {
    deal(0, period, repeats);
  }
  deal(repeats * period, tiles, 1);
  return {*std::max_element(load.begin(), load.end()), total};
}

// Pairs per L2 section of a persistent causal launch. Any section within causal_section's
// L2 bound keeps the concurrent tiles' K and V in L2, but sections differ in how the static
// schedule (persistent_tile) deals tiles of unequal length to the CTAs, and the measured
// speed per section size follows the busiest CTA's work, not the L2 footprint
// (docs/perf-notes.md, Hopper kernel: tile choices; docs/perf-history.md v9). So this
// picks, among sections up to the bound, the smallest whose busiest CTA is within 1% of
// the least busy choice. It runs once per shape (a per-instantiation cache), and stays
// cheap: one repeating period of the deal is simulated and multiplied.
template <int kBlockM, int kBlockN>
int persistent_causal_section(FwdParams const& problem, int grid) {
  int const bound = causal_section(problem);
  using Key = std::array<long long, 7>;
  Key const key{problem.batch, problem.nheads, problem.seqlen_q, problem.seqlen_k, problem.causal_offset, bound,
                grid};
  static std::mutex mutex;
  static std::map<Key, int> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto const hit = cache.find(key);
    if (hit != cache.end()) return hit->second;
  }
  // Candidates: every section up to 16 pairs, then steps of about 1.5x, and the bound.
  std::vector<int> candidates;
  for (int s = 1; s <= bound; s = s < 16 ? s + 1 : s + s / 2) candidates.push_back(s);
  if (candidates.back() != bound) candidates.push_back(bound);
  FwdParams params = problem;
  std::vector<long long> busiest(candidates.size());
  long long least = -1;
  for (size_t i = 0; i < candidates.size(); ++i) {
    params.causal_section = candidates[i];
    busiest[i] = persistent_causal_load<kBlockM, kBlockN>(params, grid).busiest;
    if (least < 0 || busiest[i] < least) least = busiest[i];
  }
  int section = bound;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (busiest[i] * 100 <= least * 101) {
      section = candidates[i];
      break;
    }
  }
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= 4096) cache.clear();
  cache[key] = section;
  return section;
}

// The causal section a launch runs with (FwdParams::causal_section): the L2 bound of
// causal_section, or for a persistent grid of `grid` CTAs the section that deals its tiles
// most evenly.
template <int kBlockM, int kBlockN>
int launch_causal_section(FwdParams const& params, bool persistent, int grid) {
  return persistent && params.is_causal ? persistent_causal_section<kBlockM, kBlockN>(params, grid)
                                        : causal_section(params);
}

}  // namespace fa_cute
