#pragma once

#include <algorithm>
#include <stdexcept>

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
  long long const num_tiles =
      (long long)(params.seqlen_q / Traits::kBlockM) * params.nheads * params.batch;
  if (num_tiles > 0x7fffffffLL) {
    throw std::invalid_argument("fa_cute: batch * nheads * seqlen_q / block_m exceeds 2^31 - 1 tiles");
  }
  long long num_blocks = num_tiles;
  if constexpr (Traits::kPersistent) {
    // As many blocks as fit on the GPU at once; each loops over tiles.
    int device = 0, num_sms = 0, blocks_per_sm = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute(MultiProcessorCount)");
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, Traits::kNThreads, kSmemSize),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    num_blocks = std::min<long long>(num_tiles, (long long)num_sms * std::max(blocks_per_sm, 1));
  }
  kernel<<<dim3(static_cast<unsigned>(num_blocks)), Traits::kNThreads, kSmemSize, stream>>>(params);
  check_cuda(cudaGetLastError(), "fwd_kernel_sm80 launch");
}

}  // namespace fa_cute
