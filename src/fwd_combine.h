#pragma once

#include <cmath>

#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>

#include "flash_params.h"

namespace fa_cute {

// Rows of the combine kernel per 128-thread block: one warp per query row.
constexpr int kCombineRowsPerBlock = 4;

// Split-KV merge: each split s wrote, for every query row, its O_s normalised by its own
// row sum and lse_s = log of that sum (FwdParams). The row's softmax over all keys is then
//   lse = log sum_s exp(lse_s),   O = sum_s exp(lse_s - lse) O_s,
// computed in fp32. One warp per row: the lanes reduce the splits' LSEs with shuffles, then
// each lane owns kHeadDim / 32 adjacent columns. A split that saw no key has lse_s = -inf
// and weight 0; a row that no split saw gets O = 0 and LSE -inf.
template <class Element, int kHeadDim>
__global__ void __launch_bounds__(32 * kCombineRowsPerBlock)
    fwd_combine_kernel(__grid_constant__ FwdParams const params) {
  static_assert(kHeadDim % 32 == 0, "each lane owns whole columns");
  constexpr int kColsPerLane = kHeadDim / 32;
  index_t const num_rows = index_t(params.batch) * params.nheads * params.seqlen_q;
  index_t const row = index_t(blockIdx.x) * kCombineRowsPerBlock + threadIdx.x / 32;
  int const lane = threadIdx.x % 32;
  if (row >= num_rows) return;
  float const* lse_accum = params.lse_accum_ptr + row;  // split s at lse_accum[s * num_rows]

  float lse_max = -INFINITY;
  for (int s = lane; s < params.num_splits; s += 32) lse_max = fmaxf(lse_max, lse_accum[s * num_rows]);
  for (int offset = 16; offset > 0; offset /= 2) lse_max = fmaxf(lse_max, __shfl_xor_sync(0xffffffff, lse_max, offset));
  float sum = 0.f;
  if (lse_max != -INFINITY) {
    for (int s = lane; s < params.num_splits; s += 32) sum += expf(lse_accum[s * num_rows] - lse_max);
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  float const lse = sum == 0.f ? -INFINITY : lse_max + logf(sum);

  float acc[kColsPerLane] = {};
  for (int s = 0; s < params.num_splits; ++s) {
    float const lse_s = lse_accum[s * num_rows];
    if (lse_s == -INFINITY) continue;  // warp-uniform: every lane reads the same value
    float const weight = expf(lse_s - lse);
    float const* o_s = params.o_accum_ptr + (index_t(s) * num_rows + row) * kHeadDim + lane * kColsPerLane;
    CUTE_UNROLL
    for (int c = 0; c < kColsPerLane; ++c) acc[c] += weight * o_s[c];
  }

  int const q_row = int(row % params.seqlen_q);
  index_t const bh = row / params.seqlen_q;
  int const bidh = int(bh % params.nheads);
  int const bidb = int(bh / params.nheads);
  Element* out = static_cast<Element*>(params.o_ptr) + bidb * params.o_batch_stride + q_row * params.o_row_stride +
                 bidh * params.o_head_stride + lane * kColsPerLane;
  CUTE_UNROLL
  for (int c = 0; c < kColsPerLane; ++c) out[c] = Element(acc[c]);
  if (params.softmax_lse_ptr != nullptr && lane == 0) params.softmax_lse_ptr[row] = lse;
}

// Launches the merge of params.num_splits partial results into params.o_ptr (and
// params.softmax_lse_ptr); both kernels' split-KV paths end with it.
template <class Element, int kHeadDim>
void launch_fwd_combine(FwdParams const& params, cudaStream_t stream) {
  long long const rows = (long long)params.batch * params.nheads * params.seqlen_q;
  long long const blocks = (rows + kCombineRowsPerBlock - 1) / kCombineRowsPerBlock;
  fwd_combine_kernel<Element, kHeadDim>
      <<<dim3(static_cast<unsigned>(blocks)), 32 * kCombineRowsPerBlock, 0, stream>>>(params);
}

}  // namespace fa_cute
