#pragma once

#include <cute/tensor.hpp>

#include "block_info.h"
#include "flash_params.h"
#include "tile_scheduler.h"

// The part of a tile's epilogue that both kernel families share: O divided by the row sums,
// the LSE, and a split's partial result for the combine kernel (fwd_combine.h). Storing O
// itself is each family's own (sm80/epilogue_fwd_sm80.h: through shared memory or from
// registers; sm90/epilogue_fwd_sm90.h: stmatrix and a TMA store).

namespace fa_cute {

// Where split n_split of a tile whose first row is row_offset (in the (batch, nheads,
// seqlen_q) layout) keeps its rows of lse_accum, and, times head_dim, of o_accum.
CUTE_DEVICE index_t split_row_offset(FwdParams const& params, int n_split, index_t row_offset) {
  return index_t(n_split) * params.batch * params.nheads * params.seqlen_q + row_offset;
}

// One split's O (fp32, normalised by its own row sums) from a thread's accumulator
// fragment of the (kBlockM, kHeadDim) tile at o_accum (row-major), rows below num_rows.
// Plain stores straight from registers: split tiles are decode tiles of a few rows.
template <int kBlockM, int kHeadDim, class ThrMma, class TensorO>
CUTE_DEVICE void store_split_o(float* o_accum, ThrMma const& thr_mma, TensorO const& acc_o, int num_rows) {
  using namespace cute;
  Tensor gOaccum = make_tensor(make_gmem_ptr(o_accum), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                               Stride<Int<kHeadDim>, _1>{});                                      // (BLK_M,D)
  Tensor tOgOaccum = thr_mma.partition_C(gOaccum);                                                // (MMA,MMA_M,MMA_D)
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));  // (MMA,MMA_M,MMA_D)
  CUTE_STATIC_ASSERT_V(size(tOgOaccum) == size(acc_o));
  CUTE_UNROLL
  for (int i = 0; i < size(acc_o); ++i) {
    if (get<0>(tOcO(i)) < num_rows) tOgOaccum(i) = acc_o(i);
  }
}

// kSplitKV: the kernel was built to split keys (FwdParams::num_splits may exceed 1).
template <int kBlockM, int kHeadDim, bool kSplitKV>
struct FwdEpilogue {
  // Divides O (acc_o, this thread's fragment of the PV MMA thr_mma) by the row sums and
  // writes the tile's LSE where asked for. A split of a split-KV launch writes its O in
  // fp32 with its LSE to the accumulators instead, for the combine kernel to weigh by
  // exp(lse_split - lse); a split that saw no key writes O = 0 and LSE = -inf. Returns
  // whether the caller must still store O (false: the split's partial result is written).
  // score_descale, o_descale: an FP8 tile's q_descale * k_descale (in the scores' scale, so
  // in the LSE's) and v_descale (O's).
  template <class Softmax, class TensorO, class ThrMma, bool kVarlen>
  CUTE_DEVICE static bool finalize(Softmax& softmax, TensorO& acc_o, ThrMma const& thr_mma, FwdTileCoord const& coord,
                                   FwdSeqlens<kVarlen> const& seq, FwdParams const& params,
                                   float score_descale = 1.f, float o_descale = 1.f) {
    using namespace cute;
    softmax.finalize(acc_o, o_descale);
    int const num_rows = seq.seqlen_q - coord.m_block * kBlockM;  // < kBlockM: a ragged tail
    // This tile's first row in the LSE layout ((batch, nheads, seqlen_q); the splits' too,
    // which varlen launches never have).
    index_t const row_offset = seq.lse_index(params, coord.bidb, coord.bidh, coord.m_block * kBlockM);
    auto store_lse = [&](float* lse) {
      Tensor tScS_rc = score_coords<kBlockM, kHeadDim>(thr_mma);  // (M,D)
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(tScS_rc); ++mi) {
        // The 4 threads of a quad hold one row; the one holding column 0 writes it.
        int const row = get<0>(tScS_rc(mi, 0));
        if (get<1>(tScS_rc(mi, 0)) == 0 && row < num_rows) { lse[row] = softmax.lse(mi, params.softmax_scale * score_descale); }
      }
    };
    if constexpr (kSplitKV) {
      if (params.num_splits > 1) {
        index_t const split_row = split_row_offset(params, coord.n_split, row_offset);
        store_lse(params.lse_accum_ptr + split_row);
        store_split_o<kBlockM, kHeadDim>(params.o_accum_ptr + split_row * kHeadDim, thr_mma, acc_o, num_rows);
        return false;
      }
    }
    if (params.softmax_lse_ptr != nullptr) store_lse(params.softmax_lse_ptr + row_offset);
    return true;
  }
};

}  // namespace fa_cute
