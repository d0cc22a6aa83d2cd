#pragma once

#include <climits>
#include <cmath>
#include <limits>

#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>

#include "block_info.h"  // PackedSequence
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
// cache's key count (within the capacity, seqlen_k), K/V entry and the pages its keys lie in.
CUTE_HOST_DEVICE bool varlen_entry_ok(FwdParams const& p, int b) {
  if (p.cu_seqlens_q == nullptr) {
    int const used = p.seqused_k[b];
    bool ok = used >= 0 && used <= p.seqlen_k;
    if (p.kv_batch_idx != nullptr) ok = ok && p.kv_batch_idx[b] >= 0 && p.kv_batch_idx[b] < p.batch_k;
    if (p.page_table != nullptr && ok) {
      for (int j = 0; j * p.page_size < used; ++j) {
        int const page = p.page_table[index_t(b) * p.page_table_stride + j];
        ok = ok && page >= 0 && page < p.num_pages;
      }
    }
    return ok;
  }
  return packed_entry_ok(p.cu_seqlens_q, p.cu_seqlens_k, p.seqused_k, p.total_q, p.total_k, p.seqlen_q, INT_MAX, b);
}

// Every block checks every entry (batch + 1 cached reads each: no second launch, no
// cross-block flag), then, only for a bad batch, fills its share of out and the LSE (when
// asked for) with NaN: varlen, total_q packed rows and (nheads, total_q); a KV cache, the
// (batch, seqlen_q) rows and (batch, nheads, seqlen_q).
template <class Element>
__global__ void __launch_bounds__(256) fwd_varlen_check_kernel(__grid_constant__ FwdParams const p) {
  bool bad = false;
  for (int b = threadIdx.x; b < p.batch; b += blockDim.x) bad = bad || !varlen_entry_ok(p, b);
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
  int const blocks = int(cute::max(index_t(1), cute::min(index_t(1024), (elems + 255) / 256)));
  fwd_varlen_check_kernel<Element><<<blocks, 256, 0, stream>>>(params);
}

}  // namespace fa_cute
