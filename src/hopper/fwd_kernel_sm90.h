#pragma once

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>

#include "cute_utils.h"
#include "flash_params.h"
#include "fwd_tile_coord.h"
#include "hopper/fwd_kernel_traits_sm90.h"
#include "softmax.h"

namespace fa_cute {

// The kernel's argument: the plain problem description plus the TMA descriptors the host
// built from it (128 bytes each). __grid_constant__, so the descriptors stay in the
// parameter space that TMA instructions may address.
template <class Traits>
struct Sm90FwdParams {
  FwdParams fwd;
  typename Traits::TmaLoadQ tma_q;
  typename Traits::TmaLoadK tma_k;
  typename Traits::TmaLoadV tma_v;
  typename Traits::TmaStoreO tma_o;
};

// Named barriers of the consumer warpgroups. CUTLASS's NamedBarrier adds its reserved
// count (8) to these ids, so they never collide with __syncthreads (hardware id 0) or
// CUTLASS's own.
enum class Sm90Barrier : uint32_t {
  kOStaged = 0,  // every consumer thread has written its rows of O to shared memory
};

// One batch of wgmmas, acc (+)= A B over the k-blocks of the operands: fences keep the
// compiler from moving register reads or writes of the accumulator (or of a register A
// operand) across the asynchronous MMAs, warpgroup_arrive orders the warpgroup's earlier
// register writes before them, and the batch is committed as one group for
// warpgroup_wait. kZeroInit: the first k-block overwrites acc (S = Q K^T), so S needs no
// clearing instructions.
template <bool kZeroInit, class TiledMma, class TensorA, class TensorB, class TensorC>
__forceinline__ __device__ void wgmma_gemm(TiledMma& tiled_mma, TensorA& tCrA, TensorB const& tCrB, TensorC& acc) {
  using namespace cute;
  // An SS operand is a tensor of smem descriptors; an RS one holds the values themselves.
  constexpr bool kAInRegisters = !is_same_v<typename TensorA::engine_type::iterator, GMMA::DescriptorIterator>;
  CUTE_STATIC_ASSERT_V(size<1>(tCrA) == size<1>(acc));  // MMA_M
  CUTE_STATIC_ASSERT_V(size<1>(tCrB) == size<2>(acc));  // MMA_N
  CUTE_STATIC_ASSERT_V(size<2>(tCrA) == size<2>(tCrB));  // MMA_K
  if constexpr (kAInRegisters) warpgroup_fence_operand(tCrA);
  warpgroup_fence_operand(acc);
  warpgroup_arrive();
  tiled_mma.accumulate_ = kZeroInit ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(acc);
  if constexpr (kAInRegisters) warpgroup_fence_operand(tCrA);
}

// FlashAttention forward on Hopper: TMA loads, wgmma, warp specialisation.
// One CTA computes one (kBlockM x d) tile of O for one (batch, head). Warpgroup 0 is the
// producer: after giving up most of its registers (setmaxnreg) one thread issues the TMA
// loads of Q and of the K and V blocks into a kStages-deep ring on mbarriers
// (Sm90TmaPipeline). The consumer warpgroups own 64 query rows each: S = Q K^T with both
// operands in shared memory, the fp32 online softmax on the accumulator in registers, and
// O += P V with P from registers and V read transposed by wgmma straight from its TMA
// layout. Key blocks are visited last to first, so the blocks that need a mask (the
// ragged tail of seqlen_k, the causal diagonal) come first and the loop over the rest
// holds no masking code. Ragged tiles need no predication on loads: TMA zero-fills rows
// past a sequence's end (batch and head are TMA dimensions of their own) and clips the
// O store; the masks still set the zero-filled keys' scores to -inf.
// kCausal: bottom-right causal masking (issue 4's semantics, params.causal_offset).
template <class Traits, bool kCausal>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_kernel_sm90(__grid_constant__ Sm90FwdParams<Traits> const params) {
  using namespace cute;
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Pipeline::State;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  FwdParams const& p = params.fwd;

  extern __shared__ __align__(1024) char smem[];
  auto& storage = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQ{});    // (BLK_M,D)
  Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutK{});    // (BLK_N,D,STAGE)
  Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutV{});    // (BLK_N,D,STAGE)
  Tensor sVt = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutVt{});  // (D,BLK_N,STAGE)
  // O is staged in Q's space: each consumer warpgroup writes only its own rows, whose Q
  // only its own (retired) S wgmmas read.
  Tensor sO = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutO{});    // (BLK_M,D)

  int const num_m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  FwdTileCoord const coord(blockIdx.x, num_m_blocks, p);
  FwdKeyRange const keys = FwdKeyRange::of<kBlockM, kBlockN, /*kSplitKV=*/false>(coord, p);
  int const num_blocks = keys.num_blocks();

  Pipeline pipe_k{storage.pipeline_k};
  Pipeline pipe_v{storage.pipeline_v};
  if (threadIdx.x == 0) {
    storage.barrier_q.init(1);
    Pipeline::init(storage.pipeline_k);
    Pipeline::init(storage.pipeline_v);
    cutlass::arch::fence_barrier_init();
  }
  // The barriers must be initialised before any thread waits on or arrives at them; this
  // is the last CTA-wide barrier (the producer warpgroup's idle warps exit below).
  __syncthreads();

  if (cutlass::canonical_warp_group_idx() == 0) {
    // --- Producer ------------------------------------------------------------------------
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x != 0 || num_blocks <= 0) return;  // a tile that sees no key loads nothing
    cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
    Tensor mQ = params.tma_q.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.nheads, p.batch));
    Tensor mK = params.tma_k.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.nheads_k, p.batch));
    Tensor mV = params.tma_v.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.nheads_k, p.batch));
    Tensor gQ = local_tile(mQ(_, _, coord.bidh, coord.bidb), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                           make_coord(coord.m_block, _0{}));                                       // (BLK_M,D)
    Tensor gK = local_tile(mK(_, _, coord.bidh_k, coord.bidb), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                           make_coord(_, _0{}));                                                    // (BLK_N,D,n)
    Tensor gV = local_tile(mV(_, _, coord.bidh_k, coord.bidb), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                           make_coord(_, _0{}));                                                    // (BLK_N,D,n)
    auto [tQgQ, tQsQ] = tma_partition(params.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto [tKgK, tKsK] = tma_partition(params.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(params.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

    // Q is read once per tile, K and V by every query tile of the head: keep K/V in L2.
    storage.barrier_q.arrive_and_expect_tx(Traits::kTmaTransactionBytesQ);
    copy(params.tma_q.with(reinterpret_cast<uint64_t&>(storage.barrier_q), 0, TMA::CacheHintSm90::EVICT_FIRST),
         tQgQ, tQsQ);
    PipelineState st = Pipeline::producer_start_state();
    for (int i = 0; i < num_blocks; ++i) {
      int const n_block = keys.template block</*kReverse=*/true>(i);
      copy(params.tma_k.with(pipe_k.producer_acquire(st, Traits::kTmaTransactionBytesK), 0,
                             TMA::CacheHintSm90::EVICT_LAST),
           tKgK(_, n_block), tKsK(_, st.index));
      copy(params.tma_v.with(pipe_v.producer_acquire(st, Traits::kTmaTransactionBytesV), 0,
                             TMA::CacheHintSm90::EVICT_LAST),
           tVgV(_, n_block), tVsV(_, st.index));
      st.advance();
    }
    return;
  }

  // --- Consumers -----------------------------------------------------------------------------
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  int const tidx = threadIdx.x - Traits::kNumProducerThreads;
  typename Traits::TiledMmaQK tiled_mma_qk;
  typename Traits::TiledMmaPV tiled_mma_pv;
  auto thr_mma_qk = tiled_mma_qk.get_thread_slice(tidx);
  auto thr_mma_pv = tiled_mma_pv.get_thread_slice(tidx);
  Tensor tSrQ = thr_mma_qk.partition_fragment_A(sQ);   // (MMA,MMA_M,MMA_D): smem descriptors
  Tensor tSrK = thr_mma_qk.partition_fragment_B(sK);   // (MMA,MMA_N,MMA_D,STAGE)
  Tensor tOrV = thr_mma_pv.partition_fragment_B(sVt);  // (MMA,MMA_D,MMA_N,STAGE)

  Tensor acc_o = partition_fragment_C(tiled_mma_pv, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // (MMA,MMA_M,MMA_D)
  clear(acc_o);
  constexpr int kNRows = decltype(size<0>(acc_layout_rowcol(acc_o.layout())))::value;  // 2 rows a thread
  OnlineSoftmax<kNRows, /*kLazyRescale=*/false> softmax;

  // (row, column) in the tile of each of this thread's scores, viewed as rows x columns.
  auto score_coords = [&]() {
    Tensor tScS = thr_mma_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));  // (MMA,MMA_M,MMA_N)
    return make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));                               // (M,N)
  };

  PipelineState st;
  // is_first: nothing to rescale yet. is_masked: the block holds the seqlen_k tail or
  // crosses the causal diagonal. Both compile-time, so each loop below holds only the
  // code its blocks need.
  auto iteration = [&](int i, auto is_first, auto is_masked) __attribute__((always_inline)) {
    int const n_block = keys.template block</*kReverse=*/true>(i);
    Tensor acc_s = partition_fragment_C(tiled_mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA,MMA_M,MMA_N)
    pipe_k.consumer_wait(st);
    wgmma_gemm</*kZeroInit=*/true>(tiled_mma_qk, tSrQ, tSrK(_, _, _, st.index), acc_s);
    warpgroup_wait<0>();
    pipe_k.consumer_release(st);
    if constexpr (decltype(is_masked)::value) {
      apply_mask(make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout())), score_coords(),
                 p.seqlen_k - n_block * kBlockN, kCausal,
                 coord.m_block * kBlockM + p.causal_offset - n_block * kBlockN);
    }
    softmax.template update<decltype(is_first)::value>(acc_s, acc_o, p.softmax_scale_log2);
    Tensor rP = convert_type<Element>(acc_s);
    Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand_sm90(rP.layout()));  // (MMA,MMA_M,MMA_N/16)
    pipe_v.consumer_wait(st);
    wgmma_gemm</*kZeroInit=*/false>(tiled_mma_pv, tOrP, tOrV(_, _, _, st.index), acc_o);
    warpgroup_wait<0>();
    pipe_v.consumer_release(st);
    st.advance();
  };

  if (num_blocks > 0) {
    storage.barrier_q.wait(0);
    // Visited last to first, the blocks needing a mask are the first n_masked.
    int const n_masked = max(0, min(keys.n_block_max - keys.n_block_mask_start, num_blocks));
    if (n_masked > 0) {
      iteration(0, true_type{}, true_type{});
    } else {
      iteration(0, true_type{}, false_type{});
    }
    int i = 1;
    for (; i < n_masked; ++i) { iteration(i, false_type{}, true_type{}); }
    for (; i < num_blocks; ++i) { iteration(i, false_type{}, false_type{}); }
  } else {
    softmax.reset();  // no row sees a key: O = 0, LSE = -inf
  }

  // --- Epilogue: O / l and the LSE ---------------------------------------------------------
  softmax.finalize(acc_o);
  int const num_rows = p.seqlen_q - coord.m_block * kBlockM;  // < kBlockM: a ragged tail
  if (p.softmax_lse_ptr != nullptr) {
    float* lse = p.softmax_lse_ptr + (index_t(coord.bidb) * p.nheads + coord.bidh) * p.seqlen_q +
                 coord.m_block * kBlockM;
    Tensor tScS_rc = score_coords();  // (M,N)
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      // The 4 threads of a quad hold one row; the one holding column 0 writes it.
      int const row = get<0>(tScS_rc(mi, 0));
      if (get<1>(tScS_rc(mi, 0)) == 0 && row < num_rows) { lse[row] = softmax.lse(mi, p.softmax_scale); }
    }
  }
  // O to bf16/fp16 in shared memory (stmatrix), then one TMA store of the tile; TMA drops
  // the rows past seqlen_q.
  Tensor rO = convert_type<Element>(acc_o);
  auto smem_tiled_copy_O = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, tiled_mma_pv);
  auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(tidx);
  copy(smem_tiled_copy_O, smem_thr_copy_O.retile_S(rO), smem_thr_copy_O.partition_D(sO));
  // stmatrix writes through the generic proxy, TMA reads through the async proxy: each
  // writer fences its writes for the async proxy before the barrier that hands the tile
  // to the storing thread.
  cutlass::arch::fence_view_async_shared();
  cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads, static_cast<uint32_t>(Sm90Barrier::kOStaged));
  if (tidx == 0) {
    Tensor mO = params.tma_o.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.nheads, p.batch));
    Tensor gO = local_tile(mO(_, _, coord.bidh, coord.bidb), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                           make_coord(coord.m_block, _0{}));  // (BLK_M,D)
    auto [tOgO, tOsO] = tma_partition(params.tma_o, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sO), group_modes<0, 2>(gO));
    copy(params.tma_o, tOsO, tOgO);
    tma_store_arrive();
    // The CTA's shared memory must outlive the store's reads of it.
    tma_store_wait<0>();
  }
}

}  // namespace fa_cute
