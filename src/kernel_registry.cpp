#include "kernel_registry.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>

namespace fa_cute {

char const* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return "bf16";
    case DType::kFP16: return "fp16";
    case DType::kE4M3: return "e4m3";
  }
  return "?";
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

}  // namespace fa_cute
