// Host-side checks of src/launch_checks: the integer checks that _C runs before any CUDA
// call accept a valid problem and refuse nonsense, and at the limits they admit
// (flash_params.h) the kernels' int32 key-block arithmetic equals its 64-bit value.

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "expect.h"
#include "block_info.h"
#include "bwd_registry.h"
#include "tile_scheduler_host.h"
#include "kernel_registry.h"
#include "launch_checks.h"
#include "tile_size.h"

using namespace fa_cute;

namespace {

FwdKernel const kKernel{"test_m128n64_d128", "sm80", 128, 128, 64, 4, 0, DType::kBF16, nullptr, nullptr, -1, true, ""};

// The test problem's sizes, in FwdParams or BwdParams (the same field names): batch 2, 100
// queries against 300 keys, 4 query heads on 2 K/V heads, d=128.
template <class Params>
Params test_sizes() {
  Params p{};
  p.batch = 2;
  p.seqlen_q = 100;
  p.seqlen_k = 300;
  p.nheads = 4;
  p.nheads_k = 2;
  p.head_dim = 128;
  return p;
}

FwdParams valid_params() {
  FwdParams p = test_sizes<FwdParams>();
  p.q_ptr = reinterpret_cast<void const*>(uintptr_t(0x7e0000000000));
  p.k_ptr = reinterpret_cast<void const*>(uintptr_t(0x7e0100000000));
  p.v_ptr = reinterpret_cast<void const*>(uintptr_t(0x7e0200000000));
  p.o_ptr = reinterpret_cast<void*>(uintptr_t(0x7e0300000000));
  p.q_batch_stride = p.o_batch_stride = 100 * 4 * 128;
  p.q_row_stride = p.o_row_stride = 4 * 128;
  p.q_head_stride = p.o_head_stride = 128;
  p.k_batch_stride = p.v_batch_stride = 300 * 2 * 128;
  p.k_row_stride = p.v_row_stride = 2 * 128;
  p.k_head_stride = p.v_head_stride = 128;
  p.num_splits = 1;
  return p;
}

// Whether check_forward_args refuses p with std::invalid_argument whose message holds `what`.
bool refuses(FwdParams const& p, char const* what, int device = 0) {
  try {
    check_forward_args(kKernel, p, device);
  } catch (std::invalid_argument const& e) {
    if (std::string(e.what()).find(what) != std::string::npos) return true;
    std::printf("  message without '%s': %s\n", what, e.what());
  }
  return false;
}

void check_valid_and_nonsense() {
  FwdParams const valid = valid_params();
  ForwardExtents const extents = check_forward_args(kKernel, valid, 0);
  // q: (batch-1)*batch_stride + (seqlen-1)*row_stride + (heads-1)*head_stride + d elements.
  EXPECT(extents[0].bytes == 2ull * (51200 + 99 * 512 + 3 * 128 + 128), "q extent %llu",
         (unsigned long long)extents[0].bytes);
  EXPECT(extents[4].ptr == 0 && extents[5].ptr == 0, "unused lse / o_accum in the extents");

  auto with = [&](auto change) {
    FwdParams p = valid;
    change(p);
    return p;
  };
  EXPECT(refuses(with([](FwdParams& p) { p.q_ptr = nullptr; }), "q: the data pointer is null"), "null q");
  EXPECT(refuses(with([](FwdParams& p) { p.k_batch_stride = -8; }), "k: batch, seqlen and head strides must be >= 0"),
         "negative k batch stride");
  EXPECT(refuses(with([](FwdParams& p) { p.seqlen_k = kMaxSeqlen + 1; }), "seqlen_k"), "seqlen_k past the limit");
  EXPECT(refuses(with([](FwdParams& p) {
                   p.seqlen_k = 0x7fffffff - 63;  // wrapped the key-block count before issue 13
                   p.k_row_stride = p.k_batch_stride = p.v_row_stride = p.v_batch_stride = 0;
                 }),
                 "seqlen_k"),
         "seqlen_k of the wrap");
  EXPECT(refuses(with([](FwdParams& p) { p.causal_offset = kMaxSeqlen + 1; }), "causal_offset"), "causal_offset");
  EXPECT(refuses(with([](FwdParams& p) { p.num_splits = kMaxSplits + 1; }), "num_splits"), "num_splits > 128");
  EXPECT(refuses(with([](FwdParams& p) { p.num_splits = 6; }), "num_splits"), "num_splits > the 5 key blocks");
  EXPECT(refuses(with([](FwdParams& p) { p.num_splits = 2; }), "o_accum"), "splits without buffers");
  EXPECT(refuses(with([](FwdParams& p) { p.head_dim = 64; }), "head_dim"), "head_dim of another config");
  EXPECT(refuses(with([](FwdParams& p) { p.v_batch_stride = int64_t(1) << 47; }), "v: sizes and strides"),
         "v extent past 2^48 bytes");
  EXPECT(refuses(valid, "device", -1), "negative device");
  bool stream_refused = false;
  try {
    check_stream_handle(12345);
  } catch (std::invalid_argument const&) {
    stream_refused = true;
  }
  EXPECT(stream_refused, "an odd stream handle");
}

// At the extreme lengths and offsets the checks admit, FwdKeyRange's int arithmetic equals
// the same formulas in 64 bits for every query tile position that matters.
template <int kBlockM, int kBlockN>
void check_key_range_headroom() {
  auto floor_div64 = [](long long a, long long b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  int const lengths[] = {1, kBlockN - 1, kMaxSeqlen - 1, kMaxSeqlen};
  int const offsets[] = {-kMaxSeqlen, -1, 0, kMaxSeqlen - 1, kMaxSeqlen};
  int bad = 0;
  for (int seqlen_q : lengths) {
    for (int seqlen_k : lengths) {
      for (int offset : offsets) {
        FwdParams p{};
        p.batch = p.nheads = p.nheads_k = 1;
        p.seqlen_q = seqlen_q;
        p.seqlen_k = seqlen_k;
        p.is_causal = true;
        p.causal_offset = offset;
        p.num_splits = 1;
        int const num_m_blocks = (seqlen_q + kBlockM - 1) / kBlockM;
        for (int m_block : {0, num_m_blocks - 1}) {
          FwdTileCoord const coord(m_block, num_m_blocks, p, /*is_causal=*/false);  // tile m_block: that query block
          FwdKeyRange const r = FwdKeyRange::of<kBlockM, kBlockN, false>(coord, p);
          long long const row_first = (long long)m_block * kBlockM;
          long long const row_last = std::min<long long>(row_first + kBlockM, seqlen_q) - 1;
          long long max_ref = ((long long)seqlen_k + kBlockN - 1) / kBlockN;
          max_ref = std::min(max_ref, floor_div64(row_last + offset, kBlockN) + 1);
          long long mask_ref = std::min<long long>(seqlen_k / kBlockN,
                                                   std::max<long long>(0, floor_div64(row_first + offset + 1, kBlockN)));
          bad += r.n_block_max != max_ref || r.n_block_mask_start != mask_ref;
        }
      }
    }
  }
  EXPECT(bad == 0, "%dx%d: %d key ranges differ from 64-bit arithmetic at the limits", kBlockM, kBlockN, bad);
}

// With windows (and causal, split-KV aside): against brute force over small shapes, every
// key block holding a key some row of the tile sees lies in [n_block_min, n_block_max), the
// blocks at both ends of that range hold one (no block is visited for nothing), and the
// blocks in [n_block_left_end, n_block_mask_start) need no mask for any row of the tile.
template <int kBlockM, int kBlockN>
void check_window_key_ranges() {
  int bad = 0, cases = 0;
  for (int seqlen_q : {1, 5, kBlockM, 2 * kBlockM + 3}) {
    for (int seqlen_k : {1, 7, kBlockN, 3 * kBlockN + 5}) {
      for (int causal = 0; causal < 2; ++causal) {
        for (int left : {-1, 0, 3, kBlockN, 2 * kBlockN + 1}) {
          for (int right : {-1, 0, 2, kBlockN + 1}) {
            if (causal && right > 0) continue;
            FwdParams p{};
            p.batch = p.nheads = p.nheads_k = 1;
            p.seqlen_q = seqlen_q;
            p.seqlen_k = seqlen_k;
            p.is_causal = causal;
            p.causal_offset = seqlen_k - seqlen_q;
            p.window_left = left;
            p.window_right = right;
            p.num_splits = 1;
            auto visible = [&](int r, int c) {
              int const d = r + p.causal_offset;
              int const hi = right_bound(p);
              return c >= 0 && c < seqlen_k && (hi < 0 || c <= d + hi) && (left < 0 || c >= d - left);
            };
            int const num_m_blocks = (seqlen_q + kBlockM - 1) / kBlockM;
            int const num_n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
            for (int m_block = 0; m_block < num_m_blocks; ++m_block) {
              FwdTileCoord const coord(m_block, num_m_blocks, p, /*is_causal=*/false);
              FwdKeyRange const r = FwdKeyRange::of<kBlockM, kBlockN, false>(coord, p);
              int const row_end = std::min((m_block + 1) * kBlockM, seqlen_q);
              int seen_min = num_n_blocks, seen_max = -1;
              for (int n = 0; n < num_n_blocks; ++n) {
                bool any = false, all = true;
                for (int row = m_block * kBlockM; row < row_end; ++row) {
                  for (int c = n * kBlockN; c < (n + 1) * kBlockN; ++c) {
                    bool const v = visible(row, c);
                    any |= v;
                    all &= v;
                  }
                }
                if (any) {
                  seen_min = std::min(seen_min, n);
                  seen_max = std::max(seen_max, n);
                }
                bool const unmasked = n >= std::max(r.n_block_min, r.n_block_left_end) && n < r.n_block_mask_start &&
                                      n < r.n_block_max;
                bad += unmasked && !all;
              }
              ++cases;
              if (seen_max < 0) {
                bad += r.num_blocks() > 0;  // no row sees a key: nothing visited
              } else {
                bad += r.n_block_min != seen_min || r.n_block_max != seen_max + 1;
              }
            }
          }
        }
      }
    }
  }
  EXPECT(bad == 0, "%dx%d windows: %d of %d key ranges wrong against brute force", kBlockM, kBlockN, bad, cases);
}

// The backward's checks: a valid call (dq_accum with its padding rows) passes, and
// dq_accum_rows that is not seqlen_q rounded up to kDqAccumRowAlign is refused by name
// (the Hopper kernel's tiled dq_accum adds whole query blocks into those rows).
void check_backward_dq_accum_rows() {
  BwdKernel const kernel{"test_bwd_m64n128_d128", "sm80", 128, 64, 128, 8, 0, DType::kBF16, nullptr, ""};
  BwdParams p = test_sizes<BwdParams>();
  auto const at = [](uintptr_t gib) { return reinterpret_cast<void*>(uintptr_t(0x7e0000000000) + (gib << 30)); };
  p.q_ptr = at(0), p.o_ptr = at(1), p.do_ptr = at(2), p.dq_ptr = at(3);
  p.k_ptr = at(4), p.v_ptr = at(5), p.dk_ptr = at(6), p.dv_ptr = at(7);
  p.lse_ptr = static_cast<float const*>(at(8));
  p.dq_accum_ptr = static_cast<float*>(at(9));
  p.softmax_d_ptr = static_cast<float*>(at(10));
  p.q_batch_stride = p.o_batch_stride = p.do_batch_stride = p.dq_batch_stride = 100 * 4 * 128;
  p.q_row_stride = p.o_row_stride = p.do_row_stride = p.dq_row_stride = 4 * 128;
  p.q_head_stride = p.o_head_stride = p.do_head_stride = p.dq_head_stride = 128;
  p.k_batch_stride = p.v_batch_stride = p.dk_batch_stride = p.dv_batch_stride = 300 * 2 * 128;
  p.k_row_stride = p.v_row_stride = p.dk_row_stride = p.dv_row_stride = 2 * 128;
  p.k_head_stride = p.v_head_stride = p.dk_head_stride = p.dv_head_stride = 128;
  p.dq_accum_rows = 128;
  BackwardExtents const extents = check_backward_args(kernel, p, 0);
  // dq_accum (slot 9): batch x nheads x 128 rows x d fp32.
  EXPECT(extents[9].bytes == 4ull * 2 * 4 * 128 * 128, "dq_accum extent %llu", (unsigned long long)extents[9].bytes);
  for (int rows : {100, 127, 129, 0}) {
    BwdParams bad = p;
    bad.dq_accum_rows = rows;
    bool refused = false;
    try {
      check_backward_args(kernel, bad, 0);
    } catch (std::invalid_argument const& e) {
      refused = std::string(e.what()).find("dq_accum_rows") != std::string::npos;
    }
    EXPECT(refused, "dq_accum_rows = %d for seqlen_q = 100 was not refused by name", rows);
  }
}

// The varlen backward's checks: a packed batch (3 sequences in 250 query rows and 400 key
// rows, strides (0, row, head)) with its dq_accum rows passes, with the int32 buffers' and
// the counters' extents; null offsets and any other dq_accum_rows are refused by name. And
// the layout those rows follow: each sequence's query blocks lie within the buffer and
// overlap no other sequence's, whatever the lengths (bwd_dq_accum_varlen_row).
void check_varlen_backward_args_and_layout() {
  BwdKernel const kernel{"test_bwd_m64n128_d128", "sm80", 128, 64, 128, 8, 0, DType::kBF16, nullptr, ""};
  BwdParams p = test_sizes<BwdParams>();
  p.batch = 3;
  p.seqlen_q = 120;  // the longest sequence's
  p.seqlen_k = 200;
  p.total_q = 250;
  p.total_k = 400;
  auto const at = [](uintptr_t gib) { return reinterpret_cast<void*>(uintptr_t(0x7e0000000000) + (gib << 30)); };
  p.q_ptr = at(0), p.o_ptr = at(1), p.do_ptr = at(2), p.dq_ptr = at(3);
  p.k_ptr = at(4), p.v_ptr = at(5), p.dk_ptr = at(6), p.dv_ptr = at(7);
  p.lse_ptr = static_cast<float const*>(at(8));
  p.dq_accum_ptr = static_cast<float*>(at(9));
  p.softmax_d_ptr = static_cast<float*>(at(10));
  p.dq_semaphore_ptr = static_cast<int*>(at(11));
  p.cu_seqlens_q = static_cast<int const*>(at(12));
  p.cu_seqlens_k = static_cast<int const*>(at(13));
  p.q_row_stride = p.o_row_stride = p.do_row_stride = p.dq_row_stride = 4 * 128;
  p.q_head_stride = p.o_head_stride = p.do_head_stride = p.dq_head_stride = 128;
  p.k_row_stride = p.v_row_stride = p.dk_row_stride = p.dv_row_stride = 2 * 128;
  p.k_head_stride = p.v_head_stride = p.dk_head_stride = p.dv_head_stride = 128;
  p.dq_accum_rows = int(bwd_dq_accum_varlen_rows(p.total_q, p.batch));
  EXPECT(p.dq_accum_rows == 640, "dq_accum_rows %d for 250 rows in 3 sequences", p.dq_accum_rows);
  BackwardExtents const extents = check_varlen_backward_args(kernel, p, 0);
  EXPECT(extents[9].bytes == 4ull * 4 * 640 * 128, "dq_accum extent %llu", (unsigned long long)extents[9].bytes);
  EXPECT(extents[5].bytes == 4ull * 4 * 250, "lse extent %llu", (unsigned long long)extents[5].bytes);
  EXPECT(extents[11].bytes == 4ull * 3 * 4 * 2, "dq_semaphore extent %llu", (unsigned long long)extents[11].bytes);
  EXPECT(extents[12].bytes == 16 && extents[13].bytes == 16 && extents[14].ptr == 0, "cu_seqlens extents");
  auto const refused = [&](BwdParams const& bad, char const* what) {
    try {
      check_varlen_backward_args(kernel, bad, 0);
    } catch (std::invalid_argument const& e) {
      return std::string(e.what()).find(what) != std::string::npos;
    }
    return false;
  };
  BwdParams bad = p;
  bad.cu_seqlens_k = nullptr;
  EXPECT(refused(bad, "cu_seqlens_k"), "a null cu_seqlens_k was not refused by name");
  for (int rows : {256, 384, 768}) {
    bad = p;
    bad.dq_accum_rows = rows;
    EXPECT(refused(bad, "dq_accum_rows"), "dq_accum_rows = %d was not refused by name", rows);
  }
  bad = p;
  bad.total_q = 0;
  EXPECT(refused(bad, "total_q"), "total_q = 0 was not refused by name");

  // The layout: random lengths (0 and 1 among them), each sequence's whole query blocks
  // [start, start + ceil(len / 128) * 128) within the rows and disjoint from the others'.
  unsigned seed = 12345;
  auto const next = [&](int n) { seed = seed * 1103515245u + 12345u; return int((seed >> 8) % unsigned(n)); };
  for (int trial = 0; trial < 200; ++trial) {
    int const batch = 1 + next(9);
    std::vector<int> offsets{0};
    for (int b = 0; b < batch; ++b) offsets.push_back(offsets.back() + (next(4) == 0 ? next(2) : next(700)));
    int64_t const rows = bwd_dq_accum_varlen_rows(offsets.back(), batch);
    int64_t end_prev = 0;
    for (int b = 0; b < batch; ++b) {
      int const len = offsets[b + 1] - offsets[b];
      int64_t const start = bwd_dq_accum_varlen_row(offsets[b], b);
      int64_t const end = start + (len + kDqAccumRowAlign - 1) / kDqAccumRowAlign * kDqAccumRowAlign;
      EXPECT(start % kDqAccumRowAlign == 0 && start >= end_prev && end <= rows,
             "trial %d sequence %d: rows [%lld, %lld) after %lld, of %lld", trial, b, (long long)start,
             (long long)end, (long long)end_prev, (long long)rows);
      end_prev = end;
    }
  }
}

}  // namespace

int main() {
  check_valid_and_nonsense();
  check_backward_dq_accum_rows();
  check_varlen_backward_args_and_layout();
  check_key_range_headroom<128, 64>();
  check_key_range_headroom<64, 128>();
  check_key_range_headroom<128, 176>();
  check_key_range_headroom<192, 112>();
  check_window_key_ranges<64, 64>();
  check_window_key_ranges<128, 176>();
  return expect_summary();
}
