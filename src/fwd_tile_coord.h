#pragma once

#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include <cute/tensor.hpp>

#include "cute_utils.h"
#include "flash_params.h"

// Which tile a thread block works on and which key blocks it visits: shared by the
// sm80-instruction kernel and the Hopper kernel, so both walk tiles, causal bounds and
// split-KV ranges identically.

namespace fa_cute {

// What masking a launch needs (fwd_kernel_sm80's kMaskMode; sm80_mask_mode chooses).
enum class FwdMaskMode {
  kNone,        // non-causal, seqlen_q % kBlockM == 0 and seqlen_k % kBlockN == 0
  kCausalEven,  // causal, same lengths rule
  kGeneral,     // anything else: ragged tiles, causal or not
};

// Which (query block, head, batch, key split) a tile is. Non-causal tiles are numbered with
// the query block fastest, so that consecutive tiles (run at the same time by neighbouring
// blocks) share one head's K and V and hit in L2. Causal tiles differ in work (a tile's
// key blocks grow with its query block), so they are numbered longest first, query block
// slowest and last to first, within L2 sections: groups of (batch, head) pairs whose K
// and V together fit in kCausalSectionL2Bytes. Launched in that order (and in the
// persistent loops' zigzag), the long tiles start first and the short ones fill the tail,
// while the tiles running at once read K and V of one section only. Longest first across
// all heads had made each of the ~132 concurrent tiles read its own head's K and V: at
// N=1024, 67 MB of K/V in flight against the H100's 50 MB L2, and the Hopper kernel ran
// causal at 0.67x cuDNN there (1.2x at N=16384, where one head's tiles fill the GPU).
// A flat numbering also means no grid dimension limit applies to batch * heads.
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
// heuristics spread over the GPU.
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

struct FwdTileCoord {
  int m_block;
  int bidh;
  int bidb;
  int bidh_k;
  int n_split;  // which part of the key blocks (split-KV); 0 without

  // is_causal: params.is_causal, passed separately so that a kernel that knows it at
  // compile time drops the other numbering (the causal one's 64-bit section arithmetic
  // made the sm80 persistent kernel spill in its non-causal variant).
  // Host and device: tests/cpp/test_layouts.cu proves the numbering a bijection.
  CUTE_HOST_DEVICE FwdTileCoord(int tile, int num_m_blocks, FwdParams const& params, bool is_causal) {
    int bh;  // (split, batch, head), head fastest
    if (is_causal) {
      int const num_bh = params.nheads * params.batch * cute::max(params.num_splits, 1);
      int const section = params.causal_section;
      int const tiles_per_section = section * num_m_blocks;
      int const s = tile / tiles_per_section;
      int const within = tile - s * tiles_per_section;
      int const count = cute::min(section, num_bh - s * section);  // the last section may be smaller
      m_block = num_m_blocks - 1 - within / count;
      bh = s * section + within % count;
    } else {
      m_block = tile % num_m_blocks;
      bh = tile / num_m_blocks;
    }
    bidh = bh % params.nheads;
    int const split_b = bh / params.nheads;
    bidb = split_b % params.batch;
    n_split = split_b / params.batch;
    bidh_k = bidh / (params.nheads / params.nheads_k);
  }
};

// The key blocks a query tile visits, [n_block_min, n_block_max), and the first of them
// that needs a mask: the one holding column seqlen_k (a ragged tail) or, causal, the first
// with a column past the diagonal of the tile's first row. Blocks before it run without
// masking work. Split-KV: split s takes the s-th of num_splits equal runs of the blocks.
// n_block_min >= n_block_max: no row of the tile sees a key (causal with seqlen_q >
// seqlen_k), or the split has no blocks.
struct FwdKeyRange {
  int n_block_min;
  int n_block_max;
  int n_block_mask_start;

  // Host and device: the host's persistent schedule (persistent_causal_section) counts the
  // blocks the kernels will visit.
  template <int kBlockM, int kBlockN, bool kSplitKV>
  CUTE_HOST_DEVICE static FwdKeyRange of(FwdTileCoord const& c, FwdParams const& params) {
    int n_block_max = (params.seqlen_k + kBlockN - 1) / kBlockN;
    int n_block_mask_start = params.seqlen_k / kBlockN;
    if (params.is_causal) {
      int const row_first = c.m_block * kBlockM;
      int const row_last = cute::min(row_first + kBlockM, params.seqlen_q) - 1;
      // Row r sees columns c <= r + causal_offset.
      n_block_max = cute::min(n_block_max, floor_div(row_last + params.causal_offset, kBlockN) + 1);
      n_block_mask_start =
          cute::min(n_block_mask_start, cute::max(0, floor_div(row_first + params.causal_offset + 1, kBlockN)));
    }
    int n_block_min = 0;
    if (kSplitKV && params.num_splits > 1) {
      int const per_split = (cute::max(n_block_max, 0) + params.num_splits - 1) / params.num_splits;
      n_block_min = c.n_split * per_split;
      n_block_max = cute::min(n_block_max, n_block_min + per_split);
    }
    return {n_block_min, n_block_max, n_block_mask_start};
  }

  CUTE_HOST_DEVICE int num_blocks() const { return n_block_max - n_block_min; }
  // The i-th key block visited.
  template <bool kReverse>
  __device__ int block(int i) const { return kReverse ? n_block_max - 1 - i : n_block_min + i; }
};

// The static schedule of the persistent kernels (both families): in round r, CTA c of a
// grid of g takes tile r*g + c, in odd rounds r*g + g-1-c, so that with tiles numbered
// longest first the CTA that got a round's shortest tile gets the next round's longest.
CUTE_HOST_DEVICE constexpr int persistent_tile(int round, int cta, int grid) {
  return round * grid + (round % 2 == 0 ? cta : grid - 1 - cta);
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
      int const blocks = cute::max(FwdKeyRange::of<kBlockM, kBlockN, false>(coord, params).num_blocks(), 0);
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
// schedule (persistent_tile) deals tiles of unequal length to the CTAs: with the bound's own
// section the busiest CTA of a d=128 128x128 launch gets well over the mean work, with
// 4 MiB sections about the mean; the measured speed per section size follows the busiest
// CTA's work, not the L2 footprint (docs/perf-notes.md, Hopper kernel: tile choices; docs/perf-history.md v9). So
// this picks, among sections up to the bound, the smallest whose busiest CTA is within 1% of
// the least busy choice. It runs on the host once per shape (a per-instantiation cache),
// and stays cheap: one repeating period of the deal is simulated and multiplied.
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
// most evenly. Both launchers call it once they know their grid.
template <int kBlockM, int kBlockN>
int launch_causal_section(FwdParams const& params, bool persistent, int grid) {
  return persistent && params.is_causal ? persistent_causal_section<kBlockM, kBlockN>(params, grid)
                                        : causal_section(params);
}

// -inf for the scores that a row may not see: columns at or past col_end (the ragged tail of
// seqlen_k) and, with is_causal, columns past row + diagonal. scores and coords are the
// accumulator and the same partition of an identity tensor, both viewed as rows x columns
// (acc_layout_rowcol); a row's columns are tested against one limit.
template <class TensorS, class TensorC>
__forceinline__ __device__ void apply_mask(TensorS&& scores, TensorC const& coords, int col_end, bool is_causal,
                                           int diagonal) {
  using namespace cute;
  CUTE_STATIC_ASSERT_V(rank(scores) == Int<2>{});
  CUTE_STATIC_ASSERT_V(size(scores) == size(coords));
  CUTE_UNROLL
  for (int mi = 0; mi < size<0>(scores); ++mi) {
    int const row = get<0>(coords(mi, 0));
    int const limit = is_causal ? min(col_end, row + diagonal + 1) : col_end;
    CUTE_UNROLL
    for (int ni = 0; ni < size<1>(scores); ++ni) {
      if (get<1>(coords(mi, ni)) >= limit) scores(mi, ni) = -INFINITY;
    }
  }
}

}  // namespace fa_cute
