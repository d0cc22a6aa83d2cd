#pragma once

// The registry of built kernels: each generated translation unit (src/generate_kernels.py)
// registers its kernel, and the bindings find them by (config, dtype).

#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "flash_params.h"

// Not used here: the C++ tests and benchmark reach check_cuda (cuda_check.h), FwdTile,
// kMaxSplits (tile_size.h) and default_fwd_config (fwd_heuristic.h) through this header.
#include "cuda_check.h"
#include "fwd_heuristic.h"
#include "tile_size.h"

namespace fa_cute {

// kE4M3: the Hopper FP8 kernels (q, k, v in e4m3, out in bf16; fp8_forward only).
enum class DType { kBF16, kFP16, kE4M3 };

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
  bool varlen;              // takes variable-length batches (FwdParams::cu_seqlens_q; Launch::kHasVarlen)
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

}  // namespace fa_cute

#define FA_CUTE_CONCAT_INNER(a, b) a##b
#define FA_CUTE_CONCAT(a, b) FA_CUTE_CONCAT_INNER(a, b)
#define FA_CUTE_REGISTER_FWD_KERNEL(...)                                                   \
  static bool const FA_CUTE_CONCAT(fa_cute_registered_, __LINE__) =                        \
      ::fa_cute::register_fwd_kernel(::fa_cute::FwdKernel{__VA_ARGS__})
