#pragma once

#include <cute/tensor.hpp>

#include "bwd_params.h"
#include "cute_utils.h"

namespace fa_cute {

// The backward's epilogue, shared by both families: a CTA's dK * softmax_scale and dV, from
// each thread's accumulator fragments (thr_mma: the dK/dV GEMMs' thread slice, whose C
// partition of the (BLK_N,D) tile the accumulators are), in the input dtype, for the key
// rows below seqlen_k (the batch entry's: BwdSeqlens), which start at row offset_k (a varlen
// sequence's first key). A whole tile goes out as pairs of adjacent columns (the accumulator
// layout of both mma.sync and wgmma), a ragged one element by element.
template <class Element, int kBlockN, int kHeadDim, class ThrMma, class Acc>
CUTE_DEVICE void store_dkdv(BwdParams const& params, ThrMma const& thr_mma, Acc& acc_dk, Acc const& acc_dv, int bidb,
                            int bidh_k, int n_block, int seqlen_k, int offset_k) {
  using namespace cute;
  using TileKV = Shape<Int<kBlockN>, Int<kHeadDim>>;
  CUTE_UNROLL
  for (int i = 0; i < size(acc_dk); ++i) acc_dk(i) *= params.softmax_scale;
  int const key_rows = seqlen_k - n_block * kBlockN;  // may exceed kBlockN
  Tensor cdKV = thr_mma.partition_C(make_identity_tensor(TileKV{}));
  auto store = [&](Acc const& acc, void* ptr, index_t batch_stride, index_t row_stride, index_t head_stride) {
    Tensor r = convert_type<Element>(acc);
    Tensor g = thr_mma.partition_C(gmem_row_tile(static_cast<Element*>(ptr), bidb * batch_stride + bidh_k * head_stride,
                                                 offset_k + n_block * kBlockN, row_stride, TileKV{}));
    if (key_rows >= kBlockN) {
      copy(AutoVectorizingCopyWithAssumedAlignment<32>{}, r, g);
    } else {
      CUTE_UNROLL
      for (int i = 0; i < size(r); ++i) {
        if (get<0>(cdKV(i)) < key_rows) g(i) = r(i);
      }
    }
  };
  store(acc_dk, params.dk_ptr, params.dk_batch_stride, params.dk_row_stride, params.dk_head_stride);
  store(acc_dv, params.dv_ptr, params.dv_batch_stride, params.dv_row_stride, params.dv_head_stride);
}

}  // namespace fa_cute
