#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fa_cute {

// Element strides are 64-bit so that batch * seqlen * heads * dim beyond 2^31 elements
// addresses correctly; the last (head) dim is always contiguous.
using index_t = int64_t;

// What the kernels' 32-bit index arithmetic has room for; _C refuses larger problems
// (src/launch_checks.cpp) and _C.limits() reports these to Python. Row, key, block and
// tile indices are int. Every such expression (a length plus a block minus 1, a row plus
// causal_offset plus a block) adds at most a few terms each below kMaxSeqlen + 256, so
// they stay below 2^31; at 2^31 - kBlockN + 1 keys the key-block count wrapped negative
// and every row came back O = 0, LSE = -inf. |causal_offset| is bounded by kMaxSeqlen too.
constexpr int kMaxSeqlen = 1 << 29;
// Thread-block tiles of one launch (batch x heads x query blocks x key splits). The
// persistent loops look up to two rounds of the grid ahead of the current tile, so the
// count leaves that much below 2^31.
constexpr long long kMaxLaunchTiles = 1ll << 30;

// Everything a forward kernel needs, filled by the host from plain integers: no torch.
struct FwdParams {
  void const* __restrict__ q_ptr;
  void const* __restrict__ k_ptr;
  void const* __restrict__ v_ptr;
  void* __restrict__ o_ptr;
  // fp32 log-sum-exp of each query row, contiguous (batch, nheads, seqlen_q); null: not written.
  float* __restrict__ softmax_lse_ptr;

  index_t q_batch_stride, q_row_stride, q_head_stride;
  index_t k_batch_stride, k_row_stride, k_head_stride;
  index_t v_batch_stride, v_row_stride, v_head_stride;
  index_t o_batch_stride, o_row_stride, o_head_stride;

  int batch;
  int seqlen_q;
  int seqlen_k;
  int nheads;
  int nheads_k;  // nheads % nheads_k == 0; query head h reads K/V head h / (nheads / nheads_k)
  int head_dim;

  // Variable-length batches (varlen_forward; all null for a dense batch): q, k, v and o are
  // packed (total rows, nheads, head_dim) with batch strides 0. Sequence b's queries are the
  // rows [cu_seqlens_q[b], cu_seqlens_q[b + 1]) and its keys [cu_seqlens_k[b],
  // cu_seqlens_k[b + 1]), of which only the first seqused_k[b] are read when seqused_k is
  // given. seqlen_q and seqlen_k are then the caller's maxima (the launch's query blocks;
  // a tile past its sequence's end does nothing), causal_offset is per sequence
  // (FwdSeqlens), and the LSE is (nheads, total_q). Read on the GPU only: no host sync.
  int const* __restrict__ cu_seqlens_q = nullptr;
  int const* __restrict__ cu_seqlens_k = nullptr;
  int const* __restrict__ seqused_k = nullptr;
  int total_q = 0;  // rows of the packed q and o
  int total_k = 0;  // of the packed k and v

  // A KV cache (forward_with_kvcache; all null / 0 otherwise), in the kernel variants that
  // take varlen batches. seqused_k without cu_seqlens_k: batch entry b attends to the first
  // seqused_k[b] + seqused_k_add keys of its K/V entry (seqlen_k is then the cache's capacity
  // per entry).
  // kv_batch_idx: query entry b reads K/V entry kv_batch_idx[b] (of batch_k). page_table:
  // k and v are pages (num_pages, page_size, nheads_k, head_dim), the batch stride being the
  // page stride; entry b's key j is row j % page_size of page
  // page_table[b * page_table_stride + j / page_size].
  // seqused_k_add: keys this call appended (forward_with_kvcache's k, v); entry b's key
  // count is seqused_k[b] + seqused_k_add (`cache_keys`), so that the call passes
  // cache_seqlens as it is instead of launching a kernel to add to it. 0 for varlen batches.
  int seqused_k_add = 0;
  int const* __restrict__ kv_batch_idx = nullptr;
  int batch_k = 0;
  int const* __restrict__ page_table = nullptr;
  int page_table_stride = 0;
  int page_size = 0;
  int num_pages = 0;

  // With is_causal, query row r sees key c iff c <= r + causal_offset: seqlen_k - seqlen_q
  // aligns the mask bottom-right (FlashAttention >= 2.1), 0 top-left (torch SDPA). Varlen:
  // always bottom-right, each sequence by its own lengths.
  bool is_causal;
  int causal_offset;
  // Sliding window (FlashAttention's window_size, aligned as the causal mask): row r sees
  // key c iff r + causal_offset - window_left <= c <= r + causal_offset + window_right; -1
  // leaves that side unbounded. is_causal bounds the right side at 0 whatever window_right.
  // causal_offset is the alignment of either mask (0 with neither).
  int window_left = -1;
  int window_right = -1;
  // (batch, head) pairs per L2 section of the causal tile order (FwdTileCoord); set by
  // the launchers from the sizes (causal_section()), not by callers.
  int causal_section;
  // A persistent Hopper launch of a varlen batch claims its tiles from this counter (the
  // dynamic order, sm90/tile_scheduler_sm90.h); null: the static order. run_fwd clears it
  // before the launch and ignores it for kernels without the dynamic order.
  int* tile_counter = nullptr;

  // Split-KV: with num_splits > 1 the key blocks of each query tile are divided among
  // num_splits thread blocks (a decode step has too few query tiles to fill the GPU). Each
  // writes its rows' O, normalised by its own row sums, and their LSE in fp32; the combine
  // kernel merges them into O and the LSE. Buffers are contiguous:
  //   o_accum (num_splits, batch, nheads, seqlen_q, head_dim), lse_accum (num_splits, batch, nheads, seqlen_q).
  int num_splits;
  float* __restrict__ o_accum_ptr;
  float* __restrict__ lse_accum_ptr;

  // FP8 (e4m3) kernels (Sm90FwdTraits::kFp8; docs/design.md, FP8 forward): q and k hold e4m3
  // values, v points at Vt (fp8_layout.h: (batch, nheads_k, head_dim, fp8_vt_keys(seqlen_k)),
  // whose v_row_stride is the stride of its head_dim rows), out is bf16. The scores are
  // (q k^T) * q_descale * k_descale * softmax_scale and O is (P V) * v_descale, each factor
  // an fp32 (batch, nheads_k) contiguous array (query head h takes its K/V head's); null: 1.
  float const* __restrict__ q_descale_ptr = nullptr;
  float const* __restrict__ k_descale_ptr = nullptr;
  float const* __restrict__ v_descale_ptr = nullptr;

  // The softmax's scale of its scores. Without a softcap, scores are Q K^T and this is the
  // caller's softmax_scale. With one (Gemma 2's logits softcap * tanh(S * scale / softcap)),
  // the kernel maps S to tanh(S * softcap_premul) and this is softcap (docs/design.md).
  float softmax_scale;
  float softmax_scale_log2;  // softmax_scale * log2(e): the softmax runs on exp2
  float softcap_premul;      // the caller's softmax_scale / softcap; 0: no softcap
};

}  // namespace fa_cute
