#pragma once

#include <cfloat>
#include <cmath>

#include <cute/tensor.hpp>

#include "bwd_params.h"
#include "cute_utils.h"
#include "flash_params.h"
#include "tile_scheduler.h"

// Which keys a query tile sees and which of its scores are masked, for both kernel
// families: the key blocks a tile visits (the causal bound, the split-KV share), the first
// block that needs a mask, and the masks themselves (the ragged tail of seqlen_k, the
// bottom-right causal diagonal of docs/design.md). The key range is also computed on the
// host (the persistent schedule search counts the blocks each tile visits).

namespace fa_cute {

// What masking a launch needs (fwd_kernel_sm80's kMaskMode; Sm80FwdLaunch chooses).
enum class FwdMaskMode {
  kNone,        // non-causal, seqlen_q % kBlockM == 0 and seqlen_k % kBlockN == 0
  kCausalEven,  // causal, same lengths rule
  kGeneral,     // anything else: ragged tiles, causal or not
  kSoftcapWindow,  // as kGeneral, with a logits softcap and/or a sliding window (a variant of
                   // its own: their code in kGeneral raised its spills, docs/perf-notes.md)
};

// The right bound of a row's keys past its diagonal: 0 causal, window_right with a window
// bounded on the right, -1 none.
CUTE_HOST_DEVICE int right_bound(FwdParams const& params) {
  return params.is_causal ? 0 : params.window_right;
}

// An FP8 tile's descale factors (FwdParams::q_descale_ptr and siblings): those of its batch
// entry and K/V head, 1 where not given. q_descale * k_descale scales the scores (with
// softmax_scale), v_descale the output.
CUTE_DEVICE float descale_of(float const* descale, FwdParams const& params, FwdTileCoord const& coord) {
  return descale == nullptr ? 1.f : descale[coord.bidb * params.nheads_k + coord.bidh_k];
}
// The scores' factor, q_descale * k_descale, as the softmax may take it. Zero (an all-zero
// head's amax scale) becomes kMinQkDescale: the uniform softmax it means, where a zero scale
// would make a masked key's -inf * 0 a NaN. Negative or not finite: NaN, so that the tile's
// output and LSE are NaN (the factors live on the GPU; the host cannot check them without a
// sync). A negative scale would also invert the online softmax's maximum.
constexpr float kMinQkDescale = 1e-30f;  // a normal float even times log2(e) / sqrt(256)
CUTE_DEVICE float qk_descale(FwdParams const& params, FwdTileCoord const& coord) {
  float const f = descale_of(params.q_descale_ptr, params, coord) * descale_of(params.k_descale_ptr, params, coord);
  return f >= 0.f && f <= FLT_MAX ? fmaxf(f, kMinQkDescale) : NAN;
}

// Sequence b of a packed (variable-length) batch: its first rows and lengths from the GPU's
// cu_seqlens (keys: the first seqused_k[b] only, where given), clamped into the packed tensors,
// so that a bad cu_seqlens (which the host cannot see without a sync) never sends a load or
// store out of bounds; the varlen checks (fwd_varlen_check.h) then turn such a batch's
// results into NaN.
struct PackedSequence {
  int offset_q, seqlen_q;
  int offset_k, seqlen_k;

  CUTE_HOST_DEVICE PackedSequence(int const* cu_seqlens_q, int const* cu_seqlens_k, int const* seqused_k,
                                  int total_q, int total_k, int b) {
    offset_q = cute::min(cute::max(cu_seqlens_q[b], 0), total_q);
    seqlen_q = cute::min(cute::max(cu_seqlens_q[b + 1], offset_q), total_q) - offset_q;
    offset_k = cute::min(cute::max(cu_seqlens_k[b], 0), total_k);
    seqlen_k = cute::min(cute::max(cu_seqlens_k[b + 1], offset_k), total_k) - offset_k;
    if (seqused_k != nullptr) seqlen_k = cute::min(cute::max(seqused_k[b], 0), seqlen_k);
  }
};

// A KV cache's entry b: its keys after this call's append, clamped to [0, capacity]
// (seqlen_k). The sum is taken in 64 bits: cache_seqlens is the caller's, any int.
CUTE_HOST_DEVICE int64_t cache_keys(FwdParams const& p, int b) {
  return int64_t(p.seqused_k[b]) + p.seqused_k_add;
}
CUTE_HOST_DEVICE int clamped_cache_keys(FwdParams const& p, int b) {
  return int(cute::min(cute::max(cache_keys(p, b), int64_t(0)), int64_t(p.seqlen_k)));
}

// One batch entry's lengths and where its rows start. A dense batch's are the launch's, with
// offsets 0; a variable-length batch's (FwdParams::cu_seqlens_q non-null) are read from the
// GPU's cu_seqlens, once per tile; a KV cache's key count from seqused_k and its K/V entry
// from kv_batch_idx. kVarlen: the kernel variant may be given such a batch; without it every
// member is a copy of a launch parameter, so the dense variants compile as they did before
// varlen existed.
template <bool kVarlen>
struct FwdSeqlens {
  int seqlen_q;
  int seqlen_k;
  int offset_q;  // the sequence's first row of q and o
  int offset_k;  // of k and v
  int causal_offset;
  int bidb_k;    // the K/V batch entry (kv_batch_idx; the query's own otherwise)
  bool varlen;   // q, k, v packed (cu_seqlens)

  CUTE_HOST_DEVICE FwdSeqlens(FwdParams const& p, int bidb) {
    varlen = kVarlen && p.cu_seqlens_q != nullptr;
    bidb_k = bidb;
    if (varlen) {
      PackedSequence const s(p.cu_seqlens_q, p.cu_seqlens_k, p.seqused_k, p.total_q, p.total_k, bidb);
      offset_q = s.offset_q;
      seqlen_q = s.seqlen_q;
      offset_k = s.offset_k;
      seqlen_k = s.seqlen_k;
      causal_offset = seqlen_k - seqlen_q;  // bottom-right, per sequence
    } else if (kVarlen && p.seqused_k != nullptr) {
      // A KV cache: this entry's keys are the first seqused_k[b] + seqused_k_add of its K/V
      // entry (clamped to the capacity, seqlen_k), aligned bottom-right against the queries.
      seqlen_q = p.seqlen_q;
      seqlen_k = clamped_cache_keys(p, bidb);
      offset_q = 0;
      offset_k = 0;
      causal_offset = seqlen_k - seqlen_q;
      if (p.kv_batch_idx != nullptr) bidb_k = cute::min(cute::max(p.kv_batch_idx[bidb], 0), p.batch_k - 1);
    } else {
      seqlen_q = p.seqlen_q;
      seqlen_k = p.seqlen_k;
      offset_q = 0;
      offset_k = 0;
      causal_offset = p.causal_offset;
    }
  }

  // The LSE index of (bidb, bidh)'s row `row`: (batch, nheads, seqlen_q) dense, (nheads,
  // total_q) varlen (FlashAttention's varlen layout).
  CUTE_HOST_DEVICE index_t lse_index(FwdParams const& p, int bidb, int bidh, int row) const {
    return varlen ? index_t(bidh) * p.total_q + offset_q + row : (index_t(bidb) * p.nheads + bidh) * p.seqlen_q + row;
  }

  // The page holding key row `row` of this entry (FwdParams::page_table, clamped to the pool:
  // fwd_varlen_check.h poisons a batch whose table points outside it) and the row within it.
  CUTE_HOST_DEVICE int page_of(FwdParams const& p, int bidb, int row) const {
    int const page = p.page_table[index_t(bidb) * p.page_table_stride + row / p.page_size];
    return cute::min(cute::max(page, 0), p.num_pages - 1);
  }
};

// The key blocks a query tile visits, [n_block_min, n_block_max), and the blocks among them
// that need a mask: from n_block_mask_start on (the one holding column seqlen_k, a ragged
// tail, or the first with a column past the right bound of the tile's first row: causal, a
// window), and before n_block_left_end (a window's left bound cuts the block for some row
// of the tile). Blocks in between run without masking work. Split-KV: split s takes the
// s-th of num_splits equal runs of the blocks. n_block_min >= n_block_max: no row of the
// tile sees a key (causal with seqlen_q > seqlen_k, a window past the keys), or the split
// has no blocks.
struct FwdKeyRange {
  int n_block_min;
  int n_block_max;
  int n_block_mask_start;
  int n_block_left_end;

  // kWindow: the launch may have a window (a kernel variant that never has one compiles its
  // bounds out, as mask_scores does).
  template <int kBlockM, int kBlockN, bool kSplitKV, bool kWindow = true, bool kVarlen>
  CUTE_HOST_DEVICE static FwdKeyRange of(FwdTileCoord const& c, FwdParams const& params,
                                         FwdSeqlens<kVarlen> const& seq) {
    int n_block_max = (seq.seqlen_k + kBlockN - 1) / kBlockN;
    int n_block_mask_start = seq.seqlen_k / kBlockN;
    int const row_first = c.m_block * kBlockM;
    // Varlen: the launch's query blocks cover the longest sequence; a tile past this one's
    // end sees nothing (dense launches have no such tile).
    if (kVarlen && row_first >= seq.seqlen_q) return {0, 0, 0, 0};
    int const row_last = cute::min(row_first + kBlockM, seq.seqlen_q) - 1;
    int const right = kWindow ? right_bound(params) : (params.is_causal ? 0 : -1);
    if (right >= 0) {
      // Row r sees columns c <= r + causal_offset + right.
      n_block_max = cute::min(n_block_max, floor_div(row_last + seq.causal_offset + right, kBlockN) + 1);
      n_block_mask_start =
          cute::min(n_block_mask_start, cute::max(0, floor_div(row_first + seq.causal_offset + right + 1, kBlockN)));
    }
    int n_block_min = 0;
    int n_block_left_end = 0;
    if (kWindow && params.window_left >= 0) {
      // Row r sees columns c >= r + causal_offset - left: the tile's first row the fewest on
      // the left, its last row bounds the blocks every row sees whole.
      n_block_min = cute::max(0, floor_div(row_first + seq.causal_offset - params.window_left, kBlockN));
      n_block_left_end = cute::max(n_block_min, ceil_div_signed(row_last + seq.causal_offset - params.window_left, kBlockN));
    }
    if (kSplitKV && params.num_splits > 1) {
      int const per_split = (cute::max(n_block_max - n_block_min, 0) + params.num_splits - 1) / params.num_splits;
      n_block_min += c.n_split * per_split;
      n_block_max = cute::min(n_block_max, n_block_min + per_split);
    }
    return {n_block_min, n_block_max, n_block_mask_start, n_block_left_end};
  }
  // A dense batch (the host's schedule search, the tests).
  template <int kBlockM, int kBlockN, bool kSplitKV>
  CUTE_HOST_DEVICE static FwdKeyRange of(FwdTileCoord const& c, FwdParams const& params) {
    return of<kBlockM, kBlockN, kSplitKV>(c, params, FwdSeqlens<false>(params, c.bidb));
  }

  CUTE_HOST_DEVICE int num_blocks() const { return n_block_max - n_block_min; }

  // The i-th key block visited.
  template <bool kReverse>
  CUTE_DEVICE int block(int i) const { return kReverse ? n_block_max - 1 - i : n_block_min + i; }

  // Visited first to last: how many blocks at the start need a mask (a window's left bound).
  CUTE_HOST_DEVICE int num_masked_first() const {
    return cute::max(0, cute::min(n_block_left_end - n_block_min, num_blocks()));
  }
  // Visited first to last: how many blocks come before the first one that needs the right
  // side's mask (the ragged tail, causal, a window).
  CUTE_HOST_DEVICE int num_unmasked_first() const {
    return cute::max(0, cute::min(n_block_mask_start - n_block_min, num_blocks()));
  }
  // Visited last to first: how many blocks at the start need the right side's mask.
  CUTE_HOST_DEVICE int num_masked_first_reversed() const {
    return cute::max(0, cute::min(n_block_max - n_block_mask_start, num_blocks()));
  }
  // Visited last to first: how many blocks at the end need the left side's mask.
  CUTE_HOST_DEVICE int num_masked_last_reversed() const { return num_masked_first(); }
};

// One batch entry of a backward launch: its lengths, first rows and causal offset, and where
// its rows of the row statistics and of dq_accum start. A dense batch's are the launch's. A
// varlen batch's (BwdParams::cu_seqlens_q) come from cu_seqlens (PackedSequence), causal
// aligned bottom-right per sequence, each length cut at the launch's maximum (the grid
// covers max_seqlen_k keys, the counters max_seqlen_q rows; a longer sequence is a bad
// batch, which the varlen check poisons). kVarlen: the kernel variant may be given a varlen
// batch; without it every member is a launch parameter (the dense kernels compile as they
// did before varlen existed).
template <bool kVarlen>
struct BwdSeqlens {
  int seqlen_q;
  int seqlen_k;
  int offset_q;  // the sequence's first row of q, out, dout and dq
  int offset_k;  // of k, v, dk and dv
  int causal_offset;
  bool varlen;   // q, k, v packed (cu_seqlens)

  CUTE_HOST_DEVICE BwdSeqlens(BwdParams const& p, int bidb) {
    varlen = kVarlen && p.cu_seqlens_q != nullptr;
    if (varlen) {
      PackedSequence const s(p.cu_seqlens_q, p.cu_seqlens_k, p.seqused_k, p.total_q, p.total_k, bidb);
      offset_q = s.offset_q;
      offset_k = s.offset_k;
      seqlen_q = cute::min(s.seqlen_q, p.seqlen_q);
      seqlen_k = cute::min(s.seqlen_k, p.seqlen_k);
      causal_offset = seqlen_k - seqlen_q;
    } else {
      seqlen_q = p.seqlen_q;
      seqlen_k = p.seqlen_k;
      offset_q = 0;
      offset_k = 0;
      causal_offset = p.causal_offset;
    }
  }

  // The index of (bidb, bidh)'s row 0 in lse and softmax_d: (batch, nheads, seqlen_q) dense,
  // (nheads, total_q) varlen (the varlen forward's LSE layout).
  CUTE_HOST_DEVICE int64_t stats_row_base(BwdParams const& p, int bidb, int bidh) const {
    return varlen ? int64_t(bidh) * p.total_q + offset_q : (int64_t(bidb) * p.nheads + bidh) * p.seqlen_q;
  }

  // The dq_accum row of (bidb, bidh)'s row 0: (batch, nheads, dq_accum_rows) dense; varlen
  // (nheads, dq_accum_rows), sequence b's from bwd_dq_accum_varlen_row (whole query blocks
  // of its own).
  CUTE_HOST_DEVICE int64_t dq_accum_row_base(BwdParams const& p, int bidb, int bidh) const {
    return varlen ? int64_t(bidh) * p.dq_accum_rows + bwd_dq_accum_varlen_row(offset_q, bidb)
                  : (int64_t(bidb) * p.nheads + bidh) * p.dq_accum_rows;
  }
};

// The backward kernel's inverse of FwdKeyRange: the query blocks that see key block n_block,
// [m_block_min, m_block_max). Without is_causal every query block. With it, row r sees key
// c iff c <= r + causal_offset, so the rows that see any key of the block are those from
// n_block * kBlockN - causal_offset on (the block's first key is the one they see first),
// and the range starts at the query block holding that row; empty when that row is past
// seqlen_q. Exact: every block in the range has a row below seqlen_q that sees a key of
// the block, no block outside has one (tests/cpp/test_bwd.cu, against brute force).
//
// With a window (right: the right bound past the diagonal, 0 causal, -1 none; left: the
// window's left bound, -1 none) row r sees key c iff r + causal_offset - left <= c <= r +
// causal_offset + right: the rows that see a key of the block are those from
// n_block * kBlockN - causal_offset - right (its first key, seen first) to
// key_last - causal_offset + left (its last key below seqlen_k, seen last), an interval of
// rows each of which sees one (left + right >= 0), so the range stays exact.
struct BwdQueryRange {
  int m_block_min;
  int m_block_max;

  template <int kBlockM, int kBlockN>
  CUTE_HOST_DEVICE static BwdQueryRange of(int n_block, int seqlen_q, int seqlen_k, int right, int left,
                                           int causal_offset) {
    int const m_block_max = (seqlen_q + kBlockM - 1) / kBlockM;
    int row_lo = 0;
    if (right >= 0) {
      int const first_row = n_block * kBlockN - causal_offset - right;  // |terms| <= 2^29 + a block: no wrap
      if (first_row >= seqlen_q) return {m_block_max, m_block_max};
      row_lo = cute::max(0, first_row);
    }
    if (left < 0) return {row_lo / kBlockM, m_block_max};
    int const key_last = cute::min((n_block + 1) * kBlockN, seqlen_k) - 1;
    int const row_hi = cute::min(seqlen_q - 1, key_last - causal_offset + left);
    if (row_hi < row_lo) return {m_block_max, m_block_max};
    return {row_lo / kBlockM, row_hi / kBlockM + 1};
  }
  // Without a window: every query block, or, causal, those from the diagonal's on.
  template <int kBlockM, int kBlockN>
  CUTE_HOST_DEVICE static BwdQueryRange of(int n_block, int seqlen_q, bool is_causal, int causal_offset) {
    return of<kBlockM, kBlockN>(n_block, seqlen_q, kMaxSeqlen, is_causal ? 0 : -1, -1, causal_offset);
  }

  CUTE_HOST_DEVICE int num_blocks() const { return m_block_max - m_block_min; }

  // Whether the (m_block, n_block) tile of scores needs a mask: a key past seqlen_k in the
  // block, a key past the right bound of the tile's first row (causal, a window), or one
  // before the window's left bound of its last row.
  template <int kBlockM, int kBlockN>
  CUTE_HOST_DEVICE static bool needs_mask(int m_block, int n_block, int seqlen_k, int right, int left,
                                          int causal_offset) {
    int const key_end = (n_block + 1) * kBlockN;
    return key_end > seqlen_k || (right >= 0 && key_end - 1 > m_block * kBlockM + causal_offset + right) ||
           (left >= 0 && n_block * kBlockN < (m_block + 1) * kBlockM - 1 + causal_offset - left);
  }
  template <int kBlockM, int kBlockN>
  CUTE_HOST_DEVICE static bool needs_mask(int m_block, int n_block, int seqlen_k, bool is_causal, int causal_offset) {
    return needs_mask<kBlockM, kBlockN>(m_block, n_block, seqlen_k, is_causal ? 0 : -1, -1, causal_offset);
  }
};

// The window bounds a backward kernel variant applies: right (0 causal, window_right or -1
// none) and left (window_left or -1). kWindow false: the variant never has a window, and the
// bounds are the causal flag's alone (compiled out of the dense variants).
template <bool kWindow>
CUTE_HOST_DEVICE int bwd_right_bound(BwdParams const& p) {
  return p.is_causal ? 0 : (kWindow ? p.window_right : -1);
}
template <bool kWindow>
CUTE_HOST_DEVICE int bwd_left_bound(BwdParams const& p) {
  return kWindow ? p.window_left : -1;
}

// (row, column) in the (kBlockM, kBlockN) tile of each of a thread's accumulator elements
// of S, viewed as rows x columns like the softmax views them (acc_layout_rowcol).
template <int kBlockM, int kBlockN, class ThrMma>
CUTE_DEVICE auto score_coords(ThrMma const& thr_mma) {
  using namespace cute;
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));  // (MMA,MMA_M,MMA_N)
  return make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));                           // (M,N)
}

// -inf for the scores that a row may not see: columns at or past col_end (the ragged tail of
// seqlen_k), past row + diagonal + right (right >= 0: causal, a window) and before
// row + diagonal - left (left >= 0: a window). scores and coords are the accumulator and the
// same partition of an identity tensor, both viewed as rows x columns; a row's columns are
// tested against one range.
template <class TensorS, class TensorC>
CUTE_DEVICE void apply_mask(TensorS&& scores, TensorC const& coords, int col_end, int diagonal, int right, int left) {
  using namespace cute;
  CUTE_STATIC_ASSERT_V(rank(scores) == Int<2>{});
  CUTE_STATIC_ASSERT_V(size(scores) == size(coords));
  CUTE_UNROLL
  for (int mi = 0; mi < size<0>(scores); ++mi) {
    int const row = get<0>(coords(mi, 0));
    int const limit = right >= 0 ? min(col_end, row + diagonal + right + 1) : col_end;
    int const first = left >= 0 ? row + diagonal - left : 0;
    CUTE_UNROLL
    for (int ni = 0; ni < size<1>(scores); ++ni) {
      int const col = get<1>(coords(mi, ni));
      if (col >= limit || col < first) scores(mi, ni) = -INFINITY;
    }
  }
}

// The masks of key block n_block for query block m_block of the batch entry seq on one
// thread's scores acc_s (an MMA accumulator of the (kBlockM, kBlockN) tile). kKeysEven:
// seqlen_k is a multiple of kBlockN, so no column needs the tail mask. is_causal:
// params.is_causal, which a kernel may know at compile time. kWindow: the launch may have a
// window (a kernel variant that never has one compiles its bounds out).
template <int kBlockM, int kBlockN, bool kKeysEven, bool kWindow = true, bool kVarlen, class TensorS, class ThrMma>
CUTE_DEVICE void mask_scores(TensorS& acc_s, ThrMma const& thr_mma, FwdParams const& params,
                             FwdSeqlens<kVarlen> const& seq, int m_block, int n_block, bool is_causal) {
  using namespace cute;
  int const right = is_causal ? 0 : (kWindow ? params.window_right : -1);
  apply_mask(make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout())), score_coords<kBlockM, kBlockN>(thr_mma),
             kKeysEven ? kBlockN : seq.seqlen_k - n_block * kBlockN,
             m_block * kBlockM + seq.causal_offset - n_block * kBlockN, right, kWindow ? params.window_left : -1);
}

}  // namespace fa_cute
