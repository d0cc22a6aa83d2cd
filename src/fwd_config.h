#pragma once

// The production config table's types and lookup. The table (generated/config_table.h) and
// every name in it come from src/generate_kernels.py, the one place where a config's name is
// derived from its family and tile. constexpr throughout: fwd_heuristic.cpp checks the tile
// functions of tile_size.h against the table at compile time.

#include "tile_size.h"

namespace fa_cute {

enum class FwdFamily {
  kSm80,   // the sm80-instruction kernel: runs on sm_80 and later
  kSm90a,  // the Hopper kernel: sm_90a code, runs on compute capability 9.0 only
};

// The family as the registry (FwdKernel::family), CMake and _C.configs() spell it: the keys
// of src/generate_kernels.py's FAMILIES, which generated/config_table.h checks this against.
constexpr char const* family_name(FwdFamily family) {
  return family == FwdFamily::kSm80 ? "sm80" : "sm90a";
}

constexpr bool str_equal(char const* a, char const* b) {
  while (*a != '\0' && *a == *b) {
    ++a;
    ++b;
  }
  return *a == *b;
}

// One production config: a kernel family's tile at one head dim, and the element widths it is
// generated for (bf16/fp16; e4m3, the Hopper FP8 kernel).
struct FwdConfig {
  char const* name;
  FwdFamily family;
  int head_dim;
  FwdTile tile;
  bool bits16;
  bool e4m3;
};

constexpr bool same_tile(FwdTile const& a, FwdTile const& b) {
  return a.block_m == b.block_m && a.block_n == b.block_n && a.num_warps == b.num_warps &&
         a.persistent == b.persistent;
}

// The config of `table` with this family, head dim and tile, generated for bf16/fp16 (e4m3:
// for the FP8 kernel), or nullptr. A template over the table so that this header does not
// depend on the generated one.
template <int N>
constexpr FwdConfig const* find_fwd_config(FwdConfig const (&table)[N], FwdFamily family,
                                           int head_dim, FwdTile const& tile, bool e4m3 = false) {
  for (FwdConfig const& config : table) {
    if (config.family == family && config.head_dim == head_dim && same_tile(config.tile, tile) &&
        (e4m3 ? config.e4m3 : config.bits16)) {
      return &config;
    }
  }
  return nullptr;
}

}  // namespace fa_cute
