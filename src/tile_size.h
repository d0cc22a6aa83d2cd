#pragma once

// Default tiles: the one place where the built-in heuristic chooses a kernel's (block M,
// block N, warps, persistent) for a problem. Which configs are built is the config table
// of src/generate_kernels.py, which does not call these functions; the heuristic
// (default_fwd_config, src/fwd_heuristic.cpp) does, and names the tile by that table
// (src/generated/config_table.h). static_asserts in fwd_heuristic.cpp fail the build if
// these functions can return a tile that is not a production config there; the table
// also holds configs these functions never pick (for config= and the auto-tuner).

namespace fa_cute {

struct FwdTile {
  int block_m;
  int block_n;
  int num_warps;
  bool persistent;  // blocks loop over tiles, loading the next tile's Q/K under the O store
};

// Key splits of one launch at most, FlashAttention-2's cap: each split adds an fp32 O and
// LSE per query row that the combine pass reads back.
constexpr int kMaxSplits = 128;

// Query lengths up to this many rows (decode, speculative decode, GQA-packed decode) take
// a 64-row tile with split-KV in both kernels: a 128-row tile would compute mostly rows
// that do not exist, and batch x heads tiles alone leave most SMs idle.
constexpr int kShortQueryRows = 64;

// Default tile of the sm80-instruction kernel (mma.sync + ldmatrix + cp.async).
// Warps split the query rows, so each warp's softmax needs no other warp's data.
// d=64, 96, 128: 128 Q rows with 4 warps of 32 rows each and 64-row K/V blocks
// (FlashAttention-2's tile). Each K or V fragment a warp reads by ldmatrix feeds two
// 16-row MMA tiles instead of one, half the ldmatrix reads per MMA of 8 warps of 16 rows,
// whose ldmatrix and cp.async traffic comes close to an SM's 128 B/clk of shared memory
// (docs/perf-notes.md, Ampere-style kernel: tile choices). 255 registers x 128 threads and 64 KiB of shared memory leave 2
// blocks per SM, so one block's softmax and first loads run under the other's MMAs and
// no persistent loop is needed. The price: O (d/2 fp32 registers a thread at d=128, 128)
// and S (64) leave ptxas short, and it spills at d=96 and 128 (benchmarks/ptxas_report.py
// allows this tile's spills). It still measured faster than the spill-free 128x128 8-warp
// tiles it replaces at d = 64, 96 and 128, causal or not (docs/perf-notes.md, Ampere-style
// kernel: tile choices). The lazy O rescale is on at d=96 and 128 (src/generate_kernels.py),
// where each thread rescales 128 O registers per 64 keys, off at d=64, where it lost.
// Putting the 8 warps of a 128x128 tile in two groups that take turns at the tensor cores
// (ping-pong, as the Hopper kernel does) measured slower: it does not cut the
// shared-memory traffic.
// d=192 and d=256: O alone needs 96 or 128 registers a thread with 16-row warps, so
// 8 warps and 64-row K/V blocks (S: 32 registers), as in FlashAttention-2. d=256 is not
// persistent by default: its separate O buffer would raise shared memory from 128 to
// 192 KiB, beyond an A100's 163.
// Causal: not persistent. Causal tiles differ in length, and the hardware's block
// scheduler balances them better than the persistent loop's static zigzag
// (docs/perf-notes.md, Ampere-style kernel: tile choices).
constexpr FwdTile sm80_fwd_tile(int head_dim, int seqlen_q, bool causal = false) {
  if (head_dim != 64 && head_dim != 96 && head_dim != 128 && head_dim != 192 && head_dim != 256) {
    return FwdTile{0, 0, 0, false};
  }
  if (seqlen_q <= kShortQueryRows) return FwdTile{64, 64, 4, false};
  if (head_dim <= 128) return FwdTile{128, 64, 4, false};
  if (head_dim == 192) return FwdTile{128, 64, 8, !causal};
  return FwdTile{128, 64, 8, false};
}

// Default tile of the Hopper kernel (TMA + wgmma, src/sm90/; docs/hopper-plan.md sec. 2):
// 64 query rows per consumer warpgroup (one wgmma atom), 2 or 3 of them (1 for short
// queries); block_n is the key block, which is also the N of the S = Q K^T wgmma.
// num_warps counts the producer warpgroup. Shared memory: Q + 2 stages of K and V (3-4
// for short queries) + O where persistent and there is room. Registers per consumer thread (setmaxnreg 240
// with 1-2 consumer warpgroups, 160 with 3): S block_n/2, P block_n/4, O d/2.
// Each choice below was measured on the H100; the numbers are in docs/perf-notes.md
// (Hopper kernel: tile choices).
//   d=128 non-causal: 128x128 persistent with ping-pong and lazy rescale (ladder rung 16)
//     led every other Hopper variant at every N; 128x176 as FlashAttention-3 picks it
//     ran slower, with ping-pong or without.
//   d=128 causal: 128x128 persistent up to seqlen_q 8192, 128x176 non-persistent above.
//     Since the persistent launch picks its L2 section for an even static schedule
//     (persistent_causal_section, tile_scheduler_host.h), 128x128 persistent beat 128x176 at
//     N = 4096 and 8192 but lost at 16384 (8192 to 16384 not measured). Short tiles gain
//     most from the next tile's loads under this one's epilogue.
//   d=64: 192x112, 3 consumer warpgroups (2 warpgroups with 128x192 spent as long in the
//     softmax as in the GEMMs); persistent, but causal above seqlen_q 4096 not (lengths
//     between 4096 and 8192 not measured).
//   d=96: 192x96, 3 consumer warpgroups, persistent (ahead of 128x128 at N >= 2048), but
//     128x128 up to seqlen_q 512.
//   d=192: 128x112 (O 96 registers; FlashAttention-3's); causal not persistent (the static
//     zigzag lost there), non-causal equal either way.
//   d=256: 128x64 (O 128 registers; FlashAttention-3's 128x80 spills in our kernel), not
//     persistent: ahead from N = 1024, causal or not. Not profiled; one difference: a persistent CTA stages O in Q's space here (no room for its own
//     next to 2 K/V stages of 32 KiB), so the next tile's Q load waits for the O store.
//   Short queries (decode): 64 rows, one consumer warpgroup, split-KV, and 3-4 K/V stages
//     (the generator's configs): a decode step streams K and V once and is bound by
//     memory bandwidth, so what counts is bytes in flight per SM, 136-224 KiB here against
//     the sm80 kernel's one 16 KiB cp.async at a time per block.
// On 9.0 the Hopper short-query tile needs keys to stream: it holds a whole SM (shared
// memory), so a grid of many tiles with few keys each pays its setup per tile, where the
// sm80 64x64 tile keeps 2+ blocks per SM; few tiles with long keys favour the Hopper tile
// (docs/perf-notes.md, Hopper kernel: tile choices). Between 64 and 512 keys with many
// tiles is not measured.
constexpr int kSm90ShortQueryMinKeys = 512;

// Split-KV parts for a grid of `tiles` query tiles on `slots` concurrent CTAs, each tile
// with n_blocks key blocks: FlashAttention-2's wave-efficiency rule. For each split count
// s (at least 4 key blocks a split, to amortise its Q load, pipeline fill and fp32 O
// store; at most 128), the efficiency is tiles*s over the slots of the waves it takes;
// the smallest s within 85% of the best wins. Its picks came within 1% of the fastest
// measured split counts on the Hopper short-query tile (docs/perf-notes.md, Hopper kernel: tile choices).
constexpr int split_kv_count(long long tiles, int slots, int n_blocks) {
  int const max_splits = n_blocks / 4 < kMaxSplits ? n_blocks / 4 : kMaxSplits;
  if (tiles <= 0 || slots <= 0 || max_splits <= 1) return 1;
  auto efficiency = [&](int s) {
    long long const ctas = tiles * s;
    long long const waves = (ctas + slots - 1) / slots;
    return double(ctas) / double(waves * slots);
  };
  double best = 0.0;
  for (int s = 1; s <= max_splits; ++s) {
    double const e = efficiency(s);
    if (e > best) best = e;
  }
  for (int s = 1; s <= max_splits; ++s) {
    if (efficiency(s) >= 0.85 * best) return s;
  }
  return 1;
}

constexpr FwdTile sm90_fwd_tile(int head_dim, int seqlen_q, bool causal = false) {
  if (head_dim != 64 && head_dim != 96 && head_dim != 128 && head_dim != 192 && head_dim != 256) {
    return FwdTile{0, 0, 0, false};
  }
  if (seqlen_q <= kShortQueryRows) {
    return FwdTile{64, head_dim <= 128 ? 128 : 64, 8, false};
  }
  switch (head_dim) {
    case 64: return FwdTile{192, 112, 16, !(causal && seqlen_q > 4096)};
    case 96: return seqlen_q <= 512 ? FwdTile{128, 128, 12, true} : FwdTile{192, 96, 16, true};
    case 128:
      return causal && seqlen_q > 8192 ? FwdTile{128, 176, 12, false} : FwdTile{128, 128, 12, true};
    case 192: return FwdTile{128, 112, 12, !causal};
    case 256: return FwdTile{128, 64, 12, false};
    default: return FwdTile{0, 0, 0, false};
  }
}

// The Hopper FP8 (e4m3) kernel's tile (docs/design.md, FP8 forward; the configs listing e4m3
// in src/generate_kernels.py): whole 32-key k-blocks of the 8-bit wgmma, spill-free (ptxas
// sm_90a). Measured per head dim (docs/perf-notes.md, FP8 forward): at d=64 three consumer
// warpgroups of 128-key blocks; at d=128 128-key blocks but for long non-causal queries
// (192-key blocks, FlashAttention-3's direction); at d=256 96-key blocks, which the halved
// P registers leave room for (bf16: 64). No short-query tile: a decode step takes these.
constexpr FwdTile sm90_fp8_fwd_tile(int head_dim, int seqlen_q, bool causal = false) {
  switch (head_dim) {
    case 64: return FwdTile{192, 128, 16, true};
    case 96: return FwdTile{128, 128, 12, true};
    case 128: return !causal && seqlen_q > 8192 ? FwdTile{128, 192, 12, true} : FwdTile{128, 128, 12, true};
    case 192: return FwdTile{128, 96, 12, true};
    case 256: return FwdTile{128, 96, 12, true};
    default: return FwdTile{0, 0, 0, false};
  }
}

}  // namespace fa_cute
