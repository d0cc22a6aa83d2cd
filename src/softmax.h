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

// The logits softcap (FwdParams::softcap_premul, nonzero): each score s becomes
// tanh(s * premul), the softmax then scaling by softcap. tanh from one exp2 and one
// reciprocal, 1 - 2 / (e^2|x| + 1) with x's sign: PTX's tanh.approx (2^-11 relative error)
// would be amplified by softcap in the exponent (a 50 softcap: logits off by ~0.02).
template <class TensorS>
__forceinline__ __device__ void apply_softcap(TensorS& acc_s, float premul) {
  CUTE_UNROLL
  for (int i = 0; i < cute::size(acc_s); ++i) {
    float const x = acc_s(i) * premul;
    float const e = exp2_approx(2.f * 1.4426950408889634f * fabsf(x));  // e^(2|x|), inf for large |x|
    acc_s(i) = copysignf(1.f - __fdividef(2.f, e + 1.f), x);
  }
}

// Online softmax over the key blocks of one query tile (FlashAttention-2): the running row
// max m and row sum l are kept in fp32 registers; O is rescaled by exp2((m_old - m_new) *
// scale_log2) whenever m grows and divided by l once, at the end.
// kLazyRescale: a warp keeps its rows' stale maxima, and skips rescaling O, while no row's
// max has grown by more than kLazyRescaleLog2 in log2 units (FlashAttention-4's trick):
// P then reaches at most 2^kLazyRescaleLog2 = 256, harmless for fp32 sums and for P in
// bf16/fp16 (and below e4m3's 448, the FP8 kernel's P), and the 2 x 64 FMULs per thread per key block that rescale O and the row sum
// are skipped in all but the first few blocks of typical rows. Stale maxima cost no
// accuracy: the final division uses the row sum accumulated against the same maxima as O.
// What must hold is that a row whose max did not move is scaled by exactly 1
// (correction_factor): a factor off by one rounding error, applied once per key block,
// compounds over a long row (docs/design.md, "The rescale factor").
template <int kNRows, bool kLazyRescale>
struct OnlineSoftmax {
  static constexpr float kLazyRescaleLog2 = 8.f;

  float row_max[kNRows];
  float row_sum[kNRows];  // this thread's partial sum; the quad reduces it in finalize()

  // The factors rescale_o() multiplies O's rows by; with kLazyRescale, rescale is false
  // (warp-uniform) when every factor is 1 because no row's maximum moved.
  struct Correction {
    cute::array<float, kNRows> factor;
    bool rescale;
  };

  // One step over a key block, for kernels whose O accumulator is free: acc_s, the scores
  // S = Q K^T, is overwritten with P = exp(S*scale - m) (unnormalised), and O and the row
  // sums are rescaled to the new maxima. kIsFirst: no previous block, nothing to rescale.
  template <bool kIsFirst, class TensorS, class TensorO>
  __forceinline__ __device__ void update(TensorS& acc_s, TensorO& acc_o, float scale_log2) {
    update_scores<kIsFirst>(acc_s, scale_log2, [&](Correction const& c) {
      if (!kIsFirst && c.rescale) rescale_o(acc_o, c.factor);
    });
  }

  // The same step for kernels that rescale O later, because a wgmma still accumulates into
  // it (the Hopper kernel's P V of the previous block runs under this block's softmax): the
  // row sums are rescaled here, O by rescale_o(correction.factor).
  template <bool kIsFirst, class TensorS>
  __forceinline__ __device__ Correction update_scores(TensorS& acc_s, float scale_log2) {
    return update_scores<kIsFirst>(acc_s, scale_log2, [](Correction const&) {});
  }

  // The step itself: new maxima and correction factors, then on_correction (which rescales
  // O where the caller can), then P. O is rescaled before the exponentials, as the row
  // sums are, so a kernel that rescales O here keeps the factors live only that long.
  template <bool kIsFirst, class TensorS, class OnCorrection>
  __forceinline__ __device__ Correction update_scores(TensorS& acc_s, float scale_log2, OnCorrection&& on_correction) {
    using namespace cute;
    Tensor scores = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (M,N)
    float block_max[kNRows];
    row_max_of(scores, block_max);
    Correction correction;
    correction.rescale = !kIsFirst;
    if constexpr (kLazyRescale && !kIsFirst) correction.rescale = must_rescale(block_max, scale_log2);
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      if constexpr (kIsFirst) {
        row_max[mi] = block_max[mi];
        row_sum[mi] = 0.f;
        correction.factor[mi] = 1.f;
      } else if (correction.rescale) {
        float const prev_max = row_max[mi];
        float const new_max = fmaxf(prev_max, block_max[mi]);
        row_max[mi] = new_max;
        correction.factor[mi] = correction_factor(prev_max, new_max, scale_log2);
        row_sum[mi] *= correction.factor[mi];
      } else {
        correction.factor[mi] = 1.f;  // kLazyRescale kept the stale maxima: nothing to scale
      }
    }
    on_correction(correction);
    exponentiate(scores, scale_log2);
    return correction;
  }

  // kLazyRescale: whether any row of the warp saw its maximum grow by more than
  // kLazyRescaleLog2 (log2 units); warp-uniform, so no divergence.
  __forceinline__ __device__ bool must_rescale(float const (&block_max)[kNRows], float scale_log2) const {
    bool grown = false;
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      // -inf - -inf is NaN and compares false: a row that has seen only -inf stays put.
      grown |= (block_max[mi] - row_max[mi]) * scale_log2 > kLazyRescaleLog2;
    }
    return __any_sync(0xffffffff, grown);
  }

  template <class TensorO>
  __forceinline__ __device__ static void rescale_o(TensorO& acc_o, cute::array<float, kNRows> const& correction) {
    using namespace cute;
    Tensor out = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (M,D)
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      CUTE_UNROLL
      for (int di = 0; di < size<1>(out); ++di) { out(mi, di) *= correction[mi]; }
    }
  }

  // Each row's maximum over a block of scores (M,N), reduced over the quad that holds the row.
  template <class TensorS>
  __forceinline__ __device__ static void row_max_of(TensorS const& scores, float (&block_max)[kNRows]) {
    using namespace cute;
    static_assert(decltype(size<0>(scores))::value == kNRows, "row count mismatch");
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      block_max[mi] = scores(mi, 0);
      CUTE_UNROLL
      for (int ni = 1; ni < size<1>(scores); ++ni) { block_max[mi] = fmaxf(block_max[mi], scores(mi, ni)); }
      block_max[mi] = quad_allreduce(block_max[mi], [](float a, float b) { return fmaxf(a, b); });
    }
  }

  // P = exp(S * scale - m) in place against the current row maxima, added to the row sums.
  template <class TensorS>
  __forceinline__ __device__ void exponentiate(TensorS& scores, float scale_log2) {
    using namespace cute;
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      float const max_scaled = scaled_max(row_max[mi], scale_log2);
      float sum = row_sum[mi];
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

  // The state of a tile with no visible key: finalize() then gives O = 0 and lse() -inf.
  __forceinline__ __device__ void reset() {
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      row_max[mi] = -INFINITY;
      row_sum[mi] = 0.f;
    }
  }

  // Natural-log log-sum-exp of row mi's scaled scores, after finalize() (which reduced the
  // row sums over the quad): -inf for a row that saw no key. The sum was accumulated
  // against row_max (stale maxima included, with kLazyRescale), so the pair is consistent.
  __forceinline__ __device__ float lse(int mi, float scale) const {
    float const sum = row_sum[mi];
    return sum == 0.f ? -INFINITY : row_max[mi] * scale + logf(sum);
  }

  // exp((prev_max - new_max) * scale), by which a row's sum and O shrink when its max grows
  // from prev_max to new_max (>= prev_max). From the difference, as FlashAttention-2 does:
  // prev_max * s - round(prev_max * s), which an FFMA forms from the product form
  // exp2(prev_max * s - new_max * s), is one rounding error of the product instead of 0,
  // so an unchanged max scaled by it drifts block after block. The select also gives 1 for
  // a row with no key yet (both -inf, whose difference is NaN); a row that sees its first
  // key (prev_max -inf) gets exp2(-inf) = 0.
  __forceinline__ __device__ static float correction_factor(float prev_max, float new_max, float scale_log2) {
    return new_max == prev_max ? 1.f : exp2_approx((prev_max - new_max) * scale_log2);
  }

  // A row that has seen only -inf keeps max -inf; using 0 then gives exp2(-inf) = 0 instead
  // of exp2(-inf - -inf) = NaN.
  __forceinline__ __device__ static float scaled_max(float max, float scale_log2) {
    return max == -INFINITY ? 0.f : max * scale_log2;
  }

  // Divides O by the row sums (and multiplies it by o_scale: the FP8 kernel's v_descale). A
  // row whose sum is 0 (every key masked) gets 0, not NaN.
  template <class TensorO>
  __forceinline__ __device__ void finalize(TensorO& acc_o, float o_scale = 1.f) {
    using namespace cute;
    Tensor out = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (M,D)
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      float const sum = quad_allreduce(row_sum[mi], [](float a, float b) { return a + b; });
      row_sum[mi] = sum;
      float const inv = sum == 0.f ? 0.f : o_scale / sum;
      CUTE_UNROLL
      for (int di = 0; di < size<1>(out); ++di) { out(mi, di) *= inv; }
    }
  }
};

}  // namespace fa_cute
