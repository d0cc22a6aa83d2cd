#pragma once

// The registry of built backward kernels: each generated translation unit
// (src/generate_kernels.py, BWD_CONFIGS) registers its kernel, and the bindings find them
// by (config, dtype). The forward's registry (kernel_registry.h) is separate: a backward
// config is never a forward one (_C.configs() lists forward configs, _C.backward_configs()
// these).

#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "bwd_params.h"
#include "kernel_registry.h"  // DType, dtype_name, FA_CUTE_CONCAT

namespace fa_cute {

// Runs the whole backward (preprocess, main kernel, postprocess) on params.
using BwdLaunchFn = void (*)(BwdParams const& params, cudaStream_t stream);

// One built backward kernel: a config (tile and family) instantiated for one dtype.
struct BwdKernel {
  char const* config;  // e.g. "bwd_sm80_m64n128w8_d128"
  char const* family;  // "sm80": runs on sm_80 and later; "sm90a": on sm_90 (9.0) only
  int head_dim;
  int block_m;         // query rows per inner step
  int block_n;         // key rows per CTA
  int num_warps;
  int smem_bytes;      // dynamic shared memory per block of the main kernel
  DType dtype;
  BwdLaunchFn launch;
  char const* description;
};

bool register_bwd_kernel(BwdKernel const& kernel);

// All registered backward kernels, sorted by (config, dtype).
std::vector<BwdKernel> const& bwd_kernels();

// The backward kernel for (config, dtype); throws std::invalid_argument naming the built ones.
BwdKernel const& find_bwd_kernel(std::string const& config, DType dtype);

// The backward config for head_dim on a GPU of compute capability cc_major.cc_minor: the
// first built config of that head dim in the generated table (generated/bwd_config_table.h)
// whose family runs there (sm90a: 9.0 only; sm80: 8.0 and newer);
// throws std::invalid_argument when none is built or the GPU is older than sm_80.
std::string default_bwd_config(int head_dim, int cc_major, int cc_minor);

}  // namespace fa_cute

#define FA_CUTE_REGISTER_BWD_KERNEL(...)                                                   \
  static bool const FA_CUTE_CONCAT(fa_cute_registered_bwd_, __LINE__) =                    \
      ::fa_cute::register_bwd_kernel(::fa_cute::BwdKernel{__VA_ARGS__})
