#pragma once

#include <cute/tensor.hpp>

#include "block_info.h"
#include "cute_utils.h"
#include "flash_params.h"
#include "sm80/kernel_traits_sm80.h"
#include "softmax.h"
#include "tile_scheduler.h"

namespace fa_cute {

// The main loop of the sm80-instruction kernel (FlashAttention-2's): for one query tile,
// S = Q K_j^T and O += P_j V_j over its key blocks, with the online softmax between them.
// Every thread both loads and computes. The Q tile stays in shared memory while K and V
// stream through in kBlockN-row blocks by cp.async: while the tensor cores compute
// S = Q K_j^T the copy engine brings V_j, and while they compute O += P_j V_j it brings the
// next K (Traits::kOverlapLoads). Operands go from shared memory to registers by ldmatrix
// (V transposed on the way), the MMAs are mma.sync.
//
// Loads of a ragged tile (the last query tile, the last key block) are predicated per row:
// rows past the end are zero-filled, never read. kMaskMode compiles out what a launch does
// not need (FwdMaskMode): kNone holds no masking or row predication code at all,
// kCausalEven masks the diagonal blocks but predicates no rows, kGeneral handles ragged
// tiles, causal or not, kSoftcapWindow as kGeneral with a softcap and/or a window. The
// causal and seqlen_k masks run only in the key blocks that need them (FwdKeyRange), in a
// loop of their own whose copy of the body holds the mask.
template <class Traits, FwdMaskMode kMaskMode>
struct Sm80FwdMainloop {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  // No ragged tile (no row predication) in kNone and kCausalEven; a softcap and windows in
  // kSoftcapWindow alone.
  static constexpr bool kEven = kMaskMode == FwdMaskMode::kNone || kMaskMode == FwdMaskMode::kCausalEven;
  static constexpr bool kExtras = kMaskMode == FwdMaskMode::kSoftcapWindow;
  // Variable-length batches run in the kSoftcapWindow variant too, the one that already pays
  // for run-time generality (FwdSeqlens: the other variants read no cu_seqlens).
  using Seqlens = FwdSeqlens</*kVarlen=*/kExtras>;

  // What the host passes is the problem itself (cp.async needs no descriptors; the launch
  // policy, Sm80FwdLaunch, hands it over unchanged).
  using Arguments = FwdParams;
  using Params = FwdParams;

  // Q, then one K and one V block (row-major tiles, swizzled: Traits::SmemLayoutQ/KV).
  struct SharedStorage {
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutQ>> smem_q;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>> smem_k;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>> smem_v;
  };

  using TileQ = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>;
  using TileKV = cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>;
  using TiledMma = typename Traits::TiledMma;
  using ThrMma = decltype(TiledMma{}.get_thread_slice(0));
  using SmemTiledCopyQ = decltype(cute::make_tiled_copy_A(typename Traits::SmemCopyAtom{}, TiledMma{}));
  using SmemTiledCopyK = decltype(cute::make_tiled_copy_B(typename Traits::SmemCopyAtom{}, TiledMma{}));
  using SmemTiledCopyV = decltype(cute::make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, TiledMma{}));
  using GmemTiledCopyQKV = typename Traits::GmemTiledCopyQKV;

  Params const& params;
  bool const is_causal;
  int const tidx;
  // Shared tiles and this thread's pieces of them: the global -> shared copies (cp.async,
  // 16 bytes), the MMA operand fragments and the shared -> register copies (ldmatrix).
  decltype(cute::make_tensor(cute::make_smem_ptr(static_cast<Element*>(nullptr)),
                             typename Traits::SmemLayoutQ{})) sQ;                        // (BLK_M,D)
  decltype(cute::make_tensor(cute::make_smem_ptr(static_cast<Element*>(nullptr)),
                             typename Traits::SmemLayoutKV{})) sK;                       // (BLK_N,D)
  decltype(cute::make_tensor(cute::make_smem_ptr(static_cast<Element*>(nullptr)),
                             typename Traits::SmemLayoutKV{})) sV;                       // (BLK_N,D)
  GmemTiledCopyQKV gmem_tiled_copy_QKV;
  decltype(GmemTiledCopyQKV{}.get_thread_slice(0)) gmem_thr_copy_QKV;
  TiledMma tiled_mma;
  ThrMma thr_mma;
  SmemTiledCopyQ smem_tiled_copy_Q;
  SmemTiledCopyK smem_tiled_copy_K;
  SmemTiledCopyV smem_tiled_copy_V;

  CUTE_DEVICE Sm80FwdMainloop(Params const& params_, bool is_causal_, SharedStorage& storage, int tidx_)
      : params(params_),
        is_causal(is_causal_),
        tidx(tidx_),
        sQ(cute::make_tensor(cute::make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQ{})),
        sK(cute::make_tensor(cute::make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutKV{})),
        sV(cute::make_tensor(cute::make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutKV{})),
        gmem_thr_copy_QKV(gmem_tiled_copy_QKV.get_thread_slice(tidx_)),
        thr_mma(tiled_mma.get_thread_slice(tidx_)),
        smem_tiled_copy_Q(cute::make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma)),
        smem_tiled_copy_K(cute::make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma)),
        smem_tiled_copy_V(cute::make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma)) {}

  CUTE_DEVICE FwdKeyRange key_range(FwdTileCoord const& c, Seqlens const& seq) const {
    return FwdKeyRange::of<kBlockM, kBlockN, Traits::kSplitKV, /*kWindow=*/kExtras>(c, params, seq);
  }

  // --- Load ---------------------------------------------------------------------------------
  // Global tiles: gmem_row_tile (64-bit base, 32-bit in-tile offsets).
  CUTE_DEVICE auto gQ(FwdTileCoord const& c, Seqlens const& seq) const {  // (BLK_M,D)
    return gmem_row_tile(static_cast<Element const*>(params.q_ptr),
                         c.bidb * params.q_batch_stride + c.bidh * params.q_head_stride,
                         seq.offset_q + c.m_block * kBlockM, params.q_row_stride, TileQ{});
  }
  CUTE_DEVICE auto gK(FwdTileCoord const& c, Seqlens const& seq, int n_block) const {  // (BLK_N,D)
    return gmem_row_tile(static_cast<Element const*>(params.k_ptr),
                         seq.bidb_k * params.k_batch_stride + c.bidh_k * params.k_head_stride,
                         seq.offset_k + n_block * kBlockN, params.k_row_stride, TileKV{});
  }
  CUTE_DEVICE auto gV(FwdTileCoord const& c, Seqlens const& seq, int n_block) const {  // (BLK_N,D)
    return gmem_row_tile(static_cast<Element const*>(params.v_ptr),
                         seq.bidb_k * params.v_batch_stride + c.bidh_k * params.v_head_stride,
                         seq.offset_k + n_block * kBlockN, params.v_row_stride, TileKV{});
  }

  // Whole tiles take the unpredicated copy; only a ragged last tile pays for row checks.
  // Coordinate tensors (identity tensors partitioned like the data) are made where they
  // are used, never kept across the main loop: every register there is taken.
  template <class TensorG, class TensorS, class TileShape>
  CUTE_DEVICE void load_rows(TensorG const& gX, TensorS const& sX, TileShape tile_shape, int num_rows) {
    using namespace cute;
    constexpr int tile_rows = decltype(size<0>(tile_shape))::value;
    Tensor src = gmem_thr_copy_QKV.partition_S(gX);  // (CPY,CPY_ROWS,CPY_D)
    Tensor dst = gmem_thr_copy_QKV.partition_D(sX);  // (CPY,CPY_ROWS,CPY_D)
    if (kEven || num_rows >= tile_rows) {
      copy(gmem_tiled_copy_QKV, src, dst);
    } else {
      copy_rows</*kZeroFillRest=*/true>(gmem_tiled_copy_QKV, src, dst,
                                        gmem_thr_copy_QKV.partition_S(make_identity_tensor(tile_shape)), num_rows);
    }
  }
  // Rows past the sequence's end are never read: in a varlen batch they are the next
  // sequence's.
  CUTE_DEVICE void load_q(FwdTileCoord const& c, Seqlens const& seq) {
    load_rows(gQ(c, seq), sQ, TileQ{}, seq.seqlen_q - c.m_block * kBlockM);
  }
  CUTE_DEVICE void load_k(FwdTileCoord const& c, Seqlens const& seq, int n) {
    if constexpr (kExtras) {
      if (params.page_table != nullptr) {
        return load_paged(params.k_ptr, params.k_batch_stride, params.k_row_stride, c.bidh_k * params.k_head_stride,
                          c, seq, n, sK);
      }
    }
    load_rows(gK(c, seq, n), sK, TileKV{}, seq.seqlen_k - n * kBlockN);
  }
  CUTE_DEVICE void load_v(FwdTileCoord const& c, Seqlens const& seq, int n) {
    if constexpr (kExtras) {
      if (params.page_table != nullptr) {
        return load_paged(params.v_ptr, params.v_batch_stride, params.v_row_stride, c.bidh_k * params.v_head_stride,
                          c, seq, n, sV);
      }
    }
    load_rows(gV(c, seq, n), sV, TileKV{}, seq.seqlen_k - n * kBlockN);
  }

  // A key block of a paged cache (FwdParams::page_table): its rows may lie in several pages
  // (page_size is any multiple of 16, below kBlockN or not), so each row this thread copies
  // is rebased from a virtual contiguous block onto its page (page stride = batch stride);
  // rows past the keys are zero-filled, never read. The row loop is not unrolled: unrolled,
  // ptxas hoisted every row's page lookup and the kSoftcapWindow variant spilled past its
  // budget (docs/perf-notes.md, Hopper kernel, open leads).
  template <class TensorS>
  CUTE_DEVICE void load_paged(void const* ptr, index_t page_stride, index_t row_stride, index_t head_offset,
                              FwdTileCoord const& c, Seqlens const& seq, int n_block, TensorS const& sX) {
    using namespace cute;
    Tensor src = gmem_thr_copy_QKV.partition_S(
        gmem_row_tile(static_cast<Element const*>(ptr), head_offset, 0, row_stride, TileKV{}));  // (CPY,CPY_ROWS,CPY_D)
    Tensor dst = gmem_thr_copy_QKV.partition_D(sX);                                              // (CPY,CPY_ROWS,CPY_D)
    Tensor coords = gmem_thr_copy_QKV.partition_S(make_identity_tensor(TileKV{}));              // (CPY,CPY_ROWS,CPY_D)
    int const num_rows = seq.seqlen_k - n_block * kBlockN;
    CUTE_NO_UNROLL
    for (int m = 0; m < size<1>(src); ++m) {
      int const row = get<0>(coords(0, m, 0));
      if (row < num_rows) {
        int const key = n_block * kBlockN + row;
        index_t const delta = index_t(seq.page_of(params, c.bidb, key)) * page_stride +
                              index_t(key % params.page_size - row) * row_stride;
        Tensor src_row = make_tensor(src(_, m, _).data() + delta, src(_, m, _).layout());
        copy(gmem_tiled_copy_QKV, src_row, dst(_, m, _));
      } else {
        clear(dst(_, m, _));
      }
    }
  }

  // A tile's Q and first K (with kOverlapLoads; else the main loop loads K with V), or
  // nothing for a tile that sees no key.
  CUTE_DEVICE void load_first(FwdTileCoord const& c) {
    Seqlens const seq(params, c.bidb);
    FwdKeyRange const keys = key_range(c, seq);
    if (keys.num_blocks() <= 0) return;
    load_q(c, seq);
    if constexpr (Traits::kOverlapLoads) { load_k(c, seq, keys.template block<Traits::kReverseKV>(0)); }
    cute::cp_async_fence();
  }

  // --- MMA ----------------------------------------------------------------------------------
  // One tile: the main loop over its key blocks into acc_o and softmax (cleared by the
  // caller), whose Q and first K load_first has issued. on_last_s() runs once the tile's
  // last S = Q K^T is computed (sQ and sK are free): a persistent block loads its next
  // tile's Q and first K there, under this tile's last P V and its epilogue; it also runs
  // for a tile that sees no key, after a barrier that orders the previous tile's reads of
  // shared memory before the loads.
  template <class TensorO, class Softmax, class OnLastS>
  CUTE_DEVICE void mma(FwdTileCoord const& coord, Seqlens const& seq, TensorO& acc_o, Softmax& softmax,
                      OnLastS&& on_last_s) {
    using namespace cute;
    constexpr bool kPrefetch = Traits::kRegPrefetch;
    // A flag that is a run-time bool or a compile-time cute::true_type / false_type.
    auto flag = [](auto f) -> bool {
      if constexpr (cute::is_same_v<decltype(f), bool>) {
        return f;
      } else {
        return decltype(f)::value;
      }
    };
    FwdKeyRange const keys = key_range(coord, seq);
    int const num_blocks = keys.num_blocks();

    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);  // (MMA,MMA_M,MMA_D)
    Tensor tSrK = thr_mma.partition_fragment_B(sK);  // (MMA,MMA_N,MMA_D)
    Tensor sVtNoSwizzle = make_tensor(sV.data(), typename Traits::SmemLayoutVtNoSwizzle{});  // (D,BLK_N)
    Tensor tOrVt = thr_mma.partition_fragment_B(sVtNoSwizzle);                              // (MMA,MMA_D,MMA_N)
    auto smem_thr_copy_Q = smem_tiled_copy_Q.get_thread_slice(tidx);
    auto smem_thr_copy_K = smem_tiled_copy_K.get_thread_slice(tidx);
    auto smem_thr_copy_V = smem_tiled_copy_V.get_thread_slice(tidx);
    Tensor tSsQ = smem_thr_copy_Q.partition_S(sQ);
    Tensor tSsK = smem_thr_copy_K.partition_S(sK);
    Tensor tOsVt = smem_thr_copy_V.partition_S(make_tensor(sV.data(), typename Traits::SmemLayoutVt{}));

    // is_first: no previous block, so nothing to rescale. is_masked: the block needs the
    // seqlen_k or causal mask. Both are compile-time, so that the loop over the blocks that
    // need neither (all but one or two per tile) holds no masking code: with the mask as a
    // run-time branch in the one loop, the persistent d=128 kernel ran out of registers and
    // lost speed (docs/perf-notes.md, Ampere-style kernel: tile choices).
    // is_last: no next key block; on_last_s goes here. In persistent mask-free kernels a
    // compile-time flag outside the first iteration, so that the loop over the middle
    // blocks neither tests it nor keeps the next tile's number in a register (ptxas had
    // rematerialised it in every iteration; docs/perf-history.md v4).
    auto iteration = [&](int i, auto is_first, auto is_masked, auto is_last) __attribute__((always_inline)) {
      int const n_block = keys.template block<Traits::kReverseKV>(i);
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA,MMA_M,MMA_N)
      clear(acc_s);
      if constexpr (Traits::kOverlapLoads) {
        cp_async_wait<0>();
        // K_j has landed, and every warp has finished reading V_{j-1}: sV may be refilled.
        __syncthreads();
        load_v(coord, seq, n_block);
        cp_async_fence();
      } else {
        // Every warp has finished with sK and sV; load both and wait: no overlap.
        __syncthreads();
        load_k(coord, seq, n_block);
        load_v(coord, seq, n_block);
        cp_async_fence();
        cp_async_wait<0>();
        __syncthreads();
      }

      gemm_ss<kPrefetch>(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma, smem_tiled_copy_Q, smem_tiled_copy_K,
                         smem_thr_copy_Q, smem_thr_copy_K);

      if constexpr (Traits::kOverlapLoads) {
        cp_async_wait<0>();
        // V_j has landed, and every warp has finished reading K_j (and, in the last
        // iteration, Q): sK (and sQ) may be refilled.
        __syncthreads();
        if (!flag(is_last)) {
          load_k(coord, seq, keys.template block<Traits::kReverseKV>(i + 1));
          cp_async_fence();
        }
      } else {
        __syncthreads();  // everyone has finished reading sK (and sQ in the last iteration)
      }
      if (flag(is_last)) on_last_s();

      // Before the mask, which writes -inf over what the softcap would map to -1. Only the
      // kSoftcapWindow variant has it (Sm80FwdLaunch::mask_mode sends softcap launches there).
      if constexpr (kExtras) {
        if (params.softcap_premul != 0.f) apply_softcap(acc_s, params.softcap_premul);
      }
      if (flag(is_masked)) {
        // Windows run in the kSoftcapWindow variant alone (Sm80FwdLaunch::mask_mode).
        mask_scores<kBlockM, kBlockN, kEven, /*kWindow=*/kExtras>(
            acc_s, thr_mma, params, seq, coord.m_block, n_block, is_causal);
      }
      softmax.template update<decltype(is_first)::value>(acc_s, acc_o, params.softmax_scale_log2);

      Tensor rP = convert_type<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));  // (MMA,MMA_M,MMA_N/2)
      gemm_rs<kPrefetch>(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_tiled_copy_V, smem_thr_copy_V);
    };

    if (num_blocks > 0) {
      // The first iteration needs no rescale of O; peeling it keeps that branch out of the
      // loops. It tests the mask at run time: one copy of the loop body fewer, outside the
      // loops. Persistent mask-free kernels also peel the last iteration (see is_last);
      // elsewhere that extra copy of the body made ptxas spill (in the masking variants
      // and the d=256 64-row tiles), so there is_last is a run-time test.
      using cute::false_type;
      using cute::true_type;
      int const last = num_blocks - 1;
      // From block i on: masked blocks up to first_masked_end, unmasked ones up to
      // unmasked_end, masked ones to the end. kSoftcapWindow (a window's left bound can mask
      // both ends) runs both masked runs through one copy of the masked body, the outer
      // loop going round at most twice: a second copy made ptxas spill. The other modes
      // have no second run (its bound folds: the loop after the unmasked one is dead), and
      // keep plain loops: the outer loop made ptxas spill there.
      auto masked_runs = [&](int i, int first_masked_end, int unmasked_end) __attribute__((always_inline)) {
        if constexpr (kExtras) {
          int masked_end = first_masked_end;
          while (true) {
            for (; i < masked_end; ++i) { iteration(i, cute::false_type{}, cute::true_type{}, i == last); }
            if (i >= num_blocks) break;
            for (; i < unmasked_end; ++i) { iteration(i, cute::false_type{}, cute::false_type{}, i == last); }
            masked_end = num_blocks;
          }
        } else {
          for (; i < first_masked_end; ++i) { iteration(i, cute::false_type{}, cute::true_type{}, i == last); }
          for (; i < unmasked_end; ++i) { iteration(i, cute::false_type{}, cute::false_type{}, i == last); }
          for (; i < num_blocks; ++i) { iteration(i, cute::false_type{}, cute::true_type{}, i == last); }
        }
      };
      if constexpr (kMaskMode == FwdMaskMode::kNone && Traits::kPersistent) {
        iteration(0, true_type{}, false_type{}, last == 0);
        if (last > 0) {
          for (int i = 1; i < last; ++i) { iteration(i, false_type{}, false_type{}, false_type{}); }
          iteration(last, false_type{}, false_type{}, true_type{});
        }
      } else if constexpr (kMaskMode == FwdMaskMode::kNone) {
        iteration(0, true_type{}, false_type{}, last == 0);
        for (int i = 1; i < num_blocks; ++i) { iteration(i, false_type{}, false_type{}, i == last); }
      } else if constexpr (!Traits::kReverseKV) {
        // The blocks that need a mask are the first n_left visited (a window's left bound)
        // and those from unmasked_end on (the tail, the causal diagonal, a window's right).
        // (Only kSoftcapWindow launches have a window: elsewhere the loop folds away.)
        int const n_left = kExtras ? keys.num_masked_first() : 0;
        int const unmasked_end = cute::max(n_left, keys.num_unmasked_first());
        iteration(0, true_type{}, n_left > 0 || unmasked_end == 0, last == 0);
        masked_runs(1, n_left, unmasked_end);
      } else {
        // Visited last to first, the blocks that need the right side's mask come first,
        // those that need a window's left bound last.
        int const n_masked = keys.num_masked_first_reversed();
        int const unmasked_end = kExtras ? cute::max(n_masked, num_blocks - keys.num_masked_last_reversed())
                                         : num_blocks;
        iteration(0, true_type{}, n_masked > 0 || unmasked_end == 0, last == 0);
        masked_runs(1, n_masked, unmasked_end);
      }
    } else {
      // No row sees a key: O = 0 and LSE = -inf. Nothing was loaded for this tile; the
      // barrier orders the previous tile's reads of shared memory (its sO, persistent)
      // before the epilogue's writes and the next tile's loads.
      softmax.reset();
      __syncthreads();
      on_last_s();
    }
  }
};

}  // namespace fa_cute
