#pragma once

// The built-in config heuristic: which built config serves a problem on a GPU, by the tile
// functions of tile_size.h and the production config table (generated/config_table.h).
// Host-only.

#include <string>

#include "tile_size.h"

namespace fa_cute {

// The production sm80 config with this tile at head_dim, as src/generate_kernels.py names it
// (generated/config_table.h); throws std::invalid_argument when there is none.
std::string sm80_config_name(int head_dim, FwdTile const& tile);

// The production sm90a (Hopper) config with this tile at head_dim, as above.
std::string sm90_config_name(int head_dim, FwdTile const& tile);

// The config the built-in heuristic picks (the tile functions of tile_size.h); throws
// std::invalid_argument when no built config serves head_dim.
std::string default_fwd_config(int head_dim, int seqlen_q, int seqlen_k, int cc_major, int cc_minor,
                               bool causal = false);

// The FP8 (e4m3) forward's config: sm90_fp8_fwd_tile's where built for e4m3, else any e4m3
// config of the head dim; throws std::invalid_argument off compute capability 9.0 or when no
// e4m3 config serves head_dim.
std::string default_fp8_fwd_config(int head_dim, int seqlen_q, int seqlen_k, int cc_major, int cc_minor,
                                   bool causal = false);

// A variable-length batch's config: default_fwd_config's for its longest sequences, but
// never a short-query tile (the Hopper ones split keys for decode and have no varlen
// variant; Sm90FwdLaunch::kHasVarlen).
std::string default_varlen_fwd_config(int head_dim, int max_seqlen_q, int max_seqlen_k, int cc_major, int cc_minor,
                                      bool causal = false);

}  // namespace fa_cute
