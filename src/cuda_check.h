#pragma once

// Host-only helpers of the launchers and the bindings: CUDA error checks, a per-device cache
// of runtime queries, and the dynamic shared-memory opt-in.

#include <atomic>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

namespace fa_cute {

inline void check_cuda(cudaError_t err, char const* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fa_cute: ") + what + ": " + cudaGetErrorString(err));
  }
}

// A positive int that a launcher asks of the runtime once per device (attribute and
// occupancy queries cost microseconds, as much as a whole decode-sized kernel). Each
// launcher instantiation keeps its own function-local static one.
class PerDeviceCache {
 public:
  template <class Compute>
  int get(int device, Compute&& compute) {
    bool const cacheable = device >= 0 && device < kMaxDevices;
    if (cacheable) {
      int const known = values_[device].load(std::memory_order_relaxed);
      if (known > 0) return known;
    }
    int const value = compute();
    if (cacheable) values_[device].store(value, std::memory_order_relaxed);
    return value;
  }

 private:
  static constexpr int kMaxDevices = 64;
  std::atomic<int> values_[kMaxDevices] = {};  // 0: not asked yet
};

// The device's SM count: a runtime query, which a launcher keeps in a PerDeviceCache.
inline int device_sm_count(int device) {
  int num_sms = 0;
  check_cuda(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(MultiProcessorCount)");
  return num_sms;
}

// Throws std::invalid_argument unless the device grants smem_bytes of dynamic shared
// memory per block, then opts kernel into them (needed above 48 KiB, per device).
template <class Kernel>
void opt_in_dynamic_smem(Kernel* kernel, int smem_bytes, int device) {
  int smem_optin = 0;
  check_cuda(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  if (smem_bytes > smem_optin) {
    throw std::invalid_argument("config: this kernel needs " + std::to_string(smem_bytes / 1024) +
                                " KiB of shared memory per block; this GPU allows " +
                                std::to_string(smem_optin / 1024) + " KiB: choose a smaller config");
  }
  if (smem_bytes >= 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
}

}  // namespace fa_cute
