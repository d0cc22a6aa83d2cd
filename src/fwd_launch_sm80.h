#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

#include "fwd_kernel_sm80.h"
#include "kernel_registry.h"

namespace fa_cute {

template <class Traits>
void run_fwd_sm80(FwdParams const& params, cudaStream_t stream) {
  auto kernel = &fwd_kernel_sm80<Traits>;
  constexpr int kSmemSize = Traits::kSmemSize;
  // Above 48 KiB a block's dynamic shared memory must be opted into, per device.
  if constexpr (kSmemSize >= 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemSize),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
  long long const num_blocks =
      (long long)(params.seqlen_q / Traits::kBlockM) * params.nheads * params.batch;
  if (num_blocks > 0x7fffffffLL) {
    throw std::invalid_argument("fa_cute: batch * nheads * seqlen_q / block_m exceeds the CUDA grid limit (2^31 - 1 blocks)");
  }
  dim3 const grid(static_cast<unsigned>(num_blocks));
  kernel<<<grid, Traits::kNThreads, kSmemSize, stream>>>(params);
  check_cuda(cudaGetLastError(), "fwd_kernel_sm80 launch");
}

}  // namespace fa_cute
