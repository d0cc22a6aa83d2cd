#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

#include "block_info.h"
#include "bwd_dq_atomics.h"
#include "bwd_dq_order.h"
#include "bwd_params.h"
#include "cute_utils.h"
#include "epilogue_bwd.h"
#include "sm80/mainloop_bwd_sm80.h"  // BwdTileCoord: both backward families number their CTAs alike
#include "sm90/kernel_traits_bwd_sm90.h"
#include "sm90/mainloop_fwd_sm90.h"  // wgmma_gemm, wgmma_wait
#include "sm90/named_barrier_sm90.h"
#include "softmax.h"  // apply_softcap

namespace fa_cute {

// The main loop of the Hopper backward kernel (semantics of Sm80BwdMainloop: same
// dq_accum / softmax_d contract, same masks), in its roles:
//   load (producer warp 0, one thread): K_j and V_j once (barrier_kv), then Q_m and dO_m
//     of every (query head of the group, query block) into the kStages-deep ring;
//   Consumer::mma (warpgroups 1 and 2, 64 keys each): per query block (and, one step
//     ahead, the next block's 64 LSE * log2(e) and D into shared memory: load_row_stats)
//     S^T = K Q^T, dP^T - D = V dO^T - D         (both issued, then waited in turn; the
//                                                 dP^T accumulator starts at -D)
//     P^T = exp2(S^T * scale_log2 - LSE), masked entries 0; dS^T = P^T (dP^T - D)
//     dV += P^T dO, dK += dS^T Q                 (RS: P^T, dS^T straight from registers)
//     dS^T -> shared memory as dS; both warpgroups' columns (and the next step's LSE and
//       D) stored (named barrier);
//       dV and dK retire, the Q/dO stage is released
//     dQ_m = dS K (this warpgroup's d/2 columns) added to dq_accum by 16-byte atomics
//   store_dkdv (consumers): dK * scale and dV in the input dtype.
// The traits' knobs vary seven of these steps: dS^T stored by stmatrix (kdSStmatrix); dQ_m
// staged per warp in shared memory and added by TMA bulk reduce-adds that run on while
// the next step computes (kdQBulkReduce, add_dq_bulk); the -D start of dP^T written before
// S^T is issued, so that the two wgmma batches are issued back to back (kdPEarlyInit); the
// dQ wgmma issued behind dV and dK before they retire (kdQOverlap); each warpgroup computing
// dQ_m over its own 64 keys, with barriers of its own (kdQPerWG); dV issued behind dP^T as
// soon as P^T is ready, dK behind it, dS^T stored while both run (kdVEarly); dQ_m stored as one tile in
// shared memory (one of kdQTileStages buffers) and added by the dQ warp (producer warp 1,
// store_dq) with one bulk reduce-add into dq_accum's tiled layout (kdQTile, stage_dq_tile).
// The ragged tiles need no predicated loads: TMA zero-fills rows past seqlen_q (Q, dO)
// and seqlen_k (K, V); rows past seqlen_q get LSE = +inf (P = 0), keys past seqlen_k and
// past the causal diagonal are masked to S = -inf (P = dS = 0). kExtras: the variant that
// takes a variable-length batch (TMA then loads from the packed (total, d, heads, 1)
// tensors at the sequence's first row, BwdSeqlens, and the rows past the sequence's end
// that a tile reaches, the next sequence's, are masked as those past seqlen_q and seqlen_k
// are), a sliding window and a logits softcap (Sm80BwdMainloop's rules; with the softcap,
// P^T waits for dP^T, since dS^T needs t beside it).
// The main loop's TMA descriptors of Q, dO, K and V, built on the host
// (Sm90BwdLaunch::to_underlying_arguments) and kept in the kernel's __grid_constant__
// parameter space, where TMA instructions may address them; one type for both kExtras
// variants (a varlen batch's packed tensors differ in their sizes only).
template <class Traits>
struct Sm90BwdMainloopParams {
  typename Traits::TmaLoadQdO tma_q;
  typename Traits::TmaLoadQdO tma_do;
  typename Traits::TmaLoadKV tma_k;
  typename Traits::TmaLoadKV tma_v;
};

template <class Traits, bool kExtras>
struct Sm90BwdMainloop {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Pipeline::State;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using TileQ = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>;   // Q, dO, dQ
  using TileKV = cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>;  // K, V, dK, dV
  using TileSt = cute::Shape<cute::Int<kBlockN>, cute::Int<kBlockM>>;   // S^T, P^T, dP^T, dS^T

  // What the host passes (BwdParams) becomes the TMA descriptors of Q, dO, K and V.
  using Arguments = BwdParams;
  using Params = Sm90BwdMainloopParams<Traits>;
  using SharedStorage = typename Traits::SharedStorage;

  using TiledMmaSdP = typename Traits::TiledMmaSdP;
  using TiledMmadKV = typename Traits::TiledMmadKV;
  using TiledMmadQ = typename Traits::TiledMmadQ;
  using AccS = decltype(cute::partition_fragment_C(TiledMmaSdP{}, TileSt{}));     // S^T, dP^T
  using AccdKV = decltype(cute::partition_fragment_C(TiledMmadKV{}, TileKV{}));  // dK, dV
  using AccdQ = decltype(cute::partition_fragment_C(TiledMmadQ{}, TileQ{}));     // dQ

  BwdParams const& p;
  Params const& mainloop_params;
  SharedStorage& storage;
  Pipeline pipe;
  BwdTileCoord const coord;
  BwdSeqlens<kExtras> const seq;
  BwdQueryRange const queries;
  int const group;  // query heads per K/V head
  // The first query block this CTA visits, counted from m_block_min: 0, or with
  // BwdParams::dq_rotate the rotated order's (bwd_dq_order.h).
  int const m_first;

  CUTE_DEVICE Sm90BwdMainloop(BwdParams const& p_, Params const& mainloop_params_, SharedStorage& storage_,
                              BwdTileCoord const& coord_, BwdSeqlens<kExtras> const& seq_)
      : p(p_), mainloop_params(mainloop_params_), storage(storage_), pipe{storage_.pipeline_qdo}, coord(coord_),
        seq(seq_),
        queries(BwdQueryRange::of<kBlockM, kBlockN>(coord_.n_block, seq_.seqlen_q, seq_.seqlen_k,
                                                    bwd_right_bound<kExtras>(p_), bwd_left_bound<kExtras>(p_),
                                                    seq_.causal_offset)),
        group(p_.nheads / p_.nheads_k),
        m_first(p_.dq_rotate ? dq_rotated_first_m(coord_.n_block, p_.dq_rotate - 1) : 0) {}

  // The TMA view of an operand's rows of head `head` of this batch entry, from row 0 of the
  // entry: dense, the (seqlen, d, heads, batch) tensor's; varlen, the packed (total, d,
  // heads, 1) tensor's, offset to the sequence (Sm90BwdLaunch builds the descriptors alike).
  template <class Tma>
  CUTE_DEVICE auto rows_of(Tma const& tma, int seqlen, int total, int heads, int head, int offset) const {
    using namespace cute;
    Tensor m = tma.get_tma_tensor(make_shape(seq.varlen ? total : seqlen, p.head_dim, heads, seq.varlen ? 1 : p.batch));
    return domain_offset(make_coord(offset, _0{}), m(_, _, head, seq.varlen ? 0 : coord.bidb));  // (rows,D)
  }

  // (query head, query block) steps of this CTA: every role walks them in the same order,
  // the query heads of the group in turn, each over its query blocks: step i of a head is
  // query block m_block_at(i).
  CUTE_DEVICE int num_steps() const { return group * queries.num_blocks(); }
  CUTE_DEVICE int m_block_at(int i) const {
    int const j = i + m_first;
    return queries.m_block_min + (j < queries.num_blocks() ? j : j - queries.num_blocks());
  }
  // The query block after m_block in that order (after a head's last, the next head's first).
  CUTE_DEVICE int next_m_block(int m_block) const {
    return m_block + 1 == queries.m_block_max ? queries.m_block_min : m_block + 1;
  }

  // One thread, before the CTA-wide barrier that publishes them.
  CUTE_DEVICE void init_barriers() {
    Pipeline::init(storage.pipeline_qdo);
    storage.barrier_kv.init(1);
  }

  CUTE_DEVICE void prefetch_descriptors() const {
    cute::prefetch_tma_descriptor(mainloop_params.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(mainloop_params.tma_do.get_tma_descriptor());
    cute::prefetch_tma_descriptor(mainloop_params.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(mainloop_params.tma_v.get_tma_descriptor());
  }

  // --- Load (producer warp 0, one thread) ---------------------------------------------------
  // Nothing when no query sees the block: the consumers then wait on nothing either, and
  // no TMA write is left in flight into the shared memory of an exited CTA.
  CUTE_DEVICE void load() {
    using namespace cute;
    if (num_steps() <= 0) return;
    Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutK{});     // (BLK_N,D)
    Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutV{});     // (BLK_N,D)
    Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQ{});     // (BLK_M,D,STAGE)
    Tensor sdO = make_tensor(make_smem_ptr(storage.smem_do.data()), typename Traits::SmemLayoutdO{});  // (BLK_M,D,STAGE)
    Tensor mK = rows_of(mainloop_params.tma_k, p.seqlen_k, p.total_k, p.nheads_k, coord.bidh_k, seq.offset_k);
    Tensor mV = rows_of(mainloop_params.tma_v, p.seqlen_k, p.total_k, p.nheads_k, coord.bidh_k, seq.offset_k);
    Tensor gK = local_tile(mK, TileKV{}, make_coord(coord.n_block, _0{}));  // (BLK_N,D)
    Tensor gV = local_tile(mV, TileKV{}, make_coord(coord.n_block, _0{}));  // (BLK_N,D)
    auto [tKgK, tKsK] =
        tma_partition(mainloop_params.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    auto [tVgV, tVsV] =
        tma_partition(mainloop_params.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
    // K and V are read by this CTA alone; Q and dO by every key block's CTA of the head.
    storage.barrier_kv.arrive_and_expect_tx(Traits::kTmaTransactionBytesKV);
    uint64_t& bar_kv = reinterpret_cast<uint64_t&>(storage.barrier_kv);
    copy(mainloop_params.tma_k.with(bar_kv, 0, TMA::CacheHintSm90::EVICT_FIRST), tKgK, tKsK);
    copy(mainloop_params.tma_v.with(bar_kv, 0, TMA::CacheHintSm90::EVICT_FIRST), tVgV, tVsV);

    PipelineState st = Pipeline::producer_start_state();
    int m_block = m_block_at(0);
    for (int h_in_group = 0; h_in_group < group; ++h_in_group) {
      int const bidh = coord.bidh_k * group + h_in_group;
      Tensor mQ = rows_of(mainloop_params.tma_q, p.seqlen_q, p.total_q, p.nheads, bidh, seq.offset_q);
      Tensor mdO = rows_of(mainloop_params.tma_do, p.seqlen_q, p.total_q, p.nheads, bidh, seq.offset_q);
      Tensor gQ = local_tile(mQ, TileQ{}, make_coord(_, _0{}));    // (BLK_M,D,m)
      Tensor gdO = local_tile(mdO, TileQ{}, make_coord(_, _0{}));  // (BLK_M,D,m)
      auto [tQgQ, tQsQ] =
          tma_partition(mainloop_params.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
      auto [tdOgdO, tdOsdO] = tma_partition(mainloop_params.tma_do, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sdO),
                                            group_modes<0, 2>(gdO));
      // Not unrolled: the producer warpgroup runs on 24 registers (an unrolled copy of this
      // loop spilled at d = 64 next to the dQ warp's).
      CUTE_NO_UNROLL
      for (int i = 0; i < queries.num_blocks(); ++i, m_block = next_m_block(m_block)) {
        uint64_t& bar = pipe.producer_acquire(st, Traits::kTmaTransactionBytesQdO);
        copy(mainloop_params.tma_q.with(bar, 0, TMA::CacheHintSm90::EVICT_LAST), tQgQ(_, m_block),
             tQsQ(_, st.index));
        copy(mainloop_params.tma_do.with(bar, 0, TMA::CacheHintSm90::EVICT_LAST), tdOgdO(_, m_block),
             tdOsdO(_, st.index));
        st.advance();
      }
    }
  }

  // --- LSE and D (consumers) ----------------------------------------------------------------
  // Each consumer thread holds 16 query columns of S^T: their LSE and D in registers would
  // cost 32 of the registers that dK and dV already crowd, so a step's 64 LSE * log2(e) and
  // 64 D values are staged in shared memory. The consumers stage them one step ahead
  // (threads 0-63 an LSE each, 64-127 a D), and the named barrier every step passes
  // (kdSStored) orders those generic stores against the reads on either side of it.
  struct RowStats {
    float value;  // this thread's LSE * log2(e) or D, for the step it was loaded for
  };
  // Thread tidx's value of the step (h_in_group, m_block) from global memory (0 where the
  // thread stages nothing). +inf LSE for rows past seqlen_q and rows that see no key: P = 0
  // there, not the NaN of -inf - (-inf).
  // kdQPerWG: tidx counts the threads of one warpgroup, each of which stages its own copy.
  CUTE_DEVICE RowStats load_row_stats(int tidx, int h_in_group, int m_block) const {
    int const r = tidx % kBlockM;
    int const row = m_block * kBlockM + r;
    int64_t const row_base = seq.stats_row_base(p, coord.bidb, coord.bidh_k * group + h_in_group);
    if (tidx < kBlockM) {
      if (row >= seq.seqlen_q) return {INFINITY};
      float const lse = p.lse_ptr[row_base + row];
      return {lse == -INFINITY ? INFINITY : lse * float(M_LOG2E)};
    }
    if (tidx < 2 * kBlockM && row < seq.seqlen_q) return {p.softmax_d_ptr[row_base + row]};
    return {0.f};
  }
  // slot: the step's parity, plus 2 w for warpgroup w's copy (kdQPerWG).
  CUTE_DEVICE void store_row_stats(int tidx, RowStats stats, int slot) {
    if (tidx < kBlockM) {
      storage.smem_lse[slot * kBlockM + tidx] = stats.value;
    } else if (tidx < 2 * kBlockM) {
      storage.smem_d[slot * kBlockM + tidx - kBlockM] = stats.value;
    }
  }

  // The dQ staging rows (kdQBulkReduce) or tile buffers (kdQTile); nullptr without them.
  CUTE_DEVICE float* dq_staging() const {
    if constexpr (Traits::kdQBulkReduce || (Traits::kdQTile && !Traits::kdQTileInQdO)) {
      return storage.smem_dq.data();
    } else {
      return nullptr;
    }
  }

  // The buffers a step's dQ tile rotates through: its own, or (kdQTileInQdO) the Q/dO
  // stages, step s's tile going to step s's stage (the pipeline's index, s % kStages).
  static constexpr int kdQTileBuffers = Traits::kdQTileInQdO ? Traits::kStages : Traits::kdQTileStages;
  // Part `part` (0 or 1, Traits::SmemLayoutdQTile) of tile buffer b: half of the buffer,
  // or (kdQTileInQdO) stage b's Q buffer (part 0) or dO buffer (part 1).
  CUTE_DEVICE float* dq_tile_part(int b, int part) const {
    if constexpr (Traits::kdQTileInQdO) {
      Element* const stage = (part == 0 ? storage.smem_q.data() : storage.smem_do.data()) + b * kBlockM * kHeadDim;
      return reinterpret_cast<float*>(stage);
    } else {
      return dq_staging() + b * kBlockM * kHeadDim + part * Traits::kdQTilePartFloats;
    }
  }

  // P^T's buffer (kdKVSplitD; nullptr without it).
  CUTE_DEVICE Element* p_staging() const {
    if constexpr (Traits::kdKVSplitD) {
      return storage.smem_p.data();
    } else {
      return nullptr;
    }
  }

  // The dQ adders of a deterministic run: the consumer warpgroups, consumer thread 0 leading
  // (bwd_dq_order.h's DqCtaSync for a kernel whose adders are not the whole CTA).
  struct ConsumerSync {
    int tidx;  // among the consumer threads
    CUTE_DEVICE bool leader() const { return tidx == 0; }
    CUTE_DEVICE void sync() const {
      cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads, static_cast<uint32_t>(Sm90BwdBarrier::kdQTurn));
    }
  };

  // Rows of dq_accum before query head bidh's in this CTA's batch entry (BwdSeqlens).
  CUTE_DEVICE int64_t dq_accum_row_base(int bidh) const { return seq.dq_accum_row_base(p, coord.bidb, bidh); }

  // TMA bulk copies of dQ (kdQBulkReduce, kdQTile), per issuing thread: a reduce-add of
  // `bytes` from shared memory into fp32 global memory (the async proxy), its bulk group,
  // and the waits until at most N of the thread's groups are still reading shared memory,
  // or until all have completed (their global writes too).
  CUTE_DEVICE static void bulk_reduce_add_f32(float* dst, uint32_t smem_src, uint32_t bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
                 "r"(smem_src), "r"(bytes)
                 : "memory");
  }
  CUTE_DEVICE static void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
  template <int N>
  CUTE_DEVICE static void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
  }
  CUTE_DEVICE static void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
  // Orders this thread's generic-proxy global accesses against its async-proxy ones (the
  // deterministic hand-over's acquire and release around the bulk adds).
  CUTE_DEVICE static void fence_proxy_async_global() { asm volatile("fence.proxy.async.global;\n" ::: "memory"); }

  // --- dQ (kdQTile: producer warp 1) ---------------------------------------------------------
  // The threads that meet on kdQFull and kdQEmpty: the consumers and the dQ warp.
  static constexpr int kdQTileSyncThreads = Traits::kNumConsumerThreads + cutlass::NumThreadsPerWarp;

  // The dQ warp's side of a deterministic hand-over: lane 0 polls and hands over.
  struct WarpSync {
    int lane;
    CUTE_DEVICE bool leader() const { return lane == 0; }
    CUTE_DEVICE void sync() const { __syncwarp(); }
  };

  // The named barrier of tile buffer b: filled (kdQFull0 + b) or read (kdQEmpty0 + b).
  CUTE_DEVICE static uint32_t dq_tile_barrier(Sm90BwdBarrier first, int b) {
    return static_cast<uint32_t>(first) + uint32_t(b);
  }

  // Every step's dQ tile, once the consumers have stored it into buffer step % S (kdQFull),
  // added into its query block of dq_accum by one bulk reduce-add from lane 0; the
  // consumers may overwrite a buffer (kdQEmpty) as soon as the copy has read it, while its
  // adds complete in the background. With S buffers, the read waited for is the one issued
  // S - 1 steps before (S = 2: the tile just issued is still being read while the consumers
  // fill the other). Deterministic: each add waits for the key block's turn and completes
  // before the hand-over; the consumers wait only when no buffer is free.
  // kdQTileInQdO: the tile is the step's Q/dO stage, two bulk reduce-adds (Q's buffer, dO's);
  // once both are read the stage goes back to the producer (there is no kdQEmpty: the
  // consumers next write the stage after its next load has landed).
  // Deterministic: two dQ warps (`warp` 0 and 1: producer warps 1 and 2), warp w the steps
  // s with s % 2 == w. A hand-over waits for its adds to complete in the L2 (a 16-64 KiB bulk
  // reduce-add); one warp would wait out each before its next turn, two overlap a step's
  // completion with the other step's turn. The steps' query blocks differ, so their turns are
  // independent; each warp still waits only for the key blocks whose turns come before its
  // own (bwd_dq_order.h). Each warp meets the consumers on a full barrier of its own
  // (dq_full_barrier: by step parity), so that one warp's early arrival never completes the
  // other's phase. With one buffer, its kdQEmpty is arrived at by the warp that read it,
  // after which the other warp's next read can only follow the consumers' next store (one
  // arrival pending at a time).
  // The dQ warps of a call (a compile-time count for store_dq, whose warps run on the
  // producer's 24 registers): two where deterministic, in the kernels whose producer compiles
  // them without spilling (ptxas, sm_90a: the two-buffer and Q/dO-stage tiles and d=64's
  // 128-row one; d=96's and d=192's one-buffer tiles spill with them).
  // Traits::kdVEarly's order of dV, dK and the dS^T stores, but not in the kExtras variant
  // (see the traits).
  static constexpr bool kdVEarly = Traits::kdVEarly && !kExtras;
  static constexpr bool kTwoDqWarps = Traits::kdQTile && (kdQTileBuffers == 2 || Traits::kBlockM == 128);
  CUTE_DEVICE int num_dq_warps() const { return kTwoDqWarps && p.dq_semaphore_ptr != nullptr ? 2 : 1; }
  // The full barrier of step `step`'s tile: by the step's parity, whatever the buffers and
  // warps (with two buffers the parity is the buffer's; with two warps, the warp's).
  CUTE_DEVICE static uint32_t dq_full_barrier(int step) {
    return dq_tile_barrier(Sm90BwdBarrier::kdQFull0, step % 2);
  }

  // One step of store_dq: step `step` (of `steps`) is query block m_block of query head
  // h_in_group of the group.
  template <int kWarps>
  CUTE_DEVICE void store_dq_step(int lane, int step, int steps, int h_in_group, int m_block, bool deterministic) {
    constexpr int S = kdQTileBuffers;
    constexpr bool kInQdO = Traits::kdQTileInQdO;
    int const bidh = coord.bidh_k * group + h_in_group;
    int64_t const row_base = dq_accum_row_base(bidh);
    int const b = step % S;
    cutlass::arch::NamedBarrier::sync(kdQTileSyncThreads, dq_full_barrier(step));
    float* const dst = p.dq_accum_ptr + (row_base + m_block * kBlockM) * kHeadDim;
    add_dq_in_order<kBlockM, kBlockN>(
        p, seq, coord.bidb, bidh, m_block, coord.n_block,
        [&] {
          if (lane == 0) {
            // The semaphore's acquire (generic proxy) before the add (async proxy).
            if (deterministic) fence_proxy_async_global();
            if constexpr (kInQdO) {
              constexpr uint32_t kPartBytes = Traits::kdQTilePartFloats * sizeof(float);
              bulk_reduce_add_f32(dst, cute::cast_smem_ptr_to_uint(dq_tile_part(b, 0)), kPartBytes);
              bulk_reduce_add_f32(dst + Traits::kdQTilePartFloats, cute::cast_smem_ptr_to_uint(dq_tile_part(b, 1)),
                                  kPartBytes);
              bulk_commit();
              bulk_wait_read<0>();
              pipe.release_for_consumers(PipelineState{b, 0});
            } else {
              // The two parts are one buffer: one copy.
              bulk_reduce_add_f32(dst, cute::cast_smem_ptr_to_uint(dq_tile_part(b, 0)),
                                  uint32_t(Traits::kdQTileBytes));
              bulk_commit();
              bulk_wait_read<kWarps == 1 ? S - 1 : 0>();
            }
          }
          __syncwarp();
          // The buffer of step step - (S - 1) is read (two warps: of this step); free it
          // if a later step fills it.
          int const read_step = kWarps == 1 ? step - (S - 1) : step;
          if (!kInQdO && read_step >= 0 && read_step + S < steps) {
            cutlass::arch::NamedBarrier::arrive(kdQTileSyncThreads,
                                                dq_tile_barrier(Sm90BwdBarrier::kdQEmpty0, read_step % S));
          }
          if (deterministic && lane == 0) {
            // The adds done, and ordered before the hand-over's release (generic proxy).
            bulk_wait_all();
            fence_proxy_async_global();
          }
        },
        WarpSync{lane});
  }

  template <int kWarps>
  CUTE_DEVICE void store_dq(int lane, int warp) {
    static_assert(kdQTileBuffers <= 2, "named barrier ids: kdQFull0 + 0..1, kdQEmpty0 + 0..1");
    int const steps = num_steps();
    if (steps <= 0) return;
    bool const deterministic = p.dq_semaphore_ptr != nullptr;
    if constexpr (kWarps == 1) {
      // Ascending: one dQ warp never walks the rotated order (Sm90BwdLaunch takes it only
      // where two warps add deterministically), whose running block is a register more than
      // the producer's 24 hold (4 B of spill at d=128, ptxas sm_90a).
      int step = 0;
      for (int h_in_group = 0; h_in_group < group; ++h_in_group) {
        CUTE_NO_UNROLL
        for (int m_block = queries.m_block_min; m_block < queries.m_block_max; ++m_block, ++step) {
          store_dq_step<1>(lane, step, steps, h_in_group, m_block, deterministic);
        }
      }
    } else {
      // One flat loop over this warp's steps (few live registers: the producer warpgroup's 24).
      int const blocks = queries.num_blocks();
      CUTE_NO_UNROLL
      for (int step = warp; step < steps; step += kWarps) {
        int const h_in_group = step / blocks;
        store_dq_step<kWarps>(lane, step, steps, h_in_group, m_block_at(step - h_in_group * blocks), deterministic);
      }
    }
    // The kernel's end must not come before the last adds (the postprocess reads dq_accum).
    if (lane == 0) bulk_wait_all();
  }

  // --- MMA (consumer warpgroups) --------------------------------------------------------------
  struct Consumer {
    Sm90BwdMainloop& mainloop;
    int const tidx;  // among the consumer threads, 0..255
    TiledMmaSdP tiled_mma_sdp;
    TiledMmadKV tiled_mma_dkv;
    TiledMmadQ tiled_mma_dq;

    // kdQPerWG: the warpgroup, its threads 0..127, whose dQ GEMM, LSE/D copy and barrier
    // are its own; otherwise both warpgroups share them (wg 0, stats_tidx = tidx).
    int const wg;
    int const stats_tidx;

    CUTE_DEVICE Consumer(Sm90BwdMainloop& mainloop_, int tidx_)
        : mainloop(mainloop_), tidx(tidx_), wg(Traits::kdQPerWG ? tidx_ / Traits::kNumThreadsPerWG : 0),
          stats_tidx(Traits::kdQPerWG ? tidx_ % Traits::kNumThreadsPerWG : tidx_) {}

    // The barrier that orders a step's dS (and the next step's LSE and D) between its
    // writers and its readers: both consumer warpgroups', or (kdQPerWG) this one's.
    CUTE_DEVICE void sync_ds_stored() const {
      if constexpr (Traits::kdQPerWG) {
        cutlass::arch::NamedBarrier::sync(Traits::kNumThreadsPerWG,
                                          static_cast<uint32_t>(Sm90BwdBarrier::kdSStoredWg0) + wg);
      } else {
        cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads,
                                          static_cast<uint32_t>(Sm90BwdBarrier::kdSStored));
      }
    }

    // Every step of the CTA, summed into acc_dk and acc_dv (cleared by the caller).
    CUTE_DEVICE void mma(AccdKV& acc_dk, AccdKV& acc_dv) {
      using namespace cute;
      BwdParams const& p = mainloop.p;
      SharedStorage& storage = mainloop.storage;
      BwdTileCoord const& coord = mainloop.coord;
      BwdSeqlens<kExtras> const& seq = mainloop.seq;
      if (mainloop.num_steps() <= 0) return;
      int const right = bwd_right_bound<kExtras>(p);
      int const left = bwd_left_bound<kExtras>(p);
      bool const softcap = kExtras && p.softcap_premul != 0.f;

      Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutK{});      // (BLK_N,D)
      Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutV{});      // (BLK_N,D)
      Tensor sKt = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutKt{});    // (D,BLK_N)
      Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQ{});      // (BLK_M,D,STAGE)
      Tensor sdO = make_tensor(make_smem_ptr(storage.smem_do.data()), typename Traits::SmemLayoutdO{});   // (BLK_M,D,STAGE)
      Tensor sQt = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQt{});    // (D,BLK_M,STAGE)
      Tensor sdOt = make_tensor(make_smem_ptr(storage.smem_do.data()), typename Traits::SmemLayoutdOt{}); // (D,BLK_M,STAGE)
      Tensor sdS = make_tensor(make_smem_ptr(storage.smem_ds.data()), typename Traits::SmemLayoutdS{});   // (BLK_M,BLK_N,2)
      Tensor sdSt = make_tensor(make_smem_ptr(storage.smem_ds.data()), typename Traits::SmemLayoutdSt{}); // (BLK_N,BLK_M,2)

      auto thr_sdp = tiled_mma_sdp.get_thread_slice(tidx);
      auto thr_dkv = tiled_mma_dkv.get_thread_slice(tidx);
      auto thr_dq = tiled_mma_dq.get_thread_slice(Traits::kdQPerWG ? stats_tidx : tidx);
      // Shared-memory operands are tensors of wgmma descriptors.
      Tensor tSrK = thr_sdp.partition_fragment_A(sK);       // (MMA,MMA_N,MMA_D): this warpgroup's 64 keys
      Tensor tSrQ = thr_sdp.partition_fragment_B(sQ);       // (MMA,MMA_M,MMA_D,STAGE)
      Tensor tdPrV = thr_sdp.partition_fragment_A(sV);      // (MMA,MMA_N,MMA_D)
      Tensor tdPrdO = thr_sdp.partition_fragment_B(sdO);    // (MMA,MMA_M,MMA_D,STAGE)
      Tensor tdVrdO = thr_dkv.partition_fragment_B(sdOt);   // (MMA,MMA_D,MMA_M,STAGE)
      Tensor tdKrQ = thr_dkv.partition_fragment_B(sQt);     // (MMA,MMA_D,MMA_M,STAGE)
      // kdKVSplitD: P^T's buffer (dS's layout), and P^T and dS^T as dV's and dK's A operands.
      // (Nothing without it: an RS wgmma's A fragment would be registers.)
      Tensor sPt = make_tensor(make_smem_ptr(mainloop.p_staging()), typename Traits::SmemLayoutPt{});  // (BLK_N,BLK_M,2)
      auto const smem_a_operand = [&](auto const& smem) {
        if constexpr (Traits::kdKVSplitD) {
          return thr_dkv.partition_fragment_A(smem);  // (MMA,MMA_N,MMA_M,2)
        } else {
          return 0;
        }
      };
      auto tdVsPt = smem_a_operand(sPt);
      auto tdKsdSt = smem_a_operand(sdSt);
      // dQ's operands: dS and K^T over all keys (this warpgroup's d/2 columns), or (kdQPerWG)
      // over this warpgroup's 64 keys (all d columns); 64 keys of dS and K are 8 KiB (K at
      // d = 64: 4 KiB) in, a whole number of swizzle periods.
      using dQKeys = Int<Traits::kdQKeysPerWG>;
      Tensor sdS_dq = local_tile(sdS, Shape<Int<kBlockM>, dQKeys, _2>{}, make_coord(_0{}, wg, _0{}));  // (BLK_M,KEYS,2)
      Tensor sKt_dq = local_tile(sKt, Shape<Int<kHeadDim>, dQKeys>{}, make_coord(_0{}, wg));           // (D,KEYS)
      Tensor tdQrdS = thr_dq.partition_fragment_A(sdS_dq);  // (MMA,MMA_M,MMA_KEYS,2)
      Tensor tdQrKt = thr_dq.partition_fragment_B(sKt_dq);  // (MMA,MMA_D,MMA_KEYS)
      // Where this thread's dS^T accumulator values go in dS (its transposed view).
      Tensor tdSsdS = thr_sdp.partition_C(sdSt);            // (MMA,MMA_N,MMA_M,2)
      // The same by stmatrix (kdSStmatrix): an 8x8 matrix row is 8 adjacent queries of one
      // key, 16 contiguous bytes of dS (the swizzle permutes 16-byte chunks only).
      auto smem_tiled_copy_dS = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, tiled_mma_sdp);
      auto smem_thr_copy_dS = smem_tiled_copy_dS.get_thread_slice(tidx);
      Tensor tdSsdS_stsm = smem_thr_copy_dS.partition_D(sdSt);  // (CPY,CPY_N,CPY_M,2)
      // (key, query) in the (BLK_N,BLK_M) tile of each S^T value, viewed as keys x queries.
      Tensor cSt = thr_sdp.partition_C(make_identity_tensor(TileSt{}));                // (MMA,MMA_N,MMA_M)
      Tensor coords = make_tensor(cSt.data(), acc_layout_rowcol(cSt.layout()));         // (KEYS,QUERIES)
      Tensor cdQ = thr_dq.partition_C(make_identity_tensor(TileQ{}));                   // (MMA,MMA_M,MMA_D)
      // kdQBulkReduce: where this thread's dQ values are staged.
      Tensor tdQsdQ = thr_dq.partition_C(make_tensor(make_smem_ptr(mainloop.dq_staging()),
                                                     typename Traits::SmemLayoutdQ{}));  // (MMA,MMA_M,MMA_D)

      PipelineState st;  // consumers start at phase 0
      int const blocks = mainloop.queries.num_blocks();
      // The first step's LSE and D, published by a first pass of the consumers' barrier.
      mainloop.store_row_stats(stats_tidx, mainloop.load_row_stats(stats_tidx, 0, mainloop.m_block_at(0)), 2 * wg);
      sync_ds_stored();
      storage.barrier_kv.wait(0);
      // seqused_k (a varlen batch's keys in use): the block's rows past them are keys the
      // sequence does not use, which may hold NaN (a KV cache's unwritten tail). Their scores
      // are masked, so P and dS are 0 there, but dP^T = V dO^T and dQ = dS K read the rows,
      // and 0 * NaN is NaN: zeroed first, as the forward zeroes its V tail.
      if constexpr (kExtras) {
        int const first = cute::max(seq.seqlen_k - coord.n_block * kBlockN, 0);
        if (p.seqused_k != nullptr && first < kBlockN) {
          zero_rows_from(sK, first, tidx, Traits::kNumConsumerThreads);
          zero_rows_from(sV, first, tidx, Traits::kNumConsumerThreads);
          cutlass::arch::fence_view_async_shared();
          // Both warpgroups (the hardware's 16 named barriers are all taken, so kdSStored's:
          // one more phase that every consumer thread passes; kdQPerWG meets on its own ids).
          cutlass::arch::NamedBarrier::sync(Traits::kNumConsumerThreads,
                                            static_cast<uint32_t>(Sm90BwdBarrier::kdSStored));
        }
      }
      int step = 0;
      int m_block = mainloop.m_block_at(0);
      for (int h_in_group = 0; h_in_group < mainloop.group; ++h_in_group) {
        int const bidh = coord.bidh_k * mainloop.group + h_in_group;
        int64_t const row_base = mainloop.dq_accum_row_base(bidh);
        for (int i = 0; i < blocks; ++i, ++step, m_block = mainloop.next_m_block(m_block)) {
          // The next step's LSE and D, loaded now and stored before this step's barrier:
          // the global loads' latency hides under this step's GEMMs.
          int const next_h = i + 1 == blocks ? h_in_group + 1 : h_in_group;
          bool const has_next = next_h < mainloop.group;
          RowStats const next_stats =
              has_next ? mainloop.load_row_stats(stats_tidx, next_h, mainloop.next_m_block(m_block)) : RowStats{0.f};
          mainloop.pipe.consumer_wait(st);
          float const* lse_log2 = storage.smem_lse.data() + (2 * wg + step % 2) * kBlockM;
          float const* dsum = storage.smem_d.data() + (2 * wg + step % 2) * kBlockM;

          // S^T = K Q^T and dP^T - D = V dO^T - D, both in flight; P^T is computed while
          // dP^T runs. The dP^T accumulator starts at -D (per query column) instead of 0: D
          // is then consumed before the S^T and dP^T values are live together with dK and
          // dV, where its 16 values a thread would not fit the consumers' 240 registers.
          // kdPEarlyInit: the -D fill is written before S^T is issued, so that no ordinary
          // register write separates the two wgmma batches (written between them, ptxas
          // retires S^T before issuing dP^T: C7517, warpgroup.wait injected). The operand
          // fence pins the fill there: each D feeds two accumulator registers, and the
          // compiler would otherwise sink the copies to the dP^T issue.
          AccS acc_s;
          AccS acc_dp;
          Tensor scores = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (KEYS,QUERIES): S^T, then P^T
          Tensor dp = make_tensor(acc_dp.data(), acc_layout_rowcol(acc_dp.layout()));    // (KEYS,QUERIES): dP^T - D, then dS^T
          auto fill_minus_d = [&] {
            CUTE_UNROLL
            for (int ni = 0; ni < size<1>(dp); ++ni) {
              float const minus_d = -dsum[get<1>(coords(0, ni))];
              CUTE_UNROLL
              for (int mi = 0; mi < size<0>(dp); ++mi) dp(mi, ni) = minus_d;
            }
          };
          if constexpr (Traits::kdPEarlyInit) {
            fill_minus_d();
            warpgroup_fence_operand(acc_dp);
          }
          wgmma_gemm</*kZeroInit=*/true>(tiled_mma_sdp, tSrK, tSrQ(_, _, _, st.index), acc_s);
          if constexpr (!Traits::kdPEarlyInit) fill_minus_d();
          wgmma_gemm</*kZeroInit=*/false>(tiled_mma_sdp, tdPrV, tdPrdO(_, _, _, st.index), acc_dp);
          wgmma_wait<1>(acc_s);

          // kExtras: the softcap before the mask, as in the forward (the mask's -inf stays).
          if (softcap) apply_softcap(acc_s, p.softcap_premul);
          if (BwdQueryRange::needs_mask<kBlockM, kBlockN>(m_block, coord.n_block, seq.seqlen_k, right, left,
                                                            seq.causal_offset)) {
            // In tile coordinates: key c is seen by query r iff c < key_end, c <= r + diagonal
            // + right (right >= 0: causal, a window) and c >= r + diagonal - left (left >= 0:
            // a window): the forward's rule, transposed.
            int const key_end = seq.seqlen_k - coord.n_block * kBlockN;
            int const diagonal = m_block * kBlockM + seq.causal_offset - coord.n_block * kBlockN;
            CUTE_UNROLL
            for (int mi = 0; mi < size<0>(scores); ++mi) {
              int const key = get<0>(coords(mi, 0));
              CUTE_UNROLL
              for (int ni = 0; ni < size<1>(scores); ++ni) {
                int const query = get<1>(coords(mi, ni));
                if (key >= key_end || (right >= 0 && key > query + diagonal + right) ||
                    (left >= 0 && key < query + diagonal - left)) {
                  scores(mi, ni) = -INFINITY;
                }
              }
            }
          }
          // P^T from S^T (or, softcap, from t = tanh(S^T * premul)) and this column's LSE.
          auto exp_scores = [&](auto&& per_value) {
            CUTE_UNROLL
            for (int ni = 0; ni < size<1>(scores); ++ni) {
              float const lse = lse_log2[get<1>(coords(0, ni))];
              CUTE_UNROLL
              for (int mi = 0; mi < size<0>(scores); ++mi) {
                per_value(mi, ni, exp2_approx(scores(mi, ni) * p.softmax_scale_log2 - lse));
              }
            }
          };
          // P^T and dS^T in the input dtype, as the RS wgmmas' A operand: the accumulator
          // layout relabelled (acc_layout_as_a_operand_sm90), no data movement.
          Tensor tdVrP = make_tensor<Element>(acc_layout_as_a_operand_sm90(acc_s.layout()));   // (MMA,MMA_N,MMA_M/16)
          Tensor tdKrdS = make_tensor<Element>(acc_layout_as_a_operand_sm90(acc_dp.layout()));  // (MMA,MMA_N,MMA_M/16)
          if (!softcap) {
            // While dP^T runs.
            exp_scores([&](int mi, int ni, float prob) { scores(mi, ni) = prob; });
            if constexpr (kdVEarly) {
              // dV += P^T dO queued behind dP^T: the tensor cores go on from dP^T to dV while
              // dS^T is computed, converted and stored.
              convert_type_into(acc_s, tdVrP);
              wgmma_gemm</*kZeroInit=*/false>(tiled_mma_dkv, tdVrP, tdVrdO(_, _, _, st.index), acc_dv);
              wgmma_wait<1>(acc_dp);
            } else {
              wgmma_wait<0>(acc_dp);
            }
            CUTE_UNROLL
            for (int i = 0; i < size(acc_dp); ++i) acc_dp(i) = acc_s(i) * acc_dp(i);  // dS^T = P^T (dP^T - D)
          } else {
            // dS^T = P^T (dP^T - D) (1 - t^2), the tanh's derivative, which needs t next to
            // dP^T: after it (0 where masked, t = -inf, not P * -inf).
            wgmma_wait<0>(acc_dp);
            exp_scores([&](int mi, int ni, float prob) {
              float const t = scores(mi, ni);
              dp(mi, ni) *= prob * fmaxf(1.f - t * t, 0.f);
              scores(mi, ni) = prob;
            });
          }

          // dS^T into dS (buffer step % 2): the same registers seen in accumulator order;
          // a thread's value pairs are adjacent queries, adjacent in dS.
          auto store_ds = [&] {
            if constexpr (Traits::kdSStmatrix) {
              copy(smem_tiled_copy_dS, smem_thr_copy_dS.retile_S(make_tensor(tdKrdS.data(), acc_dp.layout())),
                   tdSsdS_stsm(_, _, _, step % 2));
            } else {
              copy(make_tensor(tdKrdS.data(), acc_dp.layout()), tdSsdS(_, _, _, step % 2));
            }
          };
          if constexpr (kdVEarly) {
            // dV is in flight (issued above: no softcap outside kExtras); dK follows it, and
            // dS^T goes to shared memory while both run (the store only reads the RS
            // operand's registers, which the wgmmas read too).
            convert_type_into(acc_dp, tdKrdS);
            wgmma_gemm</*kZeroInit=*/false>(tiled_mma_dkv, tdKrdS, tdKrQ(_, _, _, st.index), acc_dk);
            store_ds();
          } else {
            convert_type_into(acc_s, tdVrP);
            convert_type_into(acc_dp, tdKrdS);
            store_ds();
            if constexpr (Traits::kdKVSplitD) {
              // P^T into its buffer as dS^T into dS's: the other warpgroup's dV reads it.
              if constexpr (Traits::kdSStmatrix) {
                copy(smem_tiled_copy_dS, smem_thr_copy_dS.retile_S(make_tensor(tdVrP.data(), acc_s.layout())),
                     smem_thr_copy_dS.partition_D(sPt)(_, _, _, step % 2));
              } else {
                copy(make_tensor(tdVrP.data(), acc_s.layout()), thr_sdp.partition_C(sPt)(_, _, _, step % 2));
              }
            } else {
              // dV += P^T dO and dK += dS^T Q (dO, Q read MN-major through their transposed views).
              wgmma_gemm</*kZeroInit=*/false>(tiled_mma_dkv, tdVrP, tdVrdO(_, _, _, st.index), acc_dv);
              wgmma_gemm</*kZeroInit=*/false>(tiled_mma_dkv, tdKrdS, tdKrQ(_, _, _, st.index), acc_dk);
            }
          }

          // The next step's LSE and D into the other slot: its last reads were the previous
          // step's, before the previous barrier.
          if (has_next) mainloop.store_row_stats(stats_tidx, next_stats, 2 * wg + (step + 1) % 2);
          // dS written by generic stores is read by wgmma (the async proxy): each writer
          // fences its stores into the async proxy, then both warpgroups meet, since dQ
          // reads all 128 keys' columns (kdQPerWG: the warpgroup's own 4 warps meet).
          cutlass::arch::fence_view_async_shared();
          sync_ds_stored();
          if constexpr (Traits::kdKVSplitD) {
            // dV += P^T dO and dK += dS^T Q over all queries, P^T and dS^T from shared memory
            // (both warpgroups' halves), this warpgroup's d/2 columns.
            Tensor tdVsPt_cur = tdVsPt(_, _, _, step % 2);
            Tensor tdKsdSt_cur = tdKsdSt(_, _, _, step % 2);
            wgmma_gemm</*kZeroInit=*/false>(tiled_mma_dkv, tdVsPt_cur, tdVrdO(_, _, _, st.index), acc_dv);
            wgmma_gemm</*kZeroInit=*/false>(tiled_mma_dkv, tdKsdSt_cur, tdKrQ(_, _, _, st.index), acc_dk);
          }
          // dV and dK retire (mostly under the barrier) before dQ is issued: P^T and dS^T
          // then leave the registers, which the dQ accumulator takes (the consumers' 240
          // registers hold dK, dV and at most 64 more values in flight). Every wgmma
          // reading this stage's Q and dO has retired: the stage goes back to the producers.
          // kdQOverlap: dQ_m = dS K (this warpgroup's d/2 columns) is issued first, queued
          // behind dV and dK, so that the tensor cores do not drain between them; P^T and dS^T
          // (bf16, 32 registers at d = 128) are then live next to the dQ accumulator.
          AccdQ acc_dq;
          Tensor tdQrdS_cur = tdQrdS(_, _, _, step % 2);
          if constexpr (Traits::kdQOverlap) {
            wgmma_gemm</*kZeroInit=*/true>(tiled_mma_dq, tdQrdS_cur, tdQrKt, acc_dq);
            wgmma_wait<1>(acc_dv, acc_dk, tdVrP, tdKrdS);
          } else {
            wgmma_wait<0>(acc_dv, acc_dk, tdVrP, tdKrdS);
          }
          // kdQTileInQdO: the stage takes this step's dQ tile; the dQ warp frees it.
          if constexpr (!Traits::kdQTileInQdO) mainloop.pipe.consumer_release(st);
          if constexpr (!Traits::kdQOverlap) {
            wgmma_gemm</*kZeroInit=*/true>(tiled_mma_dq, tdQrdS_cur, tdQrKt, acc_dq);
          }
          wgmma_wait<0>(acc_dq);

          int const query_rows = seq.seqlen_q - m_block * kBlockM;
          float* const dq_accum_block = p.dq_accum_ptr + (row_base + m_block * kBlockM) * kHeadDim;
          if constexpr (Traits::kdQTile) {
            stage_dq_tile(acc_dq, step, st.index);
          } else if constexpr (Traits::kdQBulkReduce) {
            add_dq_bulk(acc_dq, tdQsdQ, dq_accum_block, query_rows);
          } else {
            // dQ_m into the fp32 dq_accum (batch, nheads, dq_accum_rows, d) by 16-byte atomics.
            Tensor gdQaccum = make_tensor(make_gmem_ptr(dq_accum_block), TileQ{},
                                          make_stride(Int<kHeadDim>{}, _1{}));  // (BLK_M,D)
            Tensor tdQgdQ = thr_dq.partition_C(gdQaccum);                       // (MMA,MMA_M,MMA_D)
            // deterministic (p.dq_semaphore_ptr): in key block order (bwd_dq_order.h), the
            // consumer threads meeting around the turn (the producer warp never adds).
            add_dq_in_order<kBlockM, kBlockN>(
                p, seq, coord.bidb, bidh, m_block, coord.n_block,
                [&] { add_dq_atomics</*kBytes=*/16>(acc_dq, tdQgdQ, cdQ, query_rows); }, ConsumerSync{tidx});
          }
          st.advance();
        }
      }
      // The CTA's shared memory must outlive the bulk reduces that read it, and their adds
      // must be complete when the kernel ends (the dQ post-process reads dq_accum).
      if constexpr (Traits::kdQBulkReduce) bulk_wait_all();
    }

    // kdQTile: dQ_m into tile buffer step % S in SmemLayoutdQTile's order, once the dQ
    // warp's bulk add of step step - S has read it; the stores fenced into the async proxy
    // (the bulk copy reads through it), then the dQ warp told (no wait). kdQTileInQdO: into
    // this step's stage (`stage`), whose reads by this warpgroup have retired (its dV and dK)
    // and whose other reads (S^T, dP^T: all d columns) the dS barrier ordered before; its
    // d/2 columns of Q and dO are the bytes of its quarters of the tile.
    CUTE_DEVICE void stage_dq_tile(AccdQ const& acc_dq, int step, int stage) const {
      using namespace cute;
      constexpr int S = kdQTileBuffers;
      constexpr int V = Traits::kdQTileValues;
      static_assert(decltype(size(acc_dq))::value == V, "the tile's values per thread");
      int const b = Traits::kdQTileInQdO ? stage : step % S;
      if (!Traits::kdQTileInQdO && step >= S) {
        cutlass::arch::NamedBarrier::sync(kdQTileSyncThreads, dq_tile_barrier(Sm90BwdBarrier::kdQEmpty0, b));
      }
      float* const parts[2] = {mainloop.dq_tile_part(b, 0), mainloop.dq_tile_part(b, 1)};
      typename Traits::SmemLayoutdQTile const tile;  // (THR,VAL)
      CUTE_UNROLL
      for (int i = 0; i < V; i += 4) {
        int const part = i / (V / 2);
        float* const dst = parts[part] + (tile(tidx, i) - part * Traits::kdQTilePartFloats);
        *reinterpret_cast<float4*>(dst) = make_float4(acc_dq(i), acc_dq(i + 1), acc_dq(i + 2), acc_dq(i + 3));
      }
      cutlass::arch::fence_view_async_shared();
      cutlass::arch::NamedBarrier::arrive(kdQTileSyncThreads, dq_full_barrier(step));
    }

    // kdQBulkReduce: dQ_m of this warp (rows 16w..16w+15 of the block, this warpgroup's d/2
    // columns) through its shared-memory staging rows into dq_accum, one bulk reduce-add per
    // row below seqlen_q (lane r issues row r). The staging rows are the warp's own, so a warp
    // barrier orders everything: the previous step's bulk reads before the overwrite, the
    // stores (fenced into the async proxy, which the bulk copy reads through) before the issue.
    template <class TensorS>
    CUTE_DEVICE void add_dq_bulk(AccdQ const& acc_dq, TensorS const& tdQsdQ, float* dq_accum_block,
                                 int query_rows) const {
      using namespace cute;
      static_assert(decltype(stride<0, 0>(tdQsdQ))::value == 1 && decltype(size<0, 0>(tdQsdQ))::value == 2,
                    "value pairs of the dQ accumulator are adjacent columns");
      CUTE_STATIC_ASSERT_V(size(tdQsdQ) == size(acc_dq));
      int const lane = tidx % 32;
      int const warp_in_wg = (tidx / 32) % Traits::kdQWarpsPerWG;
      int const wg = tidx / Traits::kNumThreadsPerWG;
      bool const issuer = lane < Traits::kdQRowsPerWarp;
      if (issuer) bulk_wait_read<0>();
      __syncwarp();
      CUTE_UNROLL
      for (int i = 0; i < size(acc_dq); i += 2) {
        uint32_t const addr = cast_smem_ptr_to_uint(&tdQsdQ(i));
        asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(acc_dq(i)), "f"(acc_dq(i + 1)) : "memory");
      }
      cutlass::arch::fence_view_async_shared();
      __syncwarp();
      int const row = warp_in_wg * Traits::kdQRowsPerWarp + lane;
      if (issuer) {
        if (row < query_rows) {
          float const* src = mainloop.dq_staging() +
                             (wg * Traits::kdQWarpsPerWG + warp_in_wg) * Traits::kdQWarpStride + lane * Traits::kdQRowStride;
          float* dst = dq_accum_block + row * kHeadDim + wg * Traits::kdQCols;
          bulk_reduce_add_f32(dst, cast_smem_ptr_to_uint(src), uint32_t(Traits::kdQCols * sizeof(float)));
        }
        bulk_commit();
      }
    }
  };

  // --- Epilogue (consumers): dK * scale and dV in the input dtype, rows below seqlen_k ----
  CUTE_DEVICE void store_dkdv(AccdKV& acc_dk, AccdKV const& acc_dv, int tidx) const {
    TiledMmadKV tiled_mma_dkv;
    fa_cute::store_dkdv<Element, kBlockN, kHeadDim>(p, tiled_mma_dkv.get_thread_slice(tidx), acc_dk, acc_dv,
                                                    coord.bidb, coord.bidh_k, coord.n_block, seq.seqlen_k,
                                                    seq.offset_k);
  }
};

}  // namespace fa_cute
