#pragma once

#include <cute/tensor.hpp>

#include "cute_utils.h"
#include "flash_params.h"
#include "fwd_kernel_traits.h"
#include "softmax.h"

namespace fa_cute {

// FlashAttention-2 forward on sm80 instructions. One thread block computes one
// (kBlockM x d) tile of O for one (batch, head): it keeps its Q tile in shared memory and
// streams K and V in kBlockN-row blocks. Loads are cp.async, so while the tensor cores
// compute S = Q K_j^T the copy engine brings V_j, and while they compute O += P_j V_j it
// brings K_{j-1}. Key blocks are visited from last to first (rung 13 of the ladder we grew
// from): the first block read is then the one whose K/V the neighbouring tiles read last.
template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads)
    fwd_kernel_sm80(__grid_constant__ FwdParams const params) {
  using namespace cute;
  using Element = typename Traits::Element;
  using ElementAccum = typename Traits::ElementAccum;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;

  // One flat grid: m_block varies fastest so that the tiles of one (batch, head), which
  // share K and V, run together and hit in L2; and no grid dimension limit applies to
  // batch * heads.
  int const num_m_blocks = params.seqlen_q / kBlockM;
  int const m_block = int(blockIdx.x % unsigned(num_m_blocks));
  int const bh = int(blockIdx.x / unsigned(num_m_blocks));
  int const bidh = bh % params.nheads;
  int const bidb = bh / params.nheads;
  int const bidh_k = bidh / (params.nheads / params.nheads_k);
  int const tidx = threadIdx.x;

  extern __shared__ __align__(128) char smem[];

  // --- Global tensors: this (batch, head) ----------------------------------------------------
  // Tile base pointers are computed in 64 bits (tensors beyond 2^31 elements); offsets
  // inside a tile use a 32-bit row stride (the host checks row_stride * block < 2^31).
  // Holding 64-bit in-tile offsets for every copy spilled registers in the 128-row tiles.
  Element const* const q_base = static_cast<Element const*>(params.q_ptr) +
                                bidb * params.q_batch_stride + bidh * params.q_head_stride;
  Element const* const k_base = static_cast<Element const*>(params.k_ptr) +
                                bidb * params.k_batch_stride + bidh_k * params.k_head_stride;
  Element const* const v_base = static_cast<Element const*>(params.v_ptr) +
                                bidb * params.v_batch_stride + bidh_k * params.v_head_stride;
  Element* const o_base = static_cast<Element*>(params.o_ptr) + bidb * params.o_batch_stride +
                          bidh * params.o_head_stride;
  auto row_tile = [](auto base, int row0, index_t row_stride, auto tile_shape) {
    return make_tensor(make_gmem_ptr(base + row0 * row_stride), tile_shape,
                       make_stride(int(row_stride), _1{}));
  };
  using TileQ = Shape<Int<kBlockM>, Int<kHeadDim>>;
  using TileKV = Shape<Int<kBlockN>, Int<kHeadDim>>;
  Tensor gQ = row_tile(q_base, m_block * kBlockM, params.q_row_stride, TileQ{});  // (BLK_M,D)
  Tensor gO = row_tile(o_base, m_block * kBlockM, params.o_row_stride, TileQ{});  // (BLK_M,D)
  auto gK = [&](int n_block) { return row_tile(k_base, n_block * kBlockN, params.k_row_stride, TileKV{}); };  // (BLK_N,D)
  auto gV = [&](int n_block) { return row_tile(v_base, n_block * kBlockN, params.v_row_stride, TileKV{}); };  // (BLK_N,D)

  // --- Shared tensors ---------------------------------------------------------------------
  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)),
                          typename Traits::SmemLayoutQ{});                               // (BLK_M,D)
  Tensor sK = make_tensor(sQ.data() + size(sQ), typename Traits::SmemLayoutKV{});         // (BLK_N,D)
  Tensor sV = make_tensor(sK.data() + size(sK), typename Traits::SmemLayoutKV{});         // (BLK_N,D)
  Tensor sVt = make_tensor(sV.data(), typename Traits::SmemLayoutVt{});                   // (D,BLK_N)
  Tensor sVtNoSwizzle = make_tensor(sV.data(), typename Traits::SmemLayoutVtNoSwizzle{}); // (D,BLK_N)

  // --- Global -> shared copies (cp.async, 16 bytes) --------------------------------------------
  typename Traits::GmemTiledCopyQKV gmem_tiled_copy_QKV;
  auto gmem_thr_copy_QKV = gmem_tiled_copy_QKV.get_thread_slice(tidx);
  Tensor tQgQ = gmem_thr_copy_QKV.partition_S(gQ);  // (CPY,CPY_M,CPY_D)
  Tensor tQsQ = gmem_thr_copy_QKV.partition_D(sQ);
  Tensor tKsK = gmem_thr_copy_QKV.partition_D(sK);  // (CPY,CPY_N,CPY_D)
  Tensor tVsV = gmem_thr_copy_QKV.partition_D(sV);

  // --- MMA fragments ------------------------------------------------------------------------
  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tidx);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);             // (MMA,MMA_M,MMA_D)
  Tensor tSrK = thr_mma.partition_fragment_B(sK);             // (MMA,MMA_N,MMA_D)
  Tensor tOrVt = thr_mma.partition_fragment_B(sVtNoSwizzle);  // (MMA,MMA_D,MMA_N)
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // (MMA,MMA_M,MMA_D)

  // --- Shared -> register copies (ldmatrix) --------------------------------------------------
  auto smem_tiled_copy_Q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_Q = smem_tiled_copy_Q.get_thread_slice(tidx);
  Tensor tSsQ = smem_thr_copy_Q.partition_S(sQ);
  auto smem_tiled_copy_K = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_K = smem_tiled_copy_K.get_thread_slice(tidx);
  Tensor tSsK = smem_thr_copy_K.partition_S(sK);
  auto smem_tiled_copy_V = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
  auto smem_thr_copy_V = smem_tiled_copy_V.get_thread_slice(tidx);
  Tensor tOsVt = smem_thr_copy_V.partition_S(sVt);

  // --- Prologue: Q and the last K block in flight ---------------------------------------------
  int const n_block_max = params.seqlen_k / kBlockN;
  int n_block = n_block_max - 1;
  copy(gmem_tiled_copy_QKV, tQgQ, tQsQ);
  copy(gmem_tiled_copy_QKV, gmem_thr_copy_QKV.partition_S(gK(n_block)), tKsK);
  cp_async_fence();

  clear(acc_o);
  constexpr int kNRows = decltype(size<1>(acc_o))::value * 2;  // 2 rows per 16x8 tile
  OnlineSoftmax<kNRows> softmax;

  // The first iteration needs no rescale of O; peeling it keeps that branch out of the loop.
  auto iteration = [&](auto is_first) {
    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA,MMA_M,MMA_N)
    clear(acc_s);
    cp_async_wait<0>();
    // K_j has landed, and every warp has finished reading V_{j+1}: sV may be refilled.
    __syncthreads();
    copy(gmem_tiled_copy_QKV, gmem_thr_copy_QKV.partition_S(gV(n_block)), tVsV);
    cp_async_fence();

    gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma, smem_tiled_copy_Q, smem_tiled_copy_K,
            smem_thr_copy_Q, smem_thr_copy_K);

    cp_async_wait<0>();
    // V_j has landed, and every warp has finished reading K_j: sK may be refilled.
    __syncthreads();
    if (n_block > 0) {
      copy(gmem_tiled_copy_QKV, gmem_thr_copy_QKV.partition_S(gK(n_block - 1)), tKsK);
      cp_async_fence();
    }

    softmax.template update<decltype(is_first)::value>(acc_s, acc_o, params.softmax_scale_log2);

    Tensor rP = convert_type<Element>(acc_s);
    Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));  // (MMA,MMA_M,MMA_N/2)
    gemm_rs(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_tiled_copy_V, smem_thr_copy_V);
  };

  iteration(cute::true_type{});
  for (--n_block; n_block >= 0; --n_block) { iteration(cute::false_type{}); }

  // --- Epilogue: O / l, to bf16/fp16, through shared memory to 16-byte global stores ----------
  softmax.finalize(acc_o);
  Tensor rO = convert_type<Element>(acc_o);
  // The last iteration's second barrier ordered every read of sQ before this point.
  Tensor sO = make_tensor(sQ.data(), typename Traits::SmemLayoutO{});  // (BLK_M,D)
  auto smem_tiled_copy_O = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, tiled_mma);
  auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(tidx);
  Tensor taccOrO = smem_thr_copy_O.retile_S(rO);
  Tensor taccOsO = smem_thr_copy_O.partition_D(sO);
  copy(smem_tiled_copy_O, taccOrO, taccOsO);
  __syncthreads();

  typename Traits::GmemTiledCopyO gmem_tiled_copy_O;
  auto gmem_thr_copy_O = gmem_tiled_copy_O.get_thread_slice(tidx);
  Tensor tOsO = gmem_thr_copy_O.partition_S(sO);  // (CPY,CPY_M,CPY_D)
  Tensor tOgO = gmem_thr_copy_O.partition_D(gO);
  Tensor tOrO = make_tensor<Element>(shape(tOgO));
  copy(gmem_tiled_copy_O, tOsO, tOrO);
  copy(gmem_tiled_copy_O, tOrO, tOgO);
}

}  // namespace fa_cute
