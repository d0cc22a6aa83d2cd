#pragma once

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

#include "block_info.h"
#include "cute_utils.h"
#include "flash_params.h"
#include "fp8_layout.h"
#include "sm90/kernel_traits_sm90.h"
#include "sm90/named_barrier_sm90.h"
#include "softmax.h"
#include "tile_scheduler.h"

namespace fa_cute {

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

// The main loop of the Hopper kernel, in its two roles:
//   load (the producer warpgroup, one thread): TMA loads of a tile's Q and of its K and V
//     blocks into a kStages-deep ring on mbarriers (Sm90TmaPipeline), K/V kept in L2 for
//     the other query tiles of the head, Q streamed;
//   mma (each consumer warpgroup, 64 query rows): S = Q K^T with both operands in shared
//     memory, the fp32 online softmax on the accumulator in registers, and O += P V with
//     P from registers and V read transposed by wgmma straight from its TMA layout.
// The overlaps are knobs of the traits (ladder rungs 9-17, docs/ladder.md):
// kIntraWGOverlap issues S_j and P_{j-1} V_{j-1} together and runs the softmax of S_j
// under the P V wgmma; kPingPong makes the consumer warpgroups take turns issuing their
// GEMMs, so that one's softmax runs under the others' GEMMs. Key blocks are visited last
// to first, so the blocks that need a mask (the ragged tail of seqlen_k, the causal
// diagonal) come first and the loop over the rest holds no masking code. Ragged tiles
// need no predication on loads: TMA zero-fills rows past a sequence's end (batch and head
// are TMA dimensions of their own); the masks set the zero-filled keys' scores to -inf.
// kExtras: the variant that takes a logits softcap, a sliding window and variable-length
// batches (FwdParams::cu_seqlens_q; the others compile none of their code, which cost the
// dense kernels speed: docs/perf-notes.md, Hopper kernel). A varlen batch is packed into one
// (total rows, d, heads) tensor per operand; a sequence's tiles start at its first row, and
// the rows a ragged tile reads past its end (the next sequence's, or zero-filled past the
// total) are masked like zero-filled ones (keys) or never stored (queries).
template <class Traits, bool kCausal, bool kExtras = false>
struct Sm90FwdMainloop {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Pipeline::State;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;

  // What the host passes (FwdParams) becomes the TMA descriptors of Q, K and V (built on
  // the host, Sm90FwdLaunch::to_underlying_arguments; 128 bytes each, kept in the kernel's
  // __grid_constant__ parameter space where TMA instructions may address them).
  using Arguments = FwdParams;
  // tma_k_page, tma_v_page: the 16-row page boxes (Traits::SmemLayoutKVPageBox), encoded
  // only for a paged cache whose page size is not a multiple of kBlockN.
  struct Params {
    typename Traits::TmaLoadQ tma_q;
    typename Traits::TmaLoadK tma_k;
    typename Traits::TmaLoadV tma_v;
    typename Traits::TmaLoadKVPageBox tma_k_page;
    typename Traits::TmaLoadKVPageBox tma_v_page;
  };
  // Q, the K and V rings, their pipelines and Q's barriers; the traits lay it out together
  // with O's buffer, since whether O gets one of its own depends on the total size.
  using SharedStorage = typename Traits::SharedStorage;

  using TiledMmaQK = typename Traits::TiledMmaQK;
  using TiledMmaPV = typename Traits::TiledMmaPV;
  using AccS = decltype(cute::partition_fragment_C(TiledMmaQK{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>>{}));
  using AccO = decltype(cute::partition_fragment_C(TiledMmaPV{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  // 2 rows a thread
  static constexpr int kNRows = decltype(cute::size<0>(acc_layout_rowcol(AccO{}.layout())))::value;
  using Softmax = OnlineSoftmax<kNRows, Traits::kLazyRescale>;
  // FP8: P, unnormalised, reaches 2^kLazyRescaleLog2 under the lazy rescale (1 without); e4m3
  // saturates at 448.
  static_assert(!Traits::kFp8 || !Traits::kLazyRescale || Softmax::kLazyRescaleLog2 <= 8.f,
                "FP8: P up to 2^kLazyRescaleLog2 must stay below e4m3's 448");
  using Seqlens = FwdSeqlens<kExtras>;

  FwdParams const& p;
  Params const& mainloop_params;
  SharedStorage& storage;
  Pipeline pipe_k;
  Pipeline pipe_v;

  CUTE_DEVICE Sm90FwdMainloop(FwdParams const& p_, Params const& mainloop_params_, SharedStorage& storage_)
      : p(p_), mainloop_params(mainloop_params_), storage(storage_), pipe_k{storage_.pipeline_k},
        pipe_v{storage_.pipeline_v} {}

  // One thread, before the CTA-wide barrier that publishes them.
  CUTE_DEVICE void init_barriers() {
    storage.barrier_q_full.init(1);
    storage.barrier_q_empty.init(Traits::kOAliasesQ ? 1 : Traits::kNumConsumerWG);
    Pipeline::init(storage.pipeline_k);
    Pipeline::init(storage.pipeline_v);
  }

  CUTE_DEVICE FwdKeyRange key_range(FwdTileCoord const& c, Seqlens const& seq) const {
    return FwdKeyRange::of<kBlockM, kBlockN, Traits::kSplitKV, /*kWindow=*/kExtras>(c, p, seq);
  }

  // K/V's batch entries: a KV cache read through kv_batch_idx has batch_k of them.
  CUTE_HOST_DEVICE static int kv_batch(FwdParams const& p) { return p.kv_batch_idx != nullptr ? p.batch_k : p.batch; }

  // Whether K and V come from a paged cache in 16-row page boxes (Traits::TmaLoadKVPageBox):
  // pages that are not whole key blocks. The host encodes those descriptors only then.
  CUTE_HOST_DEVICE static bool reads_page_boxes(FwdParams const& p) {
    return kExtras && p.page_table != nullptr && p.page_size % kBlockN != 0;
  }

  // The TMA coordinate tensors of one (batch entry, head) of Q (K, V: rows = seqlen_k), whose
  // row 0 is the sequence's first: dense, the (seqlen, d, heads, batch) tensor's slice;
  // varlen, the packed (total, d, heads, 1) tensor's, offset to the sequence.
  template <class Tma>
  CUTE_DEVICE static auto rows_of(Tma const& tma, int seqlen, int total, int heads, int batch, int bidh, int bidb,
                                  Seqlens const& seq, int offset, FwdParams const& p) {
    using namespace cute;
    Tensor m = tma.get_tma_tensor(make_shape(seq.varlen ? total : seqlen, p.head_dim, heads, seq.varlen ? 1 : batch));
    return domain_offset(make_coord(offset, _0{}), m(_, _, bidh, seq.varlen ? 0 : bidb));  // (rows,D)
  }

  CUTE_DEVICE auto sQ() { return cute::make_tensor(cute::make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQ{}); }  // (BLK_M,D)

  // --- Load (producer) ------------------------------------------------------------------------
  CUTE_DEVICE void prefetch_descriptors() const {
    cute::prefetch_tma_descriptor(mainloop_params.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(mainloop_params.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(mainloop_params.tma_v.get_tma_descriptor());
    if (reads_page_boxes(p)) {
      cute::prefetch_tma_descriptor(mainloop_params.tma_k_page.get_tma_descriptor());
      cute::prefetch_tma_descriptor(mainloop_params.tma_v_page.get_tma_descriptor());
    }
  }

  // The loads of one tile that sees keys: its first K before the wait for sQ (it only
  // needs a free stage, which the previous tile's last S wgmma released), Q once the
  // previous tile's consumers released sQ, then V and the remaining K/V blocks as stages
  // free up. st: the producer's pipeline state; q_iter: tiles whose Q was loaded before.
  CUTE_DEVICE void load(FwdTileCoord const& coord, Seqlens const& seq, FwdKeyRange const& keys, PipelineState& st,
                        int q_iter) {
    using namespace cute;
    Tensor sQ_ = sQ();
    Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutK{});  // (BLK_N,D,STAGE)
    Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutV{});  // (BLK_N,D,STAGE)
    Tensor mQ = rows_of(mainloop_params.tma_q, p.seqlen_q, p.total_q, p.nheads, p.batch, coord.bidh, coord.bidb,
                        seq, seq.offset_q, p);  // (seqlen_q,D)
    Tensor mK = rows_of(mainloop_params.tma_k, p.seqlen_k, p.total_k, p.nheads_k, kv_batch(p), coord.bidh_k,
                        seq.bidb_k, seq, seq.offset_k, p);  // (seqlen_k,D)
    Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(coord.m_block, _0{}));  // (BLK_M,D)
    Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));              // (BLK_N,D,n)
    // FP8: V's blocks are (D, BLK_N) boxes of Vt (fp8_layout.h), whose rows are d.
    auto gV = [&] {
      if constexpr (Traits::kFp8) {
        Tensor mVt = mainloop_params.tma_v.get_tma_tensor(make_shape(p.head_dim, int(fp8_vt_keys(p.seqlen_k)),
                                                                     p.nheads_k, p.batch))(_, _, coord.bidh_k, coord.bidb);  // (D,vt_keys)
        return local_tile(mVt, Shape<Int<kHeadDim>, Int<kBlockN>>{}, make_coord(_0{}, _));  // (D,BLK_N,n)
      } else {
        Tensor mV = rows_of(mainloop_params.tma_v, p.seqlen_k, p.total_k, p.nheads_k, kv_batch(p), coord.bidh_k,
                            seq.bidb_k, seq, seq.offset_k, p);  // (seqlen_k,D)
        return local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));  // (BLK_N,D,n)
      }
    }();
    auto [tQgQ, tQsQ] =
        tma_partition(mainloop_params.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ_), group_modes<0, 2>(gQ));
    // (The K and V partitions are captured by the lambdas below: no structured bindings.)
    auto const tK =
        tma_partition(mainloop_params.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    auto const tV =
        tma_partition(mainloop_params.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
    Tensor tKgK = get<0>(tK);  // (TMA,n)
    Tensor tKsK = get<1>(tK);  // (TMA,STAGE)
    Tensor tVgV = get<0>(tV);  // (TMA,n)
    Tensor tVsV = get<1>(tV);  // (TMA,STAGE)
    // A paged KV cache (kExtras): the descriptors cover the page pool (page_size, d, heads_k,
    // num_pages). Pages of whole key blocks: key block n is block (n * kBlockN % page_size) /
    // kBlockN of its page, one box. Other page sizes (multiples of 16): the stage is filled by
    // kBlockN / 16 page boxes, box j from the page of key n * kBlockN + 16 j. A box's key is
    // clamped to the sequence's last: the rows past it are masked, and the page table need
    // not cover them.
    bool const paged = kExtras && p.page_table != nullptr;
    bool const page_boxes = reads_page_boxes(p);
    auto page_tiles = [&](auto const& tma, auto const& tiler) {
      Tensor m = tma.get_tma_tensor(make_shape(p.page_size, p.head_dim, p.nheads_k, p.num_pages));
      return flat_divide(m(_, _, coord.bidh_k, _), tiler);  // (ROWS,D,tiles_per_page,1,num_pages)
    };
    // Q is read once per tile, K and V by every query tile of the head: keep K/V in L2.
    auto load_kv = [&](Pipeline& pipe, int bytes, auto const& tma, auto const& tma_page, auto const& tXgX,
                       auto const& tXsX, auto const& sX, int i) {
      int const n = keys.template block</*kReverse=*/true>(i);
      uint64_t& barrier = pipe.producer_acquire(st, bytes);
      if constexpr (kExtras) {
        if (page_boxes) {
          auto const box = Shape<Int<Traits::kPageBoxRows>, Int<kHeadDim>>{};
          auto [tPg, tPs] = tma_partition(tma_page, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(flat_divide(sX, box)),
                                          group_modes<0, 2>(page_tiles(tma_page, box)));
          auto tma_box = tma_page.with(barrier, 0, TMA::CacheHintSm90::EVICT_LAST);
          // The boxes' pages first, then their copies: a TMA issue is an asm statement that
          // clobbers memory, so a page-table read between two of them would wait out its
          // latency before the next issue. All of a block's pages at once where the producer
          // has the registers (the 1-warpgroup decode tiles' 56); one at a time on 24 or 32
          // (groups of 4 pushed the d=192 tile's extras variant past its spill budget).
          constexpr int kBoxes = kBlockN / Traits::kPageBoxRows;
          constexpr int kGroup = Traits::kProducerRegs >= 56 ? kBoxes : 1;
          // Box j's first key, clamped to the sequence's last.
          auto box_key = [&](int j) { return cute::min(n * kBlockN + j * Traits::kPageBoxRows, seq.seqlen_k - 1); };
          CUTE_UNROLL
          for (int g = 0; g < kBoxes; g += kGroup) {
            int box_page[kGroup];
            CUTE_UNROLL
            for (int j = 0; j < kGroup && g + j < kBoxes; ++j) box_page[j] = seq.page_of(p, coord.bidb, box_key(g + j));
            CUTE_UNROLL
            for (int j = 0; j < kGroup && g + j < kBoxes; ++j) {
              copy(tma_box, tPg(_, box_key(g + j) % p.page_size / Traits::kPageBoxRows, 0, box_page[j]),
                   tPs(_, g + j, 0, st.index));  // (TMA,BOXES,1,STAGE)
            }
          }
          return;
        }
      }
      auto tma_block = tma.with(barrier, 0, TMA::CacheHintSm90::EVICT_LAST);
      if constexpr (kExtras) {
        if (paged) {
          auto const block = Shape<Int<kBlockN>, Int<kHeadDim>>{};
          Tensor tPg = get<0>(tma_partition(tma, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sX),
                                            group_modes<0, 2>(page_tiles(tma, block))));  // (TMA,blocks,1,pages)
          int const key = n * kBlockN;
          copy(tma_block, tPg(_, key % p.page_size / kBlockN, 0, seq.page_of(p, coord.bidb, key)), tXsX(_, st.index));
          return;
        }
      }
      copy(tma_block, tXgX(_, n), tXsX(_, st.index));
    };
    auto load_k = [&](int i) {
      load_kv(pipe_k, Traits::kTmaTransactionBytesK, mainloop_params.tma_k, mainloop_params.tma_k_page, tKgK, tKsK,
              sK, i);
    };
    auto load_v = [&](int i) {
      load_kv(pipe_v, Traits::kTmaTransactionBytesV, mainloop_params.tma_v, mainloop_params.tma_v_page, tVgV, tVsV,
              sV, i);
    };
    load_k(0);
    storage.barrier_q_empty.wait((q_iter & 1) ^ 1);
    storage.barrier_q_full.arrive_and_expect_tx(Traits::kTmaTransactionBytesQ);
    copy(mainloop_params.tma_q.with(reinterpret_cast<uint64_t&>(storage.barrier_q_full), 0,
                                    TMA::CacheHintSm90::EVICT_FIRST),
         tQgQ, tQsQ);
    load_v(0);
    st.advance();
    for (int i = 1; i < keys.num_blocks(); ++i) {
      load_k(i);
      load_v(i);
      st.advance();
    }
  }

  // --- MMA (consumers) ------------------------------------------------------------------------
  // The consumer side's per-thread state across tiles: the MMA partitions, the pipeline
  // state, P's registers and the ping-pong turn.
  struct Consumer {
    Sm90FwdMainloop& mainloop;
    int const tidx;  // among the consumer threads
    int const wg;    // consumer warpgroup
    TiledMmaQK tiled_mma_qk;
    TiledMmaPV tiled_mma_pv;
    PipelineState st;

    CUTE_DEVICE Consumer(Sm90FwdMainloop& mainloop_, int tidx_) : mainloop(mainloop_), tidx(tidx_), wg(tidx_ / 128) {
      // Ping-pong: warpgroup 0 takes the first turn.
      if constexpr (Traits::kPingPong) {
        if (wg == Traits::kNumConsumerWG - 1) {
          cutlass::arch::NamedBarrier::arrive(2 * 128, static_cast<uint32_t>(Sm90Barrier::kWgTurn0));
        }
      }
    }

    CUTE_DEVICE auto thr_mma_pv() const { return tiled_mma_pv.get_thread_slice(tidx); }

    // Ping-pong: warpgroup w issues its GEMMs only on its turn (named barrier kWgTurn0 + w,
    // 256 threads: its own 128 syncing, the previous warpgroup's 128 arriving) and hands
    // the turn to warpgroup w + 1 (round robin) as soon as they are issued. The tensor
    // cores run the batches in issue order, so one warpgroup's GEMMs overlap the others'
    // softmax instead of competing with them. All warpgroups of a CTA take the same number
    // of turns per tile.
    CUTE_DEVICE void turn_sync() const {
      if constexpr (Traits::kPingPong) {
        cutlass::arch::NamedBarrier::sync(2 * 128, static_cast<uint32_t>(Sm90Barrier::kWgTurn0) + wg);
      }
    }
    CUTE_DEVICE void turn_pass() const {
      if constexpr (Traits::kPingPong) {
        cutlass::arch::NamedBarrier::arrive(2 * 128, static_cast<uint32_t>(Sm90Barrier::kWgTurn0) +
                                                         (wg + 1) % Traits::kNumConsumerWG);
      }
    }

    // One tile that sees keys, into acc_o (cleared) and softmax: waits for its Q, runs the
    // key blocks, and releases sQ (where O has a buffer of its own) once every S wgmma of
    // the tile has retired, so the next tile's Q loads under the last P V and the epilogue.
    CUTE_DEVICE void mma(FwdTileCoord const& coord, Seqlens const& seq, FwdKeyRange const& keys, AccO& acc_o,
                         Softmax& softmax, int q_iter) {
      using namespace cute;
      FwdParams const& p = mainloop.p;
      auto thr_mma_qk = tiled_mma_qk.get_thread_slice(tidx);
      auto thr_mma_pv = tiled_mma_pv.get_thread_slice(tidx);
      Tensor sK = make_tensor(make_smem_ptr(mainloop.storage.smem_k.data()), typename Traits::SmemLayoutK{});    // (BLK_N,D,STAGE)
      Tensor sVt = make_tensor(make_smem_ptr(mainloop.storage.smem_v.data()), typename Traits::SmemLayoutVt{});  // (D,BLK_N,STAGE)
      Tensor tSrQ = thr_mma_qk.partition_fragment_A(mainloop.sQ());  // (MMA,MMA_M,MMA_D): smem descriptors
      Tensor tSrK = thr_mma_qk.partition_fragment_B(sK);             // (MMA,MMA_N,MMA_D,STAGE)
      Tensor tOrV = thr_mma_pv.partition_fragment_B(sVt);            // (MMA,MMA_D,MMA_N,STAGE)
      // P as the A operand of the P V wgmma: the accumulator layout relabelled (no movement);
      // FP8, in k-blocks of 32 keys reordered within the thread (convert_p_fp8_sm90).
      auto make_p = [] {
        if constexpr (Traits::kFp8) {
          return make_tensor<Element>(
              Shape<Shape<_4, _2, _2>, Int<size<1>(AccS{})>, Int<kBlockN / kFp8VtChunk>>{});  // (MMA,MMA_M,MMA_N/32)
        } else {
          return make_tensor<Element>(acc_layout_as_a_operand_sm90(AccS{}.layout()));  // (MMA,MMA_M,MMA_N/16)
        }
      };
      Tensor tOrP = make_p();
      auto store_p = [&](AccS const& acc_s) {
        if constexpr (Traits::kFp8) {
          convert_p_fp8_sm90(acc_s, tOrP);
        } else {
          convert_type_into(acc_s, tOrP);
        }
      };
      // The scores' scale in log2 units; FP8 folds in the tile's q and k descale factors.
      float const scale_log2 = Traits::kFp8 ? p.softmax_scale_log2 * qk_descale(p, coord) : p.softmax_scale_log2;
      auto& pipe_k = mainloop.pipe_k;
      auto& pipe_v = mainloop.pipe_v;
      // S = Q K^T of the block in stage s.
      auto issue_qk = [&](AccS& acc_s, PipelineState const& s) {
        pipe_k.consumer_wait(s);
        wgmma_gemm</*kZeroInit=*/true>(tiled_mma_qk, tSrQ, tSrK(_, _, _, s.index), acc_s);
      };
      // O += P V of the block in stage s; P from registers, as the RS wgmma's A operand.
      auto issue_pv = [&](PipelineState const& s) {
        pipe_v.consumer_wait(s);
        wgmma_gemm</*kZeroInit=*/false>(tiled_mma_pv, tOrP, tOrV(_, _, _, s.index), acc_o);
      };
      // S = Q K^T of the block in stage st with nothing else in flight: issued on this
      // warpgroup's turn, waited for, its K stage handed back.
      auto compute_s = [&](AccS& acc_s) {
        turn_sync();
        issue_qk(acc_s, st);
        turn_pass();
        wgmma_wait<0>(acc_s);
        pipe_k.consumer_release(st);
      };
      auto mask = [&](AccS& acc_s, int n_block) {
        mask_scores<kBlockM, kBlockN, /*kKeysEven=*/false, /*kWindow=*/kExtras>(acc_s, thr_mma_qk, p, seq,
                                                                                coord.m_block, n_block, kCausal);
      };
      // Before the mask, which writes -inf over what the softcap would map to -1. Not at
      // d=256, whose registers it overflowed (its launch refuses a softcap).
      auto softcap = [&](AccS& acc_s) {
        if constexpr (kExtras && kHeadDim < 256) {
          if (p.softcap_premul != 0.f) apply_softcap(acc_s, p.softcap_premul);
        }
      };
      // A KV cache's (or a varlen batch's seqused_k) last key block: TMA reads it whole, and
      // its rows past the sequence's keys are cache rows no sequence wrote, which may hold
      // NaN (a serving engine's cache can be torch.empty). P is 0 there, but 0 * NaN is NaN
      // in P V (FlashAttention-2 zero-fills those rows; FlashAttention-3 issues #1745, #2374),
      // so the consumers zero them in the V stage before any of them issues a P V on it.
      auto zero_v_tail = [&](PipelineState const& s, int n_block) {
        if constexpr (kExtras) {
          static_assert(!Traits::kFp8, "the FP8 kernels have no extras variant (Vt's stage is (D,BLK_N))");
          int const first = seq.seqlen_k - n_block * kBlockN;
          if (p.seqused_k == nullptr || first >= kBlockN) return;
          Tensor sV = make_tensor(make_smem_ptr(mainloop.storage.smem_v.data()), typename Traits::SmemLayoutV{});  // (BLK_N,D,STAGE)
          pipe_v.consumer_wait(s);
          zero_rows_from(sV(_, _, s.index), first, tidx, Traits::kNumConsumerThreads);
          cutlass::arch::fence_view_async_shared();
          cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads, static_cast<uint32_t>(Sm90Barrier::kVTailZeroed));
        }
      };
      // Every S wgmma of the tile has retired: with its own sO, the next tile's Q may load
      // under the last P V and the epilogue (with sO in sQ, the O store releases it).
      auto release_q = [&] {
        if constexpr (!Traits::kOAliasesQ) {
          if (tidx % 128 == 0) mainloop.storage.barrier_q_empty.arrive();
        }
      };

      int const num_blocks = keys.num_blocks();
      mainloop.storage.barrier_q_full.wait(q_iter & 1);
      // Visited last to first, the blocks needing a mask (the seqlen_k tail, the causal
      // diagonal, a window's right bound) are the first n_masked, those a window's left bound
      // cuts the last: loops with the mask code around one without.
      int const n_masked = keys.num_masked_first_reversed();
      int const unmasked_end = kExtras ? cute::max(n_masked, num_blocks - keys.num_masked_last_reversed()) : num_blocks;
      // Only a window's left bound leaves masked blocks after the unmasked ones (kExtras).
      bool const first_masked = n_masked > 0 || (kExtras && unmasked_end == 0);
      if constexpr (Traits::kIntraWGOverlap) {
        // Block 0 alone: S_0, softmax, P_0. Then each step issues S_j and P_{j-1} V_{j-1}
        // back to back, and runs the softmax of S_j while the P V wgmma computes. O is
        // rescaled only once that wgmma has retired; it accumulated P_{j-1} V_{j-1}
        // against the maxima P_{j-1} was computed with, so the order stays exact.
        {
          AccS acc_s;
          compute_s(acc_s);
          softcap(acc_s);
          if (first_masked) mask(acc_s, keys.template block</*kReverse=*/true>(0));
          softmax.template update_scores</*kIsFirst=*/true>(acc_s, scale_log2);
          store_p(acc_s);
        }
        PipelineState st_v = st;  // the stage holding V of the block P belongs to
        zero_v_tail(st_v, keys.template block</*kReverse=*/true>(0));
        st.advance();
        auto step = [&](int i, auto is_masked) __attribute__((always_inline)) {
          AccS acc_s;
          turn_sync();
          issue_qk(acc_s, st);
          issue_pv(st_v);
          turn_pass();
          wgmma_wait<1>(acc_s);
          pipe_k.consumer_release(st);
          softcap(acc_s);
          if constexpr (decltype(is_masked)::value) mask(acc_s, keys.template block</*kReverse=*/true>(i));
          auto const correction = softmax.template update_scores</*kIsFirst=*/false>(acc_s, scale_log2);
          wgmma_wait<0>(acc_o, tOrP);
          pipe_v.consumer_release(st_v);
          store_p(acc_s);
          if (!Traits::kLazyRescale || correction.rescale) softmax.rescale_o(acc_o, correction.factor);
          st_v = st;
          st.advance();
        };
        int i = 1;
        if constexpr (kExtras) {
          // The masked runs before and after the unmasked one through one copy of the masked
          // body (a third copy cost the variant registers).
          for (int masked_end = n_masked;;) {
            for (; i < masked_end; ++i) { step(i, true_type{}); }
            if (masked_end == num_blocks) break;
            for (; i < unmasked_end; ++i) { step(i, false_type{}); }
            masked_end = num_blocks;
          }
        } else {
          for (; i < n_masked; ++i) { step(i, true_type{}); }
          for (; i < unmasked_end; ++i) { step(i, false_type{}); }
        }
        release_q();
        issue_pv(st_v);
        wgmma_wait<0>(acc_o, tOrP);
        pipe_v.consumer_release(st_v);
      } else {
        // One block at a time: S_j, its softmax, then P_j V_j.
        auto step = [&](int i, auto is_first, auto is_masked) __attribute__((always_inline)) {
          AccS acc_s;
          compute_s(acc_s);
          softcap(acc_s);
          if constexpr (decltype(is_masked)::value) mask(acc_s, keys.template block</*kReverse=*/true>(i));
          softmax.template update<decltype(is_first)::value>(acc_s, acc_o, scale_log2);
          store_p(acc_s);
          if constexpr (decltype(is_first)::value) zero_v_tail(st, keys.template block</*kReverse=*/true>(0));
          issue_pv(st);
          wgmma_wait<0>(acc_o, tOrP);
          pipe_v.consumer_release(st);
          st.advance();
        };
        if (first_masked) {
          step(0, true_type{}, true_type{});
        } else {
          step(0, true_type{}, false_type{});
        }
        int i = 1;
        if constexpr (kExtras) {
          for (int masked_end = n_masked;;) {  // as above: one copy of the masked body
            for (; i < masked_end; ++i) { step(i, false_type{}, true_type{}); }
            if (masked_end == num_blocks) break;
            for (; i < unmasked_end; ++i) { step(i, false_type{}, false_type{}); }
            masked_end = num_blocks;
          }
        } else {
          for (; i < n_masked; ++i) { step(i, false_type{}, true_type{}); }
          for (; i < unmasked_end; ++i) { step(i, false_type{}, false_type{}); }
        }
        release_q();
      }
    }
  };
};

}  // namespace fa_cute
