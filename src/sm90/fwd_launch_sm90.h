#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>

#include "cuda_check.h"
#include "flash_params.h"
#include "fp8_layout.h"
#include "fwd_launch.h"
#include "sm90/fwd_kernel_sm90.h"
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

// A compiled variant of the Hopper kernel: causal or not; with or without the extras (a
// softcap, windows, variable-length batches: Sm90FwdMainloop's kExtras).
template <bool kCausal_, bool kExtras_>
struct Sm90FwdVariant {
  static constexpr bool kCausal = kCausal_;
  static constexpr bool kExtras = kExtras_;
};

// How the Hopper kernel is launched (the policy of run_fwd, fwd_launch.h): a variant per
// causal flag and per plain or extras launch (a softcap, a window or a varlen batch); one
// CTA per SM (its shared memory admits no second), the TMA descriptors built per call.
// Host only.
template <class Traits_>
struct Sm90FwdLaunch {
  using Traits = Traits_;
  static constexpr char const* kName = "fwd_kernel_sm90 launch";
  // Varlen batches are prefill: the split-KV (decode) configs compile no varlen variant.
  static constexpr bool kHasVarlen = !Traits::kSplitKV;

  template <class F>
  static auto dispatch(FwdParams const& params, F&& f) {
    bool const varlen = params.cu_seqlens_q != nullptr;
    if (!kHasVarlen && varlen) {
      throw std::invalid_argument("cu_seqlens_q: this config takes no varlen batch (a split-KV decode tile)");
    }
    bool const window = params.window_left >= 0 || (!params.is_causal && params.window_right >= 0);
    bool const extras = varlen || params.seqused_k != nullptr || window || params.softcap_premul != 0.f;
    if constexpr (Traits::kFp8) {
      // The FP8 kernels are dense attention only: no extras variant is compiled.
      if (extras) {
        throw std::invalid_argument(
            "softcap, window_left, window_right, cu_seqlens_q, seqused_k: the FP8 (e4m3) kernels take no softcap, "
            "window, KV cache or varlen batch");
      }
      return FA_CUTE_BOOL_SWITCH(params.is_causal, kCausal, [&] { return f(Sm90FwdVariant<kCausal, false>{}); });
    } else {
      return FA_CUTE_BOOL_SWITCH(params.is_causal, kCausal, [&] {
        return FA_CUTE_BOOL_SWITCH(extras, kExtras, [&] { return f(Sm90FwdVariant<kCausal, kExtras>{}); });
      });
    }
  }

  // The device's SM count, asked of the runtime once per (kernel, device); the first call
  // also opts the kernel into its shared memory.
  template <class V>
  static int slots(int device) {
    static PerDeviceCache cache;
    return cache.get(device, [&] {
      opt_in_dynamic_smem(&fwd_kernel_sm90<Traits, V::kCausal, V::kExtras>, Traits::kSmemSize, device);
      return device_sm_count(device);
    });
  }

  // The problem plus the TMA descriptors of Q, K, V (the main loop's) and O (the epilogue's):
  // dense, (seqlen, d, heads, batch) tensors; varlen, the packed (total, d, heads, 1) ones.
  template <class V>
  static Sm90FwdKernelParams<Traits, V::kCausal, V::kExtras> to_underlying_arguments(FwdParams const& params) {
    using namespace cute;
    using Element = typename Traits::Element;
    using ElementO = typename Traits::ElementO;
    if (params.softcap_premul != 0.f && Traits::kHeadDim >= 256) {
      throw std::invalid_argument(
          "softcap: the Hopper d=256 configs have no softcap (it overflowed their registers); use an sm80 "
          "config, as config='auto' does");
    }
    int const d = params.head_dim;
    bool const varlen = params.cu_seqlens_q != nullptr;  // dispatched to a kExtras variant
    int const rows_q = varlen ? params.total_q : params.seqlen_q;
    int const rows_k = varlen ? params.total_k : params.seqlen_k;
    int const batch = varlen ? 1 : params.batch;
    auto mQ = sm90_gmem_tensor<Element>("q", params.q_ptr, rows_q, d, params.nheads, batch, params.q_row_stride,
                                        params.q_head_stride, params.q_batch_stride);
    bool const paged = params.page_table != nullptr;  // the page pool (page_size, d, heads_k, num_pages)
    int const kv_rows = paged ? params.page_size : rows_k;
    int const batch_k = paged ? params.num_pages
                              : varlen ? 1 : Sm90FwdMainloop<Traits, V::kCausal, V::kExtras>::kv_batch(params);
    auto mK = sm90_gmem_tensor<Element>("k", params.k_ptr, kv_rows, d, params.nheads_k, batch_k, params.k_row_stride,
                                        params.k_head_stride, params.k_batch_stride);
    // FP8: v is Vt (fp8_layout.h), rows of d, fp8_vt_keys(seqlen_k) keys contiguous.
    auto mV = Traits::kFp8 ? sm90_gmem_tensor<Element>("v", params.v_ptr, d, int(fp8_vt_keys(params.seqlen_k)),
                                                       params.nheads_k, batch_k, params.v_row_stride,
                                                       params.v_head_stride, params.v_batch_stride)
                           : sm90_gmem_tensor<Element>("v", params.v_ptr, kv_rows, d, params.nheads_k, batch_k,
                                                       params.v_row_stride, params.v_head_stride, params.v_batch_stride);
    auto mO_const = sm90_gmem_tensor<ElementO>("out", params.o_ptr, rows_q, d, params.nheads, batch,
                                               params.o_row_stride, params.o_head_stride, params.o_batch_stride);
    auto mO = make_tensor(make_gmem_ptr(static_cast<ElementO*>(params.o_ptr)), mO_const.layout());
    // The page boxes' descriptors only where the kernel reads them (their encode is host time).
    typename Traits::TmaLoadKVPageBox tma_k_page{}, tma_v_page{};
    if (Sm90FwdMainloop<Traits, V::kCausal, V::kExtras>::reads_page_boxes(params)) {
      tma_k_page = make_tma_copy(SM90_TMA_LOAD{}, mK, typename Traits::SmemLayoutKVPageBox{});
      tma_v_page = make_tma_copy(SM90_TMA_LOAD{}, mV, typename Traits::SmemLayoutKVPageBox{});
    }
    return {params,
            {make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{}),
             make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutK{})),
             make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutV{})), tma_k_page, tma_v_page},
            {make_tma_copy(SM90_TMA_STORE{}, mO, typename Traits::SmemLayoutO{})}};
  }

  template <class V>
  static void launch(Sm90FwdKernelParams<Traits, V::kCausal, V::kExtras> const& args, long long grid,
                     cudaStream_t stream) {
    fwd_kernel_sm90<Traits, V::kCausal, V::kExtras>
        <<<dim3(static_cast<unsigned>(grid)), Traits::kNumThreads, Traits::kSmemSize, stream>>>(args);
  }
};

}  // namespace fa_cute
