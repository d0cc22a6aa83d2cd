#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "cute_utils.h"

namespace fa_cute {

// In the SM80 accumulator layout the 8 columns of a row's 16x8 tile are spread over the
// 4 threads of a quad (lanes 4r..4r+3), so a row reduction ends with two shuffles.
template <class Op>
__forceinline__ __device__ float quad_allreduce(float x, Op op) {
  x = op(x, __shfl_xor_sync(0xffffffff, x, 2));
  x = op(x, __shfl_xor_sync(0xffffffff, x, 1));
  return x;
}

// Online softmax over the key blocks of one query tile (FlashAttention-2): the running row
// max m and row sum l are kept in fp32 registers; O is rescaled by exp2((m_old - m_new) *
// scale_log2) whenever m grows and divided by l once, at the end.
template <int kNRows>
struct OnlineSoftmax {
  float row_max[kNRows];
  float row_sum[kNRows];  // this thread's partial sum; the quad reduces it in finalize()

  // acc_s: scores S = Q K^T of one key block, overwritten with P = exp(S*scale - m) (unnormalised).
  // kIsFirst: no previous block, so nothing to rescale.
  template <bool kIsFirst, class TensorS, class TensorO>
  __forceinline__ __device__ void update(TensorS& acc_s, TensorO& acc_o, float scale_log2) {
    using namespace cute;
    Tensor scores = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (M,N)
    Tensor out = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));      // (M,D)
    static_assert(decltype(size<0>(scores))::value == kNRows, "row count mismatch");
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      float block_max = scores(mi, 0);
      CUTE_UNROLL
      for (int ni = 1; ni < size<1>(scores); ++ni) { block_max = fmaxf(block_max, scores(mi, ni)); }
      block_max = quad_allreduce(block_max, [](float a, float b) { return fmaxf(a, b); });
      float const prev_max = kIsFirst ? -INFINITY : row_max[mi];
      float const new_max = fmaxf(prev_max, block_max);
      row_max[mi] = new_max;
      // A row that has seen only -inf keeps max -inf; using 0 then gives exp2(-inf) = 0
      // instead of exp2(-inf - -inf) = NaN.
      float const max_scaled = new_max == -INFINITY ? 0.f : new_max * scale_log2;
      if (!kIsFirst) {
        float const correction = exp2_approx(prev_max * scale_log2 - max_scaled);
        row_sum[mi] *= correction;
        CUTE_UNROLL
        for (int di = 0; di < size<1>(out); ++di) { out(mi, di) *= correction; }
      }
      float sum = kIsFirst ? 0.f : row_sum[mi];
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(scores); ++ni) {
        // One FFMA + one MUFU.EX2 per score: the scale is folded into the exponent.
        float const p = exp2_approx(scores(mi, ni) * scale_log2 - max_scaled);
        scores(mi, ni) = p;
        sum += p;
      }
      row_sum[mi] = sum;
    }
  }

  // Divides O by the row sums. A row whose sum is 0 (every key masked) gets 0, not NaN.
  template <class TensorO>
  __forceinline__ __device__ void finalize(TensorO& acc_o) {
    using namespace cute;
    Tensor out = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (M,D)
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      float const sum = quad_allreduce(row_sum[mi], [](float a, float b) { return a + b; });
      row_sum[mi] = sum;
      float const inv = sum == 0.f ? 0.f : 1.f / sum;
      CUTE_UNROLL
      for (int di = 0; di < size<1>(out); ++di) { out(mi, di) *= inv; }
    }
  }
};

}  // namespace fa_cute
