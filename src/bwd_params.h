#pragma once

#include <cstdint>

#include <cute/config.hpp>

#include "flash_params.h"

namespace fa_cute {

// dq_accum holds seqlen_q rounded up to a multiple of this many rows per (batch, head): a
// query block of any backward config (kBlockM divides it) then owns whole rows of it, which
// the Hopper kernel's tiled layout (kdQTile) adds as one contiguous block. _C.limits() gives
// it to the Python layer, which allocates the buffer.
constexpr int kDqAccumRowAlign = 128;

// A varlen batch's dq_accum rows per head: sequence b's start at
// bwd_dq_accum_varlen_row(offset_q, b), offset_q + b * kDqAccumRowAlign rounded down to a
// multiple of kDqAccumRowAlign, so that each sequence owns whole query blocks (the tiled
// layout adds them whole) that no other sequence's overlap: the next one starts at least
// ceil(seqlen_q / kDqAccumRowAlign) blocks later. Per head, total_q + batch *
// kDqAccumRowAlign rows, rounded up, hold them all.
CUTE_HOST_DEVICE int64_t bwd_dq_accum_varlen_row(int offset_q, int b) {
  return (int64_t(offset_q) + int64_t(b) * kDqAccumRowAlign) / kDqAccumRowAlign * kDqAccumRowAlign;
}
CUTE_HOST_DEVICE int64_t bwd_dq_accum_varlen_rows(int total_q, int batch) {
  return (int64_t(total_q) + int64_t(batch) * kDqAccumRowAlign + kDqAccumRowAlign - 1) / kDqAccumRowAlign *
         kDqAccumRowAlign;
}

// Everything the backward kernels need (preprocess, main, postprocess), filled by the host
// from plain integers: no torch. Element strides are 64-bit, (batch, row, head), the last
// dim contiguous; the fp32 buffers are contiguous.
struct BwdParams {
  // Inputs (bf16/fp16): q, out, dout (batch, seqlen_q, nheads, d); k, v (batch, seqlen_k,
  // nheads_k, d); lse fp32 (batch, nheads, seqlen_q), the forward's natural-log LSE of the
  // scaled scores (-inf for a row that sees no key).
  void const* __restrict__ q_ptr;
  void const* __restrict__ k_ptr;
  void const* __restrict__ v_ptr;
  void const* __restrict__ o_ptr;
  void const* __restrict__ do_ptr;
  float const* __restrict__ lse_ptr;
  // Outputs: dq (like q), dk and dv (like k), in the input dtype.
  void* __restrict__ dq_ptr;
  void* __restrict__ dk_ptr;
  void* __restrict__ dv_ptr;
  // Work buffers, fp32, contiguous, allocated by the caller: dq_accum (batch, nheads,
  // dq_accum_rows, d), zeroed by the preprocess kernel (the padding rows too), summed into
  // by the main kernel; softmax_d (batch, nheads, seqlen_q), D = rowsum(dO * O), written by
  // the preprocess kernel. dq_accum_rows: seqlen_q rounded up to kDqAccumRowAlign.
  float* __restrict__ dq_accum_ptr;
  float* __restrict__ softmax_d_ptr;
  int dq_accum_rows;
  // deterministic=True: int32 counters (batch, nheads, ceil(seqlen_q / dq_semaphore_block_m)),
  // contiguous, one per query block of each (batch, query head), zeroed by the preprocess
  // kernel; the main kernel adds each dQ block's contributions in a fixed order, key block
  // 0 first (bwd_dq_order.h). nullptr: not deterministic, the dQ adds are unordered atomics
  // and the kernels pay nothing for the option. dq_semaphore_block_m: the main kernel's
  // query block (kBlockM; run_bwd checks it), read only with a semaphore.
  int* dq_semaphore_ptr;
  int dq_semaphore_block_m;
  // Set by the Hopper launch (Sm90BwdLaunch) for a deterministic run of a dense, non-causal
  // batch without a window whose query blocks are 2^s times its key blocks and whose (batch,
  // K/V head) has few enough key blocks to be resident at once: s + 1, key block n's CTA
  // visits its query blocks from n << s on, cyclically, and its turn at each follows that
  // arrival order (bwd_dq_order.h, rotated order). 0: every CTA from query block 0, turns
  // ascending.
  int dq_rotate = 0;

  index_t q_batch_stride, q_row_stride, q_head_stride;
  index_t k_batch_stride, k_row_stride, k_head_stride;
  index_t v_batch_stride, v_row_stride, v_head_stride;
  index_t o_batch_stride, o_row_stride, o_head_stride;
  index_t do_batch_stride, do_row_stride, do_head_stride;
  index_t dq_batch_stride, dq_row_stride, dq_head_stride;
  index_t dk_batch_stride, dk_row_stride, dk_head_stride;
  index_t dv_batch_stride, dv_row_stride, dv_head_stride;

  // A variable-length batch (varlen_backward; null / 0 for a dense one): q, out, dout and dq
  // packed (total_q, nheads, d), k, v, dk and dv (total_k, nheads_k, d), their batch strides
  // 0; sequence b's rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] and keys cu_seqlens_k[b] ..
  // cu_seqlens_k[b + 1] (with seqused_k, the first seqused_k[b] of them); batch the number of
  // sequences, seqlen_q and seqlen_k the longest's (the launch's extent). lse and softmax_d
  // are (nheads, total_q), dq_accum (nheads, dq_accum_rows, d) with dq_accum_rows =
  // bwd_dq_accum_varlen_rows(total_q, batch); the counters of deterministic=True are
  // (batch, nheads, ceil(seqlen_q / block_m)) as for a dense batch.
  int const* __restrict__ cu_seqlens_q;
  int const* __restrict__ cu_seqlens_k;
  int const* __restrict__ seqused_k;
  int total_q;
  int total_k;

  int batch;
  int seqlen_q;
  int seqlen_k;
  int nheads;
  int nheads_k;  // nheads % nheads_k == 0; K/V head hk serves query heads hk*g .. hk*g+g-1
  int head_dim;

  // With is_causal, query row r sees key c iff c <= r + causal_offset (as FwdParams).
  bool is_causal;
  int causal_offset;
  // A sliding window (the forward's, FwdParams): row r also sees key c only where
  // r + causal_offset - window_left <= c (window_left >= 0) and, without is_causal,
  // c <= r + causal_offset + window_right (window_right >= 0); -1: unbounded.
  int window_left = -1;
  int window_right = -1;

  float softmax_scale;       // the forward's scale of Q K^T: dQ's and dK's factor
  // The exponent's scale of the scores: softmax_scale * log2(e); with a logits softcap
  // (softcap_premul != 0: the forward mapped S to tanh(S * softcap_premul), then scaled that
  // by softcap in its softmax), softcap * log2(e).
  float softmax_scale_log2;
  float softcap_premul = 0.f;  // softmax_scale / softcap; 0: no softcap
};

}  // namespace fa_cute
