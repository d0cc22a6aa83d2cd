#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

#include "bwd_dq_order.h"  // dq_semaphore_count
#include "bwd_params.h"
#include "bwd_prepost.h"
#include "bwd_varlen_check.h"
#include "cuda_check.h"

// The one launch template of the backward: preprocess (D, zeroed dq_accum), the family's
// main kernel, postprocess (dq). A family supplies a launch policy (sm80/bwd_launch_sm80.h)
// with
//   Traits                          kHeadDim, kBlockM, kBlockN, kNThreads, Element
//   kName                           the main kernel's name, for error messages
//   launch(params, device, stream)  the main kernel's launch: its arguments, then
//                                   launch_bwd_kernel (the grid and shared-memory opt-in)
//   postprocess(params, stream)     dq from dq_accum in the main kernel's layout of it:
//                                   launch_bwd_postprocess_rows for the row layout
// Host only. dQ is summed by fp32 atomics: in arbitrary order, unless
// params.dq_semaphore_ptr is set (deterministic, bwd_dq_order.h: the preprocess kernel
// zeroes the counters, the main kernel adds in key-block order). A varlen batch
// (params.cu_seqlens_q): the preprocess runs over the packed rows as one batch entry (its D
// and LSE layout (nheads, total_q) is that entry's), the counters are zeroed by a memset
// (they are numbered per sequence, not per packed row), and bwd_varlen_check_kernel runs last.

namespace fa_cute {

// The grid of every family's main kernel: one CTA per (key block of kBlockN keys, K/V head,
// batch), numbered by BwdTileCoord.
template <int kBlockN>
long long bwd_num_tiles(BwdParams const& params) {
  long long const n_blocks = (params.seqlen_k + kBlockN - 1) / kBlockN;
  return n_blocks * params.nheads_k * params.batch;
}

// A family's main kernel on that grid with its dynamic shared memory, after the shared-memory
// opt-in (once per device and kernel: the cache is per Traits and variant, kExtras).
template <class Traits, bool kExtras, class Kernel, class Args>
void launch_bwd_kernel(Kernel* kernel, Args const& args, BwdParams const& params, int device, cudaStream_t stream) {
  static PerDeviceCache opted_in;
  opted_in.get(device, [&] {
    opt_in_dynamic_smem(kernel, Traits::kSmemSize, device);
    return 1;
  });
  kernel<<<dim3(static_cast<unsigned>(bwd_num_tiles<Traits::kBlockN>(params))), Traits::kNThreads, Traits::kSmemSize,
           stream>>>(args);
}

// The row layout's postprocess (dq_accum (batch, nheads, dq_accum_rows, d), row-major).
template <class Element, int kHeadDim>
void launch_bwd_postprocess_rows(BwdParams const& params, cudaStream_t stream) {
  using Rows = BwdRowKernel<Element, kHeadDim>;
  bwd_postprocess_kernel<Element, kHeadDim><<<Rows::grid(params, params.seqlen_q), Rows::kNThreads, 0, stream>>>(params);
}

// Whether a launch needs a family's kExtras variant: a varlen batch, a window or a softcap.
inline bool bwd_needs_extras(BwdParams const& params) {
  return params.cu_seqlens_q != nullptr || params.window_left >= 0 ||
         (!params.is_causal && params.window_right >= 0) || params.softcap_premul != 0.f;
}

template <class Launch>
void run_bwd(BwdParams const& params, cudaStream_t stream) {
  using Traits = typename Launch::Traits;
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  if (params.head_dim != kHeadDim) {
    throw std::invalid_argument("head_dim: this config is built for d=" + std::to_string(kHeadDim) + ", got " +
                                std::to_string(params.head_dim));
  }
  if (params.dq_semaphore_ptr != nullptr && params.dq_semaphore_block_m != Traits::kBlockM) {
    throw std::invalid_argument("dq_semaphore_block_m: this config steps over " + std::to_string(Traits::kBlockM) +
                                " query rows, got " + std::to_string(params.dq_semaphore_block_m));
  }
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  using Rows = BwdRowKernel<Element, kHeadDim>;
  bool const varlen = params.cu_seqlens_q != nullptr;
  BwdParams pre = params;
  if (varlen) {
    pre.batch = 1;
    pre.seqlen_q = params.total_q;
    pre.dq_semaphore_ptr = nullptr;
    if (params.dq_semaphore_ptr != nullptr) {
      size_t const bytes = size_t(dq_semaphore_count(params.batch, params.nheads, params.seqlen_q, Traits::kBlockM)) * 4;
      check_cuda(cudaMemsetAsync(params.dq_semaphore_ptr, 0, bytes, stream), "dq_semaphore memset");
    }
  }
  bwd_preprocess_kernel<Element, kHeadDim><<<Rows::grid(pre, pre.dq_accum_rows), Rows::kNThreads, 0, stream>>>(pre);
  check_cuda(cudaGetLastError(), "bwd_preprocess_kernel launch");
  Launch::launch(params, device, stream);
  check_cuda(cudaGetLastError(), Launch::kName);
  Launch::postprocess(params, stream);
  check_cuda(cudaGetLastError(), "bwd_postprocess_kernel launch");
  if (varlen) {
    launch_bwd_varlen_check<Element>(params, stream);
    check_cuda(cudaGetLastError(), "bwd_varlen_check_kernel launch");
  }
}

}  // namespace fa_cute
