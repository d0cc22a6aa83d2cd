#!/usr/bin/env python3
"""Writes one .cu file per (kernel config, dtype) into src/generated/.

Each file holds exactly one explicit instantiation of a kernel's launch template and
registers it, so a build compiles (and CMake's FA_CUTE_CONFIGS filters) whole kernels in
parallel, and the dispatcher sees exactly the kernels that were compiled.

    python src/generate_kernels.py          # rewrite src/generated/
    python src/generate_kernels.py --check  # exit 1 if src/generated/ is not current (CI)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple, Optional

OUT_DIR = Path(__file__).resolve().parent / "generated"

DTYPES = {"bf16": ("cute::bfloat16_t", "DType::kBF16"), "fp16": ("cute::half_t", "DType::kFP16")}


class Sm80Config(NamedTuple):
    """A tile plus the optimisation knobs of Sm80FwdTraits (src/fwd_kernel_traits.h)."""

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
    """A tile of Sm90FwdTraits (src/hopper/fwd_kernel_traits_sm90.h): built for sm_90a only."""

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
SM90_CONFIGS = [
    # d=64 and d=96: 3 consumer warpgroups (setmaxnreg 160 each). At d=64 the softmax takes
    # as long as the GEMMs, and a third warpgroup gives it more to hide under (faster than
    # 2 warpgroups with 128x192: docs/perf-notes.md, Hopper kernel: tile choices). Registers: S 56 +
    # P 28 + O 32 at d=64 with 112-key blocks (with 128, FlashAttention-3's, ptxas spills),
    # S 48 + P 24 + O 48 at d=96 with 96.
    Sm90Config(64, 128, 192, _SM90_DESCRIPTION + ", persistent", **_P),
    Sm90Config(64, 192, 112, _SM90_DESCRIPTION + ", 3 consumer warpgroups, persistent", **_P),
    Sm90Config(64, 192, 112, _SM90_DESCRIPTION + ", 3 consumer warpgroups", ping_pong=True, lazy_rescale=True),
    Sm90Config(96, 128, 128, _SM90_DESCRIPTION + ", persistent", **_P),
    Sm90Config(96, 192, 96, _SM90_DESCRIPTION + ", 3 consumer warpgroups, persistent", **_P),
    Sm90Config(128, 128, 128, _SM90_DESCRIPTION + ", persistent", **_P),
    Sm90Config(128, 128, 176, _SM90_DESCRIPTION + ", 176-key blocks", ping_pong=True, lazy_rescale=True),
    # d=192 and 256: O holds 96 / 128 fp32 registers a thread, so S gets fewer columns.
    # d=192 takes FlashAttention-3's 112; at d=256 its 80 spills in our kernel (S_j,
    # P_{j-1} and O live together under the overlap: 40 + 20 + 128 registers), 64 does not.
    # No ping-pong (as FlashAttention-3 above d=128): with it the causal d=256 kernel spills,
    # and a P V of 128 columns leaves less softmax to hide.
    Sm90Config(192, 128, 112, _SM90_DESCRIPTION.replace(", ping-pong", "") + ", persistent",
               persistent=True, lazy_rescale=True),
    Sm90Config(192, 128, 112, _SM90_DESCRIPTION.replace(", ping-pong", ""), lazy_rescale=True),
    Sm90Config(256, 128, 64, _SM90_DESCRIPTION.replace(", ping-pong", "") + ", persistent",
               persistent=True, lazy_rescale=True),
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

SM90_TEMPLATE = """\
// Generated by src/generate_kernels.py: do not edit.
#include "hopper/fwd_launch_sm90.h"

namespace fa_cute {{

using Traits = Sm90FwdTraits<{head_dim}, {block_m}, {block_n}, /*kNumConsumerWG=*/{num_consumer_wg}, {element},
                             /*kStages=*/{stages}, /*kIntraWGOverlap=*/{intra_wg_overlap},
                             /*kPingPong=*/{ping_pong}, /*kPersistent=*/{persistent},
                             /*kLazyRescale=*/{lazy_rescale}, /*kSplitKV=*/{split_kv}>;
template void run_fwd_sm90<Traits>(FwdParams const&, cudaStream_t);
template int sm90_num_splits<Traits>(FwdParams const&, int);
FA_CUTE_REGISTER_FWD_KERNEL("{name}", "sm90a", {head_dim}, {block_m}, {block_n}, {num_warps},
                            Traits::kSmemSize, {dtype_enum},
                            &run_fwd_sm90<Traits>, &sm90_num_splits<Traits>, /*rung=*/{rung},
                            "{description}");

}}  // namespace fa_cute
"""

TEMPLATE = """\
// Generated by src/generate_kernels.py: do not edit.
#include "fwd_launch_sm80.h"

namespace fa_cute {{

using Traits = Sm80FwdTraits<{head_dim}, {block_m}, {block_n}, {num_warps}, {element},
                             /*kSwizzle=*/{swizzle}, /*kOverlapLoads=*/{overlap_loads},
                             /*kRegPrefetch=*/{reg_prefetch}, /*kReverseKV=*/{reverse_kv},
                             /*kPersistent=*/{persistent}, /*kDirectOStore=*/{direct_o_store},
                             /*kLazyRescale=*/{lazy_rescale}, /*kLadderRung=*/{ladder_rung}>;
template void run_fwd_sm80<Traits>(FwdParams const&, cudaStream_t);
template int sm80_num_splits<Traits>(FwdParams const&, int);
FA_CUTE_REGISTER_FWD_KERNEL("{name}", "sm80", {head_dim}, {block_m}, {block_n}, {num_warps},
                            Traits::kSmemSize, {dtype_enum},
                            &run_fwd_sm80<Traits>, &sm80_num_splits<Traits>, /*rung=*/{rung},
                            "{description}");

}}  // namespace fa_cute
"""


def _cpp_bool(value: bool) -> str:
    return "true" if value else "false"


def expected_files() -> dict[str, str]:
    files = {}
    for cfg in SM80_CONFIGS + LADDER_CONFIGS:
        fields = cfg._asdict()
        for knob in ("swizzle", "overlap_loads", "reg_prefetch", "reverse_kv", "persistent", "direct_o_store",
                     "lazy_rescale"):
            fields[knob] = _cpp_bool(fields[knob])
        fields["rung"] = -1 if cfg.rung is None else cfg.rung
        fields["ladder_rung"] = 0 if cfg.rung is None else cfg.rung
        for dtype, (element, dtype_enum) in DTYPES.items():
            files[f"fwd_{cfg.name}_{dtype}.cu"] = TEMPLATE.format(
                name=cfg.name, element=element, dtype_enum=dtype_enum, **fields)
    for cfg in SM90_CONFIGS + SM90_LADDER_CONFIGS:
        fields = cfg._asdict()
        for knob in ("intra_wg_overlap", "ping_pong", "persistent", "lazy_rescale", "split_kv"):
            fields[knob] = _cpp_bool(fields[knob])
        fields["rung"] = -1 if cfg.rung is None else cfg.rung
        for dtype, (element, dtype_enum) in DTYPES.items():
            files[f"fwd_{cfg.name}_{dtype}.cu"] = SM90_TEMPLATE.format(
                name=cfg.name, element=element, dtype_enum=dtype_enum, num_consumer_wg=cfg.num_consumer_wg,
                num_warps=cfg.num_warps, **fields)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that src/generated/ is current")
    args = parser.parse_args()
    files = expected_files()
    present = {p.name: p.read_text() for p in OUT_DIR.glob("*.cu")} if OUT_DIR.exists() else {}
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
