#pragma once

#include <cute/tensor.hpp>

#include "cute_utils.h"
#include "epilogue_fwd.h"
#include "flash_params.h"
#include "sm80/kernel_traits_sm80.h"
#include "tile_scheduler.h"

namespace fa_cute {

// The end of an sm80-kernel tile: O / l and the LSE (FwdEpilogue, shared with the Hopper
// kernel), then O in bf16/fp16 to global memory, in one of two modes:
//   staged (default): through shared memory, so that each thread stores whole 16-byte rows
//     pieces; in Q's space, or, persistent, in a buffer of its own (the next tile's Q is
//     already loading into sQ), at the price of one barrier;
//   direct (Traits::kDirectOStore, ladder rung 7): from the accumulator registers straight
//     to global memory, 4 bytes (a pair of adjacent columns) at a time.
template <class Traits, bool kEven>
struct Sm80FwdEpilogue {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  // O needs shared memory of its own: a persistent block's next Q loads into sQ meanwhile.
  static constexpr bool kOwnSmem = Traits::kPersistent && !Traits::kDirectOStore;
  using TileO = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>;

  struct SharedStorageO {
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutO>> smem_o;
  };
  struct SharedStorageNone {};

  FwdParams const& params;

  CUTE_DEVICE explicit Sm80FwdEpilogue(FwdParams const& params_) : params(params_) {}

  // acc_o: this thread's fragment of the (kBlockM, kHeadDim) O accumulator of thr_mma.
  // smem_o: O's staging buffer (sQ's, or its own with kOwnSmem), whose previous readers
  // the main loop's barriers have ordered before this point.
  template <class Softmax, class TensorO, class TiledMma, bool kVarlen>
  CUTE_DEVICE void store(Softmax& softmax, TensorO& acc_o, TiledMma const& tiled_mma, FwdTileCoord const& coord,
                         FwdSeqlens<kVarlen> const& seq, Element* smem_o, int tidx) {
    using namespace cute;
    auto thr_mma = tiled_mma.get_thread_slice(tidx);
    if (!FwdEpilogue<kBlockM, kHeadDim, Traits::kSplitKV>::finalize(softmax, acc_o, thr_mma, coord, seq, params)) {
      return;
    }
    // < kBlockM: a ragged tail, whose rows past the end (a varlen batch: the next
    // sequence's) are not written.
    int const num_rows = seq.seqlen_q - coord.m_block * kBlockM;
    Tensor gO = gmem_row_tile(static_cast<Element*>(params.o_ptr),
                              coord.bidb * params.o_batch_stride + coord.bidh * params.o_head_stride,
                              seq.offset_q + coord.m_block * kBlockM, params.o_row_stride, TileO{});  // (BLK_M,D)
    Tensor rO = convert_type<Element>(acc_o);
    if constexpr (Traits::kDirectOStore) {
      Tensor tCgO = thr_mma.partition_C(gO);                              // (MMA,MMA_M,MMA_D)
      Tensor tCcO = thr_mma.partition_C(make_identity_tensor(TileO{}));  // (MMA,MMA_M,MMA_D)
      if (kEven || num_rows >= kBlockM) {
        copy(AutoVectorizingCopyWithAssumedAlignment<32>{}, rO, tCgO);
      } else {
        CUTE_UNROLL
        for (int i = 0; i < size(rO); ++i) {
          if (get<0>(tCcO(i)) < num_rows) tCgO(i) = rO(i);
        }
      }
    } else {
      Tensor sO = make_tensor(make_smem_ptr(smem_o), typename Traits::SmemLayoutO{});  // (BLK_M,D)
      auto smem_tiled_copy_O = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, tiled_mma);
      auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(tidx);
      copy(smem_tiled_copy_O, smem_thr_copy_O.retile_S(rO), smem_thr_copy_O.partition_D(sO));
      __syncthreads();
      typename Traits::GmemTiledCopyO gmem_tiled_copy_O;
      auto gmem_thr_copy_O = gmem_tiled_copy_O.get_thread_slice(tidx);
      Tensor tOsO = gmem_thr_copy_O.partition_S(sO);  // (CPY,CPY_M,CPY_D)
      Tensor tOgO = gmem_thr_copy_O.partition_D(gO);  // (CPY,CPY_M,CPY_D)
      Tensor tOrO = make_tensor<Element>(shape(tOgO));
      copy(gmem_tiled_copy_O, tOsO, tOrO);
      if (kEven || num_rows >= kBlockM) {
        copy(gmem_tiled_copy_O, tOrO, tOgO);
      } else {
        copy_rows</*kZeroFillRest=*/false>(gmem_tiled_copy_O, tOrO, tOgO,
                                           gmem_thr_copy_O.partition_D(make_identity_tensor(TileO{})), num_rows);
      }
    }
  }
};

}  // namespace fa_cute
