#include "bwd_registry.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "generated/bwd_config_table.h"

namespace fa_cute {
namespace {
// Function-local static: registration runs during other translation units' static
// initialisation, in an unspecified order relative to this one.
std::vector<BwdKernel>& bwd_registry() {
  static std::vector<BwdKernel> kernels;
  return kernels;
}

bool bwd_before(BwdKernel const& a, BwdKernel const& b) {
  int const order = std::strcmp(a.config, b.config);
  return order != 0 ? order < 0 : a.dtype < b.dtype;
}

// Whether a family's kernels run on a GPU of compute capability cc_major.cc_minor: sm90a
// code (wgmma, setmaxnreg) only on 9.0, the sm80-instruction kernels on every 8.0+ GPU.
bool bwd_family_runs_on(char const* family, int cc_major, int cc_minor) {
  if (std::strcmp(family, "sm90a") == 0) return cc_major == 9 && cc_minor == 0;
  return cc_major >= 8;
}

std::string built_bwd_names() {
  std::string names;
  char const* last = "";
  for (BwdKernel const& k : bwd_kernels()) {  // sorted: equal names are adjacent
    if (std::strcmp(k.config, last) != 0) names += (names.empty() ? "" : ", ") + std::string(k.config);
    last = k.config;
  }
  return names.empty() ? "none" : names;
}
}  // namespace

bool register_bwd_kernel(BwdKernel const& kernel) {
  auto& all = bwd_registry();
  all.insert(std::upper_bound(all.begin(), all.end(), kernel, bwd_before), kernel);
  return true;
}

std::vector<BwdKernel> const& bwd_kernels() { return bwd_registry(); }

BwdKernel const& find_bwd_kernel(std::string const& config, DType dtype) {
  auto const& all = bwd_kernels();
  auto const it = std::find_if(all.begin(), all.end(),
                               [&](BwdKernel const& k) { return config == k.config && k.dtype == dtype; });
  if (it == all.end()) {
    throw std::invalid_argument("config: '" + config + "' is not a backward config built for dtype " +
                                dtype_name(dtype) + "; built backward configs: " + built_bwd_names());
  }
  return *it;
}

std::string default_bwd_config(int head_dim, int cc_major, int cc_minor) {
  if (cc_major < 8 || cc_minor < 0 || cc_minor > 9) {
    throw std::invalid_argument("cc_major: the backward kernels need compute capability 8.0 or newer, got " +
                                std::to_string(cc_major) + "." + std::to_string(cc_minor));
  }
  bool supported = false;
  for (BwdConfig const& config : kBwdConfigs) {
    if (config.head_dim != head_dim) continue;
    supported = true;
    for (BwdKernel const& k : bwd_kernels()) {
      if (config.name == std::string(k.config) && bwd_family_runs_on(k.family, cc_major, cc_minor)) return k.config;
    }
  }
  std::string dims;
  for (BwdConfig const& config : kBwdConfigs) dims += (dims.empty() ? "" : ", ") + std::to_string(config.head_dim);
  throw std::invalid_argument("head_dim: " + std::to_string(head_dim) +
                              (supported ? " has no backward config in this build for compute capability " +
                                               std::to_string(cc_major) + "." + std::to_string(cc_minor) +
                                               " (built: " + built_bwd_names() + ")"
                                         : " is not supported by the backward (supported: " + dims + ")"));
}

}  // namespace fa_cute
