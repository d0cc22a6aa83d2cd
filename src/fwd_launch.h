#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

#include "cuda_check.h"
#include "flash_params.h"
#include "fwd_combine.h"
#include "fwd_varlen_check.h"
#include "tile_scheduler.h"
#include "tile_scheduler_host.h"
#include "tile_size.h"

// The one launch template of both kernel families. A family supplies a launch policy
// (sm80/fwd_launch_sm80.h, sm90/fwd_launch_sm90.h), a type with
//   Traits                              the kernel's traits (kBlockM, kBlockN, kHeadDim,
//                                       kPersistent, kSplitKV, Element, ElementO)
//   kName                               the kernel's name, for error messages
//   dispatch(params, f)                 calls f(variant) with the compiled variant the
//                                       launch needs (mask mode, causal) as a type, and
//                                       returns what f returns
//   slots<Variant>(device)              CTAs of that variant resident on the GPU at once
//                                       (asked once per device; opts into shared memory)
//   to_underlying_arguments<Variant>(params)  the kernel's argument (the Hopper kernel's TMA
//                                       descriptors are built here; may throw)
//   launch<Variant>(args, grid, stream) the <<<>>> launch
// Host only.

namespace fa_cute {

// Split-KV parts for a launch of this kernel on `device` (1: no split): split_kv_count's
// wave rule (tile_size.h) over the CTAs the device holds at once.
template <class Launch>
int fwd_num_splits(FwdParams const& params, int device) {
  using Traits = typename Launch::Traits;
  if constexpr (!Traits::kSplitKV) {
    return 1;
  } else {
    long long const tiles = fwd_query_tiles(params, Traits::kBlockM);
    int const slots = Launch::dispatch(params, [&](auto variant) {
      return Launch::template slots<decltype(variant)>(device);
    });
    return split_kv_count(tiles, slots, (params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN);
  }
}

// Launches the forward kernel on params (and, with num_splits > 1, the combine kernel that
// merges the splits); throws std::invalid_argument for a problem this kernel cannot run and
// std::runtime_error for a CUDA error.
template <class Launch>
void run_fwd(FwdParams const& problem, cudaStream_t stream) {
  using Traits = typename Launch::Traits;
  FwdParams params = problem;
  if (params.num_splits > 1 && !Traits::kSplitKV) {
    throw std::invalid_argument("num_splits: this config does not split keys; pass 1");
  }
  if (params.head_dim != Traits::kHeadDim) {
    throw std::invalid_argument("head_dim: this config is built for d=" + std::to_string(Traits::kHeadDim) +
                                ", got " + std::to_string(params.head_dim));
  }
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  if (params.tile_counter != nullptr) {
    // Read only by the dynamic tile order of a varlen launch, which claims tiles from 0.
    if (Traits::kDynamicTileOrder && params.cu_seqlens_q != nullptr) {
      check_cuda(cudaMemsetAsync(params.tile_counter, 0, sizeof(int), stream), "cudaMemsetAsync(tile_counter)");
    } else {
      params.tile_counter = nullptr;
    }
  }
  long long const num_tiles = fwd_launch_tiles(params, Traits::kBlockM);
  Launch::dispatch(params, [&](auto variant) {
    using Variant = decltype(variant);
    using Scheduler = FwdTileScheduler<Traits::kBlockM, Traits::kPersistent, Traits::kSplitKV>;
    long long const grid = Scheduler::grid_size(num_tiles, Launch::template slots<Variant>(device));
    params.causal_section =
        launch_causal_section<Traits::kBlockM, Traits::kBlockN>(params, Traits::kPersistent, static_cast<int>(grid));
    Launch::template launch<Variant>(Launch::template to_underlying_arguments<Variant>(params), grid, stream);
    return 0;
  });
  check_cuda(cudaGetLastError(), Launch::kName);
  if constexpr (Traits::kSplitKV) {  // only these instantiate the combine kernel
    if (params.num_splits > 1) {
      launch_fwd_combine<typename Traits::ElementO, Traits::kHeadDim>(params, stream);
      check_cuda(cudaGetLastError(), "fwd_combine_kernel launch");
    }
  }
  // After the split merge, which writes O: a bad batch's output ends NaN.
  if (params.cu_seqlens_q != nullptr || params.seqused_k != nullptr) {
    launch_fwd_varlen_check<typename Traits::ElementO>(params, stream);
    check_cuda(cudaGetLastError(), "fwd_varlen_check_kernel launch");
  }
}

}  // namespace fa_cute
