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

// Default tile of the sm80-instruction kernel (mma.sync + ldmatrix + cp.async).
// d=128: 128 Q rows with 8 warps (16 rows each, so each warp's softmax needs no other
// warp's data) and 128-row K/V blocks. FlashAttention-2 uses 128x64 with 4 warps here;
// with our CuTe code that tile needs 255 registers and spills (ptxas, sm_80 and sm_90),
// while 8 warps hold half the O accumulator each (64 fp32 registers) and fit in 233.
// 233 registers x 256 threads leave room for one block per SM, so nothing hides a block's
// first loads and last stores: persistent blocks do, measured +3-4% at N=1024-2048 on the
// H100 and equal beyond (docs/perf-notes.md). Shared memory: Q + K + V + O = 128 KiB.
constexpr FwdTile sm80_fwd_tile(int head_dim) {
  return head_dim == 128 ? FwdTile{128, 128, 8, true} : FwdTile{0, 0, 0, false};
}

}  // namespace fa_cute
