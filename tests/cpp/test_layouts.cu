// Host-side checks of the sm80 kernel's CuTe layouts and of the kernel registry.
// Every check here would show up on the GPU only as a slowdown (bank conflicts) or as a
// wrong answer in some rows, so it is cheaper to prove them exhaustively on the CPU.

#include <cstdio>
#include <set>
#include <string>

#include <cute/tensor.hpp>

#include "cute_utils.h"
#include "expect.h"
#include "sm80/kernel_traits_sm80.h"
#include "tile_scheduler_host.h"
#include "kernel_registry.h"
#include "tile_size.h"

using namespace cute;

// ldmatrix moves 8 rows x 16 bytes per phase. Conflict-free means the 8 addresses fall in
// 8 distinct 16-byte bank groups (32 banks x 4 bytes = 8 groups of 16 bytes).
template <class Traits, class SmemLayout>
void check_ldmatrix_phases_conflict_free(char const* what) {
  using Element = typename Traits::Element;
  constexpr int kElemsPer16B = 16 / sizeof(Element);
  SmemLayout layout;
  int const rows = size<0>(layout);
  int const cols = size<1>(layout);
  int bad = 0;
  for (int r0 = 0; r0 < rows; r0 += 8) {
    for (int c = 0; c < cols; c += kElemsPer16B) {
      std::set<int> groups;
      for (int r = r0; r < r0 + 8; ++r) {
        int const byte = int(layout(r, c)) * int(sizeof(Element));
        groups.insert((byte / 16) % 8);
      }
      bad += groups.size() != 8;
    }
  }
  EXPECT(bad == 0, "%s: %d ldmatrix phases with bank conflicts", what, bad);
}

// A 16-byte vector must stay contiguous after the swizzle (cp.async and ldmatrix move
// 16 bytes at a time).
template <class Traits, class SmemLayout>
void check_16B_chunks_contiguous(char const* what) {
  using Element = typename Traits::Element;
  constexpr int kElemsPer16B = 16 / sizeof(Element);
  SmemLayout layout;
  int bad = 0;
  for (int r = 0; r < size<0>(layout); ++r) {
    for (int c = 0; c < size<1>(layout); c += kElemsPer16B) {
      int const base = layout(r, c);
      bad += base % kElemsPer16B != 0;
      for (int i = 1; i < kElemsPer16B; ++i) bad += int(layout(r, c + i)) != base + i;
    }
  }
  EXPECT(bad == 0, "%s: %d split 16-byte chunks", what, bad);
}

// The layout must be a bijection onto [0, cosize): no two elements share shared memory.
template <class SmemLayout>
void check_bijective(char const* what) {
  SmemLayout layout;
  std::set<int> seen;
  for (int i = 0; i < size(layout); ++i) seen.insert(layout(i));
  EXPECT(int(seen.size()) == int(size(layout)) && *seen.rbegin() == int(size(layout)) - 1,
         "%s: not a bijection (%d distinct of %d)", what, int(seen.size()), int(size(layout)));
}

template <class Traits>
void check_vt_is_transpose(char const* what) {
  typename Traits::SmemLayoutKV kv;
  typename Traits::SmemLayoutVt vt;
  int bad = 0;
  for (int n = 0; n < Traits::kBlockN; ++n)
    for (int d = 0; d < Traits::kHeadDim; ++d) bad += int(vt(d, n)) != int(kv(n, d));
  EXPECT(bad == 0, "%s: V^T view differs from V at %d elements", what, bad);
}

// The softmax's row/column view of a thread's accumulator must name, for each of its
// rows, elements that really lie in one row of S, and columns in increasing order within
// the quad's share; the P-as-A-operand relabelling must give each element of P the (row, k)
// coordinate that the A operand of P.V expects.
template <class Traits>
void check_fragment_views(char const* what) {
  typename Traits::TiledMma tiled_mma;
  constexpr int M = Traits::kBlockM, N = Traits::kBlockN;
  Tensor coords_mn = make_identity_tensor(Shape<Int<M>, Int<N>>{});
  int bad_rows = 0, bad_a = 0;
  for (int t = 0; t < Traits::kNThreads; ++t) {
    auto thr_mma = tiled_mma.get_thread_slice(t);
    Tensor tC = thr_mma.partition_C(coords_mn);  // (MMA,MMA_M,MMA_N) of (m,n)
    Tensor rc = make_tensor(tC.data(), fa_cute::acc_layout_rowcol(tC.layout()));
    for (int mi = 0; mi < size<0>(rc); ++mi)
      for (int ni = 0; ni < size<1>(rc); ++ni) bad_rows += get<0>(rc(mi, ni)) != get<0>(rc(mi, 0));
    Tensor tA = thr_mma.partition_A(coords_mn);  // P as the A operand: (m, k=n)
    Tensor p_as_a = make_tensor(tC.data(), fa_cute::acc_layout_as_a_operand(tC.layout()));
    if (size(tA) != size(p_as_a)) {
      ++bad_a;
      continue;
    }
    for (int i = 0; i < size(tA); ++i) bad_a += !(tA(i) == p_as_a(i));
  }
  EXPECT(bad_rows == 0, "%s: %d accumulator elements off their softmax row", what, bad_rows);
  EXPECT(bad_a == 0, "%s: %d elements of P misplaced as the A operand", what, bad_a);
}

template <int kHeadDim, int kBlockM, int kBlockN, int kNWarps, class Element>
void check_traits(char const* what) {
  using Traits = fa_cute::Sm80FwdTraits<kHeadDim, kBlockM, kBlockN, kNWarps, Element>;
  std::string const w(what);
  check_ldmatrix_phases_conflict_free<Traits, typename Traits::SmemLayoutQ>((w + " Q").c_str());
  check_ldmatrix_phases_conflict_free<Traits, typename Traits::SmemLayoutKV>((w + " K/V").c_str());
  check_16B_chunks_contiguous<Traits, typename Traits::SmemLayoutQ>((w + " Q").c_str());
  check_16B_chunks_contiguous<Traits, typename Traits::SmemLayoutKV>((w + " K/V").c_str());
  check_bijective<typename Traits::SmemLayoutQ>((w + " Q").c_str());
  check_bijective<typename Traits::SmemLayoutKV>((w + " K/V").c_str());
  check_vt_is_transpose<Traits>(what);
  check_fragment_views<Traits>(what);
}

// Every tile number names a distinct (query block, head, batch, split), all of them are
// named, and causal tiles run longest first within each L2 section: in a section the query
// block never grows with the tile number, and a section's (batch, head) pairs stay within
// causal_section() of each other.
void check_tile_order(int batch, int nheads, int nheads_k, int num_splits, int seqlen_q, int seqlen_k,
                      int head_dim, bool causal, int block_m, int section = 0) {
  fa_cute::FwdParams params{};
  params.batch = batch;
  params.nheads = nheads;
  params.nheads_k = nheads_k;
  params.num_splits = num_splits;
  params.seqlen_q = seqlen_q;
  params.seqlen_k = seqlen_k;
  params.head_dim = head_dim;
  params.is_causal = causal;
  params.causal_section = section > 0 ? section : fa_cute::causal_section(params);
  int const num_m = (seqlen_q + block_m - 1) / block_m;
  int const num_bh = nheads * batch * num_splits;
  int const num_tiles = num_m * num_bh;
  std::set<long long> seen;
  int bad = 0, order = 0;
  for (int tile = 0; tile < num_tiles; ++tile) {
    fa_cute::FwdTileCoord const c(tile, num_m, params, causal);
    bad += c.m_block < 0 || c.m_block >= num_m || c.bidh < 0 || c.bidh >= nheads || c.bidb < 0 ||
           c.bidb >= batch || c.n_split < 0 || c.n_split >= num_splits ||
           c.bidh_k != c.bidh / (nheads / nheads_k);
    seen.insert(((long long)(c.n_split * batch + c.bidb) * nheads + c.bidh) * num_m + c.m_block);
    if (causal && tile > 0) {
      fa_cute::FwdTileCoord const prev(tile - 1, num_m, params, causal);
      int const section_tiles = params.causal_section * num_m;
      bool const same_section = tile / section_tiles == (tile - 1) / section_tiles;
      order += same_section && c.m_block > prev.m_block;
    }
  }
  EXPECT(bad == 0 && int(seen.size()) == num_tiles && order == 0,
         "tile order B=%d H=%d/%d splits=%d Nq=%d Nk=%d d=%d causal=%d: %d out of range, %d of %d distinct, "
         "%d order violations (section %d pairs)",
         batch, nheads, nheads_k, num_splits, seqlen_q, seqlen_k, head_dim, int(causal), bad, int(seen.size()),
         num_tiles, order, params.causal_section);
}

// persistent_causal_section deals a persistent grid's causal tiles evenly: the busiest CTA
// within 5% of the mean work where the L2 bound's own section gives 1.2x or more (d=128,
// 128x128, 132 CTAs, B = 16384/N, H = 16), never a section past the bound, and never a
// busier CTA than the bound's section.
template <int kBlockM, int kBlockN>
void check_persistent_balance(int seqlen, int nheads, int head_dim, int grid, double max_ratio) {
  fa_cute::FwdParams params{};
  params.batch = 16384 / seqlen;
  params.nheads = params.nheads_k = nheads;
  params.num_splits = 1;
  params.seqlen_q = params.seqlen_k = seqlen;
  params.head_dim = head_dim;
  params.is_causal = true;
  int const bound = fa_cute::causal_section(params);
  params.causal_section = bound;
  auto const at_bound = fa_cute::persistent_causal_load<kBlockM, kBlockN>(params, grid);
  int const section = fa_cute::persistent_causal_section<kBlockM, kBlockN>(params, grid);
  params.causal_section = section;
  auto const picked = fa_cute::persistent_causal_load<kBlockM, kBlockN>(params, grid);
  double const ratio = double(picked.busiest) * grid / double(picked.total);
  EXPECT(section >= 1 && section <= bound && picked.busiest <= at_bound.busiest && ratio <= max_ratio &&
             picked.total == at_bound.total,
         "persistent causal section N=%d H=%d d=%d %dx%d on %d CTAs: picked %d (bound %d), busiest/mean %.3f "
         "(bound's %.3f), total %lld vs %lld",
         seqlen, nheads, head_dim, kBlockM, kBlockN, grid, section, bound, ratio,
         double(at_bound.busiest) * grid / double(at_bound.total), picked.total, at_bound.total);
  check_tile_order(params.batch, nheads, nheads, 1, seqlen, seqlen, head_dim, true, kBlockM, section);
  // The folded count (one period of sections and zigzag rounds, times its repeats) equals
  // dealing every tile, at the picked section and at a few others.
  for (int s : {section, 1, 3, bound}) {
    params.causal_section = s;
    auto const folded = fa_cute::persistent_causal_load<kBlockM, kBlockN>(params, grid);
    auto const every = fa_cute::persistent_causal_load<kBlockM, kBlockN>(params, grid, /*fold=*/false);
    EXPECT(folded.busiest == every.busiest && folded.total == every.total,
           "folded load N=%d H=%d d=%d section %d grid %d: busiest %lld vs %lld, total %lld vs %lld", seqlen, nheads,
           head_dim, s, grid, folded.busiest, every.busiest, folded.total, every.total);
  }
}

void check_registry() {
  auto const& kernels = fa_cute::fwd_kernels();
  EXPECT(!kernels.empty(), "no kernel registered");
  std::set<std::string> names;
  for (auto const& k : kernels) {
    names.insert(k.config);
    EXPECT(k.launch != nullptr, "%s has no launch function", k.config);
    EXPECT((k.rung >= 0) == (std::string(k.config).rfind("ladder", 0) == 0),
           "%s: rung %d does not match its name", k.config, k.rung);
  }
  EXPECT(fa_cute::sm80_config_name(128, fa_cute::FwdTile{128, 64, 4, false}) == "sm80_m128n64w4_d128" &&
             fa_cute::sm80_config_name(128, fa_cute::FwdTile{128, 128, 8, true}) == "sm80p_m128n128w8_d128",
         "config naming differs from src/generate_kernels.py");
  // The heuristic's tile (tile_size.h) is what the default build compiles and picks.
  // Causal tiles differ in length: the heuristic leaves them to the hardware's block
  // scheduler (non-persistent), and short queries to the 64-row tile. d=192 non-causal
  // tiles persist; d <= 128 takes 4 warps, whose 2 blocks per SM need no persistent loop.
  EXPECT(!fa_cute::sm80_fwd_tile(192, 4096, true).persistent && fa_cute::sm80_fwd_tile(192, 4096, false).persistent,
         "causal d=192 must not be persistent, non-causal must");
  EXPECT(fa_cute::sm80_fwd_tile(128, 4096).num_warps == 4 && !fa_cute::sm80_fwd_tile(128, 4096).persistent,
         "d=128 takes the 4-warp 128x64 tile, not persistent");
  EXPECT(fa_cute::sm80_fwd_tile(128, 1).block_m == 64, "seqlen_q 1 must take the 64-row tile");
  EXPECT(fa_cute::sm80_fwd_tile(100, 4096).block_m == 0 && fa_cute::sm80_fwd_tile(100, 1).block_m == 0 &&
             fa_cute::sm90_fwd_tile(100, 4096).block_m == 0 && fa_cute::sm90_fwd_tile(100, 1).block_m == 0,
         "head dim 100 has no tile, short queries included");
  EXPECT(fa_cute::sm90_config_name(128, fa_cute::FwdTile{128, 176, 12, false}) == "sm90_m128n176_d128",
         "sm90 config naming differs from src/generate_kernels.py");
  // On an H100 (9.0) the Hopper tile where built, else the sm80 one; on 8.0 and 10.0
  // (sm_90a code runs on 9.0 only) the sm80 tile; short queries (decode) on a split-KV
  // config of the same kernel family.
  std::string const sm80_expected = fa_cute::sm80_config_name(128, fa_cute::sm80_fwd_tile(128, 4096));
  std::string const sm90_expected = fa_cute::sm90_config_name(128, fa_cute::sm90_fwd_tile(128, 4096));
  std::string const picked = fa_cute::default_fwd_config(128, 4096, 4096, 9, 0);
  EXPECT(names.count(picked) == 1, "default config %s is not registered", picked.c_str());
  std::string const expected = names.count(sm90_expected) ? sm90_expected : sm80_expected;
  if (names.count(expected)) {
    EXPECT(picked == expected, "default config %s on 9.0, tile functions say %s", picked.c_str(), expected.c_str());
  }
  if (names.count(sm80_expected)) {
    for (int major : {8, 10}) {
      std::string const other = fa_cute::default_fwd_config(128, 4096, 4096, major, 0);
      EXPECT(other == sm80_expected, "default config %s on %d.0, expected %s", other.c_str(), major,
             sm80_expected.c_str());
    }
  }
  std::string const decode = fa_cute::default_fwd_config(128, 1, 4096, 9, 0);
  std::string const sm90_decode = fa_cute::sm90_config_name(128, fa_cute::sm90_fwd_tile(128, 1));
  EXPECT(sm90_decode == "sm90_m64n128_d128", "the sm90 decode tile is %s", sm90_decode.c_str());
  EXPECT(names.count(sm90_decode) ? decode == sm90_decode : decode.rfind("sm80", 0) == 0,
         "decode on 9.0 picked %s", decode.c_str());
  // Short queries against few keys stay on the sm80 tile (kSm90ShortQueryMinKeys).
  std::string const few_keys = fa_cute::default_fwd_config(128, 64, 64, 9, 0);
  EXPECT(few_keys.rfind("sm80", 0) == 0 || !names.count(sm80_expected), "seqlen 64 x 64 on 9.0 picked %s",
         few_keys.c_str());
  // The split rule at the measured points (tile_size.h) and its bounds.
  EXPECT(fa_cute::split_kv_count(32, 132, 128) == 4 && fa_cute::split_kv_count(80, 132, 128) == 3 &&
             fa_cute::split_kv_count(128, 132, 128) == 1,
         "split_kv_count: 32 / 80 / 128 tiles on 132 SMs split %d / %d / %d ways, measured best 4 / 3 / 1",
         fa_cute::split_kv_count(32, 132, 128), fa_cute::split_kv_count(80, 132, 128),
         fa_cute::split_kv_count(128, 132, 128));
  EXPECT(fa_cute::split_kv_count(1, 132, 8) == 2 && fa_cute::split_kv_count(1, 132, 7) == 1 &&
             fa_cute::split_kv_count(1, 132, 100000) <= 128 && fa_cute::split_kv_count(0, 132, 128) == 1,
         "split_kv_count bounds: at least 4 key blocks a split, at most 128 splits, no tiles no split");
  EXPECT(fa_cute::sm90_fwd_tile(64, 4096).block_m == 192 && fa_cute::sm90_fwd_tile(64, 4096).num_warps == 16,
         "d=64 takes 3 consumer warpgroups (192 rows, 16 warps with the producer)");
  bool threw = false;
  try {
    fa_cute::default_fwd_config(100, 128, 128, 9, 0);
  } catch (std::invalid_argument const& e) {
    threw = std::string(e.what()).find("head_dim") != std::string::npos;
  }
  EXPECT(threw, "unsupported head dim did not throw a head_dim error");
  threw = false;
  try {
    fa_cute::find_fwd_kernel("no_such_config", fa_cute::DType::kBF16);
  } catch (std::invalid_argument const& e) {
    threw = std::string(e.what()).find("built configs") != std::string::npos;
  }
  EXPECT(threw, "unknown config did not throw");
}

int main() {
  check_traits<128, 128, 128, 8, cute::bfloat16_t>("m128n128w8 bf16");
  check_traits<128, 128, 64, 8, cute::half_t>("m128n64w8 fp16");
  check_traits<128, 64, 64, 4, cute::bfloat16_t>("m64n64w4 bf16");
  check_traits<128, 64, 128, 4, cute::half_t>("m64n128w4 fp16 (layouts only; not built)");
  check_traits<128, 128, 64, 4, cute::bfloat16_t>("m128n64w4 bf16");
  check_traits<64, 128, 64, 4, cute::bfloat16_t>("d64 m128n64w4 bf16");
  check_traits<96, 64, 64, 4, cute::half_t>("d96 m64n64w4 fp16");
  // Sections of 1, a few and all (batch, head) pairs, a last section smaller than the
  // others, GQA, split-KV, one tile.
  for (bool causal : {false, true}) {
    check_tile_order(4, 16, 16, 1, 4096, 4096, 128, causal, 128);
    check_tile_order(1, 16, 16, 1, 16384, 16384, 128, causal, 128);
    check_tile_order(16, 16, 4, 1, 1024, 1024, 128, causal, 128);
    check_tile_order(3, 7, 7, 1, 1000, 70000, 256, causal, 128);
    check_tile_order(2, 8, 2, 5, 64, 3000, 64, causal, 64);
    check_tile_order(1, 1, 1, 1, 1, 1, 64, causal, 64);
  }
  check_tile_order(16, 16, 4, 1, 1024, 1024, 128, true, 128, 3);
  check_tile_order(3, 7, 7, 1, 1000, 70000, 256, true, 128, 5);
  for (int n : {512, 1024, 2048, 4096}) {
    check_persistent_balance<128, 128>(n, 16, 128, 132, 1.05);
    check_persistent_balance<192, 112>(n, 32, 64, 132, 1.05);
    check_persistent_balance<192, 96>(n, 21, 96, 132, 1.07);
    check_persistent_balance<128, 128>(n, 16, 128, 264, 1.08);  // the sm80 kernel, 2 blocks per SM
  }
  check_persistent_balance<128, 128>(1000, 48, 128, 132, 1.05);  // a ragged last tile, 3 heads' partial section
  check_registry();
  return expect_summary();
}
