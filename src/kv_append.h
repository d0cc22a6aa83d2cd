#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "flash_params.h"

// forward_with_kvcache's in-place append: the new tokens' K and V written into the cache at
// each sequence's cache_seqlens, before the attention kernel reads the cache (same stream).
// Host-only declarations; the kernel is in kv_append.cu.

namespace fa_cute {

struct KvAppendParams {
  void const* k_new_ptr;  // (batch, seqlen_new, nheads_k, head_dim)
  void const* v_new_ptr;
  index_t k_new_batch_stride, k_new_row_stride, k_new_head_stride;
  index_t v_new_batch_stride, v_new_row_stride, v_new_head_stride;
  void* k_cache_ptr;  // (batch_k, capacity, ...) or pages (num_pages, page_size, ...)
  void* v_cache_ptr;
  index_t k_cache_batch_stride, k_cache_row_stride, k_cache_head_stride;
  index_t v_cache_batch_stride, v_cache_row_stride, v_cache_head_stride;
  int const* cache_seqlens;  // (batch,): where sequence b's new tokens go
  int const* kv_batch_idx;   // (batch,) or null: the cache entry of sequence b
  int const* page_table;     // (batch, page_table_stride) or null
  int page_table_stride;
  int page_size;
  int num_pages;
  int batch;
  int batch_k;
  int seqlen_new;
  int nheads_k;
  int head_dim;
  int capacity;  // keys a cache entry holds (paged: page_table_stride * page_size)
};

// Launches the append on stream; a token whose position (cache_seqlens[b] + j) falls outside
// its entry's capacity, or whose entry or page lies outside the pool, is not written (the
// attention's check, fwd_varlen_check.h, then poisons that batch's output). dtype_bytes: 2.
void launch_kv_append(KvAppendParams const& params, cudaStream_t stream);

}  // namespace fa_cute
