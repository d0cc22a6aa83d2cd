#pragma once

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "flash_params.h"
#include "tile_size.h"

namespace fa_cute {

enum class DType { kBF16, kFP16 };

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

char const* dtype_name(DType dtype);

// Launches one compiled kernel on params; throws std::runtime_error on a CUDA error.
using FwdLaunchFn = void (*)(FwdParams const& params, cudaStream_t stream);
// The split-KV heuristic's number of splits for params on a device (1: no split).
using FwdNumSplitsFn = int (*)(FwdParams const& params, int device);

// One built kernel: a config (tile and family) instantiated for one dtype.
struct FwdKernel {
  char const* config;  // e.g. "sm80_m128n64w4_d128"
  char const* family;  // "sm80": runs on sm_80 and later; "sm90a": on sm_90 (9.0) only
  int head_dim;
  int block_m;
  int block_n;
  int num_warps;
  int smem_bytes;  // dynamic shared memory per block
  DType dtype;
  FwdLaunchFn launch;
  FwdNumSplitsFn num_splits;
  int rung;                 // optimisation-ladder rung (docs/ladder.md), or -1 for a production config
  char const* description;  // one line: what this config is
};

// Each generated translation unit registers its kernel at static-initialisation time, so
// the set of kernels is exactly what CMake compiled (FA_CUTE_CONFIGS), with no list to
// keep in sync by hand.
bool register_fwd_kernel(FwdKernel const& kernel);

// All registered kernels, sorted by (config, dtype).
std::vector<FwdKernel> const& fwd_kernels();

// The kernel for (config, dtype); throws std::invalid_argument naming the built configs.
FwdKernel const& find_fwd_kernel(std::string const& config, DType dtype);

// The name src/generate_kernels.py gives the sm80 config of this tile.
std::string sm80_config_name(int head_dim, FwdTile const& tile);

// The name src/generate_kernels.py gives the sm90 (Hopper) config of this tile.
std::string sm90_config_name(int head_dim, FwdTile const& tile);

// The config the built-in heuristic picks (the tile function of tile_size.h); throws
// std::invalid_argument when no built config serves head_dim.
std::string default_fwd_config(int head_dim, int seqlen_q, int seqlen_k, int cc_major, int cc_minor,
                               bool causal = false);

}  // namespace fa_cute

#define FA_CUTE_CONCAT_INNER(a, b) a##b
#define FA_CUTE_CONCAT(a, b) FA_CUTE_CONCAT_INNER(a, b)
#define FA_CUTE_REGISTER_FWD_KERNEL(...)                                                   \
  static bool const FA_CUTE_CONCAT(fa_cute_registered_, __LINE__) =                        \
      ::fa_cute::register_fwd_kernel(::fa_cute::FwdKernel{__VA_ARGS__})
