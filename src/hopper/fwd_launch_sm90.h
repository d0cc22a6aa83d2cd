#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>

#include "fwd_combine.h"
#include "hopper/fwd_kernel_sm90.h"
#include "kernel_registry.h"
#include "static_switch.h"

namespace fa_cute {

// A (seqlen, d, heads, batch) view of one of Q, K, V, O for make_tma_copy. TMA requires
// 16-byte aligned bases and strides that are multiples of 16 bytes below 2^40; a failed
// descriptor encode only prints under NDEBUG (cute/atom/copy_traits_sm90_tma.hpp), so the
// rules are checked here and broken ones thrown. The Python layer passes stride 0 for a
// dim of size 1 (it never enters an address); TMA is given d instead, any legal value.
template <class Element, class Ptr>
auto sm90_gmem_tensor(char const* name, Ptr* ptr, int seqlen, int head_dim, int heads, int batch,
                      index_t row_stride, index_t head_stride, index_t batch_stride) {
  using namespace cute;
  auto legal = [&](char const* what, index_t stride, int extent) -> int64_t {
    if (extent <= 1) return head_dim;
    int64_t const bytes = stride * int64_t(sizeof(Element));
    if (stride <= 0 || bytes % 16 != 0 || bytes >= (int64_t(1) << 40)) {
      throw std::invalid_argument(std::string(name) + ": the " + what + " stride " + std::to_string(stride) +
                                  " is not a positive multiple of 16 bytes below 2^40 (TMA's rule)");
    }
    return stride;
  };
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
    throw std::invalid_argument(std::string(name) + ": the data pointer is not 16-byte aligned (TMA's rule)");
  }
  return make_tensor(make_gmem_ptr(static_cast<Element const*>(ptr)), make_shape(seqlen, head_dim, heads, batch),
                     make_stride(legal("seqlen", row_stride, seqlen), _1{}, legal("head", head_stride, heads),
                                 legal("batch", batch_stride, batch)));
}

// The device's SM count (a persistent grid's size), asked of the runtime once per
// (kernel, device); the first call also opts the kernel into its shared memory.
template <class Traits, bool kCausal>
int sm90_prepare_device(int device) {
  static PerDeviceCache cache;
  return cache.get(device, [&] {
    opt_in_dynamic_smem(&fwd_kernel_sm90<Traits, kCausal>, Traits::kSmemSize, device);
    int num_sms = 0;
    check_cuda(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute(MultiProcessorCount)");
    return num_sms;
  });
}

// Split-KV heuristic of the short-query configs (Traits::kSplitKV): split_kv_count
// (tile_size.h) with one CTA per SM (their shared memory admits no second).
template <class Traits>
int sm90_num_splits(FwdParams const& params, int device) {
  if constexpr (!Traits::kSplitKV) {
    return 1;
  } else {
    long long const tiles = fwd_query_tiles(params, Traits::kBlockM);
    int const num_sms = FA_CUTE_BOOL_SWITCH(params.is_causal, kCausal, [&] {
      return sm90_prepare_device<Traits, kCausal>(device);
    });
    return split_kv_count(tiles, num_sms, (params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN);
  }
}

template <class Traits>
void run_fwd_sm90(FwdParams const& problem, cudaStream_t stream) {
  FwdParams params = problem;
  using namespace cute;
  using Element = typename Traits::Element;
  if (params.num_splits > 1 && !Traits::kSplitKV) {
    throw std::invalid_argument("num_splits: this config does not split keys; pass 1");
  }
  if (params.head_dim != Traits::kHeadDim) {
    throw std::invalid_argument("head_dim: this config is built for d=" + std::to_string(Traits::kHeadDim) +
                                ", got " + std::to_string(params.head_dim));
  }
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  long long const num_tiles = fwd_launch_tiles(params, Traits::kBlockM);
  int const d = params.head_dim;
  auto mQ = sm90_gmem_tensor<Element>("q", params.q_ptr, params.seqlen_q, d, params.nheads, params.batch,
                                      params.q_row_stride, params.q_head_stride, params.q_batch_stride);
  auto mK = sm90_gmem_tensor<Element>("k", params.k_ptr, params.seqlen_k, d, params.nheads_k, params.batch,
                                      params.k_row_stride, params.k_head_stride, params.k_batch_stride);
  auto mV = sm90_gmem_tensor<Element>("v", params.v_ptr, params.seqlen_k, d, params.nheads_k, params.batch,
                                      params.v_row_stride, params.v_head_stride, params.v_batch_stride);
  auto mO_const = sm90_gmem_tensor<Element>("out", params.o_ptr, params.seqlen_q, d, params.nheads, params.batch,
                                            params.o_row_stride, params.o_head_stride, params.o_batch_stride);
  auto mO = make_tensor(make_gmem_ptr(static_cast<Element*>(params.o_ptr)), mO_const.layout());
  Sm90FwdParams<Traits> kernel_params{
      params,
      make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{}),
      make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutK{})),
      make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutV{})),
      make_tma_copy(SM90_TMA_STORE{}, mO, typename Traits::SmemLayoutO{}),
  };
  FA_CUTE_BOOL_SWITCH(params.is_causal, kCausal, [&] {
    // Persistent: one CTA per SM (shared memory admits no second), each looping over tiles.
    long long const num_sms = sm90_prepare_device<Traits, kCausal>(device);
    long long const grid = Traits::kPersistent ? std::min(num_tiles, num_sms) : num_tiles;
    kernel_params.fwd.causal_section =
        launch_causal_section<Traits::kBlockM, Traits::kBlockN>(params, Traits::kPersistent, static_cast<int>(grid));
    fwd_kernel_sm90<Traits, kCausal><<<dim3(static_cast<unsigned>(grid)), Traits::kNumThreads,
                                       Traits::kSmemSize, stream>>>(kernel_params);
  });
  check_cuda(cudaGetLastError(), "fwd_kernel_sm90 launch");
  if constexpr (Traits::kSplitKV) {  // only these instantiate the combine kernel
    if (params.num_splits > 1) {
      launch_fwd_combine<Element, Traits::kHeadDim>(params, stream);
      check_cuda(cudaGetLastError(), "fwd_combine_kernel launch");
    }
  }
}

}  // namespace fa_cute
