#include "fwd_heuristic.h"

#include <algorithm>

#include <cstring>
#include <set>
#include <stdexcept>
#include <string>

#include "flash_params.h"
#include "fwd_config.h"
#include "generated/config_table.h"
#include "kernel_registry.h"
#include "launch_checks.h"
#include "tile_size.h"

namespace fa_cute {

namespace {

// --- Every tile the heuristic can pick is a production config, checked at compile time -----
// A tile function of tile_size.h returning a tile that src/generate_kernels.py does not
// build would make default_fwd_config fall back to another config at run time; here it
// fails the build instead, whose error names the family, head dim, seqlen_q and causal flag
// of the first such tile (CheckTileHasConfig's template arguments).

using TileFn = FwdTile (*)(int head_dim, int seqlen_q, bool causal);

constexpr int kHeadDims[] = {64, 96, 128, 192, 256};

// seqlen_q from 1 to 20000 (every length to 1024, then a prime step) and each branch
// boundary of the tile functions on both sides, up to the longest length _C accepts.
constexpr int kSeqlenBoundaries[] = {kShortQueryRows, kShortQueryRows + 1, 512, 513, 4096, 4097,
                                     8192, 8193, kMaxSeqlen};
constexpr int kDenseSeqlenEnd = 1024;
constexpr int kSeqlenEnd = 20000;
constexpr int kSeqlenStep = 61;

struct MissingTile {
  int head_dim;  // 0: none missing
  int seqlen_q;
  bool causal;
};

constexpr bool is_checked_head_dim(int head_dim) {
  for (int d : kHeadDims) {
    if (d == head_dim) return true;
  }
  return false;
}

constexpr MissingTile first_tile_without_config(FwdFamily family, TileFn tile_fn, bool e4m3 = false) {
  for (int head_dim : kHeadDims) {
    for (bool causal : {false, true}) {
      auto has_config = [&](int seqlen_q) {
        FwdTile const tile = tile_fn(head_dim, seqlen_q, causal);
        return find_fwd_config(kProductionConfigs, family, head_dim, tile, e4m3) != nullptr;
      };
      for (int s = 1; s <= kSeqlenEnd; s += s < kDenseSeqlenEnd ? 1 : kSeqlenStep) {
        if (!has_config(s)) return MissingTile{head_dim, s, causal};
      }
      for (int s : kSeqlenBoundaries) {
        if (!has_config(s)) return MissingTile{head_dim, s, causal};
      }
    }
  }
  return MissingTile{0, 0, false};
}

// A head dim outside kHeadDims for which the tile function has a tile: the sweep above would
// not see its tiles.
constexpr int first_unchecked_head_dim(TileFn tile_fn) {
  for (int head_dim = 1; head_dim <= 1024; ++head_dim) {
    if (is_checked_head_dim(head_dim)) continue;
    for (int s : kSeqlenBoundaries) {
      if (tile_fn(head_dim, s, false).block_m != 0 || tile_fn(head_dim, s, true).block_m != 0) {
        return head_dim;
      }
    }
  }
  return 0;
}

template <FwdFamily kFamily, int kHeadDim, int kSeqlenQ, bool kCausal>
struct CheckTileHasConfig {
  static_assert(kHeadDim == 0,
                "the tile function of src/tile_size.h for this family picks, at this (head_dim, "
                "seqlen_q, causal), a tile that no production config of src/generate_kernels.py "
                "has: add the config there (and rerun it) or change the tile function");
  static constexpr bool kOk = true;
};

template <int kHeadDim>
struct CheckHeadDimIsSwept {
  static_assert(kHeadDim == 0,
                "a tile function of src/tile_size.h has tiles for this head dim: add it to "
                "kHeadDims so that its tiles are checked against the production configs");
  static constexpr bool kOk = true;
};

constexpr MissingTile kSm80Missing = first_tile_without_config(FwdFamily::kSm80, &sm80_fwd_tile);
constexpr MissingTile kSm90Missing = first_tile_without_config(FwdFamily::kSm90a, &sm90_fwd_tile);
constexpr MissingTile kSm90Fp8Missing = first_tile_without_config(FwdFamily::kSm90a, &sm90_fp8_fwd_tile, true);
static_assert(CheckTileHasConfig<FwdFamily::kSm80, kSm80Missing.head_dim, kSm80Missing.seqlen_q,
                                 kSm80Missing.causal>::kOk);
static_assert(CheckTileHasConfig<FwdFamily::kSm90a, kSm90Missing.head_dim, kSm90Missing.seqlen_q,
                                 kSm90Missing.causal>::kOk);
static_assert(CheckTileHasConfig<FwdFamily::kSm90a, kSm90Fp8Missing.head_dim, kSm90Fp8Missing.seqlen_q,
                                 kSm90Fp8Missing.causal>::kOk);
static_assert(CheckHeadDimIsSwept<first_unchecked_head_dim(&sm80_fwd_tile)>::kOk);
static_assert(CheckHeadDimIsSwept<first_unchecked_head_dim(&sm90_fp8_fwd_tile)>::kOk);
static_assert(CheckHeadDimIsSwept<first_unchecked_head_dim(&sm90_fwd_tile)>::kOk);

// --- Names ---------------------------------------------------------------------------------

std::string config_name(FwdFamily family, int head_dim, FwdTile const& tile) {
  // A tile of the bf16/fp16 kernels, else of the FP8 kernel alone (configs are unique by tile).
  if (FwdConfig const* config = find_fwd_config(kProductionConfigs, family, head_dim, tile)) {
    return config->name;
  }
  if (FwdConfig const* config = find_fwd_config(kProductionConfigs, family, head_dim, tile, /*e4m3=*/true)) {
    return config->name;
  }
  throw std::invalid_argument(
      std::string("tile: no production ") + family_name(family) + " config has head_dim " +
      std::to_string(head_dim) + " and the tile block_m " + std::to_string(tile.block_m) +
      ", block_n " + std::to_string(tile.block_n) + ", num_warps " + std::to_string(tile.num_warps) +
      ", " + (tile.persistent ? "persistent" : "not persistent") +
      "; the production configs are those of src/generate_kernels.py (_C.configs() lists the "
      "built ones)");
}

// Whether a kernel of the config is built (e4m3: an FP8 kernel of it).
bool is_built(char const* config, bool e4m3) {
  for (FwdKernel const& k : fwd_kernels()) {
    if (std::strcmp(config, k.config) == 0 && (!e4m3 || k.dtype == DType::kE4M3)) return true;
  }
  return false;
}

// The built production config of the heuristic's tile (e4m3: the FP8 tile's, built as an FP8
// kernel), or nullptr: the tile functions have no tile for an unsupported head dim, and
// FA_CUTE_CONFIGS / FA_CUTE_DTYPES may leave the tile's config out.
char const* built_config_of(FwdFamily family, int head_dim, FwdTile const& tile, bool e4m3 = false) {
  FwdConfig const* config = find_fwd_config(kProductionConfigs, family, head_dim, tile, e4m3);
  return config != nullptr && is_built(config->name, e4m3) ? config->name : nullptr;
}

// The head dims of the built kernels (e4m3: of the FP8 ones), for error messages.
std::string built_head_dims(bool e4m3) {
  std::set<int> head_dims;
  for (FwdKernel const& k : fwd_kernels()) {
    if (!e4m3 || k.dtype == DType::kE4M3) head_dims.insert(k.head_dim);
  }
  std::string dims;
  for (int d : head_dims) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return dims;
}

}  // namespace

std::string sm80_config_name(int head_dim, FwdTile const& tile) {
  return config_name(FwdFamily::kSm80, head_dim, tile);
}

std::string sm90_config_name(int head_dim, FwdTile const& tile) {
  return config_name(FwdFamily::kSm90a, head_dim, tile);
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
  // The Hopper kernel (sm_90a code: compute capability 9.0 exactly), but for short queries
  // against few keys (kSm90ShortQueryMinKeys).
  bool const short_and_few_keys = seqlen_q <= kShortQueryRows && seqlen_k < kSm90ShortQueryMinKeys;
  if (cc_major == 9 && cc_minor == 0 && !short_and_few_keys) {
    FwdTile const hopper_tile = sm90_fwd_tile(head_dim, seqlen_q, causal);
    if (char const* hopper = built_config_of(FwdFamily::kSm90a, head_dim, hopper_tile)) return hopper;
  }
  FwdTile const tile = sm80_fwd_tile(head_dim, seqlen_q, causal);
  if (char const* preferred = built_config_of(FwdFamily::kSm80, head_dim, tile)) return preferred;
  // The heuristic's tile was not built (FA_CUTE_CONFIGS): any built production sm80
  // config for the head dim (it runs on every GPU fa_cute supports).
  for (FwdKernel const& k : fwd_kernels()) {
    bool const sm80 = std::strcmp(k.family, family_name(FwdFamily::kSm80)) == 0;
    if (k.rung < 0 && k.head_dim == head_dim && sm80) return k.config;
  }
  if (cc_major == 9 && cc_minor == 0) {
    for (FwdKernel const& k : fwd_kernels()) {
      if (k.rung < 0 && k.head_dim == head_dim && k.dtype != DType::kE4M3) return k.config;
    }
  }
  throw std::invalid_argument("head_dim: " + std::to_string(head_dim) +
                              " is not supported; supported head dims: " + built_head_dims(/*e4m3=*/false));
}

std::string default_fp8_fwd_config(int head_dim, int seqlen_q, int seqlen_k, int cc_major, int cc_minor,
                                   bool causal) {
  check_seqlens(seqlen_q, seqlen_k);
  if (cc_major != 9 || cc_minor != 0) {
    throw std::invalid_argument("device: the FP8 forward runs on compute capability 9.0 (Hopper) only, not " +
                                std::to_string(cc_major) + "." + std::to_string(cc_minor));
  }
  FwdTile const tile = sm90_fp8_fwd_tile(head_dim, seqlen_q, causal);
  if (char const* config = built_config_of(FwdFamily::kSm90a, head_dim, tile, /*e4m3=*/true)) return config;
  // The tile's config was not built (FA_CUTE_CONFIGS, FA_CUTE_DTYPES): any built e4m3 one.
  for (FwdKernel const& k : fwd_kernels()) {
    if (k.dtype == DType::kE4M3 && k.rung < 0 && k.head_dim == head_dim) return k.config;
  }
  std::string const dims = built_head_dims(/*e4m3=*/true);
  throw std::invalid_argument("head_dim: " + std::to_string(head_dim) + " has no FP8 (e4m3) kernel in this build; " +
                              "FP8 head dims: " + (dims.empty() ? "none (built without e4m3)" : dims));
}

std::string default_varlen_fwd_config(int head_dim, int max_seqlen_q, int max_seqlen_k, int cc_major, int cc_minor,
                                      bool causal) {
  check_seqlens(max_seqlen_q, max_seqlen_k);
  return default_fwd_config(head_dim, std::max(max_seqlen_q, kShortQueryRows + 1), max_seqlen_k, cc_major, cc_minor,
                            causal);
}

}  // namespace fa_cute
