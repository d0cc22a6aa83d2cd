#pragma once

#include <cuda_runtime_api.h>

#include "bwd_launch.h"
#include "bwd_params.h"
#include "cuda_check.h"
#include "sm80/kernel_traits_bwd_sm80.h"
#include "sm80/mainloop_bwd_sm80.h"

namespace fa_cute {

// How the sm80-instruction backward kernel is launched (the policy of run_bwd,
// bwd_launch.h): one CTA per (key block, K/V head, batch), a flat grid (BwdTileCoord).
// Host only.
template <class Traits_>
struct Sm80BwdLaunch {
  using Traits = Traits_;
  static constexpr char const* kName = "bwd_kernel_sm80 launch";

  // CTAs of a launch (the host checks it is at most kMaxLaunchTiles).
  static long long num_tiles(BwdParams const& params) {
    long long const n_blocks = (params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
    return n_blocks * params.nheads_k * params.batch;
  }

  static void launch(BwdParams const& params, int device, cudaStream_t stream) {
    auto kernel = &bwd_kernel_sm80<Traits>;
    static PerDeviceCache opted_in;  // the shared-memory opt-in, once per device
    opted_in.get(device, [&] {
      opt_in_dynamic_smem(kernel, Traits::kSmemSize, device);
      return 1;
    });
    kernel<<<dim3(static_cast<unsigned>(num_tiles(params))), Traits::kNThreads, Traits::kSmemSize, stream>>>(params);
  }
};

}  // namespace fa_cute
