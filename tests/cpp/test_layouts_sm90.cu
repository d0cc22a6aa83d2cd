// Host-side checks of the Hopper kernel's traits (src/sm90/kernel_traits_sm90.h):
// shared-memory budget, the wgmma accumulator's coordinates against the formula of
// docs/hopper-plan.md sec. 4, the accumulator -> A-operand relabelling that feeds P to the
// RS wgmma, and the GMMA descriptors the smem layouts produce. A wrong answer here would
// show up on the GPU as wrong rows of O or a silently slower atom; no GPU is needed.

#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <cute/tensor.hpp>

#include "expect.h"
#include "fp8_layout.h"
#include "sm90/kernel_traits_bwd_sm90.h"
#include "sm90/kernel_traits_sm90.h"

using namespace cute;

// Every thread's S accumulator element (v0, v1, v2) must sit at
//   row = 64*wg + 16*warp_in_wg + lane/4 + 8*v1,  col = 8*v2 + 2*(lane%4) + v0
// (plan sec. 4), the row/column view must name the same coordinates, and the consumer
// threads together must cover the (BLK_M, BLK_N) tile exactly once.
template <class Traits>
void check_accumulator_coords(char const* what) {
  constexpr int M = Traits::kBlockM, N = Traits::kBlockN;
  typename Traits::TiledMmaQK tiled_mma;
  Tensor coords = make_identity_tensor(Shape<Int<M>, Int<N>>{});
  int bad_formula = 0, bad_rowcol = 0, bad_shape = 0;
  std::set<std::pair<int, int>> covered;
  for (int t = 0; t < Traits::kNumConsumerThreads; ++t) {
    int const wg = t / 128, warp = (t % 128) / 32, lane = t % 32;
    Tensor tC = tiled_mma.get_thread_slice(t).partition_C(coords);  // ((2,2,N/8),MMA_M,MMA_N) of (m,n)
    bad_shape += int(size<0, 0>(tC)) != 2 || int(size<0, 1>(tC)) != 2 || int(size<0, 2>(tC)) != N / 8 ||
                 int(size<1>(tC)) != 1 || int(size<2>(tC)) != 1;
    for (int v0 = 0; v0 < 2; ++v0)
      for (int v1 = 0; v1 < 2; ++v1)
        for (int v2 = 0; v2 < N / 8; ++v2) {
          auto mn = tC(make_coord(v0, v1, v2), 0, 0);
          int const row = 64 * wg + 16 * warp + lane / 4 + 8 * v1;
          int const col = 8 * v2 + 2 * (lane % 4) + v0;
          bad_formula += int(get<0>(mn)) != row || int(get<1>(mn)) != col;
          covered.insert({int(get<0>(mn)), int(get<1>(mn))});
        }
    Tensor rc = make_tensor(tC.data(), fa_cute::acc_layout_rowcol_sm90(tC.layout()));
    bad_shape += int(size<0>(rc)) != 2 || int(size<1>(rc)) != N / 4;
    for (int mi = 0; mi < size<0>(rc); ++mi)
      for (int ni = 0; ni < size<1>(rc); ++ni) {
        auto mn = rc(mi, ni);
        int const row = 64 * wg + 16 * warp + lane / 4 + 8 * mi;
        int const col = 8 * (ni / 2) + 2 * (lane % 4) + ni % 2;
        bad_rowcol += int(get<0>(mn)) != row || int(get<1>(mn)) != col;
      }
  }
  EXPECT(bad_shape == 0, "%s: %d threads with an unexpected accumulator shape", what, bad_shape);
  EXPECT(bad_formula == 0, "%s: %d accumulator elements off the sec. 4 formula", what, bad_formula);
  EXPECT(bad_rowcol == 0, "%s: %d row/column-view elements off their softmax row or column", what, bad_rowcol);
  EXPECT(int(covered.size()) == M * N, "%s: accumulators cover %d of %d elements of S", what, int(covered.size()),
         M * N);
}

// P keeps S's accumulator registers; relabelled as the A operand of O += P V, each value
// must carry exactly the (row, k) coordinate the RS wgmma expects there.
template <class Traits>
void check_p_as_a_operand(char const* what) {
  constexpr int M = Traits::kBlockM, N = Traits::kBlockN;
  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  Tensor coords = make_identity_tensor(Shape<Int<M>, Int<N>>{});
  int bad = 0, bad_size = 0;
  for (int t = 0; t < Traits::kNumConsumerThreads; ++t) {
    Tensor tC = mma_qk.get_thread_slice(t).partition_C(coords);  // S as the accumulator: (m, n)
    Tensor tA = mma_pv.get_thread_slice(t).partition_A(coords);  // P as the A operand: (m, k=n)
    Tensor p_as_a = make_tensor(tC.data(), fa_cute::acc_layout_as_a_operand_sm90(tC.layout()));
    if (size(tA) != size(p_as_a) || size<2>(tA) != size<2>(p_as_a)) {
      ++bad_size;
      continue;
    }
    for (int i = 0; i < size(tA); ++i) bad += !(tA(i) == p_as_a(i));
  }
  EXPECT(bad_size == 0, "%s: %d threads whose P fragment and A fragment differ in shape", what, bad_size);
  EXPECT(bad == 0, "%s: %d elements of P misplaced as the A operand", what, bad);
}

// The layout must be a bijection onto [0, cosize) (no two elements share smem), and
// 16-byte chunks of a row must stay contiguous (TMA and wgmma swizzle 16-byte units).
template <class Traits, class SmemLayout>
void check_smem_layout(char const* what) {
  constexpr int kElemsPer16B = 16 / sizeof(typename Traits::Element);
  SmemLayout layout;
  std::set<int> seen;
  for (int i = 0; i < size(layout); ++i) seen.insert(layout(i));
  EXPECT(int(seen.size()) == int(size(layout)) && *seen.rbegin() == int(size(layout)) - 1,
         "%s: not a bijection (%d distinct of %d)", what, int(seen.size()), int(size(layout)));
  // Rank 2 (Q) or 3 (K/V: stages); every stage is checked.
  auto at = [&](int r, int c, int s) {
    if constexpr (decltype(rank(layout))::value == 3) {
      return int(layout(r, c, s));
    } else {
      return int(layout(r, c));
    }
  };
  int stages = 1;
  if constexpr (decltype(rank(layout))::value == 3) stages = size<2>(layout);
  int split = 0;
  for (int s = 0; s < stages; ++s)
    for (int r = 0; r < size<0>(layout); ++r)
      for (int c = 0; c < size<1>(layout); c += kElemsPer16B) {
        int const base = at(r, c, s);
        split += base % kElemsPer16B != 0;
        for (int i = 1; i < kElemsPer16B; ++i) split += at(r, c + i, s) != base + i;
      }
  EXPECT(split == 0, "%s: %d split 16-byte chunks", what, split);
}

template <class Traits>
void check_vt_is_transpose(char const* what) {
  typename Traits::SmemLayoutV v;
  typename Traits::SmemLayoutVt vt;
  int bad = 0;
  for (int s = 0; s < Traits::kStages; ++s)
    for (int n = 0; n < Traits::kBlockN; ++n)
      for (int d = 0; d < Traits::kHeadDim; ++d) bad += int(vt(d, n, s)) != int(v(n, d, s));
  EXPECT(bad == 0, "%s: V^T view differs from V at %d elements", what, bad);
}

// The wgmma descriptors the kernel builds from the smem layouts (partition_fragment_A/B):
// make_gmma_desc static_asserts that a layout is one GMMA can describe (checked by
// deducing the fragment types here, without building them: the start address needs a
// real shared-memory pointer), and takes the descriptor's swizzle mode from the layout,
// which must be the one chosen for the row width. One descriptor per 16-wide k-block.
template <class Traits>
void check_gmma_descriptors(char const* what, GMMA::LayoutType expected) {
  using Element = typename Traits::Element;
  Tensor sQ = make_tensor(make_smem_ptr(static_cast<Element*>(nullptr)), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(static_cast<Element*>(nullptr)), typename Traits::SmemLayoutK{});
  Tensor sVt = make_tensor(make_smem_ptr(static_cast<Element*>(nullptr)), typename Traits::SmemLayoutVt{});
  auto thr_qk = typename Traits::TiledMmaQK{}.get_thread_slice(0);
  auto thr_pv = typename Traits::TiledMmaPV{}.get_thread_slice(0);
  using FragQ = decltype(thr_qk.partition_fragment_A(sQ).layout());
  using FragK = decltype(thr_qk.partition_fragment_B(sK(_, _, 0)).layout());
  using FragVt = decltype(thr_pv.partition_fragment_B(sVt(_, _, 0)).layout());
  int const kq = size<2>(FragQ{}), kk = size<2>(FragK{}), kv = size<2>(FragVt{});
  EXPECT(kq == Traits::kHeadDim / 16 && kk == Traits::kHeadDim / 16 && kv == Traits::kBlockN / 16,
         "%s: k-blocks Q %d K %d V^T %d", what, kq, kk, kv);
  auto type_of = [](auto const& s) { return int(GMMA::layout_type(recast<uint128_t const>(s))); };
  int const tq = type_of(sQ), tk = type_of(sK(_, _, 0)), tv = type_of(sVt(_, _, 0));
  EXPECT(tq == int(expected) && tk == int(expected) && tv == int(expected),
         "%s: descriptor layout types Q %d K %d V^T %d, expected %d", what, tq, tk, tv, int(expected));
}

// A paged cache's 16-row boxes (SmemLayoutKVPageBox): box j of stage s must put each
// element of rows 16 j .. 16 j + 15 where the whole-stage layout puts it, at one offset per
// box (its base) that keeps the swizzle pattern (swizzle(base + x) = base + swizzle(x), which
// the element check is), and each base 1024-byte aligned (the stage is, and TMA swizzles
// absolute address bits; 1024 bytes is the widest pattern's period).
template <class Traits>
void check_page_boxes(char const* what) {
  typename Traits::SmemLayoutK k;
  typename Traits::SmemLayoutKVPageBox box;
  constexpr int kRows = Traits::kPageBoxRows;
  int bad = 0, misaligned = 0;
  for (int s = 0; s < Traits::kStages; ++s)
    for (int j = 0; j < Traits::kBlockN / kRows; ++j) {
      int const base = int(k(j * kRows, 0, s)) - int(box(0, 0));
      misaligned += base * int(sizeof(typename Traits::Element)) % 1024 != 0;
      for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < Traits::kHeadDim; ++c) bad += int(k(j * kRows + r, c, s)) != base + int(box(r, c));
    }
  EXPECT(bad == 0 && misaligned == 0, "%s: page boxes: %d elements off the stage layout, %d bases off 1024 B",
         what, bad, misaligned);
}

template <int kHeadDim, int kBlockM, int kBlockN, int kNumWG, class Element>
void check_traits(char const* what, GMMA::LayoutType swizzle) {
  using Traits = fa_cute::Sm90FwdTraits<kHeadDim, kBlockM, kBlockN, kNumWG, Element>;
  std::string const w(what);
  // Q + K and V stages, each rounded to the 1024-byte alignment, plus the mbarriers.
  int const tiles = (kBlockM + 2 * 2 * kBlockN) * kHeadDim * int(sizeof(Element));
  EXPECT(Traits::kSmemSize <= 232448 && Traits::kSmemSize >= tiles && Traits::kSmemSize <= tiles + 4 * 1024,
         "%s: smem %d B for %d B of tiles (limit 232448)", what, Traits::kSmemSize, tiles);
  EXPECT(Traits::kNumThreads == 128 * (kNumWG + 1) &&
             128 * Traits::kProducerRegs + 128 * kNumWG * Traits::kConsumerRegs <= 65536,
         "%s: %d threads, registers %d/%d", what, Traits::kNumThreads, Traits::kProducerRegs,
         Traits::kConsumerRegs);
  check_accumulator_coords<Traits>(what);
  check_p_as_a_operand<Traits>(what);
  check_smem_layout<Traits, typename Traits::SmemLayoutQ>((w + " Q").c_str());
  check_smem_layout<Traits, typename Traits::SmemLayoutK>((w + " K/V").c_str());
  check_vt_is_transpose<Traits>(what);
  check_gmma_descriptors<Traits>(what, swizzle);
  check_page_boxes<Traits>(what);
}

// The Hopper backward (src/sm90/kernel_traits_bwd_sm90.h): the S^T accumulator relabelled as
// the dK/dV wgmma's register A operand must hold, in each of its slots, the (key, query)
// element that operand expects there (per thread, both warpgroups); S^T and dQ must be
// covered once, dQ's d columns split by warpgroup with value pairs on adjacent columns
// (the float2 atomics); and the transposed views must name the same bytes.
template <int D, class Element, int BM = 64, int kTileStages = 0>
void check_bwd_traits(char const* what) {
  using T = fa_cute::Sm90BwdTraits<D, BM, 128, Element, 2, false, false, false, false, false, kTileStages>;
  using TileSt = Shape<_128, Int<BM>>;  // (keys, queries)
  typename T::TiledMmaSdP mma_sdp;
  typename T::TiledMmadKV mma_dkv;
  typename T::TiledMmadQ mma_dq;
  auto const acc_layout = decltype(partition_fragment_C(mma_sdp, TileSt{})){}.layout();
  auto const a_layout = fa_cute::acc_layout_as_a_operand_sm90(acc_layout);
  int bad_a = 0, bad_dq = 0, bad_views = 0;
  std::set<std::pair<int, int>> covered_s, covered_dq;
  for (int t = 0; t < T::kNumConsumerThreads; ++t) {
    Tensor cS = mma_sdp.get_thread_slice(t).partition_C(make_identity_tensor(TileSt{}));  // accumulator (key, query)
    Tensor cA = mma_dkv.get_thread_slice(t).partition_A(make_identity_tensor(TileSt{}));  // A operand (key, query)
    std::pair<int, int> by_slot[decltype(size(acc_layout))::value];
    for (int k = 0; k < size(cS); ++k) {
      by_slot[acc_layout(k)] = {int(get<0>(cS(k))), int(get<1>(cS(k)))};
      covered_s.insert(by_slot[acc_layout(k)]);
    }
    bad_a += int(size(cA)) != int(size(cS));
    for (int v = 0; v < size<0>(cA); ++v)
      for (int m = 0; m < size<1>(cA); ++m)
        for (int kb = 0; kb < size<2>(cA); ++kb) {
          auto const held = by_slot[a_layout(v, m, kb)];
          bad_a += held.first != int(get<0>(cA(v, m, kb))) || held.second != int(get<1>(cA(v, m, kb)));
        }
    Tensor cdQ = mma_dq.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<BM>, Int<D>>{}));
    for (int i = 0; i < size(cdQ); ++i) {
      covered_dq.insert({int(get<0>(cdQ(i))), int(get<1>(cdQ(i)))});
      bad_dq += int(get<1>(cdQ(i))) / (D / 2) != t / 128;
      if (i % 2 == 1) bad_dq += get<0>(cdQ(i)) != get<0>(cdQ(i - 1)) || get<1>(cdQ(i)) != get<1>(cdQ(i - 1)) + 1;
    }
  }
  typename T::SmemLayoutQ q;
  typename T::SmemLayoutQt qt;
  typename T::SmemLayoutK k;
  typename T::SmemLayoutKt kt;
  typename T::SmemLayoutdS ds;
  typename T::SmemLayoutdSt dst;
  for (int s = 0; s < 2; ++s)
    for (int r = 0; r < BM; ++r) {
      for (int c = 0; c < D; ++c) bad_views += q(r, c, s) != qt(c, r, s);
      for (int c = 0; c < 128; ++c) bad_views += ds(r, c, s) != dst(c, r, s);
    }
  for (int r = 0; r < 128; ++r)
    for (int c = 0; c < D; ++c) bad_views += k(r, c) != kt(c, r);
  EXPECT(bad_a == 0, "%s: %d register A-operand slots of P^T/dS^T hold the wrong (key, query)", what, bad_a);
  EXPECT(covered_s.size() == 128u * BM, "%s: S^T covered %zu of %d elements", what, covered_s.size(), 128 * BM);
  EXPECT(bad_dq == 0 && covered_dq.size() == unsigned(BM) * D, "%s: dQ split or value pairs wrong (%d), covered %zu", what,
         bad_dq, covered_dq.size());
  EXPECT(bad_views == 0, "%s: %d transposed-view elements differ", what, bad_views);
  EXPECT(T::kSmemSize <= 232448, "%s: %d bytes of shared memory", what, T::kSmemSize);
  EXPECT(sizeof(typename T::TmaLoadQdO) > 0 && sizeof(typename T::TmaLoadKV) > 0, "%s: TMA copy types", what);
}

// The Hopper backward's dQ staging (kdQBulkReduce): each dQ accumulator value of a thread
// must land in its warp's own 16 staging rows (the warp alone issues their bulk
// reduce-adds), at (row % 16, column % (d/2)) of them, every dQ element once.
template <int D, class Element, int kStages>
void check_bwd_dq_staging(char const* what) {
  using T = fa_cute::Sm90BwdTraits<D, 64, 128, Element, kStages, /*kdSStmatrix=*/true, /*kdQBulkReduce=*/true,
                                   /*kdPEarlyInit=*/true>;
  typename T::TiledMmadQ mma_dq;
  int bad = 0;
  std::set<int> offsets;
  std::vector<float> staging(T::kSmemdQFloats);
  for (int t = 0; t < T::kNumConsumerThreads; ++t) {
    auto thr = mma_dq.get_thread_slice(t);
    Tensor cdQ = thr.partition_C(make_identity_tensor(Shape<_64, Int<D>>{}));
    Tensor sdQ = thr.partition_C(make_tensor(staging.data(), typename T::SmemLayoutdQ{}));
    int const warp = (t / 32) % 4, wg = t / 128;
    for (int i = 0; i < size(cdQ); ++i) {
      int const row = get<0>(cdQ(i)), col = get<1>(cdQ(i));
      int const offset = int(&sdQ(i) - staging.data());
      bad += row / T::kdQRowsPerWarp != warp || col / T::kdQCols != wg;
      bad += offset != ((wg * 4 + warp) * T::kdQRowsPerWarp + row % T::kdQRowsPerWarp) * T::kdQRowStride +
                           col % T::kdQCols;
      offsets.insert(offset);
    }
  }
  EXPECT(bad == 0 && offsets.size() == 64u * D, "%s: %d dQ values staged in the wrong place, %zu distinct", what, bad,
         offsets.size());
  EXPECT(T::kSmemSize <= 232448, "%s: %d bytes of shared memory", what, T::kSmemSize);
}

// The Hopper backward's tiled dq_accum (kdQTile): SmemLayoutdQTile must send the
// (consumer thread, value) pairs one-to-one onto the kBlockM x d floats of a query block
// (the bulk add and the postprocess cover it whole), a thread's first half of its values
// into the tile's first half (part 0) and the rest into part 1, each warpgroup's values into
// its own contiguous quarter of each part, a thread's values in 16-byte runs, and the 32
// lanes of a warp's store onto 512 contiguous bytes; the dQ GEMM's partition, which the
// postprocess inverts, must name every (row, column) of the block once. kdQTileInQdO: the
// parts are a stage's Q and dO buffers, so each warpgroup's d/2 columns of a Q stage must be
// exactly its quarter of the part's floats.
template <int D, class Element, int kTileStages, int kBlockN = 128, bool kSplitD = false, bool kInQdO = false,
          int BM = 64>
void check_bwd_dq_tile(char const* what) {
  using T = fa_cute::Sm90BwdTraits<D, BM, kBlockN, Element, 2, false, false, false, false, false, kTileStages,
                                   kSplitD, kInQdO>;
  typename T::TiledMmadQ mma_dq;
  typename T::SmemLayoutdQTile tile;
  int const part_floats = BM * D / 2, quarter = BM * D / 4;
  int bad_place = 0, bad_run = 0;
  std::set<int> offsets;
  std::set<std::pair<int, int>> coords;
  for (int t = 0; t < T::kNumConsumerThreads; ++t) {
    Tensor cdQ = mma_dq.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<BM>, Int<D>>{}));
    EXPECT(int(size(cdQ)) == T::kdQTileValues, "%s: %d dQ values a thread, the tile has %d", what, int(size(cdQ)),
           T::kdQTileValues);
    for (int i = 0; i < size(cdQ); ++i) {
      int const offset = tile(t, i);
      offsets.insert(offset);
      coords.insert({get<0>(cdQ(i)), get<1>(cdQ(i))});
      bad_place += offset / part_floats != i / (T::kdQTileValues / 2) || offset % part_floats / quarter != t / 128;
      bad_run += i % 4 != 0 ? offset != tile(t, 4 * (i / 4)) + i % 4 : offset % 4 != 0;
      if (i % 4 == 0 && t % 32 != 0) bad_run += offset != tile(t - 1, i) + 4;  // lanes side by side
    }
  }
  EXPECT(bad_place == 0 && bad_run == 0, "%s: %d dQ values outside their part's warpgroup quarter, %d off their runs",
         what, bad_place, bad_run);
  EXPECT(offsets.size() == unsigned(BM) * D && *offsets.rbegin() == BM * D - 1, "%s: %zu distinct tile offsets of %d",
         what, offsets.size(), BM * D);
  EXPECT(coords.size() == unsigned(BM) * D, "%s: the dQ partition names %zu (row, column) pairs of %d", what,
         coords.size(), BM * D);
  if constexpr (kInQdO) {
    // In bytes: warpgroup g's quarter of a part is bytes [g, g + 1) * quarter * 4 of the
    // stage buffer, which must hold exactly its columns of Q (elements of 2 bytes).
    typename T::SmemLayoutQ q;
    int bad_half = 0;
    for (int st = 0; st < 2; ++st)
      for (int r = 0; r < BM; ++r)
        for (int c = 0; c < D; ++c) {
          int const in_stage = q(r, c, st) - st * BM * D;
          bad_half += in_stage * 2 / (quarter * 4) != c / (D / 2) || in_stage < 0 || in_stage >= BM * D;
        }
    EXPECT(bad_half == 0, "%s: %d Q elements outside their warpgroup's half of the stage", what, bad_half);
  }
  EXPECT(T::kSmemSize <= 232448, "%s: %d bytes of shared memory", what, T::kSmemSize);
}

// The wide-head-dim layout (kdKVSplitD, 64 keys a CTA): warpgroup w must own queries
// 32w..32w+31 of S^T (all 64 keys) and columns (d/2) w.. of dK and dV, each element once; the
// A operand of dV and dK (P^T, dS^T as (keys, queries)) and the transposed Q/dO and K views
// must name the same bytes as the layouts they view.
template <int D, class Element>
void check_bwd_split_d(char const* what) {
  using T = fa_cute::Sm90BwdTraits<D, 64, 64, Element, 2, false, false, false, false, false, 0, /*kdKVSplitD=*/true>;
  typename T::TiledMmaSdP mma_sdp;
  typename T::TiledMmadKV mma_dkv;
  int bad_split = 0, bad_views = 0;
  std::set<std::pair<int, int>> covered_s, covered_kv;
  for (int t = 0; t < T::kNumConsumerThreads; ++t) {
    int const wg = t / 128;
    Tensor cS = mma_sdp.get_thread_slice(t).partition_C(make_identity_tensor(Shape<_64, _64>{}));  // (key, query)
    for (int i = 0; i < size(cS); ++i) {
      covered_s.insert({int(get<0>(cS(i))), int(get<1>(cS(i)))});
      bad_split += int(get<1>(cS(i))) / 32 != wg;
    }
    Tensor cKV = mma_dkv.get_thread_slice(t).partition_C(make_identity_tensor(Shape<_64, Int<D>>{}));  // (key, col)
    for (int i = 0; i < size(cKV); ++i) {
      covered_kv.insert({int(get<0>(cKV(i))), int(get<1>(cKV(i)))});
      bad_split += int(get<1>(cKV(i))) / (D / 2) != wg;
    }
  }
  typename T::SmemLayoutP pl;
  typename T::SmemLayoutPt plt;
  typename T::SmemLayoutQ q;
  typename T::SmemLayoutQt qt;
  typename T::SmemLayoutK k;
  typename T::SmemLayoutKt kt;
  for (int st = 0; st < 2; ++st)
    for (int r = 0; r < 64; ++r) {
      for (int c = 0; c < 64; ++c) bad_views += pl(r, c, st) != plt(c, r, st);
      for (int c = 0; c < D; ++c) bad_views += q(r, c, st) != qt(c, r, st) || k(r, c) != kt(c, r);
    }
  EXPECT(bad_split == 0, "%s: %d S^T or dK/dV elements outside their warpgroup's half", what, bad_split);
  EXPECT(covered_s.size() == 64u * 64u && covered_kv.size() == 64u * D, "%s: S^T covered %zu, dK/dV %zu", what,
         covered_s.size(), covered_kv.size());
  EXPECT(bad_views == 0, "%s: %d transposed-view elements differ", what, bad_views);
  EXPECT(T::kSmemSize <= 232448, "%s: %d bytes of shared memory", what, T::kSmemSize);
}

// The FP8 kernel's P: convert_p_fp8_sm90 puts the S accumulator's value (a%2, b, 4kb+2c+a/2)
// into A-operand value (a, b, c) of k-block kb. The RS wgmma's 8-bit A layout must then hold,
// in each slot, the same query row and the key fp8_vt_key(slot) of its 32-key chunk, the key
// whose V row the layout pass put in that slot of Vt (src/fp8_layout.h); and fp8_vt_key
// must be a permutation of the chunk.
template <class Traits>
void check_fp8_p_operand(char const* what) {
  constexpr int M = Traits::kBlockM, N = Traits::kBlockN;
  static_assert(Traits::kFp8 && !Traits::kOAliasesQ, "an FP8 traits type, O in a buffer of its own");
  std::set<int> keys;
  for (int s = 0; s < fa_cute::kFp8VtChunk; ++s) keys.insert(fa_cute::fp8_vt_key(s));
  EXPECT(int(keys.size()) == fa_cute::kFp8VtChunk && *keys.begin() == 0 && *keys.rbegin() == 31,
         "%s: fp8_vt_key is not a permutation of 0..31", what);
  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  Tensor coords = make_identity_tensor(Shape<Int<M>, Int<N>>{});
  int bad = 0, bad_shape = 0;
  for (int t = 0; t < Traits::kNumConsumerThreads; ++t) {
    Tensor tS = mma_qk.get_thread_slice(t).partition_C(coords);  // ((2,2,N/8),1,1) of (m,n)
    Tensor tP = mma_pv.get_thread_slice(t).partition_A(coords);  // ((4,2,2),1,N/32) of (m,k)
    bad_shape += int(size<0, 0>(tP)) != 4 || int(size<0, 1>(tP)) != 2 || int(size<0, 2>(tP)) != 2 ||
                 int(size<1>(tP)) != 1 || int(size<2>(tP)) != N / 32;
    for (int kb = 0; kb < N / 32; ++kb)
      for (int c = 0; c < 2; ++c)
        for (int b = 0; b < 2; ++b)
          for (int a = 0; a < 4; ++a) {
            auto mk = tP(make_coord(a, b, c), 0, kb);
            auto mn = tS(make_coord(a % 2, b, 4 * kb + 2 * c + a / 2), 0, 0);
            int const k = int(get<1>(mk));
            bad += int(get<0>(mk)) != int(get<0>(mn)) ||
                   int(get<1>(mn)) != k / 32 * 32 + fa_cute::fp8_vt_key(k % 32);
          }
  }
  EXPECT(bad_shape == 0, "%s: %d threads with an unexpected 8-bit A-operand shape", what, bad_shape);
  EXPECT(bad == 0, "%s: %d P slots whose row or key is not the one Vt's slot holds", what, bad);
  EXPECT(Traits::kSmemSize <= 232448, "%s: %d bytes of shared memory", what, Traits::kSmemSize);
}

int main() {
  check_fp8_p_operand<fa_cute::Sm90FwdTraits<128, 128, 128, 2, cute::float_e4m3_t, 2, true, true, true, true>>(
      "d128 m128n128 e4m3");
  check_fp8_p_operand<fa_cute::Sm90FwdTraits<64, 128, 192, 2, cute::float_e4m3_t, 2, true, true, true, true>>(
      "d64 m128n192 e4m3");
  check_fp8_p_operand<fa_cute::Sm90FwdTraits<256, 128, 64, 2, cute::float_e4m3_t, 2, true, false, true, true>>(
      "d256 m128n64 e4m3");
  check_bwd_split_d<256, cute::bfloat16_t>("bwd d256 bf16 (d split)");
  check_bwd_split_d<192, cute::half_t>("bwd d192 fp16 (d split)");
  check_bwd_dq_tile<64, cute::bfloat16_t, 1>("bwd d64 bf16 dQ tile");
  check_bwd_dq_tile<128, cute::half_t, 1>("bwd d128 fp16 dQ tile");
  check_bwd_dq_tile<128, cute::bfloat16_t, 2>("bwd d128 bf16 dQ tile, 2 buffers");
  check_bwd_dq_tile<96, cute::bfloat16_t, 1>("bwd d96 bf16 dQ tile");
  check_bwd_dq_tile<192, cute::bfloat16_t, 1, 64, true>("bwd d192 bf16 dQ tile (d split)");
  check_bwd_dq_tile<256, cute::bfloat16_t, 0, 64, true, true>("bwd d256 bf16 dQ tile in the Q/dO stage");
  check_bwd_dq_tile<256, cute::half_t, 0, 64, true, true>("bwd d256 fp16 dQ tile in the Q/dO stage");
  check_bwd_dq_tile<192, cute::bfloat16_t, 0, 64, true, true>("bwd d192 bf16 dQ tile in the Q/dO stage");
  check_bwd_traits<96, cute::bfloat16_t>("bwd d96 bf16");
  check_bwd_traits<64, cute::bfloat16_t, 128, 1>("bwd d64 bf16, 128-row steps");
  check_bwd_dq_tile<64, cute::bfloat16_t, 1, 128, false, false, 128>("bwd d64 bf16 dQ tile, 128-row steps");
  check_bwd_dq_tile<64, cute::half_t, 2, 128, false, false, 128>("bwd d64 fp16 dQ tile, 128-row steps, 2 buffers");
  check_bwd_dq_staging<64, cute::bfloat16_t, 3>("bwd d64 bf16 dQ staging, 3 stages");
  check_bwd_dq_staging<128, cute::half_t, 2>("bwd d128 fp16 dQ staging");
  check_bwd_traits<64, cute::bfloat16_t>("bwd d64 bf16");
  check_bwd_traits<128, cute::half_t>("bwd d128 fp16");
  // The plan's tiles (sec. 2) for d = 64, 128, 256, with 2 consumer warpgroups, and
  // the built tiles (src/generate_kernels.py): 3 consumer warpgroups at d = 64 and 96,
  // 1 for short queries; d=96 for the 64-byte swizzle.
  check_traits<64, 128, 128, 2, cute::bfloat16_t>("d64 m128n128 bf16", GMMA::LayoutType::B128);
  check_traits<64, 192, 112, 3, cute::half_t>("d64 m192n112 wg3 fp16", GMMA::LayoutType::B128);
  check_traits<96, 192, 96, 3, cute::bfloat16_t>("d96 m192n96 wg3 bf16", GMMA::LayoutType::B64);
  check_traits<128, 64, 128, 1, cute::bfloat16_t>("d128 m64n128 wg1 bf16", GMMA::LayoutType::B128);
  check_traits<256, 64, 64, 1, cute::half_t>("d256 m64n64 wg1 fp16", GMMA::LayoutType::B128);
  check_traits<96, 128, 144, 2, cute::bfloat16_t>("d96 m128n144 bf16", GMMA::LayoutType::B64);
  check_traits<128, 128, 128, 2, cute::bfloat16_t>("d128 m128n128 bf16", GMMA::LayoutType::B128);
  check_traits<128, 128, 176, 2, cute::half_t>("d128 m128n176 fp16", GMMA::LayoutType::B128);
  check_traits<192, 128, 112, 2, cute::bfloat16_t>("d192 m128n112 bf16", GMMA::LayoutType::B128);
  check_traits<256, 128, 80, 2, cute::bfloat16_t>("d256 m128n80 bf16", GMMA::LayoutType::B128);
  check_traits<64, 128, 192, 2, cute::bfloat16_t>("d64 m128n192 bf16", GMMA::LayoutType::B128);
  check_traits<96, 128, 128, 2, cute::half_t>("d96 m128n128 fp16", GMMA::LayoutType::B64);
  check_traits<256, 128, 64, 2, cute::bfloat16_t>("d256 m128n64 bf16", GMMA::LayoutType::B128);
  // The TMA copy types must instantiate (descriptors are built on the host per call).
  using T = fa_cute::Sm90FwdTraits<128, 128, 176, 2, cute::bfloat16_t>;
  EXPECT(sizeof(T::TmaLoadQ) > 0 && sizeof(T::TmaLoadK) > 0 && sizeof(T::TmaLoadV) > 0 && sizeof(T::TmaStoreO) > 0 &&
             sizeof(T::TmaLoadKVPageBox) > 0,
         "TMA copy types");
  return expect_summary();
}
