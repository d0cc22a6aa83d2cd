#pragma once

#include <climits>
#include <cmath>
#include <limits>

#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>

#include "block_info.h"  // PackedSequence, cache_keys
#include "flash_params.h"

// A variable-length batch's cu_seqlens live on the GPU, and reading them on the host would
// cost a synchronisation per call (and break CUDA-graph capture). So the host cannot refuse
// a bad one; the kernels stay in bounds whatever it holds (FwdSeqlens clamps each sequence
// into the packed tensors), and this check, run after the attention kernel on the same
// stream, makes a bad batch loud: if any sequence's rows are decreasing, start below 0,
// end past the packed rows, number more than max_seqlen_q (rows the launch's query blocks do
// not cover), or if seqused_k exceeds its sequence's keys, the whole output and LSE become
// NaN. A KV cache (seqused_k with dense q) is checked alike: a key count above the capacity,
// a K/V entry or a page outside its pool poisons the output. docs/design.md (Variable-length
// batches) lists the checks.

namespace fa_cute {

// The check kernel's threads a block, and its most blocks: every block repeats the checks
// (a paged cache's pages too), so few of them; they only matter for a bad batch's NaN fill.
constexpr int kFwdCheckThreads = 1024;
constexpr int kFwdCheckMaxBlocks = 16;

// Whether sequence b of a packed batch is what the kernels assume: offsets that do not
// decrease, start at 0 or later and end within the packed rows; at most max_seqlen_q rows
// (the launch's query blocks cover no more) and, where the launch's key blocks are
// fixed by max_seqlen_k (the backward's grid), at most max_seqlen_k keys; seqused_k within
// the sequence's keys.
CUTE_HOST_DEVICE bool packed_entry_ok(int const* cu_seqlens_q, int const* cu_seqlens_k, int const* seqused_k,
                                      int total_q, int total_k, int max_seqlen_q, int max_seqlen_k, int b) {
  int const q0 = cu_seqlens_q[b], q1 = cu_seqlens_q[b + 1];
  int const k0 = cu_seqlens_k[b], k1 = cu_seqlens_k[b + 1];
  bool ok = q0 >= 0 && q1 >= q0 && q1 <= total_q && q1 - q0 <= max_seqlen_q;
  ok = ok && k0 >= 0 && k1 >= k0 && k1 <= total_k && k1 - k0 <= max_seqlen_k;
  if (seqused_k != nullptr) ok = ok && seqused_k[b] >= 0 && seqused_k[b] <= k1 - k0;
  return ok;
}

// Whether batch entry b's lengths are consistent (what the kernels assume of them): a varlen
// batch's offsets (the forward visits each sequence's keys whatever max_seqlen_k says); a KV
// cache's cached keys (>= 0) and key count after the append (within the capacity,
// seqlen_k), and its K/V entry. Its pages: page_ok.
CUTE_HOST_DEVICE bool varlen_entry_ok(FwdParams const& p, int b) {
  if (p.cu_seqlens_q == nullptr) {
    // cache_seqlens itself below 0 is bad even where the new tokens lift the sum to 0 or
    // more: the append skips the positions below 0, and the attention would read cache rows
    // no call wrote.
    bool ok = p.seqused_k[b] >= 0 && cache_keys(p, b) <= p.seqlen_k;
    if (p.kv_batch_idx != nullptr) ok = ok && p.kv_batch_idx[b] >= 0 && p.kv_batch_idx[b] < p.batch_k;
    return ok;
  }
  return packed_entry_ok(p.cu_seqlens_q, p.cu_seqlens_k, p.seqused_k, p.total_q, p.total_k, p.seqlen_q, INT_MAX, b);
}

// The pages a paged KV cache's entry b reads: page_table[b, 0 .. ceil(used / page_size)), its
// key count clamped into the table (a count past it is varlen_entry_ok's to flag).
CUTE_HOST_DEVICE int pages_used(FwdParams const& p, int b) {
  return (clamped_cache_keys(p, b) + p.page_size - 1) / p.page_size;
}
CUTE_HOST_DEVICE bool page_ok(FwdParams const& p, int b, int j) {
  int const page = p.page_table[index_t(b) * p.page_table_stride + j];
  return page >= 0 && page < p.num_pages;
}

// Every block checks every entry and, for a paged cache, every page the entries read (no
// second launch, no cross-block flag), then, only for a bad batch, fills its share of out and
// the LSE (when asked for) with NaN: varlen, total_q packed rows and (nheads, total_q); a KV
// cache, the (batch, seqlen_q) rows and (batch, nheads, seqlen_q). The pages are checked by
// all of the block's threads, independent loads in flight together: one thread per entry
// walking its pages one after another (a load's latency each) took 0.5 ms of a 32k-key
// decode over pages of 16 keys (2049 pages a sequence; docs/perf-notes.md, Serving).
template <class Element>
__global__ void __launch_bounds__(kFwdCheckThreads) fwd_varlen_check_kernel(__grid_constant__ FwdParams const p) {
  bool bad = false;
  for (int b = threadIdx.x; b < p.batch; b += blockDim.x) bad = bad || !varlen_entry_ok(p, b);
  if (p.page_table != nullptr) {
    for (int b = 0; b < p.batch; ++b) {
      int const pages = pages_used(p, b);
#pragma unroll 4
      for (int j = threadIdx.x; j < pages; j += blockDim.x) bad |= !page_ok(p, b, j);
    }
  }
  if (!__syncthreads_or(bad)) return;
  float const nan = std::numeric_limits<float>::quiet_NaN();
  bool const varlen = p.cu_seqlens_q != nullptr;
  index_t const rows = varlen ? index_t(p.total_q) : index_t(p.batch) * p.seqlen_q;
  index_t const row_elems = index_t(p.nheads) * p.head_dim;
  Element* const out = static_cast<Element*>(p.o_ptr);
  index_t const stride = index_t(gridDim.x) * blockDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * row_elems; i += stride) {
    index_t const row = i / row_elems;
    int const head = int(i % row_elems) / p.head_dim;
    int const col = int(i % p.head_dim);
    index_t const base = varlen ? row * p.o_row_stride
                                : (row / p.seqlen_q) * p.o_batch_stride + (row % p.seqlen_q) * p.o_row_stride;
    out[base + head * p.o_head_stride + col] = Element(nan);
  }
  if (p.softmax_lse_ptr != nullptr) {
    for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * p.nheads; i += stride) {
      p.softmax_lse_ptr[i] = nan;
    }
  }
}

// On the attention kernel's stream, after it. Host code.
template <class Element>
void launch_fwd_varlen_check(FwdParams const& params, cudaStream_t stream) {
  index_t const rows = params.cu_seqlens_q != nullptr ? index_t(params.total_q) : index_t(params.batch) * params.seqlen_q;
  index_t const elems = rows * params.nheads * params.head_dim;
  index_t const wanted = (elems + kFwdCheckThreads - 1) / kFwdCheckThreads;
  int const blocks = int(cute::max(index_t(1), cute::min(index_t(kFwdCheckMaxBlocks), wanted)));
  fwd_varlen_check_kernel<Element><<<blocks, kFwdCheckThreads, 0, stream>>>(params);
}

}  // namespace fa_cute
