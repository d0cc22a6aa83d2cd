#pragma once

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>

#include "cute_utils.h"
#include "flash_params.h"
#include "fwd_combine.h"
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
  kWgTurn0 = 1,  // ping-pong: consumer warpgroup w may issue its GEMMs (ids 1 to kNumConsumerWG)
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

// warpgroup_wait<N>, then a compiler fence on the registers the retired wgmmas wrote or
// read: without it the compiler may move ordinary reads or writes of them (the softmax's
// rescale of O, the next P) above the wait, into the asynchronous window.
template <int N, class... Tensors>
__forceinline__ __device__ void wgmma_wait(Tensors&... tensors) {
  cute::warpgroup_wait<N>();
  (cute::warpgroup_fence_operand(tensors), ...);
}

// FlashAttention forward on Hopper: TMA loads, wgmma, warp specialisation.
// A CTA computes (kBlockM x d) tiles of O for one (batch, head) each: one tile, or with
// Traits::kPersistent one CTA per SM loops over tiles in a zigzag order, its producer
// running ahead into the next tile's loads while the consumers finish this one. The
// overlaps are knobs of the traits (kIntraWGOverlap, kPingPong, kLazyRescale; ladder
// rungs 9-17, docs/ladder.md). Warpgroup 0 is the
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
// Traits::kSplitKV with params.num_splits > 1 (short queries): a CTA visits one split's
// share of the tile's key blocks and writes its O in fp32, normalised by its own row sums,
// with its LSE, by plain masked stores; fwd_combine_kernel merges the splits.
// kCausal: bottom-right causal masking (docs/design.md, Causal alignment; params.causal_offset).
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
  // O is staged in Q's space (Traits::kOAliasesQ: each consumer warpgroup writes only its
  // own rows, whose Q only its own retired S wgmmas read; the next tile's Q waits for the
  // O store) or in a buffer of its own (the next tile's Q loads under this tile's last
  // P V and epilogue).
  Element* const smem_o = [&] {
    if constexpr (Traits::kOAliasesQ) {
      return storage.smem_q.data();
    } else {
      return storage.smem_o.data();
    }
  }();
  Tensor sO = make_tensor(make_smem_ptr(smem_o), typename Traits::SmemLayoutO{});                 // (BLK_M,D)

  int const num_m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  int const num_tiles = num_m_blocks * p.nheads * p.batch * (Traits::kSplitKV ? max(p.num_splits, 1) : 1);
  // Persistent: the zigzag of persistent_tile (G CTAs, one per SM). Causal tiles are
  // numbered longest first (FwdTileCoord): a plain stride would give CTA 0 the longest tile
  // of every round, more work than CTA G - 1 (docs/perf-notes.md, Hopper kernel: tile choices). How evenly the zigzag deals the tiles
  // also depends on the L2 section, which the launcher picks for it.
  auto round_tile = [&](int round) {
    if constexpr (!Traits::kPersistent) {
      return round == 0 ? int(blockIdx.x) : num_tiles;
    } else {
      return persistent_tile(round, int(blockIdx.x), int(gridDim.x));
    }
  };
  auto key_range = [&](FwdTileCoord const& c) {
    return FwdKeyRange::of<kBlockM, kBlockN, Traits::kSplitKV>(c, p);
  };

  Pipeline pipe_k{storage.pipeline_k};
  Pipeline pipe_v{storage.pipeline_v};
  if (threadIdx.x == 0) {
    storage.barrier_q_full.init(1);
    storage.barrier_q_empty.init(Traits::kOAliasesQ ? 1 : Traits::kNumConsumerWG);
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
    if (threadIdx.x != 0) return;
    cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
    Tensor mQ = params.tma_q.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.nheads, p.batch));
    Tensor mK = params.tma_k.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.nheads_k, p.batch));
    Tensor mV = params.tma_v.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.nheads_k, p.batch));
    PipelineState st = Pipeline::producer_start_state();
    int q_iter = 0;  // tiles whose Q this CTA has loaded: the Q barriers' phase
    for (int round = 0, tile = round_tile(0); tile < num_tiles; tile = round_tile(++round)) {
      FwdTileCoord const coord(tile, num_m_blocks, p, kCausal);
      FwdKeyRange const keys = key_range(coord);
      if (keys.num_blocks() <= 0) continue;  // a tile that sees no key loads nothing
      Tensor gQ = local_tile(mQ(_, _, coord.bidh, coord.bidb), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                             make_coord(coord.m_block, _0{}));                                     // (BLK_M,D)
      Tensor gK = local_tile(mK(_, _, coord.bidh_k, coord.bidb), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                             make_coord(_, _0{}));                                                  // (BLK_N,D,n)
      Tensor gV = local_tile(mV(_, _, coord.bidh_k, coord.bidb), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                             make_coord(_, _0{}));                                                  // (BLK_N,D,n)
      auto [tQgQ, tQsQ] = tma_partition(params.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
      // (The K and V partitions are captured by the lambdas below: no structured bindings.)
      auto const tK = tma_partition(params.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
      auto const tV = tma_partition(params.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
      Tensor tKgK = get<0>(tK);  // (TMA,n)
      Tensor tKsK = get<1>(tK);  // (TMA,STAGE)
      Tensor tVgV = get<0>(tV);  // (TMA,n)
      Tensor tVsV = get<1>(tV);  // (TMA,STAGE)
      // Q is read once per tile, K and V by every query tile of the head: keep K/V in L2.
      auto load_k = [&](int i) {
        copy(params.tma_k.with(pipe_k.producer_acquire(st, Traits::kTmaTransactionBytesK), 0,
                               TMA::CacheHintSm90::EVICT_LAST),
             tKgK(_, keys.template block</*kReverse=*/true>(i)), tKsK(_, st.index));
      };
      auto load_v = [&](int i) {
        copy(params.tma_v.with(pipe_v.producer_acquire(st, Traits::kTmaTransactionBytesV), 0,
                               TMA::CacheHintSm90::EVICT_LAST),
             tVgV(_, keys.template block</*kReverse=*/true>(i)), tVsV(_, st.index));
      };
      // The first K goes out before the wait for sQ: it only needs a free stage, which
      // the previous tile's last S wgmma released.
      load_k(0);
      storage.barrier_q_empty.wait((q_iter & 1) ^ 1);
      storage.barrier_q_full.arrive_and_expect_tx(Traits::kTmaTransactionBytesQ);
      copy(params.tma_q.with(reinterpret_cast<uint64_t&>(storage.barrier_q_full), 0,
                             TMA::CacheHintSm90::EVICT_FIRST),
           tQgQ, tQsQ);
      load_v(0);
      st.advance();
      for (int i = 1; i < keys.num_blocks(); ++i) {
        load_k(i);
        load_v(i);
        st.advance();
      }
      ++q_iter;
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
  auto smem_tiled_copy_O = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, tiled_mma_pv);
  auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(tidx);
  Tensor taccOsO = smem_thr_copy_O.partition_D(sO);

  using AccS = decltype(partition_fragment_C(tiled_mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using AccO = decltype(partition_fragment_C(tiled_mma_pv, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  constexpr int kNRows = decltype(size<0>(acc_layout_rowcol(AccO{}.layout())))::value;  // 2 rows a thread
  // P as the A operand of the P V wgmma: the accumulator layout relabelled (no movement).
  Tensor tOrP = make_tensor<Element>(acc_layout_as_a_operand_sm90(AccS{}.layout()));  // (MMA,MMA_M,MMA_N/16)
  auto store_p = [&](AccS const& acc_s) { convert_type_into(acc_s, tOrP); };

  // (row, column) in the tile of each of this thread's scores, viewed as rows x columns.
  auto score_coords = [&]() {
    Tensor tScS = thr_mma_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));  // (MMA,MMA_M,MMA_N)
    return make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));                               // (M,N)
  };

  // Ping-pong: warpgroup w issues its GEMMs only on its turn (named barrier kWgTurn0 + w,
  // 256 threads: its own 128 syncing, the previous warpgroup's 128 arriving) and hands the
  // turn to warpgroup w + 1 (round robin) as soon as they are issued. The tensor cores run
  // the batches in issue order, so one warpgroup's GEMMs overlap the others' softmax
  // instead of competing with them. All warpgroups of a CTA take the same number of turns
  // per tile.
  constexpr int kNumWG = Traits::kNumConsumerWG;
  int const wg = tidx / 128;
  auto turn_sync = [&] {
    if constexpr (Traits::kPingPong) {
      cutlass::arch::NamedBarrier::sync(2 * 128, static_cast<uint32_t>(Sm90Barrier::kWgTurn0) + wg);
    }
  };
  auto turn_pass = [&] {
    if constexpr (Traits::kPingPong) {
      cutlass::arch::NamedBarrier::arrive(2 * 128, static_cast<uint32_t>(Sm90Barrier::kWgTurn0) + (wg + 1) % kNumWG);
    }
  };
  if constexpr (Traits::kPingPong) {
    if (wg == kNumWG - 1) {  // warpgroup 0 takes the first turn
      cutlass::arch::NamedBarrier::arrive(2 * 128, static_cast<uint32_t>(Sm90Barrier::kWgTurn0));
    }
  }
  // S = Q K^T of the block in stage st.
  auto issue_qk = [&](AccS& acc_s, PipelineState const& st) {
    pipe_k.consumer_wait(st);
    wgmma_gemm</*kZeroInit=*/true>(tiled_mma_qk, tSrQ, tSrK(_, _, _, st.index), acc_s);
  };
  // O += P V of the block in stage st; P from registers, as the RS wgmma's A operand.
  auto issue_pv = [&](AccO& acc_o, PipelineState const& st) {
    pipe_v.consumer_wait(st);
    wgmma_gemm</*kZeroInit=*/false>(tiled_mma_pv, tOrP, tOrV(_, _, _, st.index), acc_o);
  };

  PipelineState st;
  // S = Q K^T of the block in stage st with nothing else in flight: issued on this
  // warpgroup's turn, waited for, its K stage handed back.
  auto compute_s = [&](AccS& acc_s) {
    turn_sync();
    issue_qk(acc_s, st);
    turn_pass();
    wgmma_wait<0>(acc_s);
    pipe_k.consumer_release(st);
  };
  // Every S wgmma of the tile has retired: with its own sO, the next tile's Q may load
  // under the last P V and the epilogue (with sO in sQ, the O store releases it).
  auto release_q = [&] {
    if constexpr (!Traits::kOAliasesQ) {
      if (tidx % 128 == 0) storage.barrier_q_empty.arrive();
    }
  };
  int q_iter = 0;
  for (int round = 0, tile = round_tile(0); tile < num_tiles; tile = round_tile(++round)) {
    FwdTileCoord const coord(tile, num_m_blocks, p, kCausal);
    FwdKeyRange const keys = key_range(coord);
    int const num_blocks = keys.num_blocks();
    int const num_rows = p.seqlen_q - coord.m_block * kBlockM;  // < kBlockM: a ragged tail
    auto mask = [&](AccS& acc_s, int n_block) {
      apply_mask(make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout())), score_coords(),
                 p.seqlen_k - n_block * kBlockN, kCausal,
                 coord.m_block * kBlockM + p.causal_offset - n_block * kBlockN);
    };
    AccO acc_o;
    clear(acc_o);
    OnlineSoftmax<kNRows, Traits::kLazyRescale> softmax;

    if (num_blocks > 0) {
      storage.barrier_q_full.wait(q_iter & 1);
      // Visited last to first, the blocks needing a mask (the seqlen_k tail, the causal
      // diagonal) are the first n_masked: one loop with the mask code, one without.
      int const n_masked = max(0, min(keys.n_block_max - keys.n_block_mask_start, num_blocks));
      if constexpr (Traits::kIntraWGOverlap) {
        // Block 0 alone: S_0, softmax, P_0. Then each step issues S_j and P_{j-1} V_{j-1}
        // back to back, and runs the softmax of S_j while the P V wgmma computes. O is
        // rescaled only once that wgmma has retired; it accumulated P_{j-1} V_{j-1}
        // against the maxima P_{j-1} was computed with, so the order stays exact.
        {
          AccS acc_s;
          compute_s(acc_s);
          if (n_masked > 0) mask(acc_s, keys.template block</*kReverse=*/true>(0));
          softmax.template update_scores</*kIsFirst=*/true>(acc_s, p.softmax_scale_log2);
          store_p(acc_s);
        }
        PipelineState st_v = st;  // the stage holding V of the block P belongs to
        st.advance();
        auto step = [&](int i, auto is_masked) __attribute__((always_inline)) {
          AccS acc_s;
          turn_sync();
          issue_qk(acc_s, st);
          issue_pv(acc_o, st_v);
          turn_pass();
          wgmma_wait<1>(acc_s);
          pipe_k.consumer_release(st);
          if constexpr (decltype(is_masked)::value) mask(acc_s, keys.template block</*kReverse=*/true>(i));
          auto const correction = softmax.template update_scores</*kIsFirst=*/false>(acc_s, p.softmax_scale_log2);
          wgmma_wait<0>(acc_o, tOrP);
          pipe_v.consumer_release(st_v);
          store_p(acc_s);
          if (!Traits::kLazyRescale || correction.rescale) softmax.rescale_o(acc_o, correction.factor);
          st_v = st;
          st.advance();
        };
        int i = 1;
        for (; i < n_masked; ++i) { step(i, true_type{}); }
        for (; i < num_blocks; ++i) { step(i, false_type{}); }
        release_q();
        issue_pv(acc_o, st_v);
        wgmma_wait<0>(acc_o, tOrP);
        pipe_v.consumer_release(st_v);
      } else {
        // One block at a time: S_j, its softmax, then P_j V_j.
        auto step = [&](int i, auto is_first, auto is_masked) __attribute__((always_inline)) {
          AccS acc_s;
          compute_s(acc_s);
          if constexpr (decltype(is_masked)::value) mask(acc_s, keys.template block</*kReverse=*/true>(i));
          softmax.template update<decltype(is_first)::value>(acc_s, acc_o, p.softmax_scale_log2);
          store_p(acc_s);
          issue_pv(acc_o, st);
          wgmma_wait<0>(acc_o, tOrP);
          pipe_v.consumer_release(st);
          st.advance();
        };
        if (n_masked > 0) {
          step(0, true_type{}, true_type{});
        } else {
          step(0, true_type{}, false_type{});
        }
        int i = 1;
        for (; i < n_masked; ++i) { step(i, false_type{}, true_type{}); }
        for (; i < num_blocks; ++i) { step(i, false_type{}, false_type{}); }
        release_q();
      }
    } else {
      softmax.reset();  // no row sees a key: O = 0, LSE = -inf
    }

    // --- Epilogue: O / l and the LSE -------------------------------------------------------
    softmax.finalize(acc_o);
    // Row offset of this tile's first row in the (batch, nheads, seqlen_q) LSE layout.
    index_t const row_offset = (index_t(coord.bidb) * p.nheads + coord.bidh) * p.seqlen_q + coord.m_block * kBlockM;
    auto store_lse = [&](float* lse) {
      Tensor tScS_rc = score_coords();  // (M,N)
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi) {
        // The 4 threads of a quad hold one row; the one holding column 0 writes it.
        int const row = get<0>(tScS_rc(mi, 0));
        if (get<1>(tScS_rc(mi, 0)) == 0 && row < num_rows) { lse[row] = softmax.lse(mi, p.softmax_scale); }
      }
    };
    if constexpr (Traits::kSplitKV) {
      if (p.num_splits > 1) {
        // This split's O (fp32, normalised by its own row sums) and LSE go to the
        // accumulators, for fwd_combine_kernel to weigh by exp(lse_split - lse); a split
        // with no key block writes O = 0 and LSE = -inf.
        index_t const split_row = split_row_offset(p, coord.n_split, row_offset);
        store_lse(p.lse_accum_ptr + split_row);
        store_split_o<kBlockM, kHeadDim>(p.o_accum_ptr + split_row * kHeadDim, thr_mma_pv, acc_o, num_rows);
        // Neither the Q-empty arrival nor ++q_iter: a split CTA has one tile (split-KV
        // traits are never persistent, a static_assert of the traits), so no next Q waits.
        continue;
      }
    }
    if (p.softmax_lse_ptr != nullptr) store_lse(p.softmax_lse_ptr + row_offset);
    if (num_blocks <= 0) {
      // A tile that sees no key: zeros straight to global memory. sO may be sQ, which the
      // producer may already be refilling for the next tile; nothing waits on this tile.
      Element* o = static_cast<Element*>(p.o_ptr) + coord.bidb * p.o_batch_stride + coord.bidh * p.o_head_stride +
                   coord.m_block * kBlockM * p.o_row_stride;
      constexpr int kVecs = kHeadDim / 8;  // 16-byte vectors per row
      for (int idx = tidx; idx < kBlockM * kVecs; idx += Traits::kNumConsumerThreads) {
        int const row = idx / kVecs;
        if (row < num_rows) {
          *reinterpret_cast<uint4*>(o + row * p.o_row_stride + (idx % kVecs) * 8) = make_uint4(0, 0, 0, 0);
        }
      }
      continue;
    }
    // O to bf16/fp16 in shared memory (stmatrix), then one TMA store of the tile; TMA drops
    // the rows past seqlen_q.
    Tensor rO = convert_type<Element>(acc_o);
    if constexpr (!Traits::kOAliasesQ) {
      // sO is reused tile after tile: the previous tile's store must have read it.
      if (tidx == 0) tma_store_wait<0>();
      cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads, static_cast<uint32_t>(Sm90Barrier::kOStaged));
    }
    copy(smem_tiled_copy_O, smem_thr_copy_O.retile_S(rO), taccOsO);
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
      if constexpr (Traits::kOAliasesQ) {
        // sO is sQ: the next tile's Q may load once the store has read it.
        tma_store_wait<0>();
        storage.barrier_q_empty.arrive();
      }
    }
    ++q_iter;
  }
  // The CTA's shared memory must outlive the last store's reads of it.
  if (tidx == 0) tma_store_wait<0>();
}

}  // namespace fa_cute
