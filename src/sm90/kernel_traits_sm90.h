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

#include "cute_utils.h"
#include "fp8_layout.h"
#include "kernel_traits.h"
#include "sm90/pipeline_sm90.h"
#include "sm90/tile_scheduler_sm90.h"

namespace fa_cute {

// The GMMA shared-memory atom for a buffer whose contiguous dimension holds kRowBytes bytes:
// the widest swizzle whose 8-row pattern period (32/64/128 bytes per row) divides a row.
// wgmma and TMA both read the swizzle mode from the descriptor, so the same atom serves
// both; a wider swizzle spreads an 8-row phase over more banks. kMajor names the MMA
// mode that is contiguous in memory: K for Q and K (d contiguous), MN for an operand
// whose M or N mode is contiguous.
template <class Element, int kRowBytes, cute::GMMA::Major kMajor>
CUTE_HOST_DEVICE constexpr auto gmma_smem_atom() {
  namespace GMMA = cute::GMMA;
  if constexpr (kRowBytes % 128 == 0) {
    return GMMA::Layout_SW128_Atom<Element, kMajor>{};
  } else if constexpr (kRowBytes % 64 == 0) {
    return GMMA::Layout_SW64_Atom<Element, kMajor>{};
  } else if constexpr (kRowBytes % 32 == 0) {
    return GMMA::Layout_SW32_Atom<Element, kMajor>{};
  } else {
    return GMMA::Layout_INTER_Atom<Element, kMajor>{};
  }
}

// Registers a thread of a Hopper CTA of num_threads threads gets at launch
// (__launch_bounds__(num_threads, 1)): the 64K-entry register file split evenly, rounded
// down to the allocation's multiple of 8. setmaxnreg redistributes only these.
constexpr int sm90_launch_regs(int num_threads) { return 65536 / num_threads / 8 * 8; }

// Everything the Hopper (sm_90a) warp-specialised forward kernel needs, derived from six
// numbers (docs/hopper-plan.md secs. 2-3):
//   kHeadDim        head dimension d (K of S = Q K^T, N of O = P V)
//   kBlockM         query rows per CTA; each consumer warpgroup owns 64 of them (one wgmma
//                   M=64 atom), so its softmax never exchanges data with another warpgroup
//   kBlockN         key/value rows per pipeline stage; also the N of the S wgmma atom
//   kNumConsumerWG  consumer warpgroups (1 for short queries, 2, or 3 at d=64 and 96);
//                   one producer warpgroup more
//   Element         cute::bfloat16_t or cute::half_t (accumulation and softmax are fp32), or
//                   cute::float_e4m3_t: the FP8 kernel (kFp8; O in bf16, V read as the
//                   transposed Vt of fp8_layout.h, P quantised to e4m3 for P V)
//   kStages         K and V pipeline stages in shared memory
// and the overlap knobs (docs/hopper-plan.md sec. 5; each a rung of the ladder):
//   kIntraWGOverlap a warpgroup issues S_j = Q K_j^T and O += P_{j-1} V_{j-1} together and
//                   runs the softmax of block j while the second GEMM still computes
//   kPingPong       the consumer warpgroups take turns issuing their GEMMs (named
//                   barriers, round robin), so that one's softmax runs under the others' GEMMs
//   kPersistent     one CTA per SM loops over tiles: the next tile's first K/V (and Q,
//                   where O has a buffer of its own) load under this tile's epilogue
//   kLazyRescale    O is rescaled only when a row maximum of the warp grew by more than
//                   2^8 (OnlineSoftmax; exact, the sums use the same stale maxima)
//   kSplitKV        FwdParams::num_splits > 1 divides each tile's key blocks among CTAs,
//                   which write fp32 partial O and LSE for fwd_combine_kernel (decode:
//                   batch x heads tiles alone leave most SMs idle)
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNumConsumerWG_, class Element_, int kStages_ = 2,
          bool kIntraWGOverlap_ = true, bool kPingPong_ = false, bool kPersistent_ = false,
          bool kLazyRescale_ = false, bool kSplitKV_ = false>
struct Sm90FwdTraits : FwdTraitsBase<kHeadDim_, kBlockM_, kBlockN_, Element_, kPersistent_, kLazyRescale_> {
  using Base = FwdTraitsBase<kHeadDim_, kBlockM_, kBlockN_, Element_, kPersistent_, kLazyRescale_>;
  using typename Base::Element;
  using typename Base::ElementAccum;
  using Base::kBlockM;
  using Base::kBlockN;
  using Base::kHeadDim;
  using Base::kLazyRescale;
  using Base::kPersistent;
  // A persistent launch of a varlen batch claims its tiles (tile_scheduler_sm90.h), except
  // at d=192: there the claimer thread took the producer's paged loads in the same 24
  // registers from 204-224 to 360-380 B of spills (ptxas sm_90a; the extras budget is 256).
  static constexpr bool kDynamicTileOrder = kPersistent && kHeadDim_ != 192;

  // FP8: 8-bit wgmma operands must both be K-major and come in k-blocks of 32. O leaves in
  // bf16 (ElementO); Element is then what Q, K, Vt and P hold.
  static constexpr bool kFp8 = cute::sizeof_bits_v<Element> == 8;
  using typename Base::ElementO;
  static constexpr int kMmaK = kFp8 ? 32 : 16;  // the wgmma k-block
  static_assert(!kFp8 || kMmaK == kFp8VtChunk, "Vt's key chunks are the 8-bit wgmma's k-blocks (fp8_layout.h)");

  static constexpr int kNumConsumerWG = kNumConsumerWG_;
  static constexpr int kStages = kStages_;
  static constexpr bool kIntraWGOverlap = kIntraWGOverlap_;
  static constexpr bool kPingPong = kPingPong_;
  static constexpr bool kSplitKV = kSplitKV_;

  static_assert(kNumConsumerWG >= 1 && kNumConsumerWG <= 3,
                "1-3 consumer warpgroups: 4 warpgroups in all is the 512-thread CTA limit");
  static_assert(kBlockM == 64 * kNumConsumerWG, "each consumer warpgroup owns one 64-row wgmma atom of S and O");
  static_assert(kHeadDim % kMmaK == 0, "d is the K of S = Q K^T, consumed in wgmma k-blocks (16; FP8: 32)");
  static_assert(kBlockN % kMmaK == 0, "kBlockN is the K of O = P V, consumed in wgmma k-blocks (16; FP8: 32)");
  static_assert(kHeadDim <= 256 && kBlockN <= 256,
                "wgmma N is at most 256 (d for P V, kBlockN for Q K^T); TMA box dims are at most 256");
  static_assert(kStages >= 2, "one stage loads while the other is consumed");
  static_assert(!kPingPong || kNumConsumerWG >= 2, "ping-pong needs at least 2 consumer warpgroups to alternate");
  static_assert(!kSplitKV || !kPersistent, "split-KV tiles are one CTA each (a persistent CTA serves long queries)");

  // --- Threads and registers -------------------------------------------------------------------
  // Warpgroup 0 is the producer (one elected thread of warp 0 issues TMA); warpgroups
  // 1..kNumConsumerWG run the wgmmas and the softmax.
  static constexpr int kNumThreadsPerWG = 128;
  static constexpr int kNumProducerThreads = kNumThreadsPerWG;
  static constexpr int kNumConsumerThreads = kNumThreadsPerWG * kNumConsumerWG;
  static constexpr int kNumThreads = kNumProducerThreads + kNumConsumerThreads;
  // setmaxnreg budgets (per thread): the producer needs almost none, the consumers hold S,
  // P and O. setmaxnreg moves registers within the CTA's launch allocation
  // (sm90_launch_regs): a consumer increase the producer's decrease does not pay for is
  // never granted, and the warpgroup hangs in setmaxnreg.inc (a producer budget of 32 with
  // two consumer warpgroups at 240 hung every such kernel on an H100), so the sums are
  // checked here. With one consumer warpgroup (the decode tiles) the producer gets 56,
  // which holds a key block's page-table reads in flight (a paged cache's 16-row boxes)
  // where 24 spilled.
  static constexpr int kProducerRegs = kNumConsumerWG == 3 ? 32 : kNumConsumerWG == 1 ? 56 : 24;
  static constexpr int kConsumerRegs = kNumConsumerWG == 3 ? 160 : 240;
  static_assert(kProducerRegs % 8 == 0 && kConsumerRegs % 8 == 0 && kProducerRegs >= 24 && kConsumerRegs <= 256,
                "setmaxnreg takes multiples of 8 in [24, 256]");
  static_assert(kNumProducerThreads * kProducerRegs + kNumConsumerThreads * kConsumerRegs <=
                    kNumThreads * sm90_launch_regs(kNumThreads),
                "the consumers' registers exceed what the launch allocates: setmaxnreg.inc would hang");

  // --- MMA ----------------------------------------------------------------------------------
  // S = Q K^T: both operands in shared memory (SS), both K-major (d is contiguous in Q and
  // K). O += P V: P from registers (RS, which requires a K-major A), V read as the B
  // operand (N=d, K=kBlockN) whose contiguous mode is d, i.e. MN-major: wgmma transposes
  // it while reading, so no ldmatrix.trans and no transpose pass. 8-bit wgmma has no
  // MN-major operands: the FP8 kernel reads Vt, written K-major by the layout pass.
  using TileShapeQK = cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>, cute::Int<kHeadDim>>;   // (BLK_M,BLK_N,D)
  using TileShapePV = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>, cute::Int<kBlockN>>;   // (BLK_M,D,BLK_N)
  using MmaOpQK = decltype(cute::GMMA::ss_op_selector<Element, Element, ElementAccum, TileShapeQK,
                                                      cute::GMMA::Major::K, cute::GMMA::Major::K>());
  using MmaOpPV = decltype(cute::GMMA::rs_op_selector<Element, Element, ElementAccum, TileShapePV,
                                                      cute::GMMA::Major::K,
                                                      kFp8 ? cute::GMMA::Major::K : cute::GMMA::Major::MN>());
  // The selectors fall back silently to the largest atom N dividing the tile; N = 80, 112,
  // 144, 176 (and every other multiple of 8 that is not 2^k or 3*2^k) exist only under
  // -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED. A smaller atom would issue several narrow
  // wgmmas per k-block, each re-reading the A operand.
  static_assert(cute::size<1>(typename cute::MMA_Traits<MmaOpQK>::Shape_MNK{}) == kBlockN,
                "S wgmma atom N != kBlockN: compile with -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED");
  static_assert(cute::size<1>(typename cute::MMA_Traits<MmaOpPV>::Shape_MNK{}) == kHeadDim,
                "O wgmma atom N != d: compile with -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED");
  // Consumer warpgroups tiled along M only: each owns whole rows of S (softmax stays inside
  // the warpgroup) and reads the same K/V stage.
  using AtomLayoutMNK = cute::Layout<cute::Shape<cute::Int<kNumConsumerWG>, cute::_1, cute::_1>>;
  using TiledMmaQK = decltype(cute::make_tiled_mma(MmaOpQK{}, AtomLayoutMNK{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(MmaOpPV{}, AtomLayoutMNK{}));
  static_assert(cute::size(TiledMmaQK{}) == kNumConsumerThreads && cute::size(TiledMmaPV{}) == kNumConsumerThreads,
                "the tiled MMAs must span exactly the consumer threads");

  // --- Shared memory --------------------------------------------------------------------------
  // Q, K and V rows are d elements contiguous (as in global memory, so TMA copies rows
  // without reordering). V uses K's layout: (BLK_N, D) with d contiguous is the same bytes
  // as the MN-major (D, BLK_N) B operand that O += P V reads, so SmemLayoutVt is only a
  // transposed view of it. FP8: the stage holds Vt's (D, BLK_N) box, keys contiguous (the
  // K-major B operand), and SmemLayoutV is that layout.
  static constexpr int kRowBytes = kHeadDim * int(sizeof(Element));
  using SmemLayoutAtomQKV = decltype(gmma_smem_atom<Element, kRowBytes, cute::GMMA::Major::K>());
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      SmemLayoutAtomQKV{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));                  // (BLK_M,D)
  using SmemLayoutK = decltype(cute::tile_to_shape(
      SmemLayoutAtomQKV{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));  // (BLK_N,D,STAGE)
  using SmemLayoutVtFp8 = decltype(cute::tile_to_shape(
      gmma_smem_atom<Element, kBlockN * int(sizeof(Element)), cute::GMMA::Major::K>(),
      cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kStages>>{}));                  // (D,BLK_N,STAGE)
  using SmemLayoutV = cute::conditional_t<kFp8, SmemLayoutVtFp8, SmemLayoutK>;   // FP8: (D,BLK_N,STAGE)
  using SmemLayoutVt = cute::conditional_t<
      kFp8, SmemLayoutVtFp8,
      decltype(cute::composition(SmemLayoutK{}, cute::make_ordered_layout(
                                                    cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kStages>>{},
                                                    cute::Step<cute::_2, cute::_1, cute::_3>{})))>;  // (D,BLK_N,STAGE)
  using SmemLayoutO = decltype(cute::tile_to_shape(
      gmma_smem_atom<ElementO, kHeadDim * int(sizeof(ElementO)), cute::GMMA::Major::K>(),
      cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));                                       // (BLK_M,D)

  // Swizzled buffers are 1024-byte aligned: the SW128 pattern repeats every 8 rows x 128 B,
  // and TMA and wgmma apply it to absolute address bits, so a buffer must start on a period
  // boundary for every writer and reader to see the same arrangement. The kernel declares
  // its dynamic shared memory __align__(1024) for the same reason.
  static constexpr int kSmemAlign = 1024;
  using Pipeline = Sm90TmaPipeline<kStages, kNumConsumerWG>;
  struct SharedStorageBase {
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, kSmemAlign> smem_q;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, kSmemAlign> smem_k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>, kSmemAlign> smem_v;
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
    // Q: loaded (transaction barrier) and free for the next tile's Q.
    cutlass::arch::ClusterTransactionBarrier barrier_q_full;
    cutlass::arch::ClusterBarrier barrier_q_empty;
    Sm90TileHandoffStorage tile_handoff;  // the dynamic tile order's (tile_scheduler_sm90.h)
  };
  struct SharedStorageWithO : SharedStorageBase {
    cute::array_aligned<ElementO, cute::cosize_v<SmemLayoutO>, kSmemAlign> smem_o;
  };
  // O is staged for its TMA store in Q's space, unless a persistent CTA has room for a
  // buffer of its own: then the next tile's Q loads under this tile's last P V and
  // epilogue instead of after the store. In Q's space, each consumer warpgroup writes only
  // its own rows, whose Q only its own (retired) S wgmmas read.
  // FP8: bf16 O is twice e4m3 Q's bytes, so it always has its own buffer.
  static constexpr bool kOAliasesQ = !kFp8 && (!kPersistent || sizeof(SharedStorageWithO) > 232448);
  using SharedStorage = cute::conditional_t<kOAliasesQ, SharedStorageBase, SharedStorageWithO>;
  static constexpr int kSmemSize = int(sizeof(SharedStorage));
  static_assert(kSmemSize <= 232448, "tile does not fit sm90 shared memory (227 KiB per CTA)");

  // Bytes one TMA stage delivers: the mbarrier's expected transaction count. A box that
  // overhangs the tensor's end is zero-filled and still credits all of them.
  static constexpr int kTmaTransactionBytesQ = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kTmaTransactionBytesK = kBlockN * kHeadDim * int(sizeof(Element));
  static constexpr int kTmaTransactionBytesV = kTmaTransactionBytesK;

  // --- TMA ------------------------------------------------------------------------------------
  // Global tensors as (seqlen, d, head, batch) with d contiguous (FP8's Vt: (d, keys, head,
  // batch) with the keys contiguous, the same kind of tensor). Batch and head are TMA
  // dimensions of their own, so a tile overhanging one sequence's end reads zeros, never
  // the next sequence. Strides are 64-bit (a batch stride can exceed 2^31 elements).
  using ShapeQKV = cute::Shape<int32_t, int32_t, int32_t, int32_t>;                   // (seqlen,d,head,batch)
  using StrideQKV = cute::Stride<int64_t, cute::_1, int64_t, int64_t>;
  using GmemTensorQKV = decltype(cute::make_tensor(cute::make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                                   ShapeQKV{}, StrideQKV{}));
  using GmemTensorO = decltype(cute::make_tensor(cute::make_gmem_ptr(static_cast<ElementO*>(nullptr)),
                                                 ShapeQKV{}, StrideQKV{}));
  // The box is one smem tile (one stage for K and V); the descriptor is built on the host
  // per call and passed as a __grid_constant__ parameter.
  using TmaLoadQ = decltype(cute::make_tma_copy(cute::SM90_TMA_LOAD{}, GmemTensorQKV{}, SmemLayoutQ{}));
  using TmaLoadK = decltype(cute::make_tma_copy(cute::SM90_TMA_LOAD{}, GmemTensorQKV{},
                                                cute::take<0, 2>(SmemLayoutK{})));
  using TmaLoadV = decltype(cute::make_tma_copy(cute::SM90_TMA_LOAD{}, GmemTensorQKV{},
                                                cute::take<0, 2>(SmemLayoutV{})));
  using TmaStoreO = decltype(cute::make_tma_copy(cute::SM90_TMA_STORE{}, GmemTensorO{}, SmemLayoutO{}));

  // A paged KV cache whose pages do not hold whole key blocks (a page size that is a multiple
  // of 16 but not of kBlockN) fills a K or V stage as kBlockN / 16 boxes of 16 rows, each read
  // from its own page. 16 rows are whole periods of every K-major swizzle pattern (8 rows),
  // so a box starts on a pattern period of the stage and TMA writes it swizzled as it would
  // write those rows of the whole stage: the box is the stage's first 16 rows.
  static constexpr int kPageBoxRows = 16;
  static_assert(kBlockN % kPageBoxRows == 0, "a key block is whole 16-row page boxes");
  using SmemLayoutKVPageBox = decltype(cute::composition(
      cute::take<0, 2>(SmemLayoutK{}),
      cute::Layout<cute::Shape<cute::Int<kPageBoxRows>, cute::Int<kHeadDim>>,
                   cute::Stride<cute::_1, cute::Int<kBlockN>>>{}));  // (16,D)
  using TmaLoadKVPageBox = decltype(cute::make_tma_copy(cute::SM90_TMA_LOAD{}, GmemTensorQKV{},
                                                        SmemLayoutKVPageBox{}));
};

}  // namespace fa_cute
