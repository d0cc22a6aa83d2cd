#pragma once

#include <cute/tensor.hpp>

#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace fa_cute {

// ex2.approx: one MUFU.EX2. exp2f without --use_fast_math adds range handling we do not
// need, since every argument is <= 0 (scores minus their row max) or -inf.
__forceinline__ __device__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The SM80 16x8 accumulator gives each thread values ((2 columns, 2 rows), MMA_M, MMA_N).
// Softmax works on rows, so view it as ((2 rows, MMA_M), (2 columns, MMA_N)). The sm90
// wgmma accumulator (value mode of rank 3) goes to acc_layout_rowcol_sm90: the softmax
// and the masks are written once for both.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_rowcol_sm90(Layout const& acc);

template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_rowcol(Layout const& acc) {
  static_assert(decltype(cute::rank(acc))::value == 3, "expects (MMA, MMA_M, MMA_N)");
  if constexpr (decltype(cute::rank<0>(acc))::value == 3) {
    return acc_layout_rowcol_sm90(acc);
  } else {
    static_assert(decltype(cute::rank<0>(acc))::value == 2, "expects the SM80 ((2,2)) value mode");
    return cute::make_layout(cute::make_layout(cute::get<0, 1>(acc), cute::get<1>(acc)),
                             cute::make_layout(cute::get<0, 0>(acc), cute::get<2>(acc)));
  }
}

// An SM80 16x8x16 A operand holds per thread ((2 k, 2 rows, 2 k-halves), MMA_M, MMA_K).
// Two adjacent 16x8 accumulator tiles of P (columns 0-7, 8-15) are exactly one 16x16 A
// tile, so P feeds the P.V product from registers by a pure relabelling, no data movement.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_as_a_operand(Layout const& acc) {
  static_assert(decltype(cute::rank(acc))::value == 3, "expects (MMA, MMA_M, MMA_N)");
  static_assert(decltype(cute::size<2>(acc))::value % 2 == 0, "MMA_N must pair up into K=16 steps");
  auto l = cute::logical_divide(acc, cute::Shape<cute::Underscore, cute::Underscore, cute::_2>{});
  return cute::make_layout(
      cute::make_layout(cute::get<0, 0>(l), cute::get<0, 1>(l), cute::get<2, 0>(l)),
      cute::get<1>(l), cute::get<2, 1>(l));
}

// The sm90 wgmma accumulator gives each thread values ((2 columns, 2 rows, N/8 column
// groups), MMA_M, MMA_N) (CLayout_64xN: rows 16*warp + lane/4 + 8*v1, columns
// 8*v2 + 2*(lane%4) + v0). Softmax works on rows: view it as ((2 rows, MMA_M),
// (2 columns, N/8, MMA_N)).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_rowcol_sm90(Layout const& acc) {
  static_assert(decltype(cute::rank(acc))::value == 3, "expects (MMA, MMA_M, MMA_N)");
  static_assert(decltype(cute::rank<0>(acc))::value == 3, "expects the sm90 ((2,2,N/8)) value mode");
  return cute::make_layout(cute::make_layout(cute::get<0, 1>(acc), cute::get<1>(acc)),
                           cute::make_layout(cute::get<0, 0>(acc), cute::get<0, 2>(acc), cute::get<2>(acc)));
}

// The RS wgmma's register A operand (ALayout_64x16) holds per thread ((2 k, 2 rows,
// 2 k-halves), MMA_M, MMA_K): the strides of CLayout_64x16. So the accumulator values of
// columns 16i..16i+15 (v2 in {2i, 2i+1}) are already k-block i of P as the A operand of
// O += P V: a relabelling, no data movement.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_as_a_operand_sm90(Layout const& acc) {
  static_assert(decltype(cute::rank(acc))::value == 3, "expects (MMA, MMA_M, MMA_N)");
  static_assert(decltype(cute::rank<0>(acc))::value == 3, "expects the sm90 ((2,2,N/8)) value mode");
  static_assert(decltype(cute::size<0, 2>(acc))::value % 2 == 0, "N/8 column groups must pair up into K=16 blocks");
  auto v2 = cute::logical_divide(cute::get<0, 2>(acc), cute::_2{});                  // (2,N/16)
  return cute::make_layout(cute::make_layout(cute::get<0, 0>(acc), cute::get<0, 1>(acc), cute::get<0>(v2)),
                           cute::get<1>(acc), cute::make_layout(cute::get<1>(v2), cute::get<2>(acc)));
}

// An owning register tensor of tensor's layout holding its values converted to To (packed
// conversions: cvt.rn.bf16x2.f32 for fp32 -> bf16).
template <class To, class Engine, class Layout>
__forceinline__ __device__ auto convert_type(cute::Tensor<Engine, Layout> const& tensor) {
  using From = typename Engine::value_type;
  constexpr int kNumel = decltype(cute::size(tensor))::value;
  cutlass::NumericArrayConverter<To, From, kNumel> convert;
  auto out = cute::make_tensor<To>(tensor.layout());
  *reinterpret_cast<cutlass::Array<To, kNumel>*>(out.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, kNumel> const*>(tensor.data()));
  return out;
}

// dst = src converted to dst's element type, storage slot by storage slot: for a dst that
// is a relabelled view of src's layout (P as the A operand of a wgmma), where an
// element-wise copy would shuffle 16-bit halves of registers (PRMT/LOP3; what that cost:
// docs/perf-history.md v6).
template <class TensorS, class TensorD>
__forceinline__ __device__ void convert_type_into(TensorS const& src, TensorD& dst) {
  using From = typename TensorS::value_type;
  using To = typename TensorD::value_type;
  constexpr int kNumel = decltype(cute::size(src))::value;
  static_assert(decltype(cute::cosize(src.layout()))::value == kNumel &&
                    decltype(cute::cosize(dst.layout()))::value == kNumel,
                "both tensors must be compact register fragments of the same size");
  cutlass::NumericArrayConverter<To, From, kNumel> convert;
  *reinterpret_cast<cutlass::Array<To, kNumel>*>(dst.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, kNumel> const*>(src.data()));
}

// The 8-bit RS wgmma's register A operand (ALayout_64x32) holds per thread ((4 k, 2 rows,
// 2 k-halves), MMA_M, MMA_K): keys 4j..4j+3 and 16+4j..16+4j+3 of each 32-key k-block
// (j = lane % 4), where the S accumulator (CLayout_64xN) holds keys 2j, 2j+1 of each 8-key
// group. No relabelling matches them, so the FP8 kernel takes P's keys in another order:
// A value (a, b, c) of k-block kb is the accumulator's (a % 2, b, 4 kb + 2c + a / 2), the
// score of key 8 (2c + a/2) + 2j + a%2 of the block, i.e. slot 16c + 4j + a holds key
// fp8_vt_key(slot) (fp8_layout.h), and the layout pass put V's rows in that order. Within a
// thread: register moves the compiler renames away, and one cvt.rn.satfinite.e4m3x2.f32
// per two values.
template <class TensorAcc, class TensorP>
__forceinline__ __device__ void convert_p_fp8_sm90(TensorAcc const& acc_s, TensorP& tOrP) {
  using namespace cute;
  static_assert(decltype(rank<0>(acc_s))::value == 3 && decltype(size<2>(acc_s))::value == 1,
                "expects the sm90 accumulator ((2,2,N/8),MMA_M,1)");
  constexpr int kBlocks = decltype(size<2>(tOrP))::value;  // 32-key k-blocks
  static_assert(decltype(size<0, 2>(acc_s))::value == 4 * kBlocks, "four 8-key groups per 32-key k-block");
  Tensor p = make_tensor<float>(make_layout(shape(tOrP)));  // ((4,2,2),MMA_M,MMA_K)
  CUTE_UNROLL
  for (int m = 0; m < size<1>(tOrP); ++m) {
    CUTE_UNROLL
    for (int kb = 0; kb < kBlocks; ++kb) {
      CUTE_UNROLL
      for (int c = 0; c < 2; ++c) {
        CUTE_UNROLL
        for (int b = 0; b < 2; ++b) {
          CUTE_UNROLL
          for (int a = 0; a < 4; ++a) {
            p(make_coord(a, b, c), m, kb) = acc_s(make_coord(a % 2, b, 4 * kb + 2 * c + a / 2), m, 0);
          }
        }
      }
    }
  }
  convert_type_into(p, tOrP);
}

// A (rows, cols) tile of a row-major global tensor whose first row is row0, at
// base + offset. The tile's base pointer is computed in 64 bits (tensors beyond 2^31
// elements); offsets inside the tile use a 32-bit row stride (the host checks
// row_stride * block < 2^31): holding 64-bit in-tile offsets for every copy spilled
// registers in the sm80 kernel's 128-row tiles.
template <class T, class TileShape>
__forceinline__ __device__ auto gmem_row_tile(T* base, int64_t offset, int row0, int64_t row_stride,
                                              TileShape tile_shape) {
  using namespace cute;
  return make_tensor(make_gmem_ptr(base + offset + row0 * row_stride), tile_shape, make_stride(int(row_stride), _1{}));
}

// Zero rows [first, rows) of a (ROWS,D) shared-memory tile, 16 bytes a store, thread tidx of
// num_threads striding over them (a swizzled layout keeps each 16-byte chunk of a row
// contiguous). The Hopper kernels zero a key block's rows past a sequence's keys this way:
// TMA reads whole blocks, and those rows may hold NaN that 0 * NaN would let through. The
// caller fences them into the async proxy and syncs the readers.
template <class TensorS>
CUTE_DEVICE void zero_rows_from(TensorS&& tile, int first, int tidx, int num_threads) {
  using Element = typename cute::remove_cvref_t<TensorS>::value_type;
  constexpr int kRows = decltype(cute::size<0>(tile))::value;
  constexpr int kChunk = 16 / int(sizeof(Element));
  constexpr int kChunksPerRow = decltype(cute::size<1>(tile))::value / kChunk;
  for (int i = tidx; i < (kRows - first) * kChunksPerRow; i += num_threads) {
    *reinterpret_cast<uint4*>(&tile(first + i / kChunksPerRow, i % kChunksPerRow * kChunk)) = make_uint4(0, 0, 0, 0);
  }
}

// Rounds towards -inf (C++ division truncates towards 0): block indices of causal bounds,
// whose numerators go negative when seqlen_q > seqlen_k.
CUTE_HOST_DEVICE int floor_div(int a, int b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }
// The same rounded up: ceil(a / b) for b > 0 and a of either sign.
CUTE_HOST_DEVICE int ceil_div_signed(int a, int b) { return -floor_div(-a, b); }

// Copies the rows of a thread's (CPY, CPY_ROWS, CPY_D) copy partition whose tile row (from
// `coords`, the same partition of an identity tensor) is below num_rows: a ragged tail tile,
// whose rows past the tensor's end must not be read (they may lie past the allocation) or
// written. kZeroFillRest clears those rows of dst instead (shared memory: a zero K row
// scores 0 before its mask, and a zero V row keeps 0 * garbage = NaN out of O).
template <bool kZeroFillRest, class TiledCopy, class TensorS, class TensorD, class TensorC>
__forceinline__ __device__ void copy_rows(TiledCopy const& tiled_copy, TensorS const& src, TensorD&& dst,
                                          TensorC const& coords, int num_rows) {
  using namespace cute;
  CUTE_STATIC_ASSERT_V(rank(src) == Int<3>{});
  CUTE_STATIC_ASSERT_V(size<1>(src) == size<1>(coords));
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coords(0, m, 0)) < num_rows) {
      copy(tiled_copy, src(_, m, _), dst(_, m, _));
    } else if constexpr (kZeroFillRest) {
      clear(dst(_, m, _));
    }
  }
}

// The k-slice loop of both GEMMs: load(i) brings k-slice i's operands from shared memory
// into registers, mma(i) multiplies them. With kPrefetch the load of slice i+1 is issued
// before the MMAs of slice i (register double buffering); without, each slice's MMAs wait
// for its own load.
template <bool kPrefetch, int kSlices, class Load, class Mma>
__forceinline__ __device__ void for_each_k_slice(Load&& load, Mma&& mma) {
  if constexpr (kPrefetch) load(cute::_0{});
  CUTE_UNROLL
  for (int i = 0; i < kSlices; ++i) {
    if constexpr (kPrefetch) {
      if (i < kSlices - 1) load(i + 1);
    } else {
      load(i);
    }
    mma(i);
  }
}

// acc += A * B with both operands read from shared memory by ldmatrix; kPrefetch hides
// shared-memory latency behind tensor-core work (for_each_k_slice).
template <bool kPrefetch, class TiledMma, class TensorAcc, class TensorRA, class TensorRB, class TensorSA,
          class TensorSB, class TiledCopyA, class TiledCopyB, class ThrCopyA, class ThrCopyB>
__forceinline__ __device__ void gemm_ss(TensorAcc& acc, TensorRA& tCrA, TensorRB& tCrB,
                                        TensorSA const& tCsA, TensorSB const& tCsB,
                                        TiledMma const& tiled_mma,
                                        TiledCopyA const& smem_tiled_copy_A,
                                        TiledCopyB const& smem_tiled_copy_B,
                                        ThrCopyA const& smem_thr_copy_A,
                                        ThrCopyB const& smem_thr_copy_B) {
  using namespace cute;
  CUTE_STATIC_ASSERT_V(size<1>(tCrA) == size<1>(acc));  // MMA_M
  CUTE_STATIC_ASSERT_V(size<1>(tCrB) == size<2>(acc));  // MMA_N
  CUTE_STATIC_ASSERT_V(size<2>(tCrA) == size<2>(tCrB));  // MMA_K
  Tensor tCrA_view = smem_thr_copy_A.retile_D(tCrA);
  Tensor tCrB_view = smem_thr_copy_B.retile_D(tCrB);
  CUTE_STATIC_ASSERT_V(size<1>(tCsA) == size<1>(tCrA_view));
  CUTE_STATIC_ASSERT_V(size<1>(tCsB) == size<1>(tCrB_view));
  for_each_k_slice<kPrefetch, decltype(size<2>(tCrA))::value>(
      [&](auto i) {
        copy(smem_tiled_copy_A, tCsA(_, _, i), tCrA_view(_, _, i));
        copy(smem_tiled_copy_B, tCsB(_, _, i), tCrB_view(_, _, i));
      },
      [&](int i) { cute::gemm(tiled_mma, tCrA(_, _, i), tCrB(_, _, i), acc); });
}

// acc += A * B with A already in registers (P in O += P V) and B from shared memory;
// kPrefetch as in gemm_ss.
template <bool kPrefetch, class TiledMma, class TensorAcc, class TensorRA, class TensorRB, class TensorSB,
          class TiledCopyB, class ThrCopyB>
__forceinline__ __device__ void gemm_rs(TensorAcc& acc, TensorRA const& tCrA, TensorRB& tCrB,
                                        TensorSB const& tCsB, TiledMma const& tiled_mma,
                                        TiledCopyB const& smem_tiled_copy_B,
                                        ThrCopyB const& smem_thr_copy_B) {
  using namespace cute;
  CUTE_STATIC_ASSERT_V(size<1>(tCrA) == size<1>(acc));  // MMA_M
  CUTE_STATIC_ASSERT_V(size<1>(tCrB) == size<2>(acc));  // MMA_N
  CUTE_STATIC_ASSERT_V(size<2>(tCrA) == size<2>(tCrB));  // MMA_K
  Tensor tCrB_view = smem_thr_copy_B.retile_D(tCrB);
  CUTE_STATIC_ASSERT_V(size<1>(tCsB) == size<1>(tCrB_view));
  for_each_k_slice<kPrefetch, decltype(size<2>(tCrA))::value>(
      [&](auto i) { copy(smem_tiled_copy_B, tCsB(_, _, i), tCrB_view(_, _, i)); },
      [&](int i) { cute::gemm(tiled_mma, tCrA(_, _, i), tCrB(_, _, i), acc); });
}

}  // namespace fa_cute
