#pragma once

#include <cute/tensor.hpp>

namespace fa_cute {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// red.global.add.v2.f32 (sm_90): atomicAdd(float2*) compiles to an ATOMG that returns the old
// values, which the dQ adds discard, into registers that stay reserved until the L2
// answers. The branch stays in C++: the predicated form of red_add_f32x4 spilled the sm80
// family's d=128 tile at 255 registers.
CUTE_DEVICE void red_add_f32x2(float* ptr, float x, float y) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(ptr), "f"(x), "f"(y) : "memory");
}

// red.global.add.v4.f32 (sm_90) under a predicate. atomicAdd(float4*) under an `if` made
// ptxas recompute each add's address in one register pair, which the next add then had to
// wait to overwrite until the LSU had read it; here the adds share one base register.
CUTE_DEVICE void red_add_f32x4(float* ptr, float4 v, bool pred) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n @p red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n}\n" ::"l"(
          ptr),
      "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(int(pred))
      : "memory");
}
#endif

// dQ_m of one thread into the fp32 dq_accum, shared by both backward families: acc (the
// dQ GEMM's accumulator fragment), gdq (the same partition of dq_accum's (BLK_M,D) tile),
// cdq (of its identity tensor: (row, column) of each value), rows from query_rows on
// skipped where kCheckRows. Without the check the whole tile is added: dq_accum gives every
// query block whole rows of its own (kDqAccumRowAlign, a varlen sequence's blocks too), so
// the rows past seqlen_q land in padding that the postprocess never reads (and hold 0: P
// and dS are 0 there). Checked, the sm80 family's d=128 kernel wrapped each of its 32 adds
// a step in a branch of its own with the address recomputed (ptxas, sm_90).
//
// Both mma.sync's 16x8 C atom and wgmma's 64xN one give a thread, per 8-column group, the
// columns 2 (lane % 4) + {0, 1} of row lane / 4 and of the row 8 below: mode 0 of the
// fragment is (column pair, row half, ...), and lanes 2i and 2i+1 hold adjacent column
// pairs of the same rows. sm_90 adds 8 or 16 bytes at once (red.global.add.v2/.v4.f32):
//   kBytes = 8: each column pair as it is, half the L2 requests of one 4-byte atomic per
//     value, no extra register (the sm80 family: the 16-byte form spilled its d=128 tile).
//   kBytes = 16 (wgmma: 8-column groups g are mode (0, 2), adjacent in memory): of groups g
//     and g + 1, the even lane keeps group g and takes its partner's pair of it, the odd
//     lane group g + 1, each sending the other the pair it gives up (a shuffle per value).
//     The 4 lanes of a row then cover 16 adjacent columns: one warp instruction adds 8 rows
//     of 64 bytes, half the requests of the 8-byte form; pairing the two row halves instead
//     (16 rows of 32 bytes) measured 5-10% slower (docs/perf-notes.md, Backward).
// Before sm_90, one 4-byte atomic per value.

template <int kBytes, bool kCheckRows = true, class Acc, class TensorG, class TensorC>
CUTE_DEVICE void add_dq_atomics(Acc const& acc, TensorG const& gdq, TensorC const& cdq, int query_rows) {
  using namespace cute;
  static_assert(kBytes == 8 || kBytes == 16, "red.global.add.v2.f32 or .v4.f32");
  CUTE_STATIC_ASSERT_V(size(gdq) == size(acc));
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(decltype(size<0, 0>(gdq))::value == 2 && decltype(stride<0, 0>(gdq))::value == 1 &&
                    decltype(size<0, 1>(gdq))::value == 2,
                "an MMA accumulator fragment: (adjacent column pair, row half, ...)");
  if constexpr (kBytes == 8) {
    CUTE_UNROLL
    for (int i = 0; i < size(acc); i += 2) {
      if (!kCheckRows || get<0>(cdq(i)) < query_rows) red_add_f32x2(&gdq(i), acc(i), acc(i + 1));
    }
  } else {
    static_assert(decltype(rank<0>(gdq))::value == 3 && decltype(size<0, 2>(gdq))::value % 2 == 0 &&
                      decltype(stride<0, 2>(gdq))::value == 8 && decltype(size(gdq))::value == decltype(size<0>(gdq))::value,
                  "kBytes = 16 takes one wgmma atom's fragment: an even number of 8-column groups in mode (0, 2)");
    constexpr int kGroups = decltype(size<0, 2>(gdq))::value;
    // At most 8 adds (32 registers) built ahead of their issue: d = 128's whole fragment; a
    // d/2 = 128-column one (d = 256, kdKVSplitD) in two rounds (holding all 16 spilled), a
    // 96-column one (d = 192) in two rounds of 6.
    constexpr int kChunk = kGroups <= 8 ? kGroups : kGroups % 8 == 0 ? 8 : kGroups % 6 == 0 ? 6 : 2;
    static_assert(kGroups % kChunk == 0 && kChunk % 2 == 0, "whole rounds of group pairs");
    bool const odd = threadIdx.x % 2;
    // The odd lane's 4 columns start 2 before its pair of group g + 1: 8 - 2 = 6 past the
    // even lane's. One base pointer, the rest compile-time offsets (gdq's layout is static).
    float* const base = &gdq(0) + (odd ? 6 : 0);
    CUTE_UNROLL
    for (int g0 = 0; g0 < kGroups; g0 += kChunk) {
      // The round's values first, each add in registers of its own: an add reads its source
      // registers when the LSU takes it, so adds that reuse one quad (or one address pair)
      // each wait for the one before to leave the queue (ncu: long scoreboard on this loop).
      float4 v[kChunk];  // (kChunk / 2 group pairs) x (2 row halves)
      CUTE_UNROLL
      for (int g = g0; g < g0 + kChunk; g += 2) {
        CUTE_UNROLL
        for (int r = 0; r < 2; ++r) {
          int const i0 = 2 * r + 4 * g;  // group g's pair (flat index c + 2 r + 4 g)
          int const i1 = i0 + 4;         // group g + 1's
          float const send_x = odd ? acc(i0) : acc(i1);
          float const send_y = odd ? acc(i0 + 1) : acc(i1 + 1);
          float const recv_x = __shfl_xor_sync(0xffffffffu, send_x, 1);
          float const recv_y = __shfl_xor_sync(0xffffffffu, send_y, 1);
          v[g - g0 + r] = odd ? make_float4(recv_x, recv_y, acc(i1), acc(i1 + 1))
                              : make_float4(acc(i0), acc(i0 + 1), recv_x, recv_y);
        }
      }
      CUTE_UNROLL
      for (int g = g0; g < g0 + kChunk; g += 2) {
        CUTE_UNROLL
        for (int r = 0; r < 2; ++r) {
          int const i0 = 2 * r + 4 * g;
          red_add_f32x4(base + (gdq.layout()(i0) - gdq.layout()(0)), v[g - g0 + r],
                        !kCheckRows || get<0>(cdq(i0)) < query_rows);
        }
      }
    }
  }
#else
  CUTE_UNROLL
  for (int i = 0; i < size(acc); ++i) {
    if (!kCheckRows || get<0>(cdq(i)) < query_rows) atomicAdd(&gdq(i), acc(i));
  }
#endif
}

}  // namespace fa_cute
