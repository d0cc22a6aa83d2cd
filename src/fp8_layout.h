#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "flash_params.h"

// The FP8 (e4m3) forward's V operand (docs/design.md, FP8 forward). wgmma takes 8-bit
// operands K-major only: for O += P V the B operand is V^T with the keys contiguous, which
// V as given ((batch, seqlen_k, nheads_k, d), d contiguous) is not. A layout pass writes
// Vt (batch, nheads_k, d, fp8_vt_keys(seqlen_k)) before the attention kernel (same stream).
//
// It also reorders the keys within each chunk of 32, so that P needs no exchange between
// threads: the RS wgmma's 8-bit A operand (ALayout_64x32) gives a thread keys 4j..4j+3 and
// 16+4j..16+4j+3 of each 32-key k-block (j = lane % 4), while the S accumulator
// (CLayout_64xN) gave it keys 2j, 2j+1 of each 8-key group. P's A slot s then holds the
// score of key fp8_vt_key(s) of the chunk (convert_p_fp8_sm90, cute_utils.h), and Vt's key
// slot s holds that key's V row: the sum over keys of O += P V is the same sum, reordered.
// Shared by the layout kernel and the host; the P conversion applies the same map.

namespace fa_cute {

constexpr int kFp8VtChunk = 32;  // keys per k-block of the 8-bit wgmma
constexpr int kFp8VLayoutMaxHeadDim = 256;  // the layout pass's shared tile holds rows of up to this many bytes
// The head dims the layout pass takes: 16-byte row vectors, rows its shared tile holds.
constexpr bool fp8_v_layout_takes_head_dim(int head_dim) {
  return head_dim >= 16 && head_dim <= kFp8VLayoutMaxHeadDim && head_dim % 16 == 0;
}

// The key (within its chunk of 32) whose V row slot s of the chunk holds: slot
// 16c + 4j + a holds key 8 (2c + a/2) + 2j + a%2.
constexpr int fp8_vt_key(int slot) {
  int const c = slot / 16, j = slot % 16 / 4, a = slot % 4;
  return 8 * (2 * c + a / 2) + 2 * j + a % 2;
}

// Keys per Vt row: seqlen_k rounded up to a whole chunk (the layout pass writes zeros past
// seqlen_k; a row of 32-key multiples is also a multiple of TMA's 16-byte stride unit).
constexpr int64_t fp8_vt_keys(int64_t seqlen_k) { return (seqlen_k + kFp8VtChunk - 1) / kFp8VtChunk * kFp8VtChunk; }

struct Fp8VLayoutParams {
  void const* v_ptr;  // (batch, seqlen_k, nheads_k, head_dim) e4m3, head_dim contiguous
  index_t v_batch_stride, v_row_stride, v_head_stride;
  void* vt_ptr;       // (batch, nheads_k, head_dim, fp8_vt_keys(seqlen_k)) e4m3, contiguous
  int batch;
  int seqlen_k;
  int nheads_k;
  int head_dim;
};

// Launches the layout pass on stream (host only; the kernel is in fp8_layout.cu); throws
// std::invalid_argument for a head_dim its tile does not take (a multiple of 16 up to
// kFp8VLayoutMaxHeadDim) or empty sizes.
void launch_fp8_v_layout(Fp8VLayoutParams const& params, cudaStream_t stream);

}  // namespace fa_cute
