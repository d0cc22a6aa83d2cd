#pragma once

#include <cute/tensor.hpp>

#include "cute_utils.h"
#include "flash_params.h"
#include "fwd_combine.h"
#include "fwd_kernel_traits.h"
#include "fwd_tile_coord.h"
#include "softmax.h"

namespace fa_cute {

// FlashAttention-2 forward on sm80 instructions. A tile is a (kBlockM x d) block of O for
// one (batch, head): its Q tile stays in shared memory while K and V stream through in
// kBlockN-row blocks. Loads are cp.async: while the tensor cores compute S = Q K_j^T the
// copy engine brings V_j, and while they compute O += P_j V_j it brings the next K.
// A persistent block (Traits::kPersistent) loops over tiles and, once the last S of a tile
// is computed, already loads the next tile's Q and first K under this tile's last P V and
// its O store: the per-tile load latency that a single resident block per SM otherwise
// exposes.
// Any seqlen_q and seqlen_k: the last query tile and the last key block may be ragged.
// Their loads are predicated per row (rows past the end are zero-filled, never read) and
// the stores of O and the LSE skip rows past seqlen_q. Causal masking and the seqlen_k
// mask are applied only to the key blocks that need them (FwdKeyRange): those blocks run
// in their own loop, whose copy of the body holds the mask.
//
// kMaskMode (FwdMaskMode) compiles out what a launch does not need: kNone (non-causal,
// seqlen_q a multiple of kBlockM and seqlen_k of kBlockN) holds no masking or row
// predication code at all; kCausalEven masks the diagonal blocks but predicates no rows;
// kGeneral handles ragged tiles, causal or not. The general kernel runs even non-causal
// shapes slower, though its extra code never executes there: ptxas gives its main loop a
// worse register allocation and schedule (docs/perf-notes.md, Ampere-style kernel: tile choices).
template <class Traits, FwdMaskMode kMaskMode>
// __launch_bounds__ asks for no more than one resident block: forcing 3 blocks per SM on
// the 64-row decode tile (168 registers) made decode slower (docs/perf-notes.md, Ampere-style kernel: tile choices).
__global__ void __launch_bounds__(Traits::kNThreads)
    fwd_kernel_sm80(__grid_constant__ FwdParams const params) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr bool kPrefetch = Traits::kRegPrefetch;
  constexpr bool kEven = kMaskMode != FwdMaskMode::kGeneral;  // no ragged tile: no row predication
  // A flag that is a run-time bool or a compile-time cute::true_type / false_type.
  auto flag = [](auto f) -> bool {
    if constexpr (cute::is_same_v<decltype(f), bool>) {
      return f;
    } else {
      return decltype(f)::value;
    }
  };

  int const tidx = threadIdx.x;
  // Compile-time where the mask mode decides it (kNone: never causal; kCausalEven: always).
  bool const is_causal = kMaskMode == FwdMaskMode::kGeneral ? params.is_causal : kMaskMode == FwdMaskMode::kCausalEven;
  int const num_m_blocks = (params.seqlen_q + kBlockM - 1) / kBlockM;
  int const num_tiles = num_m_blocks * params.nheads * params.batch * max(params.num_splits, 1);

  // --- Global tiles -------------------------------------------------------------------------
  // Tile base pointers are computed in 64 bits (tensors beyond 2^31 elements); offsets
  // inside a tile use a 32-bit row stride (the host checks row_stride * block < 2^31).
  // Holding 64-bit in-tile offsets for every copy spilled registers in the 128-row tiles.
  auto row_tile = [](auto* base, index_t offset, int row0, index_t row_stride, auto tile_shape) {
    return make_tensor(make_gmem_ptr(base + offset + row0 * row_stride), tile_shape,
                       make_stride(int(row_stride), _1{}));
  };
  using TileQ = Shape<Int<kBlockM>, Int<kHeadDim>>;
  using TileKV = Shape<Int<kBlockN>, Int<kHeadDim>>;
  auto gQ = [&](FwdTileCoord const& c) {  // (BLK_M,D)
    return row_tile(static_cast<Element const*>(params.q_ptr),
                    c.bidb * params.q_batch_stride + c.bidh * params.q_head_stride,
                    c.m_block * kBlockM, params.q_row_stride, TileQ{});
  };
  auto gK = [&](FwdTileCoord const& c, int n_block) {  // (BLK_N,D)
    return row_tile(static_cast<Element const*>(params.k_ptr),
                    c.bidb * params.k_batch_stride + c.bidh_k * params.k_head_stride,
                    n_block * kBlockN, params.k_row_stride, TileKV{});
  };
  auto gV = [&](FwdTileCoord const& c, int n_block) {  // (BLK_N,D)
    return row_tile(static_cast<Element const*>(params.v_ptr),
                    c.bidb * params.v_batch_stride + c.bidh_k * params.v_head_stride,
                    n_block * kBlockN, params.v_row_stride, TileKV{});
  };
  auto gO = [&](FwdTileCoord const& c) {  // (BLK_M,D)
    return row_tile(static_cast<Element*>(params.o_ptr),
                    c.bidb * params.o_batch_stride + c.bidh * params.o_head_stride,
                    c.m_block * kBlockM, params.o_row_stride, TileQ{});
  };
  auto key_range = [&](FwdTileCoord const& c) { return FwdKeyRange::of<kBlockM, kBlockN, Traits::kSplitKV>(c, params); };

  // --- Shared tensors ---------------------------------------------------------------------
  extern __shared__ __align__(128) char smem[];
  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)),
                          typename Traits::SmemLayoutQ{});                               // (BLK_M,D)
  Tensor sK = make_tensor(sQ.data() + size(sQ), typename Traits::SmemLayoutKV{});         // (BLK_N,D)
  Tensor sV = make_tensor(sK.data() + size(sK), typename Traits::SmemLayoutKV{});         // (BLK_N,D)
  Tensor sVt = make_tensor(sV.data(), typename Traits::SmemLayoutVt{});                   // (D,BLK_N)
  Tensor sVtNoSwizzle = make_tensor(sV.data(), typename Traits::SmemLayoutVtNoSwizzle{}); // (D,BLK_N)
  Tensor sO = make_tensor(Traits::kPersistent && !Traits::kDirectOStore ? sV.data() + size(sV) : sQ.data(),
                          typename Traits::SmemLayoutO{});                               // (BLK_M,D)

  // --- Global -> shared copies (cp.async, 16 bytes) --------------------------------------------
  typename Traits::GmemTiledCopyQKV gmem_tiled_copy_QKV;
  auto gmem_thr_copy_QKV = gmem_tiled_copy_QKV.get_thread_slice(tidx);
  Tensor tQsQ = gmem_thr_copy_QKV.partition_D(sQ);  // (CPY,CPY_M,CPY_D)
  Tensor tKsK = gmem_thr_copy_QKV.partition_D(sK);  // (CPY,CPY_N,CPY_D)
  Tensor tVsV = gmem_thr_copy_QKV.partition_D(sV);  // (CPY,CPY_N,CPY_D)
  // Whole tiles take the unpredicated copy; only a ragged last tile pays for row checks.
  // Coordinate tensors (identity tensors partitioned like the data) are made where they
  // are used, never kept across the main loop: every register there is taken.
  auto load_rows = [&](auto const& src, auto& dst, auto tile_shape, int num_rows) {
    constexpr int tile_rows = decltype(size<0>(tile_shape))::value;
    if (kEven || num_rows >= tile_rows) {
      copy(gmem_tiled_copy_QKV, src, dst);
    } else {
      copy_rows</*kZeroFillRest=*/true>(gmem_tiled_copy_QKV, src, dst,
                                        gmem_thr_copy_QKV.partition_S(make_identity_tensor(tile_shape)), num_rows);
    }
  };
  auto load_Q = [&](FwdTileCoord const& c) {
    load_rows(gmem_thr_copy_QKV.partition_S(gQ(c)), tQsQ, TileQ{}, params.seqlen_q - c.m_block * kBlockM);
  };
  auto load_K = [&](FwdTileCoord const& c, int n) {
    load_rows(gmem_thr_copy_QKV.partition_S(gK(c, n)), tKsK, TileKV{}, params.seqlen_k - n * kBlockN);
  };
  auto load_V = [&](FwdTileCoord const& c, int n) {
    load_rows(gmem_thr_copy_QKV.partition_S(gV(c, n)), tVsV, TileKV{}, params.seqlen_k - n * kBlockN);
  };
  // A tile's Q and first K (with kOverlapLoads; else the main loop loads K with V), or
  // nothing for a tile that sees no key.
  auto load_first = [&](FwdTileCoord const& c) {
    FwdKeyRange const keys = key_range(c);
    if (keys.num_blocks() <= 0) return;
    load_Q(c);
    if constexpr (Traits::kOverlapLoads) { load_K(c, keys.template block<Traits::kReverseKV>(0)); }
    cp_async_fence();
  };

  // --- MMA fragments and shared -> register copies (ldmatrix) ---------------------------------
  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tidx);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);             // (MMA,MMA_M,MMA_D)
  Tensor tSrK = thr_mma.partition_fragment_B(sK);             // (MMA,MMA_N,MMA_D)
  Tensor tOrVt = thr_mma.partition_fragment_B(sVtNoSwizzle);  // (MMA,MMA_D,MMA_N)

  auto smem_tiled_copy_Q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_Q = smem_tiled_copy_Q.get_thread_slice(tidx);
  Tensor tSsQ = smem_thr_copy_Q.partition_S(sQ);
  auto smem_tiled_copy_K = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_K = smem_tiled_copy_K.get_thread_slice(tidx);
  Tensor tSsK = smem_thr_copy_K.partition_S(sK);
  auto smem_tiled_copy_V = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
  auto smem_thr_copy_V = smem_tiled_copy_V.get_thread_slice(tidx);
  Tensor tOsVt = smem_thr_copy_V.partition_S(sVt);

  auto smem_tiled_copy_O = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, tiled_mma);
  auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(tidx);
  Tensor taccOsO = smem_thr_copy_O.partition_D(sO);
  typename Traits::GmemTiledCopyO gmem_tiled_copy_O;
  auto gmem_thr_copy_O = gmem_tiled_copy_O.get_thread_slice(tidx);
  Tensor tOsO = gmem_thr_copy_O.partition_S(sO);  // (CPY,CPY_M,CPY_D)

  // (row, column) in the tile of each accumulator element of S, viewed as rows x columns
  // like the softmax views it; O's rows are the same rows.
  auto score_coords = [&]() {
    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));  // (MMA,MMA_M,MMA_N)
    return make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));                           // (M,N)
  };

  // -inf for the scores of key block n_block that row r may not see: columns at or past
  // seqlen_k, and causal ones past r + causal_offset.
  auto mask_scores = [&](auto& acc_s, int m_block, int n_block) {
    // Even launches have no column past seqlen_k; kCausalEven is causal by construction.
    apply_mask(make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout())), score_coords(),
               kEven ? kBlockN : params.seqlen_k - n_block * kBlockN,
               is_causal,
               m_block * kBlockM + params.causal_offset - n_block * kBlockN);
  };

  // One tile: the main loop over key blocks, then O / l through shared memory to global,
  // and the LSE. next_tile >= 0 (persistent blocks): its Q and first K are loaded once this
  // tile's last S = Q K^T is done, i.e. as soon as sQ and sK are free.
  auto run_tile = [&](FwdTileCoord const& coord, int next_tile) __attribute__((always_inline)) {
    FwdKeyRange const keys = key_range(coord);
    int const num_blocks = keys.num_blocks();
    Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // (MMA,MMA_M,MMA_D)
    clear(acc_o);
    constexpr int kNRows = decltype(size<1>(acc_o))::value * 2;  // 2 rows per 16x8 tile
    OnlineSoftmax<kNRows, Traits::kLazyRescale> softmax;

    // is_first: no previous block, so nothing to rescale. is_masked: the block needs the
    // seqlen_k or causal mask. Both are compile-time, so that the loop over the blocks that
    // need neither (all but one or two per tile) holds no masking code: with the mask as a
    // run-time branch in the one loop, the persistent d=128 kernel ran out of registers and
    // lost speed (docs/perf-notes.md, Ampere-style kernel: tile choices).
    // is_last: no next key block; the persistent next tile's first loads go here. In
    // persistent mask-free kernels a compile-time flag outside the first iteration, so
    // that the loop over the middle blocks neither tests it nor keeps the next tile's
    // number in a register (ptxas had rematerialised it: 10-15 integer instructions in
    // every iteration; docs/perf-history.md v4).
    auto iteration = [&](int i, auto is_first, auto is_masked, auto is_last) __attribute__((always_inline)) {
      int const n_block = keys.template block<Traits::kReverseKV>(i);
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA,MMA_M,MMA_N)
      clear(acc_s);
      if constexpr (Traits::kOverlapLoads) {
        cp_async_wait<0>();
        // K_j has landed, and every warp has finished reading V_{j-1}: sV may be refilled.
        __syncthreads();
        load_V(coord, n_block);
        cp_async_fence();
      } else {
        // Every warp has finished with sK and sV; load both and wait: no overlap.
        __syncthreads();
        load_K(coord, n_block);
        load_V(coord, n_block);
        cp_async_fence();
        cp_async_wait<0>();
        __syncthreads();
      }

      gemm_ss<kPrefetch>(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma, smem_tiled_copy_Q,
                         smem_tiled_copy_K, smem_thr_copy_Q, smem_thr_copy_K);

      if constexpr (Traits::kOverlapLoads) {
        cp_async_wait<0>();
        // V_j has landed, and every warp has finished reading K_j (and, in the last
        // iteration, Q): sK (and sQ) may be refilled.
        __syncthreads();
        if (!flag(is_last)) {
          load_K(coord, keys.template block<Traits::kReverseKV>(i + 1));
          cp_async_fence();
        }
      } else {
        __syncthreads();  // everyone has finished reading sK (and sQ in the last iteration)
      }
      if constexpr (Traits::kPersistent) {
        if (flag(is_last) && next_tile >= 0) { load_first(FwdTileCoord(next_tile, num_m_blocks, params, is_causal)); }
      }

      if (flag(is_masked)) { mask_scores(acc_s, coord.m_block, n_block); }
      softmax.template update<decltype(is_first)::value>(acc_s, acc_o, params.softmax_scale_log2);

      Tensor rP = convert_type<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));  // (MMA,MMA_M,MMA_N/2)
      gemm_rs<kPrefetch>(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_tiled_copy_V, smem_thr_copy_V);
    };

    if (num_blocks > 0) {
      // The first iteration needs no rescale of O; peeling it keeps that branch out of the
      // loops. Masked blocks are the last ones visited in forward order, the first in reverse.
      using cute::false_type;
      using cute::true_type;
      // The first iteration tests the mask at run time: one copy of the loop body fewer,
      // outside the loops. Persistent mask-free kernels also peel the last iteration (see
      // is_last); elsewhere that extra copy of the body made ptxas spill (in the masking
      // variants and the d=256 64-row tiles), so there is_last is a run-time
      // test.
      int const last = num_blocks - 1;
      if constexpr (kMaskMode == FwdMaskMode::kNone && Traits::kPersistent) {
        iteration(0, true_type{}, false_type{}, last == 0);
        if (last > 0) {
          for (int i = 1; i < last; ++i) { iteration(i, false_type{}, false_type{}, false_type{}); }
          iteration(last, false_type{}, false_type{}, true_type{});
        }
      } else if constexpr (kMaskMode == FwdMaskMode::kNone) {
        iteration(0, true_type{}, false_type{}, last == 0);
        for (int i = 1; i < num_blocks; ++i) { iteration(i, false_type{}, false_type{}, i == last); }
      } else {
        // The blocks that need a mask: the last ones visited in forward order, the first
        // ones in reverse.
        int const n_first = Traits::kReverseKV
                                ? max(0, min(keys.n_block_max - keys.n_block_mask_start, num_blocks))
                                : max(0, min(keys.n_block_mask_start - keys.n_block_min, num_blocks));
        iteration(0, true_type{}, Traits::kReverseKV ? n_first > 0 : n_first == 0, last == 0);
        int i = 1;
        if constexpr (!Traits::kReverseKV) {
          for (; i < n_first; ++i) { iteration(i, false_type{}, false_type{}, i == last); }
          for (; i < num_blocks; ++i) { iteration(i, false_type{}, true_type{}, i == last); }
        } else {
          for (; i < n_first; ++i) { iteration(i, false_type{}, true_type{}, i == last); }
          for (; i < num_blocks; ++i) { iteration(i, false_type{}, false_type{}, i == last); }
        }
      }
    } else {
      // No row sees a key: O = 0 and LSE = -inf. Nothing was loaded for this tile; the
      // barrier orders the previous tile's reads of sO (persistent) before the writes below.
      softmax.reset();
      __syncthreads();
      if constexpr (Traits::kPersistent) {
        if (next_tile >= 0) { load_first(FwdTileCoord(next_tile, num_m_blocks, params, is_causal)); }
      }
    }

    // --- Epilogue: O / l, to bf16/fp16, through shared memory to 16-byte global stores -------
    softmax.finalize(acc_o);
    int const num_rows = params.seqlen_q - coord.m_block * kBlockM;  // < kBlockM: a ragged tail
    // Row offset of this tile's first row in the (batch, nheads, seqlen_q) LSE layout.
    index_t const row_offset = (index_t(coord.bidb) * params.nheads + coord.bidh) * params.seqlen_q +
                               coord.m_block * kBlockM;
    auto store_lse = [&](float* lse) {
      Tensor tScS_rc = score_coords();  // (M,N)
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi) {
        // The 4 threads of a quad hold one row; the one holding column 0 writes it.
        int const row = get<0>(tScS_rc(mi, 0));
        if (get<1>(tScS_rc(mi, 0)) == 0 && row < num_rows) { lse[row] = softmax.lse(mi, params.softmax_scale); }
      }
    };
    if (Traits::kSplitKV && params.num_splits > 1) {
      // Split-KV: this split's O (fp32, normalised by its own row sums) and LSE go to the
      // accumulators; the combine kernel weighs the splits by exp(lse_split - lse).
      index_t const split_row = split_row_offset(params, coord.n_split, row_offset);
      store_lse(params.lse_accum_ptr + split_row);
      store_split_o<kBlockM, kHeadDim>(params.o_accum_ptr + split_row * kHeadDim, thr_mma, acc_o, num_rows);
      return;
    }
    if (params.softmax_lse_ptr != nullptr) store_lse(params.softmax_lse_ptr + row_offset);
    Tensor rO = convert_type<Element>(acc_o);
    if constexpr (Traits::kDirectOStore) {
      // Each thread's accumulator holds pairs of adjacent columns: 4-byte stores.
      Tensor tCgO = thr_mma.partition_C(gO(coord));                                          // (MMA,MMA_M,MMA_D)
      Tensor tCcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));  // (MMA,MMA_M,MMA_D)
      if (kEven || num_rows >= kBlockM) {
        copy(AutoVectorizingCopyWithAssumedAlignment<32>{}, rO, tCgO);
      } else {
        CUTE_UNROLL
        for (int i = 0; i < size(rO); ++i) {
          if (get<0>(tCcO(i)) < num_rows) tCgO(i) = rO(i);
        }
      }
    } else {
      // Non-persistent: sO is sQ, whose last reads the last iteration's second barrier
      // ordered before this point. Persistent: sO is its own; the previous tile's reads of
      // it were ordered by this tile's barriers.
      copy(smem_tiled_copy_O, smem_thr_copy_O.retile_S(rO), taccOsO);
      __syncthreads();
      Tensor tOgO = gmem_thr_copy_O.partition_D(gO(coord));
      Tensor tOrO = make_tensor<Element>(shape(tOgO));
      copy(gmem_tiled_copy_O, tOsO, tOrO);
      if (kEven || num_rows >= kBlockM) {
        copy(gmem_tiled_copy_O, tOrO, tOgO);
      } else {
        copy_rows</*kZeroFillRest=*/false>(gmem_tiled_copy_O, tOrO, tOgO,
                                           gmem_thr_copy_O.partition_D(make_identity_tensor(TileQ{})), num_rows);
      }
    }
  };

  load_first(FwdTileCoord(blockIdx.x, num_m_blocks, params, is_causal));
  if constexpr (Traits::kPersistent) {
    // The zigzag of persistent_tile over the G resident blocks.
    auto round_tile = [&](int round) { return persistent_tile(round, int(blockIdx.x), int(gridDim.x)); };
    for (int round = 0, tile = blockIdx.x; tile < num_tiles; tile = round_tile(++round)) {
      int const next = round_tile(round + 1);
      run_tile(FwdTileCoord(tile, num_m_blocks, params, is_causal), next < num_tiles ? next : -1);
    }
  } else {
    run_tile(FwdTileCoord(blockIdx.x, num_m_blocks, params, is_causal), -1);
  }
}

}  // namespace fa_cute
