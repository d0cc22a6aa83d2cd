#pragma once

#include <cute/tensor.hpp>

#include "flash_params.h"

// Which tiles a thread block runs, shared by both kernel families (and, through the same
// coordinates, by the host's schedule search in tile_scheduler_host.h): the numbering of
// (query block, head, batch, key split) tiles and the order a block visits them in.
// Device and host, no host-only state.

namespace fa_cute {

// Which (query block, head, batch, key split) a tile is. Non-causal tiles are numbered with
// the query block fastest, so that consecutive tiles (run at the same time by neighbouring
// blocks) share one head's K and V and hit in L2. Causal tiles differ in work (a tile's
// key blocks grow with its query block), so they are numbered longest first, query block
// slowest and last to first, within L2 sections: groups of (batch, head) pairs whose K and
// V together fit in kCausalSectionL2Bytes (FwdParams::causal_section, chosen on the host).
// Launched in that order (and in the persistent loops' zigzag), the long tiles start first
// and the short ones fill the tail, while the tiles running at once read K and V of one
// section only (why: docs/perf-notes.md, Hopper kernel: tile choices). A flat numbering also means no grid
// dimension limit applies to batch * heads.
struct FwdTileCoord {
  int m_block;
  int bidh;
  int bidb;
  int bidh_k;
  int n_split;  // which part of the key blocks (split-KV); 0 without

  // is_causal: params.is_causal, passed separately so that a kernel that knows it at
  // compile time drops the other numbering (the causal one's section arithmetic made the
  // sm80 persistent kernel spill in its non-causal variant).
  // tests/cpp/test_layouts.cu proves the numbering a bijection.
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

// The static schedule of the persistent kernels (both families): in round r, CTA c of a
// grid of g takes tile r*g + c, in odd rounds r*g + g-1-c, so that with tiles numbered
// longest first the CTA that got a round's shortest tile gets the next round's longest.
CUTE_HOST_DEVICE constexpr int persistent_tile(int round, int cta, int grid) {
  return round * grid + (round % 2 == 0 ? cta : grid - 1 - cta);
}

// The tiles one CTA runs: a single one (blockIdx.x, a grid of one CTA per tile) or, with
// kPersistent, one per round of persistent_tile's zigzag over a grid of resident CTAs.
// kSplitKV: the launch may divide each query tile's key blocks among num_splits CTAs.
template <int kBlockM, bool kPersistent, bool kSplitKV>
struct FwdTileScheduler {
  int num_m_blocks;
  int num_tiles;

  CUTE_DEVICE explicit FwdTileScheduler(FwdParams const& params)
      : num_m_blocks((params.seqlen_q + kBlockM - 1) / kBlockM),
        num_tiles(num_m_blocks * params.nheads * params.batch * (kSplitKV ? cute::max(params.num_splits, 1) : 1)) {}

  // The tile this CTA runs in `round`; num_tiles or more: none.
  CUTE_DEVICE int tile(int round) const {
    if constexpr (kPersistent) {
      return persistent_tile(round, int(blockIdx.x), int(gridDim.x));
    } else {
      return round == 0 ? int(blockIdx.x) : num_tiles;
    }
  }

  CUTE_DEVICE bool valid(int tile) const { return tile < num_tiles; }

  CUTE_DEVICE FwdTileCoord coord(int tile, FwdParams const& params, bool is_causal) const {
    return FwdTileCoord(tile, num_m_blocks, params, is_causal);
  }

  // CTAs to launch for num_tiles tiles when `slots` CTAs fit on the GPU at once.
  CUTE_HOST_DEVICE static long long grid_size(long long num_tiles, long long slots) {
    return kPersistent ? cute::min(num_tiles, slots) : num_tiles;
  }
};

}  // namespace fa_cute
