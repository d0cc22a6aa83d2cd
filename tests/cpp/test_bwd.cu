// Host-side checks of the backward's index math (no GPU): the query blocks a key block
// visits (BwdQueryRange) and which tiles need a mask, against brute force over every
// (row, key) pair; the deterministic dQ orders; the traits' transposed shared-memory views; that every thread's
// accumulator fragment of each of the three GEMMs tiles its output exactly once; and the
// backward config table against the registered kernels.

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <cute/tensor.hpp>

#include "block_info.h"
#include "bwd_dq_order.h"
#include "bwd_registry.h"
#include "expect.h"
#include "generated/bwd_config_table.h"
#include "sm80/kernel_traits_bwd_sm80.h"

using namespace cute;

// Whether query row r sees key c: causal (right bound 0) or a window's bounds (-1: none).
bool sees_key(int r, int c, int seqlen_q, int seqlen_k, int offset, int right, int left) {
  return r < seqlen_q && c < seqlen_k && (right < 0 || c <= r + offset + right) && (left < 0 || c >= r + offset - left);
}

// BwdQueryRange against brute force: exactly the query blocks with a row that sees a key of
// the block, and a mask wherever a pair of real indices must come out 0. window_left and
// window_right: the window's bounds (-1: none; the right one is 0 with causal).
template <int kBlockM, int kBlockN>
void check_query_range(int seqlen_q, int seqlen_k, bool causal, int offset, int window_left = -1,
                       int window_right = -1) {
  int const num_n = (seqlen_k + kBlockN - 1) / kBlockN;
  int const num_m = (seqlen_q + kBlockM - 1) / kBlockM;
  int const right = causal ? 0 : window_right, left = window_left;
  for (int n = 0; n < num_n; ++n) {
    auto const range = fa_cute::BwdQueryRange::of<kBlockM, kBlockN>(n, seqlen_q, seqlen_k, right, left, offset);
    for (int m = 0; m < num_m; ++m) {
      bool sees = false, masked = false;
      for (int r = m * kBlockM; r < (m + 1) * kBlockM; ++r) {
        for (int c = n * kBlockN; c < (n + 1) * kBlockN; ++c) {
          bool const visible = sees_key(r, c, seqlen_q, seqlen_k, offset, right, left);
          sees |= visible;
          // A pair of the tile that must come out 0 although both indices could be real.
          masked |= r < seqlen_q && !visible;
        }
      }
      bool const in_range = m >= range.m_block_min && m < range.m_block_max;
      EXPECT(in_range == sees, "q=%d k=%d causal=%d offset=%d window (%d,%d) n=%d m=%d: range [%d,%d)", seqlen_q,
             seqlen_k, causal, offset, left, right, n, m, range.m_block_min, range.m_block_max);
      if (in_range && masked) {
        EXPECT((fa_cute::BwdQueryRange::needs_mask<kBlockM, kBlockN>(m, n, seqlen_k, right, left, offset)),
               "q=%d k=%d causal=%d offset=%d window (%d,%d) n=%d m=%d: needs a mask", seqlen_q, seqlen_k, causal,
               offset, left, right, n, m);
      }
    }
  }
}

// The deterministic dQ order (bwd_dq_order.h): at each query block the key blocks that
// visit it (BwdQueryRange) are dq_first_n_block .. dq_last_n_block, their turns are 0 ..
// count - 1 once each, and a key block only ever waits for key blocks whose CTAs come
// earlier in the grid (dq_order_n_block): the no-deadlock rule.
template <int kBlockM, int kBlockN>
void check_dq_order(int seqlen_q, int seqlen_k, bool causal, int offset, int window_left = -1,
                    int window_right = -1) {
  int const num_n = (seqlen_k + kBlockN - 1) / kBlockN;
  int const num_m = (seqlen_q + kBlockM - 1) / kBlockM;
  fa_cute::BwdParams p{};
  int dummy = 0;
  p.dq_semaphore_ptr = &dummy;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.is_causal = causal;
  p.causal_offset = offset;
  p.window_left = window_left;
  p.window_right = window_right;
  int const right = causal ? 0 : window_right, left = window_left;
  fa_cute::BwdSeqlens<false> const seq(p, 0);
  std::vector<int> tile_of(num_n, -1);  // the CTA position (within its (batch, K/V head)) of each key block
  for (int t = 0; t < num_n; ++t) {
    int const n = fa_cute::dq_order_n_block(p, t, num_n);
    EXPECT(n >= 0 && n < num_n && tile_of[n] < 0, "q=%d k=%d causal=%d offset=%d: tile %d takes key block %d twice",
           seqlen_q, seqlen_k, causal, offset, t, n);
    if (n >= 0 && n < num_n) tile_of[n] = t;
  }
  for (int m = 0; m < num_m; ++m) {
    int const last = fa_cute::dq_last_n_block<kBlockM, kBlockN>(p, seq, m);
    int const first = fa_cute::dq_first_n_block<kBlockM, kBlockN>(p, seq, m);
    std::vector<int> by_turn(num_n + 1, -1);
    int count = 0;
    for (int n = 0; n < num_n; ++n) {
      auto const range = fa_cute::BwdQueryRange::of<kBlockM, kBlockN>(n, seqlen_q, seqlen_k, right, left, offset);
      if (m < range.m_block_min || m >= range.m_block_max) {
        EXPECT(n > last || n < first, "q=%d k=%d causal=%d offset=%d window (%d,%d) m=%d: key block %d in [%d, %d] skips it",
               seqlen_q, seqlen_k, causal, offset, left, right, m, n, first, last);
        continue;
      }
      ++count;
      int const turn = fa_cute::dq_turn<kBlockM, kBlockN>(p, seq, n, m);
      EXPECT(n <= last && n >= first && turn >= 0 && turn < num_n && by_turn[turn] < 0,
             "q=%d k=%d causal=%d offset=%d m=%d n=%d: turn %d (last %d)", seqlen_q, seqlen_k, causal, offset, m, n,
             turn, last);
      if (turn >= 0 && turn < num_n) by_turn[turn] = n;
    }
    EXPECT(count == (last >= first ? last - first + 1 : 0), "q=%d k=%d causal=%d offset=%d window (%d,%d) m=%d: %d key blocks in [%d, %d]",
           seqlen_q, seqlen_k, causal, offset, left, right, m, count, first, last);
    for (int t = 1; t < count; ++t) {
      EXPECT(by_turn[t - 1] >= 0 && by_turn[t] >= 0 && tile_of[by_turn[t - 1]] < tile_of[by_turn[t]],
             "q=%d k=%d causal=%d offset=%d m=%d: turn %d's CTA is not before turn %d's", seqlen_q, seqlen_k, causal,
             offset, m, t - 1, t);
    }
  }
}

// The rotated order (bwd_dq_order.h), num_n key blocks and num_n << shift query blocks: at
// every query block the turns are 0 .. num_n - 1 once each, in the order of the key blocks'
// arrival steps; and CTAs that are all resident, each walking its query blocks from
// dq_rotated_first_m on, never wait (num_m rounds of lockstep).
void check_rotated_order(int num_n, int shift) {
  int const num_m = num_n << shift;
  auto step_of = [&](int n, int m) { return ((m - fa_cute::dq_rotated_first_m(n, shift)) % num_m + num_m) % num_m; };
  for (int m = 0; m < num_m; ++m) {
    std::vector<int> by_turn(num_n, -1);
    for (int n = 0; n < num_n; ++n) {
      int const turn = fa_cute::dq_rotated_turn(n, m, num_n, shift);
      EXPECT(turn >= 0 && turn < num_n && by_turn[turn] < 0, "rotated n=%d m=%d of %dx%d: turn %d", n, m, num_n, num_m,
             turn);
      if (turn >= 0 && turn < num_n) by_turn[turn] = n;
    }
    for (int t = 1; t < num_n; ++t) {
      int const a = by_turn[t - 1], b = by_turn[t];
      EXPECT(a >= 0 && b >= 0 && step_of(a, m) < step_of(b, m),
             "rotated m=%d of %dx%d: turn %d (key block %d) arrives after turn %d (key block %d)", m, num_n, num_m,
             t - 1, a, t, b);
    }
  }
  std::vector<int> step(num_n, 0), counter(num_m, 0);
  int rounds = 0, done = 0;
  while (done < num_n && rounds <= num_n * num_m) {
    std::vector<int> ready;
    for (int n = 0; n < num_n; ++n) {
      if (step[n] == num_m) continue;
      int const m = (fa_cute::dq_rotated_first_m(n, shift) + step[n]) % num_m;
      if (counter[m] == fa_cute::dq_rotated_turn(n, m, num_n, shift)) ready.push_back(n);
    }
    for (int n : ready) {
      ++counter[(fa_cute::dq_rotated_first_m(n, shift) + step[n]) % num_m];
      done += ++step[n] == num_m;
    }
    ++rounds;
  }
  EXPECT(done == num_n && rounds == num_m, "rotated %dx%d: %d of %d key blocks done after %d rounds (lockstep: %d)",
         num_n, num_m, done, num_n, rounds, num_m);
}

// X^T(j, i) is X(i, j), the same shared-memory offset.
template <class Layout, class LayoutT>
void check_transposed(char const* what) {
  Layout x;
  LayoutT xt;
  int bad = 0;
  for (int i = 0; i < size<0>(x); ++i)
    for (int j = 0; j < size<1>(x); ++j) bad += x(i, j) != xt(j, i);
  EXPECT(bad == 0 && size<0>(x) == size<1>(xt) && size<1>(x) == size<0>(xt), "%s: %d offsets differ", what, bad);
}

// Every element of the (M, N) output is held by exactly one (thread, value) of tiled_mma's
// accumulator partition.
template <class TiledMma, int M, int N>
void check_covers(char const* what, int num_threads) {
  std::vector<int> hits(M * N, 0);
  for (int t = 0; t < num_threads; ++t) {
    auto coords = TiledMma{}.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<M>, Int<N>>{}));
    for (int i = 0; i < size(coords); ++i) ++hits[get<0>(coords(i)) * N + get<1>(coords(i))];
  }
  int bad = 0;
  for (int h : hits) bad += h != 1;
  EXPECT(bad == 0, "%s: %d of %d elements not held exactly once", what, bad, M * N);
}

template <int kHeadDim, class Element>
void check_traits(char const* what) {
  using T = fa_cute::Sm80BwdTraits<kHeadDim, 64, 128, 8, 2, 4, 2, Element>;
  std::printf("%s: %d bytes of shared memory\n", what, T::kSmemSize);
  check_transposed<typename T::SmemLayoutQ, typename T::SmemLayoutQt>("Q^T");
  check_transposed<typename T::SmemLayoutKV, typename T::SmemLayoutKt>("K^T");
  check_transposed<typename T::SmemLayoutPdS, typename T::SmemLayoutPdSt>("P^T");
  check_covers<typename T::TiledMmaSdP, 64, 128>("S/dP", T::kNThreads);
  check_covers<typename T::TiledMmadKV, 128, kHeadDim>("dK/dV", T::kNThreads);
  check_covers<typename T::TiledMmadQ, 64, kHeadDim>("dQ", T::kNThreads);
  // Registers a thread keeps across the loop: dK and dV accumulators.
  constexpr int acc = decltype(size(partition_fragment_C(typename T::TiledMmadKV{}, Shape<_128, Int<kHeadDim>>{})))::value;
  EXPECT(acc * T::kNThreads == 128 * kHeadDim, "%s: dK fragment %d", what, acc);
}

int main() {
  // Window bounds (left, right): left bounds, right bounds (non-causal), both, bounds of 0.
  std::pair<int, int> const kWindows[] = {{0, -1}, {37, -1}, {130, -1}, {-1, 0}, {-1, 65}, {16, 16}, {200, 3}};
  for (bool causal : {false, true}) {
    for (int sq : {1, 5, 63, 64, 65, 128, 200, 333}) {
      for (int sk : {1, 7, 127, 128, 129, 300}) {
        for (int offset : {sk - sq, 0, -70, 90, -400, 500}) {
          check_query_range<64, 128>(sq, sk, causal, offset);
          check_dq_order<64, 128>(sq, sk, causal, offset);
          check_dq_order<128, 64>(sq, sk, causal, offset);
          for (auto const& [left, right] : kWindows) {
            check_query_range<64, 128>(sq, sk, causal, offset, left, right);
            check_query_range<128, 64>(sq, sk, causal, offset, left, right);
            check_dq_order<64, 128>(sq, sk, causal, offset, left, right);
            check_dq_order<128, 64>(sq, sk, causal, offset, left, right);
          }
        }
      }
    }
  }
  for (int num_n = 1; num_n <= 40; ++num_n) {
    for (int shift = 0; shift <= 3; ++shift) check_rotated_order(num_n, shift);
  }
  check_traits<64, cute::bfloat16_t>("bwd d64 bf16");
  check_traits<128, cute::half_t>("bwd d128 fp16");
  // Every registered backward kernel is in the generated table with its tile.
  for (auto const& k : fa_cute::bwd_kernels()) {
    bool found = false;
    for (auto const& c : fa_cute::kBwdConfigs) {
      found |= std::string(c.name) == k.config && c.head_dim == k.head_dim && c.block_m == k.block_m &&
               c.block_n == k.block_n && c.num_warps == k.num_warps;
    }
    EXPECT(found, "%s is registered but not in generated/bwd_config_table.h", k.config);
  }
  return expect_summary();
}
