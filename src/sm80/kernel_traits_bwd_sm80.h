#pragma once

#include <cute/tensor.hpp>

#include <cute/algorithm/copy.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/mma_atom.hpp>

#include <cutlass/numeric_types.h>

#include "sm80/kernel_traits_sm80.h"

namespace fa_cute {

// Everything the sm80-instruction backward kernel needs (FlashAttention-2's backward), from
// its tile: one CTA per (key block of kBlockN rows, K/V head, batch) keeps K_j and V_j in
// shared memory and loops over the query blocks of kBlockM rows that see them. Per query
// block five GEMMs, each with its own warp layout (mma.sync 16x8x16, fp32 accumulation):
//   S  = Q K^T     (kBlockM x kBlockN, K = d)        TiledMmaSdP: warps kAtomMSdP x rest
//   dP = dO V^T    (kBlockM x kBlockN, K = d)        TiledMmaSdP
//   dV += P^T dO   (kBlockN x d, K = kBlockM)        TiledMmadKV: warps kAtomNdKV x rest
//   dK += dS^T Q   (kBlockN x d, K = kBlockM)        TiledMmadKV
//   dQ  = dS K     (kBlockM x d, K = kBlockN)        TiledMmadQ:  warps kAtomMdQ x rest
// P and dS go through shared memory (row-major kBlockM x kBlockN tiles, as Q is): the dK/dV
// GEMMs read them transposed (ldmatrix.trans of the (kBlockN, kBlockM) view), dQ reads dS
// as it is. The transposed B operands (dO^T, Q^T, K^T) are views of the row-major tiles, as
// the forward's V^T is. Shared memory and global copies reuse the forward's traits
// (Sm80FwdTraits: the swizzled 64-element row atom, or 32 for d = 96; cp.async of 16 bytes).
// kStages (1 or 2): buffers of Q and dO (and of the block's LSE and D rows); with 2 the next
// query block's loads are in flight while this one computes (mainloop_bwd_sm80.h).
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kAtomMSdP_, int kAtomNdKV_, int kAtomMdQ_,
          class Element_, int kStages_ = 2>
struct Sm80BwdTraits {
  using Element = Element_;
  using ElementAccum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kAtomMSdP = kAtomMSdP_;
  static constexpr int kAtomNdKV = kAtomNdKV_;
  static constexpr int kAtomMdQ = kAtomMdQ_;
  static constexpr int kStages = kStages_;

  // The forward's traits of the same head dim, threads and key block, for what does not
  // depend on the query tile: the MMA atom, the swizzled shared-memory atom, the K/V tile
  // layout, the copy atoms (its query tile is one its static_asserts accept, unused here).
  using Base = Sm80FwdTraits<kHeadDim, 16 * kNWarps, kBlockN, kNWarps, Element>;

  static_assert(cute::is_same_v<Element, cute::bfloat16_t> || cute::is_same_v<Element, cute::half_t>,
                "Element must be bf16 or fp16");
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "the backward is built for d = 32k <= 256 (64, 96, 128, 192, 256)");
  static_assert(kStages == 1 || kStages == 2, "Q/dO are single- or double-buffered");
  // The LSE and D rows of a query block are loaded by one thread each (2 * kBlockM threads).
  static_assert(2 * kBlockM <= kNThreads, "a query block's LSE and D rows need a thread each");
  static_assert(kNWarps % kAtomMSdP == 0 && kNWarps % kAtomNdKV == 0 && kNWarps % kAtomMdQ == 0,
                "each warp layout must use every warp");
  // Every GEMM's tile must be a whole number of its warp layout's (16*WM) x (16*WN) tiles.
  static_assert(kBlockM % (16 * kAtomMSdP) == 0 && kBlockN % (16 * (kNWarps / kAtomMSdP)) == 0, "S/dP tile");
  static_assert(kBlockN % (16 * kAtomNdKV) == 0 && kHeadDim % (16 * (kNWarps / kAtomNdKV)) == 0, "dK/dV tile");
  static_assert(kBlockM % (16 * kAtomMdQ) == 0 && kHeadDim % (16 * (kNWarps / kAtomMdQ)) == 0, "dQ tile");
  static_assert(kBlockM % 16 == 0 && kBlockN % 64 == 0, "P/dS tiles are stored in 64-column swizzle atoms");

  // --- MMA ----------------------------------------------------------------------------------
  using MmaAtom = typename Base::MmaAtom;
  // The permutation tile (16*WM, 16*WN, 16) gives each warp 16 columns per N step: one
  // ldmatrix.x4 of the B operand feeds two 16x8 MMAs, as in the forward.
  template <int kWarpsM>
  using TiledMmaOf = cute::TiledMMA<cute::MMA_Atom<MmaAtom>,
                                    cute::Layout<cute::Shape<cute::Int<kWarpsM>, cute::Int<kNWarps / kWarpsM>, cute::_1>>,
                                    cute::Tile<cute::Int<16 * kWarpsM>, cute::Int<16 * (kNWarps / kWarpsM)>, cute::_16>>;
  using TiledMmaSdP = TiledMmaOf<kAtomMSdP>;
  using TiledMmadKV = TiledMmaOf<kAtomNdKV>;
  using TiledMmadQ = TiledMmaOf<kAtomMdQ>;

  // --- Shared memory --------------------------------------------------------------------------
  using SmemLayoutAtom = typename Base::SmemLayoutAtom;
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));  // (BLK_M,D): Q and dO
  using SmemLayoutKV = typename Base::SmemLayoutKV;  // (BLK_N,D): K and V
  // P and dS: (BLK_M,BLK_N) row-major in swizzled 64-column atoms (Swizzle<3,3,3>, as the
  // forward's for d % 64 == 0, whatever d is: kBlockN is a multiple of 64).
  using SmemLayoutAtomPdS = decltype(cute::composition(
      cute::Swizzle<3, 3, 3>{}, cute::Layout<cute::Shape<cute::_8, cute::_64>, cute::Stride<cute::_64, cute::_1>>{}));
  using SmemLayoutPdS = decltype(cute::tile_to_shape(
      SmemLayoutAtomPdS{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>>{}));
  // Transposed views (the same memory): X^T(j, i) = X(i, j), for ldmatrix.trans.
  template <class Layout, int kRows, int kCols>
  using Transposed = decltype(cute::composition(
      Layout{}, cute::make_layout(cute::Shape<cute::Int<kCols>, cute::Int<kRows>>{}, cute::GenRowMajor{})));
  using SmemLayoutQt = Transposed<SmemLayoutQ, kBlockM, kHeadDim>;      // (D,BLK_M): Q^T, dO^T
  using SmemLayoutKt = Transposed<SmemLayoutKV, kBlockN, kHeadDim>;     // (D,BLK_N): K^T
  using SmemLayoutPdSt = Transposed<SmemLayoutPdS, kBlockM, kBlockN>;   // (BLK_N,BLK_M): P^T, dS^T
  using SmemLayoutQtNoSwizzle = decltype(cute::get_nonswizzle_portion(SmemLayoutQt{}));
  using SmemLayoutKtNoSwizzle = decltype(cute::get_nonswizzle_portion(SmemLayoutKt{}));
  using SmemLayoutPdStNoSwizzle = decltype(cute::get_nonswizzle_portion(SmemLayoutPdSt{}));

  static constexpr int kSmemQSize = int(cute::cosize(SmemLayoutQ{})) * int(sizeof(Element));
  static constexpr int kSmemKVSize = int(cute::cosize(SmemLayoutKV{})) * int(sizeof(Element));
  static constexpr int kSmemPdSSize = int(cute::cosize(SmemLayoutPdS{})) * int(sizeof(Element));
  static constexpr int kSmemLseSize = kBlockM * int(sizeof(float));  // a block's LSE (or D) rows
  // kStages x (Q, dO, LSE, D), K, V, P, dS. The launch checks the device's opt-in limit
  // (opt_in_dynamic_smem: 227 KiB on H100, 163 KiB on A100, 99 KiB on sm_86/89).
  static constexpr int kSmemSize =
      kStages * (2 * kSmemQSize + 2 * kSmemLseSize) + 2 * kSmemKVSize + 2 * kSmemPdSSize;
  static_assert(kSmemSize <= 227 * 1024, "tile does not fit the largest shared memory (sm90: 227 KiB)");

  // Register double-buffering of the MMA operands (gemm_ss<kPrefetch>: k-slice i+1's
  // ldmatrix before slice i's MMAs) holds a second slice of fragments. Where the fp32
  // accumulators live across a GEMM are many (S, dP, dK, dV during S and dP; dK, dV during
  // their own GEMMs), ptxas spilled; there it is off (8 warps: the other warp of each
  // scheduler covers the ldmatrix latency). The thresholds are where ptxas (sm_80 and sm_90,
  // CUDA 13.0) stopped spilling for the BWD_CONFIGS tiles, all of which run at 243-255
  // registers: a new tile needs its ptxas report checked.
  static constexpr int kAccRegsSdP = (2 * kBlockM * kBlockN + 2 * kBlockN * kHeadDim) / kNThreads;
  static constexpr int kAccRegsdKV = 2 * kBlockN * kHeadDim / kNThreads;
  static constexpr bool kPrefetchSdP = kAccRegsSdP < 160;
  static constexpr bool kPrefetchdKV = kAccRegsdKV < 96;
  static constexpr int kAccRegsdQ = (2 * kBlockN * kHeadDim + kBlockM * kHeadDim) / kNThreads;  // dK, dV, dQ
  static constexpr bool kPrefetchdQ = kAccRegsdQ < 144;

  using SmemCopyAtom = typename Base::SmemCopyAtom;                      // ldmatrix
  using SmemCopyAtomTransposed = typename Base::SmemCopyAtomTransposed;  // ldmatrix.trans
  using SmemCopyAtomPdS = typename Base::SmemCopyAtomO;                  // accumulator pairs -> smem

  // --- Global memory --------------------------------------------------------------------------
  using GmemTiledCopyQKV = typename Base::GmemTiledCopyQKV;  // cp.async, 16 bytes, rows of the tile
  static_assert(kBlockM % (kNThreads / Base::kGmemThreadsPerRow) == 0, "Q/dO tile rows must tile the copy");
  static_assert(kBlockN % (kNThreads / Base::kGmemThreadsPerRow) == 0, "K/V tile rows must tile the copy");
};

}  // namespace fa_cute
