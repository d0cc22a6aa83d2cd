#pragma once

#include <algorithm>
#include <type_traits>

#include <cuda_runtime_api.h>

#include "block_info.h"
#include "cuda_check.h"
#include "flash_params.h"
#include "fwd_launch.h"
#include "sm80/fwd_kernel_sm80.h"
#include "static_switch.h"

namespace fa_cute {

// How the sm80-instruction kernel is launched (the policy of run_fwd, fwd_launch.h): one
// compiled variant per FwdMaskMode, as many resident blocks per SM as the occupancy
// calculator allows (2 for the 4-warp tiles: one block's softmax and loads run under the
// other's MMAs). Host only.
template <class Traits_>
struct Sm80FwdLaunch {
  using Traits = Traits_;
  static constexpr char const* kName = "fwd_kernel_sm80 launch";
  // Every config takes variable-length batches (in its kSoftcapWindow variant).
  static constexpr bool kHasVarlen = true;

  // The masking a launch needs (fwd_kernel_sm80's kMaskMode).
  static FwdMaskMode mask_mode(FwdParams const& params) {
    bool const even = params.seqlen_q % Traits::kBlockM == 0 && params.seqlen_k % Traits::kBlockN == 0;
    // A softcap or a window runs in the kSoftcapWindow variant alone: their code in the
    // other variants' loops made ptxas spill (docs/perf-notes.md, Hopper kernel, Open leads).
    // A variable-length batch or a KV cache runs there too (FwdSeqlens: the other variants
    // read no cu_seqlens or seqused_k).
    bool const window = params.window_left >= 0 || (!params.is_causal && params.window_right >= 0);
    bool const per_batch = params.cu_seqlens_q != nullptr || params.seqused_k != nullptr;  // varlen, KV cache
    if (window || params.softcap_premul != 0.f || per_batch) return FwdMaskMode::kSoftcapWindow;
    if (!even) return FwdMaskMode::kGeneral;
    return params.is_causal ? FwdMaskMode::kCausalEven : FwdMaskMode::kNone;
  }

  template <class F>
  static auto dispatch(FwdParams const& params, F&& f) {
    return FA_CUTE_MASK_MODE_SWITCH(mask_mode(params), kMaskMode, [&] {
      return f(std::integral_constant<FwdMaskMode, kMaskMode>{});
    });
  }

  // The blocks of this kernel that the device holds at once, asked of the runtime once per
  // (kernel, device); the first call also opts the kernel into its shared memory.
  template <class V>
  static int slots(int device) {
    static PerDeviceCache cache;
    return cache.get(device, [&] {
      auto kernel = &fwd_kernel_sm80<Traits, V::value>;
      opt_in_dynamic_smem(kernel, Traits::kSmemSize, device);
      int num_sms = 0, blocks_per_sm = 0;
      check_cuda(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device),
                 "cudaDeviceGetAttribute(MultiProcessorCount)");
      check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, Traits::kNThreads,
                                                               Traits::kSmemSize),
                 "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      return num_sms * std::max(blocks_per_sm, 1);
    });
  }

  template <class V>
  static FwdParams to_underlying_arguments(FwdParams const& params) { return params; }

  template <class V>
  static void launch(FwdParams const& args, long long grid, cudaStream_t stream) {
    fwd_kernel_sm80<Traits, V::value>
        <<<dim3(static_cast<unsigned>(grid)), Traits::kNThreads, Traits::kSmemSize, stream>>>(args);
  }
};

}  // namespace fa_cute
