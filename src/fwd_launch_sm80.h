#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

#include "fwd_combine.h"
#include "fwd_kernel_sm80.h"
#include "kernel_registry.h"
#include "static_switch.h"

namespace fa_cute {

// The blocks of this kernel that the device holds at once, asked of the runtime once per
// (kernel, device); the first call also opts the kernel into its shared memory.
template <class Traits, FwdMaskMode kMaskMode>
int sm80_resident_blocks(int device) {
  static PerDeviceCache cache;
  return cache.get(device, [&] {
    auto kernel = &fwd_kernel_sm80<Traits, kMaskMode>;
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

// The masking a launch needs (fwd_kernel_sm80's kMaskMode).
template <class Traits>
FwdMaskMode sm80_mask_mode(FwdParams const& params) {
  bool const even = params.seqlen_q % Traits::kBlockM == 0 && params.seqlen_k % Traits::kBlockN == 0;
  if (!even) return FwdMaskMode::kGeneral;
  return params.is_causal ? FwdMaskMode::kCausalEven : FwdMaskMode::kNone;
}

// Split-KV heuristic: how many parts to split each query tile's key blocks into. A grid
// that fills the GPU at least 80% already gets no split (the combine pass and the fp32 O
// traffic would be pure overhead); below that, enough splits to fill the resident block
// slots once, with at least 4 key blocks a split to amortise its Q load and its fp32 O
// store, and at most kMaxSplits.
template <class Traits>
int sm80_num_splits(FwdParams const& params, int device) {
  if constexpr (!Traits::kSplitKV) return 1;
  long long const tiles = fwd_query_tiles(params, Traits::kBlockM);
  int const resident = FA_CUTE_MASK_MODE_SWITCH(sm80_mask_mode<Traits>(params), kMaskMode, [&] {
    return sm80_resident_blocks<Traits, kMaskMode>(device);
  });
  if (tiles <= 0 || tiles * 5 >= (long long)resident * 4) return 1;
  int const n_blocks = (params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
  int const max_splits = std::min(kMaxSplits, n_blocks / 4);
  int const wanted = int((resident + tiles - 1) / tiles);
  return std::max(1, std::min(wanted, max_splits));
}

template <class Traits>
void run_fwd_sm80(FwdParams const& problem, cudaStream_t stream) {
  FwdParams params = problem;
  if (params.num_splits > 1 && !Traits::kSplitKV) {
    throw std::invalid_argument("num_splits: this config does not split keys (persistent); pass 1");
  }
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  long long const num_tiles = fwd_launch_tiles(params, Traits::kBlockM);
  FA_CUTE_MASK_MODE_SWITCH(sm80_mask_mode<Traits>(params), kMaskMode, [&] {
    // Persistent: as many blocks as fit on the GPU at once, each looping over tiles.
    long long const resident_blocks = sm80_resident_blocks<Traits, kMaskMode>(device);
    long long const num_blocks = Traits::kPersistent ? std::min(num_tiles, resident_blocks) : num_tiles;
    params.causal_section =
        launch_causal_section<Traits::kBlockM, Traits::kBlockN>(params, Traits::kPersistent, static_cast<int>(num_blocks));
    fwd_kernel_sm80<Traits, kMaskMode>
        <<<dim3(static_cast<unsigned>(num_blocks)), Traits::kNThreads, Traits::kSmemSize, stream>>>(params);
  });
  check_cuda(cudaGetLastError(), "fwd_kernel_sm80 launch");
  if (params.num_splits > 1) {
    launch_fwd_combine<typename Traits::Element, Traits::kHeadDim>(params, stream);
    check_cuda(cudaGetLastError(), "fwd_combine_kernel launch");
  }
}

}  // namespace fa_cute
