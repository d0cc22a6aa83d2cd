#pragma once

#include <cute/tensor.hpp>

#include <cute/algorithm/copy.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/mma_atom.hpp>

#include <cutlass/numeric_types.h>

#include "kernel_traits.h"

namespace fa_cute {

// Everything the sm80-instruction forward kernel needs, derived from five numbers.
//   kHeadDim   head dimension d (the K dimension of S = Q K^T, the N dimension of O = P V)
//   kBlockM    query rows per thread block
//   kBlockN    key/value rows per main-loop iteration
//   kNWarps    warps per block; warps split the M dimension, so each warp owns
//              kBlockM / kNWarps complete rows of S and can run the softmax without
//              exchanging data with other warps
//   Element    cute::bfloat16_t or cute::half_t (accumulation and softmax are fp32)
// and the optimisation-ladder knobs (docs/ladder.md), all on in production configs except
// where a config says otherwise:
//   kSwizzle          swizzled shared memory (off: every ldmatrix phase is an 8-way bank conflict)
//   kOverlapLoads     V_j loads under S = Q K_j^T and K_{j-1} under O += P V_j (off: load
//                     K_j and V_j, wait, then compute)
//   kRegPrefetch      ldmatrix of MMA k-slice i+1 issued before the MMAs of slice i
//   kReverseKV        visit key blocks from last to first
//   kPersistent       one block per SM slot loops over tiles and loads the next tile's Q and
//                     first K while it stores this tile's O (O then needs its own smem)
//   kDirectOStore     O goes from registers straight to global memory in 4-byte pieces (off:
//                     staged through shared memory for 16-byte stores, at the price of a
//                     barrier and, in persistent blocks, 32 KiB of its own shared memory)
//   kLazyRescale      skip rescaling O while no row max of the warp grew by more than 2^8
//                     (src/softmax.h)
//   kLadderRung       0 in production configs; a ladder rung's number makes its kernel a type
//                     of its own even where its knobs equal a production config's, so every
//                     generated translation unit holds the only instantiation of its kernel
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, class Element_,
          bool kSwizzle_ = true, bool kOverlapLoads_ = true, bool kRegPrefetch_ = true,
          bool kReverseKV_ = true, bool kPersistent_ = false, bool kDirectOStore_ = false,
          bool kLazyRescale_ = false, int kLadderRung_ = 0>
struct Sm80FwdTraits : FwdTraitsBase<kHeadDim_, kBlockM_, kBlockN_, Element_, kPersistent_, kLazyRescale_> {
  using Base = FwdTraitsBase<kHeadDim_, kBlockM_, kBlockN_, Element_, kPersistent_, kLazyRescale_>;
  using typename Base::Element;
  static_assert(sizeof(Element) == 2, "the sm80 family takes bf16 or fp16 (e4m3 is the Hopper FP8 kernels')");
  using Base::kBlockM;
  using Base::kBlockN;
  using Base::kHeadDim;
  using Base::kLazyRescale;
  using Base::kPersistent;

  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr bool kSwizzle = kSwizzle_;
  static constexpr bool kOverlapLoads = kOverlapLoads_;
  static constexpr bool kRegPrefetch = kRegPrefetch_;
  static constexpr bool kReverseKV = kReverseKV_;
  static constexpr bool kDirectOStore = kDirectOStore_;
  static constexpr int kLadderRung = kLadderRung_;
  // Split-KV (FwdParams::num_splits) is compiled into non-persistent kernels only: its fp32
  // epilogue made the persistent 128x128 d=128 kernel spill (ptxas, sm_90), and persistent blocks serve long query sequences,
  // which fill the GPU without splitting.
  static constexpr bool kSplitKV = !kPersistent_;

  static_assert(kHeadDim % 32 == 0, "head dim must be a multiple of 32 (16-byte loads, 16-wide MMA K)");
  static_assert(kBlockM % (16 * kNWarps) == 0, "each warp owns whole 16-row MMA slices of the Q tile");
  static_assert(kBlockN % 16 == 0, "P.V consumes kBlockN in 16-wide MMA K steps");

  // --- MMA ----------------------------------------------------------------------------------
  using MmaAtom = cute::conditional_t<cute::is_same_v<Element, cute::bfloat16_t>,
                                      cute::SM80_16x8x16_F32BF16BF16F32_TN,
                                      cute::SM80_16x8x16_F32F16F16F32_TN>;
  // Warps tiled along M only; the N tile of 16 makes each warp issue two 16x8 MMAs per
  // ldmatrix.x4 of B, which is what one SM75_U32x4_LDSM_N load of K delivers.
  using TiledMma = cute::TiledMMA<cute::MMA_Atom<MmaAtom>,
                                  cute::Layout<cute::Shape<cute::Int<kNWarps>, cute::_1, cute::_1>>,
                                  cute::Tile<cute::Int<16 * kNWarps>, cute::_16, cute::_16>>;

  // --- Shared memory --------------------------------------------------------------------------
  // Rows are stored in 64-element (128-byte) chunks when d allows, else 32 (64-byte).
  // ldmatrix reads 8 rows x 16 bytes per phase; without a swizzle those 8 rows hit the same
  // 4 banks (a row is a multiple of 128 bytes). Swizzle<3,3,3> XORs the 16-byte column
  // index (bits 3..5 of the element offset) with the row index mod 8 (bits 6..8), so the 8
  // rows of a phase land in 8 distinct 16-byte bank groups: conflict-free, which the ctest
  // tests/cpp/test_layouts.cu checks exhaustively.
  static constexpr int kBlockKSmem = kHeadDim % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzleB = !kSwizzle ? 0 : kBlockKSmem == 64 ? 3 : 2;
  using SmemLayoutAtom = decltype(cute::composition(
      cute::Swizzle<kSwizzleB, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::Int<kBlockKSmem>>,
                   cute::Stride<cute::Int<kBlockKSmem>, cute::_1>>{}));
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));       // (BLK_M,D)
  using SmemLayoutKV = decltype(cute::tile_to_shape(
      SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>{}));       // (BLK_N,D)
  // V^T is the same memory as V viewed as (D, BLK_N), for ldmatrix.trans in the P.V product.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutKV{}, cute::make_layout(cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>>{},
                                        cute::GenRowMajor{})));                           // (D,BLK_N)
  using SmemLayoutVtNoSwizzle = decltype(cute::get_nonswizzle_portion(SmemLayoutVt{}));
  // O is staged through shared memory for 16-byte global stores: in Q's space, or in its
  // own when a persistent block is already loading the next tile's Q there.
  using SmemLayoutO = SmemLayoutQ;

  static constexpr int kSmemQSize = int(cute::cosize(SmemLayoutQ{})) * int(sizeof(Element));
  static constexpr int kSmemKVSize = int(cute::cosize(SmemLayoutKV{})) * int(sizeof(Element));
  static constexpr int kSmemSize =
      (kPersistent && !kDirectOStore ? 2 : 1) * kSmemQSize + 2 * kSmemKVSize;
  static_assert(kSmemSize <= 227 * 1024, "tile does not fit the largest shared memory (sm90: 227 KiB)");

  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  // A thread's accumulator fragment holds pairs of adjacent columns: 32-bit stores.
  using SmemCopyAtomO = cute::Copy_Atom<cute::AutoVectorizingCopyWithAssumedAlignment<32>, Element>;

  // --- Global memory --------------------------------------------------------------------------
  // 16-byte (8-element) accesses; a row of kBlockKSmem elements is covered by
  // kGmemThreadsPerRow threads, so each warp reads whole 128-byte lines.
  static constexpr int kGmemElemsPerLoad = int(sizeof(cute::uint128_t) / sizeof(Element));
  static constexpr int kGmemThreadsPerRow = kBlockKSmem / kGmemElemsPerLoad;
  static_assert(kNThreads % kGmemThreadsPerRow == 0, "threads must tile whole rows");
  using GmemLayoutAtom = cute::Layout<
      cute::Shape<cute::Int<kNThreads / kGmemThreadsPerRow>, cute::Int<kGmemThreadsPerRow>>,
      cute::Stride<cute::Int<kGmemThreadsPerRow>, cute::_1>>;
  using GmemTiledCopyQKV = decltype(cute::make_tiled_copy(
      cute::Copy_Atom<cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
      GmemLayoutAtom{}, cute::Layout<cute::Shape<cute::_1, cute::Int<kGmemElemsPerLoad>>>{}));
  using GmemTiledCopyO = decltype(cute::make_tiled_copy(
      cute::Copy_Atom<cute::UniversalCopy<cute::uint128_t>, Element>{},
      GmemLayoutAtom{}, cute::Layout<cute::Shape<cute::_1, cute::Int<kGmemElemsPerLoad>>>{}));
  static_assert(kBlockM % (kNThreads / kGmemThreadsPerRow) == 0, "Q/O tile rows must tile the copy");
  static_assert(kBlockN % (kNThreads / kGmemThreadsPerRow) == 0, "K/V tile rows must tile the copy");
};

}  // namespace fa_cute
