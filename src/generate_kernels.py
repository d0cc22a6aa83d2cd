#!/usr/bin/env python3
"""Writes src/generated/ from the config tables below, the one place where a kernel config's
identity is written down: its name, family, tile, knobs, and whether it is a production
config or an optimisation-ladder rung.

- fwd_<config>_<dtype>.cu: one explicit instantiation of the family's launch template per
  (config, dtype), which registers itself with the dispatcher (src/kernel_registry.h). A
  build compiles whole kernels in parallel, and the dispatcher sees exactly those compiled.
- configs.cmake: per config its family, production or ladder, and its translation units;
  CMakeLists.txt selects from it (FA_CUTE_CONFIGS, FA_CUTE_ARCHS, FA_CUTE_LADDER).
- config_table.h: the production configs as a constexpr table, by which the heuristic
  (src/fwd_heuristic.cpp) names the tile it picks, and against which it checks the tile
  functions of src/tile_size.h at compile time.
- bwd_<config>_<dtype>.cu and bwd_config_table.h: the same for the backward configs
  (BWD_CONFIGS; registered in src/bwd_registry.h, listed by _C.backward_configs(), their
  default per head dim the table's first built entry: _C.default_backward_config).

    python src/generate_kernels.py          # rewrite src/generated/
    python src/generate_kernels.py --check  # exit 1 if src/generated/ is not current (CI)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Union

OUT_DIR = Path(__file__).resolve().parent / "generated"

DTYPES = {"bf16": ("cute::bfloat16_t", "DType::kBF16"), "fp16": ("cute::half_t", "DType::kFP16"),
          "e4m3": ("cute::float_e4m3_t", "DType::kE4M3")}
# What a config is generated for unless it says otherwise (its `dtypes`): e4m3 is the Hopper
# FP8 forward's (Sm90FwdTraits::kFp8), generated only for the configs that list it.
DEFAULT_DTYPES = ("bf16", "fp16")

# --- Per kernel family: what its generated .cu files name ----------------------------------
# The family's launch header, the traits template with the layout of its arguments (one
# string a line, formatted with the config's fields), and the family's launch policy, with
# which each file instantiates the one launch template (run_fwd and fwd_num_splits,
# src/fwd_launch.h); `enum` is the family in config_table.h. The key is the family as
# CMake, the registry and _C.configs() spell it.
FAMILIES = {
    "sm80": dict(
        include="sm80/fwd_launch_sm80.h",
        traits="Sm80FwdTraits",
        traits_args=("{head_dim}, {block_m}, {block_n}, {num_warps}, {element}",
                     "/*kSwizzle=*/{swizzle}, /*kOverlapLoads=*/{overlap_loads}",
                     "/*kRegPrefetch=*/{reg_prefetch}, /*kReverseKV=*/{reverse_kv}",
                     "/*kPersistent=*/{persistent}, /*kDirectOStore=*/{direct_o_store}",
                     "/*kLazyRescale=*/{lazy_rescale}, /*kLadderRung=*/{ladder_rung}"),
        launch="Sm80FwdLaunch",
        enum="FwdFamily::kSm80",
    ),
    "sm90a": dict(
        include="sm90/fwd_launch_sm90.h",
        traits="Sm90FwdTraits",
        traits_args=("{head_dim}, {block_m}, {block_n}, /*kNumConsumerWG=*/{num_consumer_wg}, "
                     "{element}",
                     "/*kStages=*/{stages}, /*kIntraWGOverlap=*/{intra_wg_overlap}",
                     "/*kPingPong=*/{ping_pong}, /*kPersistent=*/{persistent}",
                     "/*kLazyRescale=*/{lazy_rescale}, /*kSplitKV=*/{split_kv}"),
        launch="Sm90FwdLaunch",
        enum="FwdFamily::kSm90a",
    ),
}


class Sm80Config(NamedTuple):
    """A tile plus the optimisation knobs of Sm80FwdTraits (src/sm80/kernel_traits_sm80.h)."""

    head_dim: int
    block_m: int
    block_n: int
    num_warps: int
    description: str
    swizzle: bool = True
    overlap_loads: bool = True
    reg_prefetch: bool = True
    reverse_kv: bool = True
    persistent: bool = False
    direct_o_store: bool = False
    lazy_rescale: bool = False
    rung: Optional[int] = None  # ladder rung: built only with FA_CUTE_LADDER=ON
    slug: str = ""              # ladder rung's short name

    family = "sm80"  # runs on sm_80 and later
    dtypes = DEFAULT_DTYPES

    @property
    def name(self) -> str:
        if self.rung is not None:
            return f"ladder{self.rung:02d}_{self.slug}_d{self.head_dim}"
        family = "sm80p" if self.persistent else "sm80"
        return f"{family}_m{self.block_m}n{self.block_n}w{self.num_warps}_d{self.head_dim}"


# Production configs of the sm80-instruction kernel. The default per head dim is chosen in
# src/tile_size.h (sm80_fwd_tile); the auto-tuner picks among all of these.
SM80_CONFIGS = [
    # d=128. The default (src/tile_size.h) is FlashAttention-2's tile: 128 Q rows, 4 warps
    # of 32 rows, 64-key blocks, 2 blocks per SM. It needs 255 registers and spills
    # (benchmarks/ptxas_report.py allows it) yet measured faster on the H100 than the
    # spill-free 8-warp tiles below (16 rows a warp, one block per SM), which read twice the
    # shared memory per MMA. Key blocks are visited first to last: on the H100 the reverse
    # order (ladder rung 5) measured slower at every length. The lazy O rescale (ladder
    # rung 8) measured neutral on the 8-warp tile, whose threads rescale 64 O registers per
    # 128 keys; the 4-warp tile's rescale 128 per 64 keys (twice the FMULs per MMA), and
    # there it pays at d=96 and 128, so it is on (off at d=64, where it lost). Numbers:
    # docs/perf-notes.md, Ampere-style kernel: tile choices.
    Sm80Config(128, 128, 64, 4, "128x64 tile, 4 warps (32 rows each): 2 blocks per SM, lazy O rescale",
               reverse_kv=False, lazy_rescale=True),
    Sm80Config(128, 128, 128, 8, "128x128 tile, 8 warps, persistent: next tile's Q/K load under this tile's O store",
               reverse_kv=False, persistent=True),
    Sm80Config(128, 128, 128, 8, "128x128 tile, 8 warps", reverse_kv=False),
    Sm80Config(128, 128, 64, 8, "128x64 tile, 8 warps", reverse_kv=False),
    # Not built: 64x128 with 4 warps (S alone is 128 registers: it spills).
    # 64 query rows: short queries (decode) and 2 blocks per SM.
    Sm80Config(128, 64, 64, 4, "64x64 tile, 4 warps: short queries, 2 blocks per SM", reverse_kv=False),
    # d=64 and d=96: the d=128 tiles; O is smaller, S the same. The 4-warp tile measured
    # faster than the 8-warp ones here too, with fewer spills (docs/perf-notes.md, Ampere-style kernel: tile choices).
    Sm80Config(64, 128, 64, 4, "128x64 tile, 4 warps (32 rows each): 2 blocks per SM", reverse_kv=False),
    Sm80Config(64, 128, 128, 8, "128x128 tile, 8 warps, persistent", reverse_kv=False, persistent=True),
    Sm80Config(64, 128, 128, 8, "128x128 tile, 8 warps", reverse_kv=False),
    Sm80Config(64, 64, 64, 4, "64x64 tile, 4 warps: short queries", reverse_kv=False),
    Sm80Config(96, 128, 64, 4, "128x64 tile, 4 warps (32 rows each): 2 blocks per SM, lazy O rescale",
               reverse_kv=False, lazy_rescale=True),
    Sm80Config(96, 128, 128, 8, "128x128 tile, 8 warps, persistent", reverse_kv=False, persistent=True),
    Sm80Config(96, 128, 64, 8, "128x64 tile, 8 warps", reverse_kv=False),
    Sm80Config(96, 64, 64, 4, "64x64 tile, 4 warps: short queries", reverse_kv=False),
    # d=192 and d=256: O takes 96 / 128 registers a thread, so K/V blocks of 64 rows.
    Sm80Config(192, 128, 64, 8, "128x64 tile, 8 warps, persistent", reverse_kv=False, persistent=True),
    Sm80Config(192, 128, 64, 8, "128x64 tile, 8 warps", reverse_kv=False),
    Sm80Config(192, 64, 64, 4, "64x64 tile, 4 warps: short queries", reverse_kv=False),
    Sm80Config(256, 128, 64, 8, "128x64 tile, 8 warps", reverse_kv=False),
    Sm80Config(256, 128, 64, 8, "128x64 tile, 8 warps, persistent (192 KiB shared memory: not on A100)",
               reverse_kv=False, persistent=True),
    Sm80Config(256, 64, 64, 4, "64x64 tile, 4 warps: short queries", reverse_kv=False),
]

# The optimisation ladder (docs/ladder.md): each rung turns one more knob on, all on the
# default tile, so `python -m fa_cute.bench --ladder` shows what each step buys.
_LADDER_TILE = dict(head_dim=128, block_m=128, block_n=128, num_warps=8)
LADDER_CONFIGS = [
    Sm80Config(**_LADDER_TILE, rung=1, slug="basic", description="no swizzle, no load overlap, no register prefetch, keys forward",
               swizzle=False, overlap_loads=False, reg_prefetch=False, reverse_kv=False),
    Sm80Config(**_LADDER_TILE, rung=2, slug="swizzle", description="+ swizzled shared memory",
               overlap_loads=False, reg_prefetch=False, reverse_kv=False),
    Sm80Config(**_LADDER_TILE, rung=3, slug="regprefetch", description="+ ldmatrix of k-slice i+1 before MMAs of slice i",
               overlap_loads=False, reverse_kv=False),
    # Register prefetch comes before load overlap: the reverse order's intermediate rung
    # (overlap without prefetch) needs 255 registers and spills on sm_90.
    Sm80Config(**_LADDER_TILE, rung=4, slug="overlap", description="+ V_j / K_j+1 loads under the GEMMs (eager K/V)",
               reverse_kv=False),
    Sm80Config(**_LADDER_TILE, rung=5, slug="reverse", description="+ key blocks visited last to first (does not pay on H100)"),
    Sm80Config(**_LADDER_TILE, rung=6, slug="persistent",
               description="rung 4 + persistent blocks, next tile's loads under the O store",
               reverse_kv=False, persistent=True),
    Sm80Config(**_LADDER_TILE, rung=7, slug="directo",
               description="rung 6 + O stored from registers (no smem staging, no barrier)",
               reverse_kv=False, persistent=True, direct_o_store=True),
    Sm80Config(**_LADDER_TILE, rung=8, slug="lazyrescale",
               description="rung 6 + O rescaled only when a row max grows by more than 2^8",
               reverse_kv=False, persistent=True, lazy_rescale=True),
]

class Sm90Config(NamedTuple):
    """A tile of Sm90FwdTraits (src/sm90/kernel_traits_sm90.h): built for sm_90a only."""

    head_dim: int
    block_m: int
    block_n: int
    description: str
    stages: int = 2
    intra_wg_overlap: bool = True
    ping_pong: bool = False
    persistent: bool = False
    lazy_rescale: bool = False
    split_kv: bool = False
    rung: Optional[int] = None  # ladder rung: built only with FA_CUTE_LADDER=ON
    slug: str = ""              # ladder rung's short name
    # e4m3 among them: an FP8 kernel too (k-blocks of 32: block_n and head_dim multiples of 32)
    dtypes: tuple = DEFAULT_DTYPES

    family = "sm90a"  # sm_90a code: runs on compute capability 9.0 only

    @property
    def num_consumer_wg(self) -> int:
        return self.block_m // 64

    @property
    def num_warps(self) -> int:  # consumer warpgroups plus the producer warpgroup
        return 4 * (self.num_consumer_wg + 1)

    @property
    def name(self) -> str:
        if self.rung is not None:
            return f"ladder{self.rung:02d}_sm90{self.slug}_d{self.head_dim}"
        family = "sm90p" if self.persistent else "sm90"
        return f"{family}_m{self.block_m}n{self.block_n}_d{self.head_dim}"


# The Hopper kernel's configs (docs/hopper-plan.md); the default per head dim is chosen in
# src/tile_size.h (sm90_fwd_tile).
# Every production config has what paid on the ladder (docs/ladder.md, rungs 9-17):
# intra-warpgroup overlap, ping-pong, lazy rescale; persistent unless named sm90_.
_SM90_DESCRIPTION = "TMA + wgmma, warp-specialised, intra-warpgroup overlap, ping-pong, lazy rescale"
_P = dict(ping_pong=True, persistent=True, lazy_rescale=True)
_DECODE_DESCRIPTION = "TMA + wgmma, short queries: 1 consumer warpgroup, split-KV, deep K/V pipeline"
_D = dict(lazy_rescale=True, split_kv=True)
# The FP8 forward's configs (e4m3 q, k, v; docs/design.md, FP8 forward): for now the bf16
# default tile of each head dim where its key blocks are whole 32-key k-blocks.
_WITH_FP8 = DEFAULT_DTYPES + ("e4m3",)
SM90_CONFIGS = [
    # d=64 and d=96: 3 consumer warpgroups (setmaxnreg 160 each). At d=64 the softmax takes
    # as long as the GEMMs, and a third warpgroup gives it more to hide under (faster than
    # 2 warpgroups with 128x192: docs/perf-notes.md, Hopper kernel: tile choices). Registers: S 56 +
    # P 28 + O 32 at d=64 with 112-key blocks (with 128, FlashAttention-3's, ptxas spills),
    # S 48 + P 24 + O 48 at d=96 with 96.
    Sm90Config(64, 128, 192, _SM90_DESCRIPTION + ", persistent", **_P, dtypes=_WITH_FP8),
    Sm90Config(64, 192, 112, _SM90_DESCRIPTION + ", 3 consumer warpgroups, persistent", **_P),
    Sm90Config(64, 192, 112, _SM90_DESCRIPTION + ", 3 consumer warpgroups", ping_pong=True, lazy_rescale=True),
    Sm90Config(96, 128, 128, _SM90_DESCRIPTION + ", persistent", **_P, dtypes=_WITH_FP8),
    Sm90Config(96, 192, 96, _SM90_DESCRIPTION + ", 3 consumer warpgroups, persistent", **_P),
    Sm90Config(128, 128, 128, _SM90_DESCRIPTION + ", persistent", **_P, dtypes=_WITH_FP8),
    Sm90Config(128, 128, 176, _SM90_DESCRIPTION + ", 176-key blocks", ping_pong=True, lazy_rescale=True),
    # d=192 and 256: O holds 96 / 128 fp32 registers a thread, so S gets fewer columns.
    # d=192 takes FlashAttention-3's 112; at d=256 its 80 spills in our kernel (S_j,
    # P_{j-1} and O live together under the overlap: 40 + 20 + 128 registers), 64 does not.
    # No ping-pong (as FlashAttention-3 above d=128): with it the causal d=256 kernel spills,
    # and a P V of 128 columns leaves less softmax to hide.
    Sm90Config(192, 128, 112, _SM90_DESCRIPTION.replace(", ping-pong", "") + ", persistent",
               persistent=True, lazy_rescale=True),
    Sm90Config(192, 128, 112, _SM90_DESCRIPTION.replace(", ping-pong", ""), lazy_rescale=True),
    # FP8 at d=192: 112 keys are not whole 32-key k-blocks of the 8-bit wgmma.
    Sm90Config(192, 128, 96, _SM90_DESCRIPTION.replace(", ping-pong", "") + ", persistent; FP8 only",
               persistent=True, lazy_rescale=True, dtypes=("e4m3",)),
    # FP8's wider key blocks (FlashAttention-3's FP8 tiles): with P in 8 bits the registers hold
    # more S columns, and a stage of e4m3 K and Vt is half the bf16 bytes.
    # (FlashAttention-3's 192x160 at d=64, 128x224 at d=128 and 128x128 at d=256 spilled 12-40 B in
    # this kernel: ptxas sm_90a.)
    Sm90Config(64, 192, 128, _SM90_DESCRIPTION + ", 3 consumer warpgroups, persistent; FP8 only", **_P,
               dtypes=("e4m3",)),
    Sm90Config(128, 128, 192, _SM90_DESCRIPTION + ", persistent; FP8 only", **_P, dtypes=("e4m3",)),
    Sm90Config(256, 128, 96, _SM90_DESCRIPTION.replace(", ping-pong", "") + ", persistent; FP8 only",
               persistent=True, lazy_rescale=True, dtypes=("e4m3",)),
    Sm90Config(256, 128, 64, _SM90_DESCRIPTION.replace(", ping-pong", "") + ", persistent",
               persistent=True, lazy_rescale=True, dtypes=_WITH_FP8),
    Sm90Config(256, 128, 64, _SM90_DESCRIPTION.replace(", ping-pong", ""), lazy_rescale=True),
    # Short queries (decode): 64 rows, one consumer warpgroup, split-KV; a memory-bound
    # stream of K and V, so as many stages as shared memory holds (136-224 KiB).
    Sm90Config(64, 64, 128, _DECODE_DESCRIPTION, stages=4, **_D),
    Sm90Config(96, 64, 128, _DECODE_DESCRIPTION, stages=3, **_D),
    Sm90Config(128, 64, 128, _DECODE_DESCRIPTION, stages=3, **_D),
    Sm90Config(192, 64, 64, _DECODE_DESCRIPTION, stages=3, **_D),
    Sm90Config(256, 64, 64, _DECODE_DESCRIPTION, stages=3, **_D),
]

# The Hopper kernel's steps (docs/ladder.md), rungs 9 on, at d=128.
_SM90_LADDER_TILE = dict(head_dim=128, block_m=128, block_n=128)
SM90_LADDER_CONFIGS = [
    Sm90Config(**_SM90_LADDER_TILE, rung=9, slug="ws", intra_wg_overlap=False,
               description="TMA + wgmma, producer warpgroup (setmaxnreg 24) + 2 consumer warpgroups (240)"),
    Sm90Config(**_SM90_LADDER_TILE, rung=10, slug="pingpong", intra_wg_overlap=False, ping_pong=True,
               description="rung 9 + consumer warpgroups take turns issuing GEMMs"),
    Sm90Config(**_SM90_LADDER_TILE, rung=11, slug="overlap",
               description="rung 9 + softmax of block j under P V of block j-1"),
    Sm90Config(**_SM90_LADDER_TILE, rung=12, slug="both", ping_pong=True,
               description="rung 11 + ping-pong"),
    Sm90Config(128, 128, 176, rung=13, slug="n176", ping_pong=True,
               description="rung 12 with 176-key blocks"),
    Sm90Config(**_SM90_LADDER_TILE, rung=14, slug="persistent", persistent=True,
               description="rung 11 + persistent CTAs, next tile's Q/K/V loads under the epilogue"),
    Sm90Config(**_SM90_LADDER_TILE, rung=15, slug="persistpp", persistent=True, ping_pong=True,
               description="rung 14 + ping-pong"),
    Sm90Config(**_SM90_LADDER_TILE, rung=16, slug="lazy", persistent=True, ping_pong=True, lazy_rescale=True,
               description="rung 15 + O rescaled only when a row max grows by more than 2^8"),
    Sm90Config(**_SM90_LADDER_TILE, rung=17, slug="stages3", persistent=True, ping_pong=True, stages=3,
               description="rung 15 with 3 K/V stages (O staged in Q's space)"),
]


class Sm80BwdConfig(NamedTuple):
    """A tile of the sm80-instruction backward (Sm80BwdTraits, src/sm80/kernel_traits_bwd_sm80.h):
    one CTA per key block of block_n rows, looping over query blocks of block_m rows; the
    warp layouts of its GEMMs (warps along M of S/dP, along N of dK/dV, along M of dQ); stages:
    buffers of Q and dO (2: the next query block loads while this one computes; 1, named with
    an _s1 suffix, for a tile whose second buffer would not fit: no row uses it today)."""

    head_dim: int
    block_m: int
    block_n: int
    num_warps: int
    atom_m_sdp: int
    atom_n_dkv: int
    atom_m_dq: int
    description: str
    stages: int = 2

    family = "sm80"  # runs on sm_80 and later
    rung = None      # never a ladder rung
    kind = "bwd"
    dtypes = DEFAULT_DTYPES

    @property
    def name(self) -> str:
        suffix = "" if self.stages == 2 else f"_s{self.stages}"
        return f"bwd_sm80_m{self.block_m}n{self.block_n}w{self.num_warps}_d{self.head_dim}{suffix}"


class Sm90BwdConfig(NamedTuple):
    """A tile of the Hopper backward (Sm90BwdTraits, src/sm90/kernel_traits_bwd_sm90.h): one CTA
    per key block of block_n keys (a producer warpgroup and two consumer warpgroups of 64 keys
    each: 12 warps), looping over query blocks of block_m rows; stages: Q/dO buffers (named
    with an _s suffix when not 2); ds_stmatrix (_stsm): dS stored by stmatrix; dq_bulk (_dqbulk):
    dQ added to dq_accum by TMA bulk reduce-adds from shared memory instead of atomics;
    dp_early_init (_dpearly): dP^T's -D start written before S^T is issued, so that S^T and dP^T
    run back to back; dq_overlap (_dqovl): the dQ wgmma issued behind dV and dK before they
    retire; dq_per_wg (_dqwg): each consumer warpgroup computes dQ over its own 64 keys, with no
    barrier between the warpgroups; dq_tile_stages (_dqtile, _dqtile2): dq_accum in the dQ
    accumulators' tiled order, each step's dQ added by one bulk reduce-add from a dQ warp, through
    1 or 2 shared-memory tile buffers; dq_tile_in_qdo (_dqtileqdo, with dkv_split_d): the same
    tile stored into the step's Q/dO stage instead, no buffer of its own; dv_early (_dvearly):
    dV issued behind dP^T as soon as P^T is ready, dK behind it, dS stored while both run (the
    traits' knobs kdSStmatrix, kdQBulkReduce, kdPEarlyInit, kdQOverlap, kdQPerWG, kdQTileStages,
    kdQTileInQdO, kdVEarly)."""

    head_dim: int
    block_m: int
    block_n: int
    description: str
    stages: int = 2
    ds_stmatrix: bool = False
    dq_bulk: bool = False
    dp_early_init: bool = False
    dq_overlap: bool = False
    dq_per_wg: bool = False
    dq_tile_stages: int = 0
    dkv_split_d: bool = False           # implied by block_n = 64 (d = 192, 256): no name suffix
    dq_tile_in_qdo: bool = False
    dv_early: bool = False
    production: Optional[bool] = None  # None: a production config iff no knob is set

    family = "sm90a"  # sm_90a code: runs on compute capability 9.0 only
    rung = None       # never a ladder rung
    kind = "bwd"
    dtypes = DEFAULT_DTYPES
    num_warps = 12    # warpgroup 0 produces, 1 and 2 consume

    @property
    def variant(self) -> bool:
        """An A/B variant of its head dim's default kernel, built only by name or with
        FA_CUTE_LADDER=ON, never in the production set: by default any knob set or a stage
        count other than 2; `production` overrides that (the d=128 default is a knob set, its
        knob-free kernel a variant; docs/perf-notes.md, Backward, has the measurements)."""
        if self.production is not None:
            return not self.production
        return (self.stages != 2 or self.ds_stmatrix or self.dq_bulk or self.dp_early_init or self.dq_overlap
                or self.dq_per_wg or self.dq_tile_stages > 0 or self.dq_tile_in_qdo or self.dv_early)

    @property
    def name(self) -> str:
        suffix = ("" if self.stages == 2 else f"_s{self.stages}") + ("_stsm" if self.ds_stmatrix else "") + \
            ("_dqbulk" if self.dq_bulk else "") + ("_dpearly" if self.dp_early_init else "") + \
            ("_dqovl" if self.dq_overlap else "") + ("_dvearly" if self.dv_early else "") + \
            ("_dqwg" if self.dq_per_wg else "") + \
            ("" if self.dq_tile_stages == 0 else "_dqtile" if self.dq_tile_stages == 1 else
             f"_dqtile{self.dq_tile_stages}") + ("_dqtileqdo" if self.dq_tile_in_qdo else "")
        return f"bwd_sm90_m{self.block_m}n{self.block_n}_d{self.head_dim}{suffix}"


BwdConfigType = Union[Sm80BwdConfig, Sm90BwdConfig]


# The backward configs; per head dim the default (_C.default_backward_config) is the first
# built one whose family runs on the GPU: the Hopper kernel (sm90a, compute capability 9.0
# only) comes first, so an H100 takes it and other GPUs the sm80 rows after it. The sm90 rows
# that follow it are variants of its kernel (Sm90BwdTraits' knobs, named by suffix): outside
# the production set, built by name or with FA_CUTE_LADDER=ON and timed by name (`python -m
# fa_cute.bench --bwd --config NAME`), never a default while after it. At d=96 and 192
# the default is the tiled-dQ kernel (_dqtile), measured faster than the atomics kernel on an
# H100 (docs/perf-notes.md, Backward); at d=64 its 128-row query steps (m128), at d=128 its
# two-buffer form (_dqtile2), which timed alike or faster in two sessions and runs the
# deterministic mode faster; at d=256 the tile in the Q/dO stage (_dqtileqdo: a tile buffer
# of its own, 64 KiB, does not fit). Each measured against the variant after it in one run.
# The sm80 rows: FlashAttention-2's sm80 tiles (flash_bwd_launch_template.h), 8 warps, Q and
# dO double-buffered (stages=2); shared memory (Sm80BwdTraits::kSmemSize), every one within
# an A100's 163 KiB, the d=64 64x128 one also within sm_86/89's 99 KiB:
#   d=64  128x128 (atoms 2/4/4) 162 KiB; 64x128 (2/4/2) 97 KiB
#   d=96  64x128 (2/4/4) 129 KiB;  d=128 64x128 (2/4/2) 161 KiB;  d=192 64x64 (4/2/2) 161 KiB
#   d=256 32x64 (2/2/2) 136.5 KiB: FlashAttention-2's 64x64 holds 64 more fp32 dQ
#         accumulators next to dK's and dV's 128 and spilled (ptxas, sm_80)
BWD_CONFIGS = [
    Sm90BwdConfig(64, 128, 128, "backward (Hopper): 128-key blocks per CTA, 128-row query steps, TMA + wgmma, dQ "
                  "added by one bulk reduce-add a step from a dQ warp", dq_tile_stages=1, production=True),
    Sm90BwdConfig(64, 64, 128, "backward (Hopper): as bwd_sm90_m128n128_d64_dqtile, 64-row query steps",
                  dq_tile_stages=1, production=False),
    Sm90BwdConfig(64, 128, 128, "backward (Hopper): as bwd_sm90_m128n128_d64_dqtile, two dQ tile buffers",
                  dq_tile_stages=2),
    Sm90BwdConfig(64, 128, 128, "backward (Hopper): as bwd_sm90_m128n128_d64_dqtile, S^T and dP^T issued back to "
                  "back", dp_early_init=True, dq_tile_stages=1),
    Sm90BwdConfig(64, 128, 128, "backward (Hopper): as bwd_sm90_m128n128_d64_dpearly_dqtile, dS by stmatrix, dV "
                  "issued behind dP^T and dK behind it, dS stored while they run", ds_stmatrix=True,
                  dp_early_init=True, dv_early=True, dq_tile_stages=1),
    Sm90BwdConfig(64, 128, 128, "backward (Hopper): as bwd_sm90_m128n128_d64_stsm_dpearly_dvearly_dqtile, dQ "
                  "issued behind dV and dK", ds_stmatrix=True, dp_early_init=True, dq_overlap=True, dv_early=True,
                  dq_tile_stages=1),
    Sm90BwdConfig(64, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d64_dqtile, dQ added by 16-byte atomics "
                  "from the consumer warpgroups into row-major rows", production=False),
    Sm90BwdConfig(64, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d64, S^T and dP^T back to back, dQ "
                  "issued behind dV and dK", dp_early_init=True, dq_overlap=True),
    Sm90BwdConfig(64, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d64_dpearly_dqovl, dS by stmatrix, dQ by "
                  "TMA bulk reduce-add", ds_stmatrix=True, dq_bulk=True, dp_early_init=True, dq_overlap=True),
    Sm90BwdConfig(64, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d64_stsm_dqbulk_dpearly_dqovl, 3 Q/dO "
                  "stages", stages=3, ds_stmatrix=True, dq_bulk=True, dp_early_init=True, dq_overlap=True),
    Sm90BwdConfig(64, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d64, dQ per warpgroup over its own keys, "
                  "no barrier between the warpgroups", dq_per_wg=True),
    Sm90BwdConfig(64, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d64_dqtile, two dQ tile buffers",
                  dq_tile_stages=2),
    Sm80BwdConfig(64, 128, 128, 8, 2, 4, 4, "backward: 128-key blocks per CTA, 128-row query steps, 8 warps"),
    Sm80BwdConfig(64, 64, 128, 8, 2, 4, 2, "backward: 128-key blocks per CTA, 64-row query steps, 8 warps"),
    Sm90BwdConfig(96, 64, 128, "backward (Hopper): 128-key blocks per CTA, 64-row query steps, TMA + wgmma, dQ "
                  "added by one bulk reduce-add a step from a dQ warp", dq_tile_stages=1, production=True),
    Sm90BwdConfig(96, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d96_dqtile, two dQ tile buffers",
                  dq_tile_stages=2),
    Sm80BwdConfig(96, 64, 128, 8, 2, 4, 4, "backward: 128-key blocks per CTA, 64-row query steps, 8 warps"),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): 128-key blocks per CTA, 64-row query steps, TMA + wgmma, dQ "
                  "added by one bulk reduce-add a step from a dQ warp, through two tile buffers", dq_tile_stages=2,
                  production=True),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d128_dqtile2, one dQ tile buffer",
                  dq_tile_stages=1),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d128_dqtile2, S^T and dP^T issued back to "
                  "back", dp_early_init=True, dq_tile_stages=2),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d128_dpearly_dqtile2, dS by stmatrix, dV "
                  "issued behind dP^T and dK behind it, dS stored while they run", ds_stmatrix=True,
                  dp_early_init=True, dv_early=True, dq_tile_stages=2),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d128_stsm_dpearly_dvearly_dqtile2, dQ "
                  "issued behind dV and dK", ds_stmatrix=True, dp_early_init=True, dq_overlap=True, dv_early=True,
                  dq_tile_stages=2),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d128_dqtile, dQ added by 16-byte atomics "
                  "from the consumer warpgroups into row-major rows", production=False),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d128, S^T and dP^T back to back, dQ "
                  "issued behind dV and dK", dp_early_init=True, dq_overlap=True),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d128_dpearly_dqovl, dS by stmatrix, dQ by "
                  "TMA bulk reduce-add", ds_stmatrix=True, dq_bulk=True, dp_early_init=True, dq_overlap=True),
    Sm90BwdConfig(128, 64, 128, "backward (Hopper): as bwd_sm90_m64n128_d128, dQ per warpgroup over its own keys, "
                  "no barrier between the warpgroups", dq_per_wg=True),
    Sm80BwdConfig(128, 64, 128, 8, 2, 4, 2, "backward: 128-key blocks per CTA, 64-row query steps, 8 warps"),
    Sm90BwdConfig(192, 64, 64, "backward (Hopper): 64-key blocks per CTA, 64-row query steps, TMA + wgmma, the "
                  "warpgroups splitting the queries of S^T and the d columns of dK and dV, dQ added by one bulk "
                  "reduce-add a step from a dQ warp", dkv_split_d=True, dq_tile_stages=1, production=True),
    Sm90BwdConfig(192, 64, 64, "backward (Hopper): as bwd_sm90_m64n64_d192_dqtile, dQ added by 16-byte atomics "
                  "from the consumer warpgroups into row-major rows", dkv_split_d=True, production=False),
    Sm90BwdConfig(192, 64, 64, "backward (Hopper): as bwd_sm90_m64n64_d192_dqtile, its tile stored into the "
                  "step's Q/dO stage", dkv_split_d=True, dq_tile_in_qdo=True),
    Sm80BwdConfig(192, 64, 64, 8, 4, 2, 2, "backward: 64-key blocks per CTA, 64-row query steps, 8 warps"),
    Sm90BwdConfig(256, 64, 64, "backward (Hopper): 64-key blocks per CTA, 64-row query steps, TMA + wgmma, the "
                  "warpgroups splitting the queries of S^T and the d columns of dK and dV, dQ added by two bulk "
                  "reduce-adds a step from a dQ warp, its tile stored into the step's Q/dO stage", dkv_split_d=True,
                  dq_tile_in_qdo=True, production=True),
    Sm90BwdConfig(256, 64, 64, "backward (Hopper): as bwd_sm90_m64n64_d256_dqtileqdo, S^T and dP^T issued back to "
                  "back", dkv_split_d=True, dp_early_init=True, dq_tile_in_qdo=True),
    Sm90BwdConfig(256, 64, 64, "backward (Hopper): as bwd_sm90_m64n64_d256_dpearly_dqtileqdo, dS and P by "
                  "stmatrix", dkv_split_d=True, ds_stmatrix=True, dp_early_init=True, dq_tile_in_qdo=True),
    Sm90BwdConfig(256, 64, 64, "backward (Hopper): as bwd_sm90_m64n64_d256_stsm_dpearly_dqtileqdo, dQ issued "
                  "behind dV and dK", dkv_split_d=True, ds_stmatrix=True, dp_early_init=True, dq_overlap=True,
                  dq_tile_in_qdo=True),
    Sm90BwdConfig(256, 64, 64, "backward (Hopper): as bwd_sm90_m64n64_d256_dqtileqdo, dQ added by 16-byte atomics "
                  "from the consumer warpgroups into row-major rows", dkv_split_d=True, production=False),
    Sm80BwdConfig(256, 32, 64, 8, 2, 2, 2, "backward: 64-key blocks per CTA, 32-row query steps, 8 warps"),
]

BWD_KERNEL_TEMPLATE = """\
// Generated by src/generate_kernels.py: do not edit.
#include "bwd_registry.h"
#include "sm80/bwd_launch_sm80.h"

namespace fa_cute {{

using Traits = Sm80BwdTraits<{head_dim}, {block_m}, {block_n}, {num_warps},
                             /*kAtomMSdP=*/{atom_m_sdp}, /*kAtomNdKV=*/{atom_n_dkv}, /*kAtomMdQ=*/{atom_m_dq},
                             {element}, /*kStages=*/{stages}>;
using Launch = Sm80BwdLaunch<Traits>;
template void run_bwd<Launch>(BwdParams const&, cudaStream_t);
FA_CUTE_REGISTER_BWD_KERNEL("{name}", "{family}", {head_dim}, {block_m}, {block_n}, {num_warps},
                            Traits::kSmemSize, {dtype_enum}, &run_bwd<Launch>,
                            "{description}");

}}  // namespace fa_cute
"""

SM90_BWD_KERNEL_TEMPLATE = """\
// Generated by src/generate_kernels.py: do not edit.
#include "bwd_registry.h"
#include "sm90/bwd_launch_sm90.h"

namespace fa_cute {{

using Traits = Sm90BwdTraits<{head_dim}, {block_m}, {block_n}, {element}, /*kStages=*/{stages},
                             /*kdSStmatrix=*/{ds_stmatrix}, /*kdQBulkReduce=*/{dq_bulk},
                             /*kdPEarlyInit=*/{dp_early_init}, /*kdQOverlap=*/{dq_overlap},
                             /*kdQPerWG=*/{dq_per_wg}, /*kdQTileStages=*/{dq_tile_stages},
                             /*kdKVSplitD=*/{dkv_split_d}, /*kdQTileInQdO=*/{dq_tile_in_qdo},
                             /*kdVEarly=*/{dv_early}>;
using Launch = Sm90BwdLaunch<Traits>;
template void run_bwd<Launch>(BwdParams const&, cudaStream_t);
FA_CUTE_REGISTER_BWD_KERNEL("{name}", "{family}", {head_dim}, {block_m}, {block_n}, {num_warps},
                            Traits::kSmemSize, {dtype_enum}, &run_bwd<Launch>,
                            "{description}");

}}  // namespace fa_cute
"""

BWD_TABLE_TEMPLATE = """\
// Generated by src/generate_kernels.py: do not edit.
// Every backward config, in the order of BWD_CONFIGS: per head dim the first built one is
// the default (src/bwd_registry.cpp, default_bwd_config).
#pragma once

namespace fa_cute {{

struct BwdConfig {{
  char const* name;
  int head_dim;
  int block_m;
  int block_n;
  int num_warps;
}};

inline constexpr BwdConfig kBwdConfigs[] = {{
{rows}
}};

}}  // namespace fa_cute
"""

ALL_CONFIGS = SM80_CONFIGS + LADDER_CONFIGS + SM90_CONFIGS + SM90_LADDER_CONFIGS
Config = Union[Sm80Config, Sm90Config]

KERNEL_TEMPLATE = """\
// Generated by src/generate_kernels.py: do not edit.
#include "kernel_registry.h"
#include "{include}"

namespace fa_cute {{

using Traits = {traits}<{traits_args}>;
using Launch = {launch}<Traits>;
template void run_fwd<Launch>(FwdParams const&, cudaStream_t);
template int fwd_num_splits<Launch>(FwdParams const&, int);
FA_CUTE_REGISTER_FWD_KERNEL("{name}", "{family}", {head_dim}, {block_m}, {block_n}, {num_warps},
                            Traits::kSmemSize, {dtype_enum},
                            &run_fwd<Launch>, &fwd_num_splits<Launch>, /*rung=*/{rung},
                            Launch::kHasVarlen, "{description}");

}}  // namespace fa_cute
"""

CMAKE_HEADER = """\
# Generated by src/generate_kernels.py: do not edit.
# The dtypes each config is generated for, every kernel config (sorted by name), and per config:
#   FA_CUTE_CONFIG_<name>_FAMILY      sm80 (sm_80 and later) or sm90a (sm_90a only)
#   FA_CUTE_CONFIG_<name>_LADDER      ON for an optimisation-ladder rung, OFF for production
#   FA_CUTE_CONFIG_<name>_TU_<dtype>  its translation unit for that dtype, in src/generated/ (set
#                                     only for the dtypes the config is generated for)
#   FA_CUTE_CONFIG_<name>_KIND        fwd (a forward kernel) or bwd (a backward kernel)
"""

TABLE_TEMPLATE = """\
// Generated by src/generate_kernels.py: do not edit.
// Every production config (ladder rungs excluded): what a tile the heuristic picks is named
// (src/fwd_heuristic.cpp), and what it checks the tile functions of tile_size.h against.
#pragma once

#include "fwd_config.h"

namespace fa_cute {{

{family_checks}

inline constexpr FwdConfig kProductionConfigs[] = {{
{rows}
}};

}}  // namespace fa_cute
"""


def _cpp_bool(value: bool) -> str:
    return "true" if value else "false"


def kernel_file_name(cfg: Union[Config, BwdConfigType], dtype: str) -> str:
    if isinstance(cfg, (Sm80BwdConfig, Sm90BwdConfig)):
        return f"{cfg.name}_{dtype}.cu"  # the name starts with bwd_
    return f"fwd_{cfg.name}_{dtype}.cu"


def bwd_kernel_file(cfg: BwdConfigType, dtype: str) -> str:
    element, dtype_enum = DTYPES[dtype]
    template = SM90_BWD_KERNEL_TEMPLATE if isinstance(cfg, Sm90BwdConfig) else BWD_KERNEL_TEMPLATE
    fields = {k: _cpp_bool(v) if isinstance(v, bool) else v for k, v in cfg._asdict().items()}
    return template.format(**{**fields, "name": cfg.name, "family": cfg.family, "num_warps": cfg.num_warps,
                              "element": element, "dtype_enum": dtype_enum})


def bwd_config_table_h() -> str:
    rows = [f'    {{"{cfg.name}", {cfg.head_dim}, {cfg.block_m}, {cfg.block_n}, {cfg.num_warps}}},'
            for cfg in BWD_CONFIGS]
    return BWD_TABLE_TEMPLATE.format(rows="\n".join(rows))


def kernel_file(cfg: Config, dtype: str) -> str:
    element, dtype_enum = DTYPES[dtype]
    family = FAMILIES[cfg.family]
    fields = {k: _cpp_bool(v) if isinstance(v, bool) else v for k, v in cfg._asdict().items()}
    fields.update(name=cfg.name, family=cfg.family, num_warps=cfg.num_warps, element=element,
                  dtype_enum=dtype_enum, rung=-1 if cfg.rung is None else cfg.rung,
                  ladder_rung=cfg.rung or 0, num_consumer_wg=getattr(cfg, "num_consumer_wg", None))
    # Continuation lines of the traits' arguments line up under the first one.
    indent = " " * len(f"using Traits = {family['traits']}<")
    traits_args = (",\n" + indent).join(family["traits_args"]).format(**fields)
    return KERNEL_TEMPLATE.format(**{**family, **fields, "traits_args": traits_args})


def configs_cmake() -> str:
    configs = sorted(ALL_CONFIGS + BWD_CONFIGS, key=lambda c: c.name)
    lines = [CMAKE_HEADER + f"set(FA_CUTE_GENERATED_DTYPES {' '.join(DTYPES)})",
             "set(FA_CUTE_GENERATED_CONFIGS"]
    lines += [f"  {cfg.name}" for cfg in configs]
    lines.append(")")
    for cfg in configs:
        prefix = f"FA_CUTE_CONFIG_{cfg.name}"
        lines.append(f"set({prefix}_FAMILY {cfg.family})")
        experimental = cfg.rung is not None or getattr(cfg, "variant", False)
        lines.append(f"set({prefix}_LADDER {'ON' if experimental else 'OFF'})")
        lines += [f"set({prefix}_TU_{dtype} {kernel_file_name(cfg, dtype)})" for dtype in cfg.dtypes]
        lines.append(f"set({prefix}_KIND {'bwd' if isinstance(cfg, (Sm80BwdConfig, Sm90BwdConfig)) else 'fwd'})")
    return "\n".join(lines) + "\n"


def config_table_h() -> str:
    rows = [f'    {{"{cfg.name}", {FAMILIES[cfg.family]["enum"]}, {cfg.head_dim}, '
            f"FwdTile{{{cfg.block_m}, {cfg.block_n}, {cfg.num_warps}, "
            f"{_cpp_bool(cfg.persistent)}}}, "
            f"/*bits16=*/{_cpp_bool(any(d in cfg.dtypes for d in DEFAULT_DTYPES))}, "
            f"/*e4m3=*/{_cpp_bool('e4m3' in cfg.dtypes)}}},"
            for cfg in ALL_CONFIGS if cfg.rung is None]
    family_checks = [f'static_assert(str_equal(family_name({family["enum"]}), "{key}"),\n'
                     '              "family_name (src/fwd_config.h) must spell each family as "\n'
                     '              "src/generate_kernels.py does");'
                     for key, family in FAMILIES.items()]
    return TABLE_TEMPLATE.format(family_checks="\n".join(family_checks), rows="\n".join(rows))


def check_tables() -> None:
    """Config names are unique: a name is a file name, a CMake variable and a registry key.
    A production config's name is derived from its family and tile, so two production configs
    of one tile, which the table lookup could not tell apart, are refused here too."""
    seen = {}
    for cfg in ALL_CONFIGS + BWD_CONFIGS:
        if cfg.name in seen:
            raise SystemExit(f"generate_kernels.py: two configs are named {cfg.name}: "
                             f"{seen[cfg.name]} and {cfg}")
        seen[cfg.name] = cfg
        if "e4m3" in cfg.dtypes and not (isinstance(cfg, Sm90Config) and cfg.head_dim % 32 == 0
                                         and cfg.block_n % 32 == 0 and not cfg.split_kv and cfg.rung is None):
            raise SystemExit(f"generate_kernels.py: {cfg.name} lists e4m3, which only Hopper forward "
                             "production configs without split-KV and with head_dim and block_n "
                             "multiples of 32 (the 8-bit wgmma's k-block) take")


def expected_files() -> dict[str, str]:
    check_tables()
    files = {kernel_file_name(cfg, dtype): kernel_file(cfg, dtype)
             for cfg in ALL_CONFIGS for dtype in cfg.dtypes}
    files["configs.cmake"] = configs_cmake()
    files["config_table.h"] = config_table_h()
    files.update({kernel_file_name(cfg, dtype): bwd_kernel_file(cfg, dtype)
                  for cfg in BWD_CONFIGS for dtype in cfg.dtypes})
    files["bwd_config_table.h"] = bwd_config_table_h()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that src/generated/ is current")
    args = parser.parse_args()
    files = expected_files()
    present = ({p.name: p.read_text() for p in OUT_DIR.iterdir() if p.is_file()}
               if OUT_DIR.exists() else {})
    if args.check:
        stale = sorted(n for n in files if present.get(n) != files[n])
        extra = sorted(set(present) - set(files))
        if stale or extra:
            print(f"src/generated/ is stale: differs {stale}, not generated {extra}; "
                  "run python src/generate_kernels.py", file=sys.stderr)
            return 1
        print(f"src/generated/ is current ({len(files)} files)")
        return 0
    OUT_DIR.mkdir(exist_ok=True)
    for name in set(present) - set(files):
        (OUT_DIR / name).unlink()
    for name, text in files.items():
        if present.get(name) != text:
            (OUT_DIR / name).write_text(text)
    print(f"wrote {len(files)} files to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
