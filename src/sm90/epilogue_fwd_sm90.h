#pragma once

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

#include "epilogue_fwd.h"
#include "flash_params.h"
#include "sm90/kernel_traits_sm90.h"
#include "sm90/named_barrier_sm90.h"
#include "tile_scheduler.h"

namespace fa_cute {

// The end of a Hopper-kernel tile, run by the consumer warpgroups: O / l and the LSE
// (FwdEpilogue, shared with the sm80 kernel), then O in bf16/fp16 to shared memory by
// stmatrix and to global memory by one TMA store of the tile, which drops the rows past
// seqlen_q. O is staged in Q's space (Traits::kOAliasesQ: each consumer warpgroup writes
// only its own rows, whose Q only its own retired S wgmmas read; the next tile's Q waits
// for the store) or in a buffer of its own (the next tile's Q loads under this tile's last
// P V and epilogue). A tile that sees no key writes zeros straight to global memory.
template <class Traits>
struct Sm90FwdEpilogue {
  using Element = typename Traits::ElementO;  // O's: bf16 in the FP8 kernel
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;

  // The TMA descriptor of O, built on the host (Sm90FwdLaunch::to_underlying_arguments).
  struct Params {
    typename Traits::TmaStoreO tma_o;
  };
  // O's buffer is part of the traits' layout (Traits::SharedStorage, kOAliasesQ).
  using SharedStorage = typename Traits::SharedStorage;

  FwdParams const& p;
  Params const& epilogue_params;
  SharedStorage& storage;
  int const tidx;  // among the consumer threads

  CUTE_DEVICE Sm90FwdEpilogue(FwdParams const& p_, Params const& epilogue_params_, SharedStorage& storage_, int tidx_)
      : p(p_), epilogue_params(epilogue_params_), storage(storage_), tidx(tidx_) {}

  CUTE_DEVICE Element* smem_o() {
    if constexpr (Traits::kOAliasesQ) {
      return storage.smem_q.data();
    } else {
      return storage.smem_o.data();
    }
  }

  // Finishes one tile; num_blocks: the key blocks it visited (0: it saw no key). Returns
  // whether the tile consumed a Q (the producer's and consumers' Q phase advances): a
  // split or a tile without keys did not.
  template <class Softmax, class TensorO, class TiledMmaPV, bool kMayBeVarlen>
  CUTE_DEVICE bool store(Softmax& softmax, TensorO& acc_o, TiledMmaPV const& tiled_mma_pv, FwdTileCoord const& coord,
                         FwdSeqlens<kMayBeVarlen> const& seq, int num_blocks) {
    using namespace cute;
    auto thr_mma_pv = tiled_mma_pv.get_thread_slice(tidx);
    // A split CTA has one tile (split-KV traits are never persistent, a static_assert of
    // the traits), so no next Q waits on it.
    // FP8: the tile's descales (1 elsewhere, which the compiler folds away).
    float const score_descale = Traits::kFp8 ? qk_descale(p, coord) : 1.f;
    float const o_descale = Traits::kFp8 ? descale_of(p.v_descale_ptr, p, coord) : 1.f;
    if (!FwdEpilogue<kBlockM, kHeadDim, Traits::kSplitKV>::finalize(softmax, acc_o, thr_mma_pv, coord, seq, p,
                                                                     score_descale, o_descale)) {
      return false;
    }
    int const num_rows = seq.seqlen_q - coord.m_block * kBlockM;  // < kBlockM: a ragged tail
    // The tile's first row of O (row_stride apart; 16-byte vectors along d).
    Element* const o = static_cast<Element*>(p.o_ptr) + coord.bidb * p.o_batch_stride + coord.bidh * p.o_head_stride +
                       (seq.offset_q + coord.m_block * kBlockM) * p.o_row_stride;
    constexpr int kVecs = kHeadDim / 8;  // 16-byte vectors per row
    if (num_blocks <= 0) {
      // sO may be sQ, which the producer may already be refilling for the next tile;
      // nothing waits on this tile.
      for (int idx = tidx; idx < kBlockM * kVecs; idx += Traits::kNumConsumerThreads) {
        int const row = idx / kVecs;
        if (row < num_rows) {
          *reinterpret_cast<uint4*>(o + row * p.o_row_stride + (idx % kVecs) * 8) = make_uint4(0, 0, 0, 0);
        }
      }
      return false;
    }
    Tensor sO = make_tensor(make_smem_ptr(smem_o()), typename Traits::SmemLayoutO{});  // (BLK_M,D)
    auto smem_tiled_copy_O = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, tiled_mma_pv);
    auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(tidx);
    Tensor rO = convert_type<Element>(acc_o);
    if constexpr (!Traits::kOAliasesQ) {
      // sO is reused tile after tile: the previous tile's store must have read it.
      if (tidx == 0) tma_store_wait<0>();
      cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads, static_cast<uint32_t>(Sm90Barrier::kOStaged));
    }
    copy(smem_tiled_copy_O, smem_thr_copy_O.retile_S(rO), smem_thr_copy_O.partition_D(sO));
    // stmatrix writes through the generic proxy, TMA reads through the async proxy: each
    // writer fences its writes for the async proxy before the barrier that hands the tile
    // to the storing thread.
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads, static_cast<uint32_t>(Sm90Barrier::kOStaged));
    if (kMayBeVarlen && seq.varlen && num_rows < kBlockM) {
      // A varlen sequence's ragged last tile: a TMA store would write its rows past the
      // sequence's end, which are the next sequence's. The consumers copy the rows below
      // num_rows from sO instead, 16 bytes at a time.
      for (int idx = tidx; idx < num_rows * kVecs; idx += Traits::kNumConsumerThreads) {
        int const row = idx / kVecs;
        int const col = (idx % kVecs) * 8;
        cute::array<Element, 8> vec;
        CUTE_UNROLL
        for (int j = 0; j < 8; ++j) vec[j] = sO(row, col + j);
        *reinterpret_cast<cute::array<Element, 8>*>(o + row * p.o_row_stride + col) = vec;
      }
      if constexpr (Traits::kOAliasesQ) {
        // sO is sQ: the next tile's Q may load once every consumer has read it.
        cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads, static_cast<uint32_t>(Sm90Barrier::kOStaged));
        if (tidx == 0) storage.barrier_q_empty.arrive();
      }
      return true;
    }
    if (tidx == 0) {
      Tensor mO = epilogue_params.tma_o.get_tma_tensor(
          make_shape(seq.varlen ? p.total_q : p.seqlen_q, p.head_dim, p.nheads, seq.varlen ? 1 : p.batch));
      Tensor gO = local_tile(domain_offset(make_coord(seq.offset_q, _0{}), mO(_, _, coord.bidh, seq.varlen ? 0 : coord.bidb)),
                             Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(coord.m_block, _0{}));  // (BLK_M,D)
      auto [tOgO, tOsO] =
          tma_partition(epilogue_params.tma_o, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sO), group_modes<0, 2>(gO));
      copy(epilogue_params.tma_o, tOsO, tOgO);
      tma_store_arrive();
      if constexpr (Traits::kOAliasesQ) {
        // sO is sQ: the next tile's Q may load once the store has read it.
        tma_store_wait<0>();
        storage.barrier_q_empty.arrive();
      }
    }
    return true;
  }

  // The CTA's shared memory must outlive the last store's reads of it.
  CUTE_DEVICE void finish() const {
    if (tidx == 0) cute::tma_store_wait<0>();
  }
};

}  // namespace fa_cute
