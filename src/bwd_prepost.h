#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

#include "block_info.h"  // BwdSeqlens
#include "bwd_dq_order.h"
#include "bwd_params.h"

// The backward's two row-wise kernels around the main kernel, shared by every family:
//   preprocess:  D[b,h,i] = sum_c dO[b,i,h,c] * O[b,i,h,c] (fp32) into softmax_d,
//                dq_accum[b,h,i,:] = 0 for every i < dq_accum_rows (the padding rows too:
//                the Hopper kernel's tiled layout adds whole query blocks), and with a
//                dq_semaphore (deterministic) the counter of (b, h, i / dq_semaphore_block_m) = 0
//                (bwd_dq_order.h);
//   postprocess: dq[b,i,h,:] = dq_accum[b,h,i,:] * softmax_scale in the input dtype (the
//                row layout; the tiled one has its own, sm90/bwd_dq_tile_sm90.h); a
//                varlen batch's rows i below its sequence's length, from the sequence's
//                own rows of dq_accum (BwdSeqlens) into its packed rows of dq.
// A row of d elements is handled by d/8 threads of 16-byte (8-element) accesses; rows are
// numbered (b, h, i), i below seqlen_q (postprocess) or dq_accum_rows (preprocess), and a
// grid-stride loop covers any count.

namespace fa_cute {

// CTAs to launch for `blocks` units of grid-stride work: all of them, at most 2^20 (the
// kernels' loops cover the rest).
inline unsigned bwd_grid_stride_blocks(int64_t blocks) {
  return unsigned(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
}

template <class Element, int kHeadDim>
struct BwdRowKernel {
  static constexpr int kNThreads = 128;
  // d/8 threads carry a row's columns; a row takes the next power of two of threads (the
  // shuffle reduction's group: 16 for d = 96, 32 for d = 192), the extra ones take no row.
  static constexpr int kThreadsUsed = kHeadDim / 8;
  static constexpr int pow2_at_least(int n) {
    int p = 1;
    while (p < n) p *= 2;
    return p;
  }
  static constexpr int kThreadsPerRow = pow2_at_least(kThreadsUsed);
  static constexpr int kRowsPerBlock = kNThreads / kThreadsPerRow;
  static_assert(kHeadDim % 8 == 0 && kThreadsPerRow <= 32, "a row's threads must be within one warp (d <= 256)");
  using Vec = cutlass::Array<Element, 8>;
  using VecF = cutlass::Array<float, 8>;

  // This thread's row (b, h, i) and the 8 elements of it it handles; rows_per_head: the
  // rows numbered per (b, h).
  struct Row {
    int64_t index;  // (b * nheads + h) * rows_per_head + i
    int b, h, i;
    int col;        // first of its 8 columns
    CUTE_DEVICE int64_t d_index(BwdParams const& params) const {  // of softmax_d and lse
      return (int64_t(b) * params.nheads + h) * params.seqlen_q + i;
    }
    CUTE_DEVICE int64_t accum_index(BwdParams const& params) const {  // of dq_accum's rows
      return (int64_t(b) * params.nheads + h) * params.dq_accum_rows + i;
    }
  };
  CUTE_DEVICE static Row row_of(int64_t first_row, int rows_per_head, BwdParams const& params) {
    Row r;
    r.col = (threadIdx.x % kThreadsPerRow) * 8;
    // A padding thread (r.col >= kHeadDim) takes an index past every row: no row's work.
    r.index = r.col < kHeadDim ? first_row + threadIdx.x / kThreadsPerRow : INT64_MAX;
    int64_t const bh = r.index / rows_per_head;
    r.i = int(r.index - bh * rows_per_head);
    r.h = int(bh % params.nheads);
    r.b = int(bh / params.nheads);
    return r;
  }
  CUTE_HOST_DEVICE static int64_t num_rows(BwdParams const& params, int rows_per_head) {
    return int64_t(params.batch) * params.nheads * rows_per_head;
  }
  template <class T>
  CUTE_DEVICE static T const* at(void const* ptr, Row const& r, index_t bs, index_t rs, index_t hs) {
    return static_cast<T const*>(ptr) + r.b * bs + r.i * rs + r.h * hs + r.col;
  }
  // Blocks to launch: enough for the rows (bwd_grid_stride_blocks).
  static unsigned grid(BwdParams const& params, int rows_per_head) {
    return bwd_grid_stride_blocks((num_rows(params, rows_per_head) + kRowsPerBlock - 1) / kRowsPerBlock);
  }
};

template <class Element, int kHeadDim>
__global__ void __launch_bounds__(128) bwd_preprocess_kernel(__grid_constant__ BwdParams const params) {
  using K = BwdRowKernel<Element, kHeadDim>;
  int64_t const rows = K::num_rows(params, params.dq_accum_rows);
  cutlass::NumericArrayConverter<float, Element, 8> to_float;
  // The loop bound is uniform in the block: every lane reaches the shuffles.
  for (int64_t first = int64_t(blockIdx.x) * K::kRowsPerBlock; first < rows;
       first += int64_t(gridDim.x) * K::kRowsPerBlock) {
    typename K::Row const r = K::row_of(first, params.dq_accum_rows, params);
    bool const in_accum = r.index < rows;
    bool const valid = in_accum && r.i < params.seqlen_q;  // a row of the problem, not padding
    float dot = 0.f;
    if (in_accum) {
      float4* acc = reinterpret_cast<float4*>(params.dq_accum_ptr + r.accum_index(params) * kHeadDim + r.col);
      acc[0] = make_float4(0.f, 0.f, 0.f, 0.f);
      acc[1] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    if (valid) {
      auto const o = to_float(*reinterpret_cast<typename K::Vec const*>(
          K::template at<Element>(params.o_ptr, r, params.o_batch_stride, params.o_row_stride, params.o_head_stride)));
      auto const d_o = to_float(*reinterpret_cast<typename K::Vec const*>(K::template at<Element>(
          params.do_ptr, r, params.do_batch_stride, params.do_row_stride, params.do_head_stride)));
      CUTE_UNROLL
      for (int c = 0; c < 8; ++c) dot += o[c] * d_o[c];
      // Deterministic: the first row of each query block zeroes the block's counter.
      if (params.dq_semaphore_ptr != nullptr && r.col == 0 && r.i % params.dq_semaphore_block_m == 0) {
        int const num_m_blocks = (params.seqlen_q + params.dq_semaphore_block_m - 1) / params.dq_semaphore_block_m;
        params.dq_semaphore_ptr[dq_semaphore_index(r.b, r.h, r.i / params.dq_semaphore_block_m, params.nheads,
                                                   num_m_blocks)] = 0;
      }
    }
    CUTE_UNROLL
    for (int offset = K::kThreadsPerRow / 2; offset > 0; offset /= 2) {
      dot += __shfl_xor_sync(0xffffffff, dot, offset);
    }
    if (valid && r.col == 0) params.softmax_d_ptr[r.d_index(params)] = dot;
  }
}

template <class Element, int kHeadDim>
__global__ void __launch_bounds__(128) bwd_postprocess_kernel(__grid_constant__ BwdParams const params) {
  using K = BwdRowKernel<Element, kHeadDim>;
  int64_t const rows = K::num_rows(params, params.seqlen_q);
  cutlass::NumericArrayConverter<Element, float, 8> to_element;
  for (int64_t first = int64_t(blockIdx.x) * K::kRowsPerBlock; first < rows;
       first += int64_t(gridDim.x) * K::kRowsPerBlock) {
    typename K::Row r = K::row_of(first, params.seqlen_q, params);
    if (r.index >= rows) continue;
    int64_t accum_row = r.accum_index(params);
    if (params.cu_seqlens_q != nullptr) {
      // A varlen sequence's row r.i: its rows of dq_accum, its packed row of dq (batch stride 0).
      BwdSeqlens<true> const seq(params, r.b);
      if (r.i >= seq.seqlen_q) continue;
      accum_row = seq.dq_accum_row_base(params, r.b, r.h) + r.i;
      r.i += seq.offset_q;
    }
    typename K::VecF acc = *reinterpret_cast<typename K::VecF const*>(params.dq_accum_ptr + accum_row * kHeadDim + r.col);
    CUTE_UNROLL
    for (int c = 0; c < 8; ++c) acc[c] *= params.softmax_scale;
    auto* dq = const_cast<Element*>(
        K::template at<Element>(params.dq_ptr, r, params.dq_batch_stride, params.dq_row_stride, params.dq_head_stride));
    *reinterpret_cast<typename K::Vec*>(dq) = to_element(acc);
  }
}

}  // namespace fa_cute
