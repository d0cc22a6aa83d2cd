// The production config table (src/generated/config_table.h, written by
// src/generate_kernels.py) as the heuristic uses it: each entry is found by its own family,
// head dim and tile, the registered kernels agree with it, and a tile that no production
// config has is refused with std::invalid_argument naming the tile. That every tile the
// tile functions pick is in the table is checked when fwd_heuristic.cpp compiles.

#include <cstring>
#include <stdexcept>
#include <string>

#include "expect.h"
#include "fwd_config.h"
#include "fwd_heuristic.h"
#include "generated/config_table.h"
#include "kernel_registry.h"

using namespace fa_cute;

namespace {

void check_table() {
  for (FwdConfig const& config : kProductionConfigs) {
    // An FP8-only config is found as an e4m3 one.
    FwdConfig const* found =
        find_fwd_config(kProductionConfigs, config.family, config.head_dim, config.tile, !config.bits16);
    EXPECT(found == &config, "%s: its family, head dim and tile find %s", config.name,
           found != nullptr ? found->name : "nothing");
    std::string const name = config.family == FwdFamily::kSm80
                                 ? sm80_config_name(config.head_dim, config.tile)
                                 : sm90_config_name(config.head_dim, config.tile);
    EXPECT(name == config.name, "%s is named %s by its tile", config.name, name.c_str());
  }
}

// A built production kernel has the family, head dim and tile of its table entry.
void check_registry_agrees() {
  for (FwdKernel const& kernel : fwd_kernels()) {
    if (kernel.rung >= 0) continue;
    FwdConfig const* entry = nullptr;
    for (FwdConfig const& config : kProductionConfigs) {
      if (std::strcmp(config.name, kernel.config) == 0) entry = &config;
    }
    EXPECT(entry != nullptr, "built production config %s is not in the table", kernel.config);
    if (entry == nullptr) continue;
    EXPECT(kernel.dtype == DType::kE4M3 ? entry->e4m3 : entry->bits16, "%s: built for %s, which its table entry lacks",
           kernel.config, dtype_name(kernel.dtype));
    EXPECT(std::strcmp(family_name(entry->family), kernel.family) == 0 &&
               entry->head_dim == kernel.head_dim && entry->tile.block_m == kernel.block_m &&
               entry->tile.block_n == kernel.block_n && entry->tile.num_warps == kernel.num_warps,
           "%s: registered as family %s, d=%d, %dx%d with %d warps; the table differs",
           kernel.config, kernel.family, kernel.head_dim, kernel.block_m, kernel.block_n,
           kernel.num_warps);
  }
}

void check_unknown_tile_is_refused() {
  for (bool sm80 : {true, false}) {
    std::string message;
    try {
      FwdTile const tile{128, 96, 4, false};
      sm80 ? sm80_config_name(128, tile) : sm90_config_name(128, tile);
    } catch (std::invalid_argument const& e) {
      message = e.what();
    }
    EXPECT(message.rfind("tile: ", 0) == 0 &&
               message.find(sm80 ? "sm80" : "sm90a") != std::string::npos &&
               message.find("block_n 96") != std::string::npos,
           "an unknown %s tile: '%s'", sm80 ? "sm80" : "sm90a", message.c_str());
  }
}

}  // namespace

int main() {
  check_table();
  check_registry_agrees();
  check_unknown_tile_is_refused();
  return expect_summary();
}
