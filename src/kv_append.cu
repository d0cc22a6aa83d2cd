#include "kv_append.h"

#include "cuda_check.h"

namespace fa_cute {
namespace {

// One thread per 16-byte vector of a new token's K and V row (bf16/fp16: 8 elements).
__global__ void __launch_bounds__(256) kv_append_kernel(__grid_constant__ KvAppendParams const p) {
  int const vecs = p.head_dim / 8;
  index_t const total = index_t(p.batch) * p.seqlen_new * p.nheads_k * vecs;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += index_t(gridDim.x) * blockDim.x) {
    int const vec = int(i % vecs);
    index_t rest = i / vecs;
    int const head = int(rest % p.nheads_k);
    rest /= p.nheads_k;
    int const j = int(rest % p.seqlen_new);
    int const b = int(rest / p.seqlen_new);
    // 64-bit: cache_seqlens is the caller's, and near INT_MAX the int sum would overflow.
    int64_t const pos = int64_t(p.cache_seqlens[b]) + j;
    if (pos < 0 || pos >= p.capacity) continue;
    index_t entry;
    int row;
    if (p.page_table != nullptr) {
      entry = p.page_table[index_t(b) * p.page_table_stride + pos / p.page_size];
      if (entry < 0 || entry >= p.num_pages) continue;
      row = int(pos % p.page_size);
    } else {
      entry = p.kv_batch_idx != nullptr ? p.kv_batch_idx[b] : b;
      if (entry < 0 || entry >= p.batch_k) continue;
      row = int(pos);
    }
    int const col = vec * 8;
    auto const* k_src = reinterpret_cast<uint4 const*>(static_cast<uint16_t const*>(p.k_new_ptr) +
                                                       b * p.k_new_batch_stride + j * p.k_new_row_stride +
                                                       head * p.k_new_head_stride + col);
    auto const* v_src = reinterpret_cast<uint4 const*>(static_cast<uint16_t const*>(p.v_new_ptr) +
                                                       b * p.v_new_batch_stride + j * p.v_new_row_stride +
                                                       head * p.v_new_head_stride + col);
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(p.k_cache_ptr) + entry * p.k_cache_batch_stride +
                              row * p.k_cache_row_stride + head * p.k_cache_head_stride + col) = *k_src;
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(p.v_cache_ptr) + entry * p.v_cache_batch_stride +
                              row * p.v_cache_row_stride + head * p.v_cache_head_stride + col) = *v_src;
  }
}

}  // namespace

void launch_kv_append(KvAppendParams const& params, cudaStream_t stream) {
  index_t const vecs = index_t(params.batch) * params.seqlen_new * params.nheads_k * (params.head_dim / 8);
  if (vecs == 0) return;
  int const blocks = int(vecs < 256 * 1024 ? (vecs + 255) / 256 : 1024);
  kv_append_kernel<<<blocks, 256, 0, stream>>>(params);
  check_cuda(cudaGetLastError(), "kv_append_kernel launch");
}

}  // namespace fa_cute
