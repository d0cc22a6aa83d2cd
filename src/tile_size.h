#pragma once

// Tile sizes: the one place where a kernel's (block M, block N, warps) is chosen. The
// generated instantiations and the host's default-config heuristic both call this, so a
// kernel is never built with a tile that the dispatcher does not pick, and vice versa.

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
// 16-row MMA tiles instead of one: 0.31 ldmatrix.x4 per MMA against 0.53 with 8 warps of
// 16 rows, whose ldmatrix and cp.async traffic is ~87% of an SM's 128 B/clk of shared
// memory at 350 TFLOP/s. 255 registers x 128 threads and 64 KiB of shared memory leave 2
// blocks per SM, so one block's softmax and first loads run under the other's MMAs and
// no persistent loop is needed. The price: O (d/2 fp32 registers a thread at d=128, 128)
// and S (64) leave ptxas short, and it spills 80 B at d=128 in the mask-free variant,
// 16 B at d=96, none at d=64 (benchmarks/ptxas_report.py allows this tile's spills).
// Measured on the H100 (fwd_bench sustained, bhnd, N=1024-16384, docs/perf-notes.md v10),
// against the 128x128 8-warp tiles that it replaces (spill-free): d=128 +3-8% non-causal
// and +6-9% causal, d=96 +7-16%, d=64 +11-17%; 1.04-1.13x FlashAttention-2 at d=128.
// The lazy O rescale is on at d=96 and 128 (src/generate_kernels.py: +0-5%, since each
// thread rescales 128 O registers per 64 keys), off at d=64 (-1 to -2%).
// Putting the 8 warps of a 128x128 tile in two groups that take turns at the tensor cores
// (ping-pong, as the Hopper kernel does) measured 3-4% slower: it does not cut the
// shared-memory traffic.
// d=192 and d=256: O alone needs 96 or 128 registers a thread with 16-row warps, so
// 8 warps and 64-row K/V blocks (S: 32 registers), as in FlashAttention-2. d=256 is not
// persistent by default: its separate O buffer would raise shared memory from 128 to
// 192 KiB, beyond an A100's 163.
// Causal: not persistent. Causal tiles differ in length, and the hardware's block
// scheduler balances them better than the persistent loop's static zigzag: fwd_bench,
// H100, d=128, bf16: 287 against 276 TFLOP/s at N=2048, 329 against 319-323 at 4096, 361
// against 345-354 at 16384.
constexpr FwdTile sm80_fwd_tile(int head_dim, int seqlen_q, bool causal = false) {
  if (head_dim != 64 && head_dim != 96 && head_dim != 128 && head_dim != 192 && head_dim != 256) {
    return FwdTile{0, 0, 0, false};
  }
  if (seqlen_q <= kShortQueryRows) return FwdTile{64, 64, 4, false};
  if (head_dim <= 128) return FwdTile{128, 64, 4, false};
  if (head_dim == 192) return FwdTile{128, 64, 8, !causal};
  return FwdTile{128, 64, 8, false};
}

// Default tile of the Hopper kernel (TMA + wgmma, src/hopper/; docs/hopper-plan.md sec. 2):
// 64 query rows per consumer warpgroup (one wgmma atom), 2 or 3 of them (1 for short
// queries); block_n is the key block, which is also the N of the S = Q K^T wgmma.
// num_warps counts the producer warpgroup. Shared memory: Q + 2 stages of K and V (3-4
// for short queries) + O where persistent and there is room. Registers per consumer thread (setmaxnreg 240
// with 1-2 consumer warpgroups, 160 with 3): S block_n/2, P block_n/4, O d/2.
// Measured on the H100 (d=128, bf16; docs/perf-notes.md v5-v7):
//   d=128 non-causal: 128x128 persistent with ping-pong and lazy rescale (ladder rung 16)
//     led every other Hopper variant at every N (fwd_bench, 610-709 TFLOP/s in bursts);
//     128x176 as FlashAttention-3 picks it ran 2-6% slower with ping-pong, 7% without.
//   d=128 causal: 128x128 persistent up to seqlen_q 8192, 128x176 non-persistent above.
//     Since the persistent launch picks its L2 section for an even static schedule
//     (persistent_causal_section, fwd_tile_coord.h), 128x128 persistent ran 551-580 / 592-594
//     against 517-522 / 573-584 TFLOP/s for 128x176 at N = 4096 / 8192, but 562-570 against
//     638-645 at 16384 (fwd_bench, sustained, perf-notes v9; 8192 to 16384 not measured).
//     At N = 512 / 1024 it had beaten 128x176 before (260 / 360 against 193 / 321): short
//     tiles gain most from the next tile's loads under this one's epilogue.
//   d=64: 192x112, 3 consumer warpgroups (+7-22% over 2 warpgroups with 128x192, whose
//     softmax took as long as the GEMMs); persistent, but causal above seqlen_q 4096 not
//     (479 / 511 against 461 / 498 at N = 8192 / 16384; 351 / 407 against 325 / 395
//     at 2048 / 4096; lengths between 4096 and 8192 not measured).
//   d=96: 192x96, 3 consumer warpgroups, persistent (562-632 against 501-556 TFLOP/s
//     for 128x128 at N >= 2048), but 128x128 up to seqlen_q 512 (396 against 360).
//   d=192: 128x112 (O 96 registers; FlashAttention-3's); causal not persistent (485 /
//     654 / 731 against 471 / 599 / 495 at N = 2048 / 8192 / 16384), non-causal equal.
//   d=256: 128x64 (O 128 registers; FlashAttention-3's 128x80 spills 120 B in our
//     kernel), not persistent: 594-777 against 577-697 non-causal, 404-708 against
//     337-506 causal at N = 1024-16384 (at 512 within 2-4% either way). Not profiled;
//     one difference: a persistent CTA stages O in Q's space here (no room for its own
//     next to 2 K/V stages of 32 KiB), so the next tile's Q load waits for the O store.
//   Short queries (decode): 64 rows, one consumer warpgroup, split-KV, and 3-4 K/V stages
//     (the generator's configs): a decode step streams K and V once and is bound by
//     memory bandwidth, so what counts is bytes in flight per SM, 136-224 KiB here against
//     the sm80 kernel's one 16 KiB cp.async at a time per block.
// On 9.0 the Hopper short-query tile needs keys to stream: it holds a whole SM (shared
// memory), so a grid of many tiles with few keys each pays its setup per tile. fwd_bench,
// bf16, d=128, seqlen_q 64: B=256, H=16 with 64 keys took 146 us against 99 for the sm80
// 64x64 tile (2+ blocks per SM); with 1024 keys (B=64, 32 rows) both 0.19 ms; 4096 keys
// and 512 tiles 369 against 363; few tiles with long keys favour it by 20-37%. Between 64
// and 512 keys with many tiles is not measured.
constexpr int kSm90ShortQueryMinKeys = 512;

// Split-KV parts for a grid of `tiles` query tiles on `slots` concurrent CTAs, each tile
// with n_blocks key blocks: FlashAttention-2's wave-efficiency rule. For each split count
// s (at least 4 key blocks a split, to amortise its Q load, pipeline fill and fp32 O
// store; at most 128), the efficiency is tiles*s over the slots of the waves it takes;
// the smallest s within 85% of the best wins. Measured on the Hopper short-query tile
// (fwd_bench, GQA decode, N_k = 16384; slots = 132): 32 tiles -> 4 (100 us; 1 split 140,
// 16 splits 110), 80 tiles -> 3 (237 us against 257 unsplit), 128 tiles -> 1 (356 us; 2
// splits 366).
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

}  // namespace fa_cute
