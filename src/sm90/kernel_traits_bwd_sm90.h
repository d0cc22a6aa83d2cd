#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>

#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

#include "bwd_params.h"  // kDqAccumRowAlign
#include "sm90/kernel_traits_sm90.h"
#include "sm90/pipeline_sm90.h"

namespace fa_cute {

// Everything the Hopper (sm_90a) warp-specialised backward kernel needs, from its tile:
// one CTA per (key block of kBlockN keys, K/V head, batch) keeps K_j and V_j in shared
// memory (one TMA load) and loops over the query blocks of kBlockM rows that see them,
// Q_m and dO_m streamed by TMA through a kStages-deep ring. Warpgroup 0 is the producer,
// warpgroups 1 and 2 the consumers; consumer warpgroup w owns keys 64w..64w+63 of the
// block. Per query block five wgmma GEMMs, fp32 accumulation, the scores computed
// transposed (FlashAttention-3's SdP_swapAB) so that P^T and dS^T come out of the
// accumulators already as the register A operand of the dV and dK GEMMs:
//   S^T  = K Q^T      (M = keys, N = kBlockM, K = d)   SS, both K-major     TiledMmaSdP (2,1,1)
//   dP^T = V dO^T     (same)                           SS, both K-major     TiledMmaSdP
//   dV  += P^T dO     (M = keys, N = d, K = kBlockM)   RS, B MN-major       TiledMmadKV (2,1,1)
//   dK  += dS^T Q     (same)                           RS, B MN-major       TiledMmadKV
//   dQ    = dS K      (M = kBlockM, N = d, K = keys)   SS, A and B MN-major TiledMmadQ (1,2,1)
// dQ needs all 128 keys of dS, so dS goes through shared memory, and its d columns are
// split between the two consumer warpgroups.
// Knobs (all off: the first Hopper backward, unchanged):
//   kdSStmatrix: dS^T (kdKVSplitD: and P^T) goes to shared memory by stmatrix (16 bytes a
//     thread per instruction, 32-bit shared-memory addresses) instead of 32-bit stores through
//     generic pointers, whose swizzled 64-bit addresses cost ~6 integer instructions a store.
//   kdQBulkReduce: each warp stages its 16 rows x d/2 columns of dQ_m in shared memory and
//     adds them to dq_accum with one TMA bulk reduce-add (cp.reduce.async.bulk .add.f32) per
//     row, which runs in the async proxy while the warp goes on with the next step, instead
//     of the atomics a thread issues by the load/store unit (add_dq_atomics).
//   kdPEarlyInit: dP^T's accumulator is set to -D before S^T is issued, not between the
//     S^T and dP^T wgmma batches (where it makes ptxas retire S^T before issuing dP^T).
//   kdQOverlap: the dQ wgmma is issued right after the dS barrier, behind dV and dK still
//     in flight, instead of after they retire.
//   kdQPerWG: each consumer warpgroup computes dQ_m over its own 64 keys and all d columns
//     (dQ_m = dS[:, keys of w] K[keys of w, :]) and adds it to dq_accum itself: no dS
//     column of the other warpgroup is read, so the warpgroups meet at no barrier and drift
//     apart (each stages its own LSE and D behind a barrier of its 128 threads), one's
//     softmax and atomics overlapping the other's GEMMs, at twice the atomics per step.
//   kdQTile: dq_accum is laid out per query block in the dQ accumulators' own order (each
//     (batch, head, query block) a contiguous kBlockM x d block, SmemLayoutdQTile); the
//     consumers store their accumulators into one shared-memory copy of that block with
//     16-byte stores and go on, and warp 1 of the producer warpgroup adds the whole block
//     with one TMA bulk reduce-add (cp.reduce.async.bulk .add.f32): no atomics in the
//     consumers, and a few large L2 requests instead of one per 64 bytes. The dQ
//     postprocess reads the layout back (sm90/bwd_dq_tile_sm90.h). Deterministic runs order
//     the bulk adds in that warp alone (bwd_dq_order.h), the consumers never wait for a turn.
//     kdQTileStages tile buffers (1 or 2): with 2 the consumers may run a step further
//     ahead of the dQ warp (its turn waits, deterministic, or a slow bulk read).
//   kdQTileInQdO (with kdKVSplitD): the dQ tile has no buffer of its own; it is stored into
//     the step's Q/dO stage, whose bytes (2 x kBlockM x d 16-bit values) are exactly the
//     tile's (kBlockM x d fp32). After the dS barrier a warpgroup's wgmmas read only its own
//     d/2 columns of Q and dO (dK and dV over its columns), which are a contiguous half of
//     each stage buffer, so once its dV and dK retire it writes its half of the tile there
//     (its values of the tile's first half into Q's, of the second into dO's) with no
//     barrier of the two warpgroups; the dQ warp adds both buffers (two bulk reduce-adds)
//     and frees the stage for the producer once they are read. At d = 256 the 64 KiB this
//     saves are what a tile buffer would need (docs/perf-notes.md, Backward).
//   kdVEarly (keys split, not kdKVSplitD): dV += P^T dO is issued as soon as P^T is in
//     registers, behind dP^T still in flight, and dK right after dS^T; dS^T goes to shared
//     memory while both run. Without it dS^T is stored first and dV and dK are issued
//     together, so the tensor cores wait out P^T's conversion, dS^T and its stores after
//     dP^T. The kExtras variant keeps that order: with P^T's fp32 values live next to the
//     in-flight dV operand there, ptxas serialised every wgmma of the kernel (C7512).
//   kdKVSplitD (d = 192 and 256, where dK and dV of 64 keys over all d columns would need
//     192 or 256 registers a thread): one 64-key block per CTA (kBlockN = 64), and the two
//     warpgroups split the queries of S^T and dP^T (N = kBlockM / 2 each) and the d columns
//     of dK and dV (N = d / 2 each): 2 x 64 x d/2 / 128 accumulators a thread (128 at
//     d = 256). Each computes P^T and dS^T for its 32 queries and stores both to shared
//     memory; after the per-step barrier dV += P^T dO and dK += dS^T Q read all 64 queries
//     of P^T and dS^T from there (SS, A K-major), and dQ = dS K as before.
template <bool kStaged, int kFloats>
struct Sm90BwddQStaging {};  // nothing: an empty base, no shared memory
template <int kFloats>
struct Sm90BwddQStaging<true, kFloats> {
  cute::array_aligned<float, kFloats, 128> smem_dq;
};

// P^T's shared-memory copy (kdKVSplitD), an empty base otherwise.
template <bool kStaged, class Element, int kElements>
struct Sm90BwdPStaging {};
template <class Element, int kElements>
struct Sm90BwdPStaging<true, Element, kElements> {
  cute::array_aligned<Element, kElements, 1024> smem_p;
};

template <int kHeadDim_, int kBlockM_, int kBlockN_, class Element_, int kStages_ = 2, bool kdSStmatrix_ = false,
          bool kdQBulkReduce_ = false, bool kdPEarlyInit_ = false, bool kdQOverlap_ = false, bool kdQPerWG_ = false,
          int kdQTileStages_ = 0, bool kdKVSplitD_ = false, bool kdQTileInQdO_ = false, bool kdVEarly_ = false>
struct Sm90BwdTraits {
  using Element = Element_;
  using ElementAccum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kNumConsumerWG = 2;
  static constexpr bool kdSStmatrix = kdSStmatrix_;
  static constexpr bool kdQBulkReduce = kdQBulkReduce_;
  static constexpr bool kdPEarlyInit = kdPEarlyInit_;
  static constexpr bool kdQOverlap = kdQOverlap_;
  static constexpr bool kdQPerWG = kdQPerWG_;
  // kdQTile with kdQTileStages tile buffers in shared memory (1 or 2; 0: kdQTile off).
  static constexpr int kdQTileStages = kdQTileStages_;
  // kdQTileInQdO: the tile in the step's Q/dO stage, no buffer of its own.
  static constexpr bool kdQTileInQdO = kdQTileInQdO_;
  static constexpr bool kdQTile = kdQTileStages > 0 || kdQTileInQdO;
  static_assert(kdQTileStages >= 0 && kdQTileStages <= 2, "one or two dQ tile buffers");
  static_assert(!(kdQTileInQdO && kdQTileStages > 0), "the dQ tile lives in the Q/dO stage or in buffers of its own");
  static_assert(!kdQTileInQdO || kdKVSplitD_,
                "kdQTileInQdO needs each warpgroup's last reads of a stage to be its own d/2 columns (kdKVSplitD)");
  static_assert(!kdQTileInQdO || kStages_ <= 2, "the dQ warp's full barriers are kdQFull0 + stage (ids 4 and 5)");
  static_assert(!(kdQPerWG && kdQBulkReduce), "the dQ staging rows are laid out for the d/2 split of dQ");
  static_assert(!(kdQTile && (kdQBulkReduce || kdQPerWG)), "kdQTile replaces the other two dQ paths");
  static_assert(kDqAccumRowAlign % kBlockM_ == 0, "a query block owns whole rows of dq_accum's padding");
  // kdKVSplitD (the wide head dims): the warpgroups split the d columns of dK and dV and the
  // queries of S^T and dP^T, over one 64-key block; see the class comment.
  static constexpr bool kdKVSplitD = kdKVSplitD_;
  static constexpr bool kdVEarly = kdVEarly_;
  static_assert(!(kdVEarly && kdKVSplitD), "kdVEarly issues dV from registers; kdKVSplitD reads P^T from shared memory");
  static_assert(!(kdKVSplitD && (kdQPerWG || kdQBulkReduce)), "kdKVSplitD takes the atomics or tiled dQ");

  static_assert(cute::is_same_v<Element, cute::bfloat16_t> || cute::is_same_v<Element, cute::half_t>,
                "Element must be bf16 or fp16");
  // d = 192 and 256 do not fit the key-split layout: each consumer thread would hold dK and
  // dV of its warpgroup's 64 keys over all d columns (2 x 64 x d / 128 fp32), 192 or 256
  // registers; kdKVSplitD halves that.
  static_assert(kdKVSplitD ? (kHeadDim == 128 || kHeadDim == 192 || kHeadDim == 256)
                           : (kHeadDim == 64 || kHeadDim == 96 || kHeadDim == 128),
                "the Hopper backward is built for d = 64, 96 and 128 (keys split), 192 and 256 (d split)");
  static_assert(kBlockN == (kdKVSplitD ? 64 : 64 * kNumConsumerWG),
                "each consumer warpgroup owns one 64-key wgmma atom of S^T (kdKVSplitD: both share one)");
  // kBlockM is the N of S^T and dP^T and the M of dQ = dS K. 64: one wgmma atom of dQ, one
  // 128-byte row of dS's MN-major swizzle atom. 128 (d = 64 only): half the steps of a CTA,
  // each twice as long, so the per-step fixed costs (barriers, the LSE/D staging, the dQ
  // hand-over, the wgmma pipeline's fill and drain) are paid half as often; S^T and dP^T then
  // take 64 + 64 accumulators a thread next to dK's and dV's 32 + 32 (d = 128 would need 256).
  static_assert(kBlockM == 64 || (kBlockM == 128 && kHeadDim == 64 && !kdKVSplitD),
                "query steps of 64 rows, or of 128 at d = 64 (registers: see above)");
  static_assert(kStages >= 2, "one Q/dO stage loads while the other is consumed");

  // --- Threads and registers -------------------------------------------------------------------
  // Warpgroup 0: warp 0 issues TMA (one thread); warpgroups 1 and 2 run the GEMMs (and
  // stage LSE and D of the next step in shared memory). The consumers hold dK and
  // dV (d/2 + d/2 fp32 per thread) across the whole loop, plus S^T, dP^T and dQ.
  static constexpr int kNumThreadsPerWG = 128;
  static constexpr int kNumProducerThreads = kNumThreadsPerWG;
  static constexpr int kNumConsumerThreads = kNumThreadsPerWG * kNumConsumerWG;
  static constexpr int kNumThreads = kNumProducerThreads + kNumConsumerThreads;
  static constexpr int kNThreads = kNumThreads;  // run_bwd's name
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  // setmaxnreg moves registers within the CTA's launch allocation (sm90_launch_regs: 168 a
  // thread here): the consumers' increase must not exceed what the producer warpgroup gives
  // back, or their setmaxnreg.inc waits forever (a producer budget of 32 hung the kernel on
  // an H100).
  static_assert(kNumProducerThreads * kProducerRegs + kNumConsumerThreads * kConsumerRegs <=
                    kNumThreads * sm90_launch_regs(kNumThreads),
                "the consumers' registers exceed what the launch allocates: setmaxnreg.inc would hang");
  static_assert(2 * kBlockM <= (kdQPerWG ? kNumThreadsPerWG : kNumConsumerThreads),
                "one consumer thread (of the warpgroup, kdQPerWG) stages each LSE and each D of a step");

  // --- MMA ----------------------------------------------------------------------------------
  // Per warpgroup: the keys split (64 keys each, all queries, all d columns of dK and dV),
  // or (kdKVSplitD) the queries of S^T and the d columns of dK and dV.
  static constexpr int kSdPQueriesPerWG = kdKVSplitD ? kBlockM / kNumConsumerWG : kBlockM;
  static constexpr int kdKVColsPerWG = kdKVSplitD ? kHeadDim / kNumConsumerWG : kHeadDim;
  using TileShapeSdP = cute::Shape<cute::_64, cute::Int<kSdPQueriesPerWG>, cute::Int<kHeadDim>>;  // (64 keys,QUERIES,D)
  using TileShapedKV = cute::Shape<cute::_64, cute::Int<kdKVColsPerWG>, cute::Int<kBlockM>>;     // (64 keys,COLS,BLK_M)
  // dQ's tile per warpgroup: d/2 columns over all keys, or (kdQPerWG) all d columns over
  // the warpgroup's 64 keys.
  static constexpr int kdQColsPerWG = kdQPerWG ? kHeadDim : kHeadDim / kNumConsumerWG;
  static constexpr int kdQKeysPerWG = kdQPerWG ? kBlockN / kNumConsumerWG : kBlockN;
  using TileShapedQ = cute::Shape<cute::Int<kBlockM>, cute::Int<kdQColsPerWG>,
                                  cute::Int<kdQKeysPerWG>>;                                // (BLK_M,D/2,BLK_N) or (BLK_M,D,64)
  // The threads of one dQ GEMM: both consumer warpgroups, or each its own.
  static constexpr int kNumdQThreads = kdQPerWG ? kNumThreadsPerWG : kNumConsumerThreads;
  using MmaOpSdP = decltype(cute::GMMA::ss_op_selector<Element, Element, ElementAccum, TileShapeSdP,
                                                       cute::GMMA::Major::K, cute::GMMA::Major::K>());
  // The register A operand of an RS wgmma must be K-major (the accumulator layout is);
  // dO and Q are read as (N = d, K = queries) with d contiguous: MN-major, wgmma
  // transposes them while reading.
  // kdKVSplitD: P^T and dS^T over all queries come from shared memory (each warpgroup
  // computed half of them), (keys, queries) with queries contiguous: K-major, SS.
  using MmaOpdKV = cute::conditional_t<
      kdKVSplitD,
      decltype(cute::GMMA::ss_op_selector<Element, Element, ElementAccum, TileShapedKV, cute::GMMA::Major::K,
                                          cute::GMMA::Major::MN>()),
      decltype(cute::GMMA::rs_op_selector<Element, Element, ElementAccum, TileShapedKV, cute::GMMA::Major::K,
                                          cute::GMMA::Major::MN>())>;
  // dS is stored queries-contiguous (each thread's dS^T accumulator pairs are adjacent
  // queries: 32-bit stores), so A is MN-major; K is read as (N = d, K = keys): MN-major.
  // 16-bit types may have either operand MN-major in an SS wgmma.
  using MmaOpdQ = decltype(cute::GMMA::ss_op_selector<Element, Element, ElementAccum, TileShapedQ,
                                                      cute::GMMA::Major::MN, cute::GMMA::Major::MN>());
  static_assert(cute::size<1>(typename cute::MMA_Traits<MmaOpSdP>::Shape_MNK{}) == kSdPQueriesPerWG, "S^T atom N");
  static_assert(cute::size<1>(typename cute::MMA_Traits<MmaOpdKV>::Shape_MNK{}) == kdKVColsPerWG, "dK/dV atom N");
  static_assert(cute::size<1>(typename cute::MMA_Traits<MmaOpdQ>::Shape_MNK{}) == kdQColsPerWG, "dQ atom N");
  // The warpgroups split the keys (M) of S^T, dP^T, dK, dV and the d columns (N) of dQ
  // (kdQPerWG: the keys (K) of dQ, each warpgroup a TiledMmadQ of its own; kdKVSplitD: the
  // queries (N) of S^T and dP^T and the d columns (N) of dK and dV).
  using WGLayoutSplitN = cute::Layout<cute::Shape<cute::_1, cute::_2, cute::_1>>;
  using WGLayoutSplitM = cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>;
  using WGLayoutSdPdKV = cute::conditional_t<kdKVSplitD, WGLayoutSplitN, WGLayoutSplitM>;
  using TiledMmaSdP = decltype(cute::make_tiled_mma(MmaOpSdP{}, WGLayoutSdPdKV{}));
  using TiledMmadKV = decltype(cute::make_tiled_mma(MmaOpdKV{}, WGLayoutSdPdKV{}));
  using TiledMmadQ = decltype(cute::make_tiled_mma(
      MmaOpdQ{}, cute::Layout<cute::Shape<cute::_1, cute::Int<kNumdQThreads / kNumThreadsPerWG>, cute::_1>>{}));
  static_assert(cute::size(TiledMmaSdP{}) == kNumConsumerThreads && cute::size(TiledMmadKV{}) == kNumConsumerThreads &&
                    cute::size(TiledMmadQ{}) == kNumdQThreads,
                "the tiled MMAs must span exactly the consumer threads (dQ: those of one GEMM)");

  // --- Shared memory --------------------------------------------------------------------------
  // Q, dO (BLK_M,D,STAGE) and K, V (BLK_N,D) keep global memory's row order (d contiguous,
  // so TMA copies rows as they are). Q and dO take the widest swizzle their rows admit.
  // K's swizzle atom is at most d/2 wide: dQ = dS K reads K MN-major (N = d) split in d
  // halves between the warpgroups, and an MN-major wgmma descriptor must start on a
  // swizzle-atom column boundary (d = 64: SW64, two 32-column atoms per row; d = 96: SW32,
  // 48 = 3 x 16 columns a half; Q's 192-byte rows at d = 96 take SW64).
  // kdKVSplitD: dV and dK read dO and Q MN-major split in d halves as well, so their atom is
  // at most d/2 wide too (d = 192: SW64, 32-column atoms, 96 = 3 x 32 a half).
  using SmemLayoutAtomQ = decltype(gmma_smem_atom<Element, (kdKVSplitD ? kdKVColsPerWG : kHeadDim) * int(sizeof(Element)),
                                                  cute::GMMA::Major::K>());
  using SmemLayoutAtomK =
      decltype(gmma_smem_atom<Element, kHeadDim / kNumConsumerWG * int(sizeof(Element)), cute::GMMA::Major::K>());
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      SmemLayoutAtomQ{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));  // (BLK_M,D,STAGE)
  using SmemLayoutdO = SmemLayoutQ;                                                                     // (BLK_M,D,STAGE)
  using SmemLayoutK = decltype(cute::tile_to_shape(
      SmemLayoutAtomK{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>{}));                     // (BLK_N,D)
  using SmemLayoutV = SmemLayoutK;                                                                      // (BLK_N,D)
  // Transposed views of the same bytes (X^T(j, i) = X(i, j)): the MN-major B operands.
  using SmemLayoutQt = decltype(cute::composition(
      SmemLayoutQ{}, cute::make_ordered_layout(
                         cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockM>, cute::Int<kStages>>{},
                         cute::Step<cute::_2, cute::_1, cute::_3>{})));                               // (D,BLK_M,STAGE)
  using SmemLayoutdOt = SmemLayoutQt;                                                                   // (D,BLK_M,STAGE)
  using SmemLayoutKt = decltype(cute::composition(
      SmemLayoutK{}, cute::make_ordered_layout(cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>>{},
                                               cute::Step<cute::_2, cute::_1>{})));                   // (D,BLK_N)
  // dS (BLK_M,BLK_N,2), queries contiguous (MN-major for dQ's A operand): one 128-byte row
  // of 64 queries per key. Two buffers: a warpgroup writes block m+1's dS while the other
  // may still be reading block m's in its dQ wgmma; the dS barrier of block m+1 comes
  // after both warpgroups retired block m's dQ, so buffer m % 2 is free again at m + 2.
  using SmemLayoutAtomdS = decltype(gmma_smem_atom<Element, kBlockM * int(sizeof(Element)), cute::GMMA::Major::MN>());
  using SmemLayoutdS = decltype(cute::tile_to_shape(
      SmemLayoutAtomdS{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>, cute::_2>{}));          // (BLK_M,BLK_N,2)
  using SmemLayoutdSt = decltype(cute::composition(
      SmemLayoutdS{}, cute::make_ordered_layout(cute::Shape<cute::Int<kBlockN>, cute::Int<kBlockM>, cute::_2>{},
                                                cute::Step<cute::_2, cute::_1, cute::_3>{})));        // (BLK_N,BLK_M,2)
  // kdKVSplitD: P^T goes through shared memory like dS^T, in dS's layout; both are then read
  // as (keys, queries) with queries contiguous, the K-major A operand of dV and dK.
  using SmemLayoutP = SmemLayoutdS;    // (BLK_M,BLK_N,2)
  using SmemLayoutPt = SmemLayoutdSt;  // (BLK_N,BLK_M,2)

  // dQ staging (kdQBulkReduce): the dQ accumulator of a wgmma warpgroup gives warp w rows
  // 16w..16w+15 and the warpgroup d/2 columns, so each warp owns a (16, d/2) block that maps
  // to 16 contiguous runs of d/2 floats of dq_accum: one bulk reduce-add per row, issued by
  // the warp itself (no cross-warp handshake). A row is padded by 16 bytes: a float2 store
  // of the accumulator writes 8 rows x 32 bytes, which land on 8 distinct 16-byte bank
  // offsets instead of one (2 wavefronts, the minimum for 256 bytes, instead of 8). Rows stay
  // 16-byte aligned and whole multiples of 16 bytes, as the bulk copy requires.
  static constexpr int kdQRowsPerWarp = 16;
  static constexpr int kdQCols = kHeadDim / kNumConsumerWG;
  static constexpr int kdQRowStride = kdQCols + 4;                           // floats
  static constexpr int kdQWarpStride = kdQRowsPerWarp * kdQRowStride;        // floats
  static constexpr int kdQWarpsPerWG = kNumThreadsPerWG / 32;
  static_assert(!kdQBulkReduce || kdQRowsPerWarp * kdQWarpsPerWG == kBlockM,
                "the warps of a warpgroup split dQ's kBlockM rows");
  static_assert(kdQRowStride * 4 % 16 == 0 && kdQCols * 4 % 16 == 0, "bulk copies move 16-byte multiples");
  // (row, column) of the (BLK_M,D) dQ tile -> float offset: row = 16 w + r, column = g d/2 + c
  // (w: warp in its warpgroup, g: warpgroup) at ((g * 4 + w) * 16 + r) * stride + c.
  using SmemLayoutdQ = cute::Layout<
      cute::Shape<cute::Shape<cute::Int<kdQRowsPerWarp>, cute::Int<kdQWarpsPerWG>>,
                  cute::Shape<cute::Int<kdQCols>, cute::Int<kNumConsumerWG>>>,
      cute::Stride<cute::Stride<cute::Int<kdQRowStride>, cute::Int<kdQWarpStride>>,
                   cute::Stride<cute::_1, cute::Int<kdQWarpStride * kdQWarpsPerWG>>>>;  // (BLK_M,D)
  static constexpr int kSmemdQRowsFloats = kdQWarpStride * kdQWarpsPerWG * kNumConsumerWG;

  // dQ tile (kdQTile): (consumer thread, accumulator value) -> float offset in one query
  // block of dq_accum and in its shared-memory copy. Thread t's values go in runs of 4 (one
  // 16-byte store), run j of the 128 threads of a warpgroup side by side (a warp's store
  // writes 512 contiguous bytes: no bank conflict). The tile is two parts, each one
  // contiguous region of shared memory: a tile buffer's two halves, or (kdQTileInQdO) the
  // stage's Q buffer and its dO buffer. A thread's first J/2 runs (J = its runs) go to part 0,
  // the others to part 1; within a part each warpgroup's values are one contiguous quarter
  // of the tile (kdQTileInQdO: its d/2 columns of Q, of dO).
  static constexpr int kdQTileValues = kBlockM * kdQCols / kNumThreadsPerWG;  // per thread
  static_assert(kdQTileValues % 8 == 0, "a thread's dQ values go in 16-byte runs, half of them to each part");
  static constexpr int kdQTileRunsPerPart = kdQTileValues / 8;
  static constexpr int kdQTileWGPartFloats = kNumThreadsPerWG * kdQTileValues / 2;  // a quarter of the tile
  static constexpr int kdQTilePartFloats = kNumConsumerWG * kdQTileWGPartFloats;     // half of it
  static_assert(!kdQTileInQdO || kdQTilePartFloats * int(sizeof(float)) == kBlockM * kHeadDim * int(sizeof(Element)),
                "a part of the tile is one stage of Q (or dO) to the byte");
  using SmemLayoutdQTile = cute::Layout<
      cute::Shape<cute::Shape<cute::Int<kNumThreadsPerWG>, cute::Int<kNumConsumerWG>>,
                  cute::Shape<cute::_4, cute::Shape<cute::Int<kdQTileRunsPerPart>, cute::_2>>>,
      cute::Stride<cute::Stride<cute::_4, cute::Int<kdQTileWGPartFloats>>,
                   cute::Stride<cute::_1, cute::Stride<cute::Int<4 * kNumThreadsPerWG>,
                                                       cute::Int<kdQTilePartFloats>>>>>;  // (THR,VAL)
  static_assert(cute::cosize_v<SmemLayoutdQTile> == kBlockM * kHeadDim, "the tile covers one query block");
  static constexpr int kdQTileBytes = kBlockM * kHeadDim * int(sizeof(float));
  static constexpr int kSmemdQFloats = kdQTile ? kdQTileStages * kBlockM * kHeadDim : kSmemdQRowsFloats;  // 0: kdQTileInQdO

  // 1024-byte alignment: the swizzle patterns are applied to absolute address bits by TMA
  // and wgmma, so each buffer starts on a pattern period (as the forward's).
  static constexpr int kSmemAlign = 1024;
  static constexpr int kNumRowStatCopies = kdQPerWG ? kNumConsumerWG : 1;
  using Pipeline = Sm90TmaPipeline<kStages, kNumConsumerWG>;
  // The dQ staging, when on, is an (empty otherwise) base: first in the layout, its size
  // a multiple of 1024 bytes at both head dims, so K keeps its alignment without padding.
  struct SharedStorage : Sm90BwddQStaging<kdQBulkReduce || (kdQTile && !kdQTileInQdO), kSmemdQFloats>,
                         Sm90BwdPStaging<kdKVSplitD, Element, cute::cosize_v<SmemLayoutP>> {
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, kSmemAlign> smem_k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>, kSmemAlign> smem_v;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, kSmemAlign> smem_q;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutdO>, kSmemAlign> smem_do;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutdS>, kSmemAlign> smem_ds;
    // Per query row of a step, double-buffered by step parity: LSE * log2(e) (+inf where P
    // must be 0) and D, staged by the consumers themselves one step ahead (kdQPerWG: a copy
    // per warpgroup, which runs steps at its own pace).
    cute::array_aligned<float, kBlockM * 2 * kNumRowStatCopies> smem_lse;
    cute::array_aligned<float, kBlockM * 2 * kNumRowStatCopies> smem_d;
    // Q_m and dO_m of a stage: full when the TMA bytes landed; empty when both consumer
    // warpgroups retired its last wgmma.
    typename Pipeline::SharedStorage pipeline_qdo;
    cutlass::arch::ClusterTransactionBarrier barrier_kv;  // K and V landed (once)
  };
  static constexpr int kSmemSize = int(sizeof(SharedStorage));
  static_assert(kSmemSize <= 232448, "tile does not fit sm90 shared memory (227 KiB per CTA)");

  // Bytes a TMA stage delivers: the full barrier's expected transaction count. A box
  // overhanging the tensor's end is zero-filled and still credits all of them.
  static constexpr int kTmaTransactionBytesQdO = 2 * kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kTmaTransactionBytesKV = 2 * kBlockN * kHeadDim * int(sizeof(Element));

  // --- TMA ------------------------------------------------------------------------------------
  // Global tensors as (seqlen, d, head, batch), d contiguous, 64-bit strides (the forward's
  // views: a tile overhanging one sequence reads zeros, never the next sequence).
  using ShapeQKV = cute::Shape<int32_t, int32_t, int32_t, int32_t>;  // (seqlen,d,head,batch)
  using StrideQKV = cute::Stride<int64_t, cute::_1, int64_t, int64_t>;
  using GmemTensorQKV = decltype(cute::make_tensor(cute::make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                                   ShapeQKV{}, StrideQKV{}));
  using TmaLoadQdO = decltype(cute::make_tma_copy(cute::SM90_TMA_LOAD{}, GmemTensorQKV{},
                                                  cute::take<0, 2>(SmemLayoutQ{})));
  using TmaLoadKV = decltype(cute::make_tma_copy(cute::SM90_TMA_LOAD{}, GmemTensorQKV{}, SmemLayoutK{}));
};

}  // namespace fa_cute
