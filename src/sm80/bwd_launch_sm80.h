#pragma once

#include <cuda_runtime_api.h>

#include "bwd_launch.h"
#include "bwd_params.h"
#include "cuda_check.h"
#include "static_switch.h"
#include "sm80/kernel_traits_bwd_sm80.h"
#include "sm80/mainloop_bwd_sm80.h"

namespace fa_cute {

// How the sm80-instruction backward kernel is launched (the policy of run_bwd,
// bwd_launch.h): one CTA per (key block, K/V head, batch), a flat grid (BwdTileCoord), the
// kExtras variant for a variable-length batch, a window or a softcap. Host only.
template <class Traits_>
struct Sm80BwdLaunch {
  using Traits = Traits_;
  static constexpr char const* kName = "bwd_kernel_sm80 launch";

  static void launch(BwdParams const& params, int device, cudaStream_t stream) {
    FA_CUTE_BOOL_SWITCH(bwd_needs_extras(params), kExtras, [&] {
      launch_bwd_kernel<Traits, kExtras>(&bwd_kernel_sm80<Traits, kExtras>, params, params, device, stream);
    });
  }
  static void postprocess(BwdParams const& params, cudaStream_t stream) {
    launch_bwd_postprocess_rows<typename Traits::Element, Traits::kHeadDim>(params, stream);
  }
};

}  // namespace fa_cute
