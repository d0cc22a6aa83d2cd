#pragma once

#include <limits>

#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>

#include "bwd_params.h"
#include "fwd_varlen_check.h"  // packed_entry_ok

// The backward's side of the varlen checks (fwd_varlen_check.h says why they run on the GPU),
// after the postprocess, on the same stream: a batch with a bad sequence (packed_entry_ok,
// here with the max_seqlen_k bound too: the grid's key blocks cover no more) gets dq, dk and
// dv filled with NaN, so that a bad cu_seqlens never passes for a gradient; a good one gets
// zeros in the packed rows outside every sequence (before cu_seqlens[0], from
// cu_seqlens[batch] on), which no kernel writes and whose gradient is 0.

namespace fa_cute {

template <class Element>
__global__ void __launch_bounds__(256) bwd_varlen_check_kernel(__grid_constant__ BwdParams const p) {
  bool bad = false;
  for (int b = threadIdx.x; b < p.batch; b += blockDim.x) {
    bad = bad || !packed_entry_ok(p.cu_seqlens_q, p.cu_seqlens_k, p.seqused_k, p.total_q, p.total_k, p.seqlen_q,
                                  p.seqlen_k, b);
  }
  bad = __syncthreads_or(bad);
  index_t const stride = index_t(gridDim.x) * blockDim.x;
  index_t const first = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  // The elements of a packed (rows, heads, d) gradient in rows [row_begin, row_end) set to value.
  auto fill = [&](void* ptr, int row_begin, int row_end, int heads, index_t row_stride, index_t head_stride,
                  Element value) {
    index_t const row_elems = index_t(heads) * p.head_dim;
    for (index_t i = first; i < index_t(row_end - row_begin) * row_elems; i += stride) {
      index_t const row = row_begin + i / row_elems;
      int const head = int(i % row_elems) / p.head_dim;
      int const col = int(i % p.head_dim);
      static_cast<Element*>(ptr)[row * row_stride + head * head_stride + col] = value;
    }
  };
  if (bad) {
    Element const nan = Element(std::numeric_limits<float>::quiet_NaN());
    fill(p.dq_ptr, 0, p.total_q, p.nheads, p.dq_row_stride, p.dq_head_stride, nan);
    fill(p.dk_ptr, 0, p.total_k, p.nheads_k, p.dk_row_stride, p.dk_head_stride, nan);
    fill(p.dv_ptr, 0, p.total_k, p.nheads_k, p.dv_row_stride, p.dv_head_stride, nan);
    return;
  }
  // A good batch's offsets are within [0, total] and do not decrease.
  int const q_first = p.cu_seqlens_q[0], q_end = p.cu_seqlens_q[p.batch];
  int const k_first = p.cu_seqlens_k[0], k_end = p.cu_seqlens_k[p.batch];
  Element const zero = Element(0.f);
  fill(p.dq_ptr, 0, q_first, p.nheads, p.dq_row_stride, p.dq_head_stride, zero);
  fill(p.dq_ptr, q_end, p.total_q, p.nheads, p.dq_row_stride, p.dq_head_stride, zero);
  fill(p.dk_ptr, 0, k_first, p.nheads_k, p.dk_row_stride, p.dk_head_stride, zero);
  fill(p.dk_ptr, k_end, p.total_k, p.nheads_k, p.dk_row_stride, p.dk_head_stride, zero);
  fill(p.dv_ptr, 0, k_first, p.nheads_k, p.dv_row_stride, p.dv_head_stride, zero);
  fill(p.dv_ptr, k_end, p.total_k, p.nheads_k, p.dv_row_stride, p.dv_head_stride, zero);
}

// On the backward's stream, after the postprocess. Host code.
template <class Element>
void launch_bwd_varlen_check(BwdParams const& params, cudaStream_t stream) {
  index_t const elems =
      cute::max(index_t(params.total_q) * params.nheads, index_t(params.total_k) * params.nheads_k) * params.head_dim;
  int const blocks = int(cute::max(index_t(1), cute::min(index_t(1024), (elems + 255) / 256)));
  bwd_varlen_check_kernel<Element><<<blocks, 256, 0, stream>>>(params);
}

}  // namespace fa_cute
