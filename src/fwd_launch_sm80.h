#pragma once

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

#include "fwd_kernel_sm80.h"
#include "kernel_registry.h"

namespace fa_cute {

// What a launch of one kernel needs to know about a device, asked of the runtime once per
// (kernel, device): the attribute and occupancy queries cost microseconds, as much as a
// whole decode-sized kernel.
template <class Traits>
int sm80_resident_blocks(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};  // 0: not asked yet
  if (device >= 0 && device < kMaxDevices) {
    int const known = cached[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  auto kernel = &fwd_kernel_sm80<Traits>;
  constexpr int kSmemSize = Traits::kSmemSize;
  int smem_optin = 0, num_sms = 0, blocks_per_sm = 0;
  check_cuda(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  if (kSmemSize > smem_optin) {
    throw std::invalid_argument("config: this kernel needs " + std::to_string(kSmemSize / 1024) +
                                " KiB of shared memory per block; this GPU allows " +
                                std::to_string(smem_optin / 1024) + " KiB: choose a smaller config");
  }
  // Above 48 KiB a block's dynamic shared memory must be opted into, per device.
  if constexpr (kSmemSize >= 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemSize),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
  check_cuda(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(MultiProcessorCount)");
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, Traits::kNThreads, kSmemSize),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  int const resident = num_sms * std::max(blocks_per_sm, 1);
  if (device >= 0 && device < kMaxDevices) cached[device].store(resident, std::memory_order_relaxed);
  return resident;
}

template <class Traits>
void run_fwd_sm80(FwdParams const& params, cudaStream_t stream) {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  int const resident_blocks = sm80_resident_blocks<Traits>(device);
  long long const num_tiles =
      (long long)((params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM) * params.nheads * params.batch;
  if (num_tiles > 0x7fffffffLL) {
    throw std::invalid_argument("batch * nheads * ceil(seqlen_q / " + std::to_string(Traits::kBlockM) +
                                ") exceeds 2^31 - 1 tiles");
  }
  // Persistent: as many blocks as fit on the GPU at once, each looping over tiles.
  long long const num_blocks = Traits::kPersistent ? std::min<long long>(num_tiles, resident_blocks) : num_tiles;
  fwd_kernel_sm80<Traits><<<dim3(static_cast<unsigned>(num_blocks)), Traits::kNThreads, Traits::kSmemSize, stream>>>(params);
  check_cuda(cudaGetLastError(), "fwd_kernel_sm80 launch");
}

}  // namespace fa_cute
