#include "kernel_registry.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>

#include "launch_checks.h"
#include "tile_size.h"

namespace fa_cute {

char const* dtype_name(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "fp16"; }

std::string sm80_config_name(int head_dim, FwdTile const& tile) {
  return std::string(tile.persistent ? "sm80p" : "sm80") + "_m" + std::to_string(tile.block_m) + "n" + std::to_string(tile.block_n) + "w" +
         std::to_string(tile.num_warps) + "_d" + std::to_string(head_dim);
}

std::string sm90_config_name(int head_dim, FwdTile const& tile) {
  return std::string(tile.persistent ? "sm90p" : "sm90") + "_m" + std::to_string(tile.block_m) + "n" + std::to_string(tile.block_n) + "_d" + std::to_string(head_dim);
}

namespace {
// Function-local static: registration runs during static initialisation of other
// translation units, whose order relative to this one is unspecified.
std::vector<FwdKernel>& registry() {
  static std::vector<FwdKernel> kernels;
  return kernels;
}

bool kernel_less(FwdKernel const& a, FwdKernel const& b) {
  int const c = std::strcmp(a.config, b.config);
  return c != 0 ? c < 0 : a.dtype < b.dtype;
}

std::string built_config_names() {
  std::set<std::string> configs;
  for (FwdKernel const& k : fwd_kernels()) configs.insert(k.config);
  std::string names;
  for (std::string const& c : configs) names += (names.empty() ? "" : ", ") + c;
  return names;
}
}  // namespace

bool register_fwd_kernel(FwdKernel const& kernel) {
  auto& kernels = registry();
  kernels.insert(std::upper_bound(kernels.begin(), kernels.end(), kernel, kernel_less), kernel);
  return true;
}

std::vector<FwdKernel> const& fwd_kernels() { return registry(); }

FwdKernel const& find_fwd_kernel(std::string const& config, DType dtype) {
  for (FwdKernel const& k : fwd_kernels()) {
    if (config == k.config && k.dtype == dtype) return k;
  }
  throw std::invalid_argument("config: '" + config + "' is not built for dtype " +
                              dtype_name(dtype) + "; built configs: " + built_config_names());
}

std::string default_fwd_config(int head_dim, int seqlen_q, int seqlen_k, int cc_major,
                               int cc_minor, bool causal) {
  check_seqlens(seqlen_q, seqlen_k);
  if (cc_minor < 0 || cc_minor > 9) {
    throw std::invalid_argument("cc_minor: a compute capability's minor version is in [0, 9], got " +
                                std::to_string(cc_minor));
  }
  if (cc_major < 8) {
    throw std::invalid_argument("device: compute capability " + std::to_string(cc_major) +
                                ".x is not supported; fa_cute needs sm_80 or newer");
  }
  auto built = [](std::string const& name) {
    for (FwdKernel const& k : fwd_kernels()) {
      if (name == k.config) return true;
    }
    return false;
  };
  // The Hopper kernel (sm_90a code: compute capability 9.0 exactly), but for short queries
  // against few keys (kSm90ShortQueryMinKeys).
  bool const short_and_few_keys = seqlen_q <= kShortQueryRows && seqlen_k < kSm90ShortQueryMinKeys;
  if (cc_major == 9 && cc_minor == 0 && !short_and_few_keys) {
    std::string const hopper = sm90_config_name(head_dim, sm90_fwd_tile(head_dim, seqlen_q, causal));
    if (built(hopper)) return hopper;
  }
  std::string const preferred = sm80_config_name(head_dim, sm80_fwd_tile(head_dim, seqlen_q, causal));
  if (built(preferred)) return preferred;
  // The heuristic's tile was not built (FA_CUTE_CONFIGS): any built production sm80
  // config for the head dim (it runs on every GPU fa_cute supports).
  for (FwdKernel const& k : fwd_kernels()) {
    if (k.rung < 0 && k.head_dim == head_dim && std::strcmp(k.family, "sm80") == 0) return k.config;
  }
  if (cc_major == 9 && cc_minor == 0) {
    for (FwdKernel const& k : fwd_kernels()) {
      if (k.rung < 0 && k.head_dim == head_dim) return k.config;
    }
  }
  std::set<int> head_dims;
  for (FwdKernel const& k : fwd_kernels()) head_dims.insert(k.head_dim);
  std::string dims;
  for (int d : head_dims) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  throw std::invalid_argument("head_dim: " + std::to_string(head_dim) +
                              " is not supported; supported head dims: " + dims);
}

}  // namespace fa_cute
