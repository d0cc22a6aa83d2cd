#pragma once

#include <cute/tensor.hpp>

#include "cute_utils.h"
#include "flash_params.h"
#include "fwd_kernel_traits.h"
#include "softmax.h"

namespace fa_cute {

// Which (query block, head, batch) a tile is. Tiles are numbered with the query block
// fastest, so that consecutive tiles (run at the same time by neighbouring blocks) share
// one head's K and V and hit in L2; a flat numbering also means no grid dimension limit
// applies to batch * heads.
struct Sm80TileCoord {
  int m_block;
  int bidh;
  int bidb;
  int bidh_k;

  __device__ Sm80TileCoord(int tile, int num_m_blocks, FwdParams const& params) {
    m_block = tile % num_m_blocks;
    int const bh = tile / num_m_blocks;
    bidh = bh % params.nheads;
    bidb = bh / params.nheads;
    bidh_k = bidh / (params.nheads / params.nheads_k);
  }
};

// FlashAttention-2 forward on sm80 instructions. A tile is a (kBlockM x d) block of O for
// one (batch, head): its Q tile stays in shared memory while K and V stream through in
// kBlockN-row blocks. Loads are cp.async: while the tensor cores compute S = Q K_j^T the
// copy engine brings V_j, and while they compute O += P_j V_j it brings the next K.
// Key blocks are visited from last to first (rung 13 of the ladder we grew from).
// A persistent block (Traits::kPersistent) loops over tiles and, once the last S of a tile
// is computed, already loads the next tile's Q and first K under this tile's last P V and
// its O store: the per-tile load latency that a single resident block per SM otherwise
// exposes.
template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads)
    fwd_kernel_sm80(__grid_constant__ FwdParams const params) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr bool kPrefetch = Traits::kRegPrefetch;

  int const tidx = threadIdx.x;
  int const num_m_blocks = params.seqlen_q / kBlockM;
  int const num_tiles = num_m_blocks * params.nheads * params.batch;
  int const n_block_max = params.seqlen_k / kBlockN;

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
  auto gQ = [&](Sm80TileCoord const& c) {  // (BLK_M,D)
    return row_tile(static_cast<Element const*>(params.q_ptr),
                    c.bidb * params.q_batch_stride + c.bidh * params.q_head_stride,
                    c.m_block * kBlockM, params.q_row_stride, TileQ{});
  };
  auto gK = [&](Sm80TileCoord const& c, int n_block) {  // (BLK_N,D)
    return row_tile(static_cast<Element const*>(params.k_ptr),
                    c.bidb * params.k_batch_stride + c.bidh_k * params.k_head_stride,
                    n_block * kBlockN, params.k_row_stride, TileKV{});
  };
  auto gV = [&](Sm80TileCoord const& c, int n_block) {  // (BLK_N,D)
    return row_tile(static_cast<Element const*>(params.v_ptr),
                    c.bidb * params.v_batch_stride + c.bidh_k * params.v_head_stride,
                    n_block * kBlockN, params.v_row_stride, TileKV{});
  };
  auto gO = [&](Sm80TileCoord const& c) {  // (BLK_M,D)
    return row_tile(static_cast<Element*>(params.o_ptr),
                    c.bidb * params.o_batch_stride + c.bidh * params.o_head_stride,
                    c.m_block * kBlockM, params.o_row_stride, TileQ{});
  };
  // The i-th key block visited.
  auto kv_block = [&](int i) { return Traits::kReverseKV ? n_block_max - 1 - i : i; };

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
  auto load_Q = [&](Sm80TileCoord const& c) { copy(gmem_tiled_copy_QKV, gmem_thr_copy_QKV.partition_S(gQ(c)), tQsQ); };
  auto load_K = [&](Sm80TileCoord const& c, int n) { copy(gmem_tiled_copy_QKV, gmem_thr_copy_QKV.partition_S(gK(c, n)), tKsK); };
  auto load_V = [&](Sm80TileCoord const& c, int n) { copy(gmem_tiled_copy_QKV, gmem_thr_copy_QKV.partition_S(gV(c, n)), tVsV); };

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

  // One tile: the main loop over key blocks, then O / l through shared memory to global.
  // next_tile >= 0 (persistent blocks): its Q and first K are loaded once this tile's last
  // S = Q K^T is done, i.e. as soon as sQ and sK are free.
  auto run_tile = [&](Sm80TileCoord const& coord, int next_tile) {
    Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // (MMA,MMA_M,MMA_D)
    clear(acc_o);
    constexpr int kNRows = decltype(size<1>(acc_o))::value * 2;  // 2 rows per 16x8 tile
    OnlineSoftmax<kNRows, Traits::kLazyRescale> softmax;

    auto iteration = [&](int i, auto is_first) {
      int const n_block = kv_block(i);
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
        if (i + 1 < n_block_max) {
          load_K(coord, kv_block(i + 1));
          cp_async_fence();
        }
      } else {
        __syncthreads();  // everyone has finished reading sK (and sQ in the last iteration)
      }
      if constexpr (Traits::kPersistent) {
        if (i + 1 == n_block_max && next_tile >= 0) {
          Sm80TileCoord const next(next_tile, num_m_blocks, params);
          load_Q(next);
          if constexpr (Traits::kOverlapLoads) { load_K(next, kv_block(0)); }
          cp_async_fence();
        }
      }

      softmax.template update<decltype(is_first)::value>(acc_s, acc_o, params.softmax_scale_log2);

      Tensor rP = convert_type<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));  // (MMA,MMA_M,MMA_N/2)
      gemm_rs<kPrefetch>(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_tiled_copy_V, smem_thr_copy_V);
    };

    // The first iteration needs no rescale of O; peeling it keeps that branch out of the loop.
    iteration(0, cute::true_type{});
    for (int i = 1; i < n_block_max; ++i) { iteration(i, cute::false_type{}); }

    // --- Epilogue: O / l, to bf16/fp16, through shared memory to 16-byte global stores -------
    softmax.finalize(acc_o);
    Tensor rO = convert_type<Element>(acc_o);
    if constexpr (Traits::kDirectOStore) {
      // Each thread's accumulator holds pairs of adjacent columns: 4-byte stores.
      Tensor tCgO = thr_mma.partition_C(gO(coord));  // (MMA,MMA_M,MMA_D)
      copy(AutoVectorizingCopyWithAssumedAlignment<32>{}, rO, tCgO);
    } else {
      // Non-persistent: sO is sQ, whose last reads the last iteration's second barrier
      // ordered before this point. Persistent: sO is its own; the previous tile's reads of
      // it were ordered by this tile's barriers.
      copy(smem_tiled_copy_O, smem_thr_copy_O.retile_S(rO), taccOsO);
      __syncthreads();
      Tensor tOgO = gmem_thr_copy_O.partition_D(gO(coord));
      Tensor tOrO = make_tensor<Element>(shape(tOgO));
      copy(gmem_tiled_copy_O, tOsO, tOrO);
      copy(gmem_tiled_copy_O, tOrO, tOgO);
    }
  };

  int tile = blockIdx.x;
  // The first tile's Q and first K (with kOverlapLoads; else the loop loads K with V).
  {
    Sm80TileCoord const first(tile, num_m_blocks, params);
    load_Q(first);
    if constexpr (Traits::kOverlapLoads) { load_K(first, kv_block(0)); }
    cp_async_fence();
  }
  if constexpr (Traits::kPersistent) {
    for (; tile < num_tiles; tile += gridDim.x) {
      int const next = tile + int(gridDim.x);
      run_tile(Sm80TileCoord(tile, num_m_blocks, params), next < num_tiles ? next : -1);
    }
  } else {
    run_tile(Sm80TileCoord(tile, num_m_blocks, params), -1);
  }
}

}  // namespace fa_cute
