"""`python -m fa_cute.bench`: check fa_cute against a float64 reference, then time it next
to PyTorch's scaled_dot_product_attention backends and print a TFLOP/s table (last).

The fa_cute column runs config="auto" (the tuning cache's pick, else the built-in table's,
else the heuristic's; `python -m fa_cute.tune` fills the cache) unless --config names one.
--ladder instead times every optimisation-ladder rung that the build holds next to auto's
pick, FLASH (FlashAttention-2) and CUDNN, each with its ratio to FLASH.

Shapes follow FlashAttention's benchmark: batch * seqlen = 16384 tokens and
nheads * headdim = 2048, so every row moves the same number of bytes and only the
attention's quadratic part grows. FLOPs = 4 * batch * nheads * seqlen^2 * headdim (two
matrix products, non-causal). fa_cute and SDPA read the same (batch, nheads, seqlen,
headdim) tensors: fa_cute through `.transpose(1, 2)` views, without copies.
"""

import argparse
import functools
import itertools
import json
import re
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fa_cute
from fa_cute import _api, _C, _tuned, _tuning
from fa_cute._timing import (DTYPES, TOKENS, WIDTH, Timer, add_shape_args, banner, cycling,
                             interleaved_medians,
                             format_table, input_sets, make_timer, no_gpu, problem, run_checks,
                             tflops, time_fa_cute)

SDPA_BACKENDS = {"FLASH": SDPBackend.FLASH_ATTENTION, "CUDNN": SDPBackend.CUDNN_ATTENTION,
                 "EFFICIENT": SDPBackend.EFFICIENT_ATTENTION}
LADDER_SDPA = ["FLASH", "CUDNN"]  # --ladder's anchors: FlashAttention-2 and the fastest
LADDER_BUILD = ("pip install --no-build-isolation -Ccmake.define.FA_CUTE_LADDER=ON . "
                "(add -Ccmake.define.FA_CUTE_CONFIGS=... to build fewer production configs)")

Column = Tuple[str, str]  # (key in the records, header in the table and the plot)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fa_cute.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, dtype_default="bf16")
    p.add_argument("--config", help="time this config in the fa_cute column instead of "
                                    "auto's pick")
    columns = p.add_mutually_exclusive_group()
    columns.add_argument("--all-configs", action="store_true",
                         help="add a column per built production config")
    columns.add_argument("--ladder", action="store_true",
                         help="a column per optimisation-ladder rung (a build with "
                              "FA_CUTE_LADDER=ON), next to fa_cute, FLASH and CUDNN, with "
                              "ratios to FLASH")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw TFLOP/s against N to FILE.png, a line per column (matplotlib)")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    return p.parse_args(argv)


def ladder_configs(head_dim: int) -> List[dict]:
    """The built ladder configs for head_dim, in rung order."""
    return sorted((c for c in fa_cute.configs()
                   if c["rung"] is not None and c["head_dim"] == head_dim),
                  key=lambda c: c["rung"])


def rung_label(config: dict) -> str:
    """A ladder column's header, rung and short name: 'ladder02_swizzle_d128' -> '2 swizzle'."""
    return f"{config['rung']} " + re.sub(r"^ladder\d+_|_d\d+$", "", config["name"])


def time_sdpa(backend: SDPBackend, sets, timer: Timer) -> Tuple[Optional[float], str]:
    """(ms, "") or (None, why) when the backend cannot run this shape here."""
    fn = cycling(F.scaled_dot_product_attention, sets)
    try:
        with warnings.catch_warnings(), sdpa_kernel(backend):
            warnings.simplefilter("ignore")
            fn()
            torch.cuda.synchronize()
            return timer(fn), ""
    except RuntimeError as exc:
        return None, str(exc).splitlines()[0]


def time_row(dtype_name: str, seqlen: int, head_dim: int, configs: Dict[str, str],
             sdpa: List[str], l2_bytes: int, timer: Timer, rounds: int) -> Dict:
    """Time every column for one (dtype, seqlen) on shared inputs; ms and TFLOP/s per column.

    configs maps each fa_cute column to the config it runs; the "fa_cute" column's config
    is also recorded as the row's "config". Columns are timed interleaved (`rounds`).
    """
    batch, nheads, flops = problem(seqlen, head_dim)
    sets = input_sets(batch, nheads, seqlen, head_dim, DTYPES[dtype_name], l2_bytes)
    timings = {column: functools.partial(time_fa_cute, config, sets, timer)
               for column, config in configs.items()}
    timings.update({column: functools.partial(time_sdpa, SDPA_BACKENDS[column], sets, timer)
                    for column in sdpa})
    ms, why = interleaved_medians(timings, rounds)
    return dict(dtype=dtype_name, seqlen=seqlen, batch=batch, nheads=nheads,
                head_dim=head_dim, flops=flops, config=configs["fa_cute"],
                input_sets=len(sets), ms=ms, tflops={c: tflops(flops, t) for c, t in ms.items()},
                not_run={c: w for c, w in why.items() if w})


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(no_gpu("fa_cute.bench"))
        return 1
    pyplot = None
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            print("fa_cute.bench: --plot needs the Python package matplotlib, which is not "
                  "installed: pip install matplotlib")
            return 2
    if args.ladder:
        rungs = ladder_configs(args.headdim)
        if not rungs:
            print(f"fa_cute.bench: --ladder: this build holds no ladder config for head dim "
                  f"{args.headdim}. The ladder is compiled only when asked: {LADDER_BUILD}")
            return 2
        extra = [(c["name"], rung_label(c)) for c in rungs]
        sdpa = LADDER_SDPA
    else:
        rungs = []
        extra = [(c["name"], c["name"]) for c in fa_cute.configs() if args.all_configs
                 and c["rung"] is None and c["head_dim"] == args.headdim]
        sdpa = list(SDPA_BACKENDS)

    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    gpu, cc = _api._gpu(device)
    timer_name, timer = make_timer(args.warmup, args.rep / args.rounds)
    print(banner(props, timer_name + f", median of {args.rounds} interleaved rounds"))
    print(f"config auto: {len(_tuning.cached_configs(gpu))} entries for this GPU in the tuning "
          f"cache {_tuning.cache_path()}, {len(_tuned.TABLE.get(gpu, {}))} in the built-in table")

    shapes = list(itertools.product(args.dtype, args.seqlens))
    try:
        picks = {(d, n): args.config or _api._auto_config(gpu, cc, d, args.headdim, n)["name"]
                 for d, n in shapes}
        checks = run_checks(list(picks.values()) + [key for key, _ in extra], args.headdim)
    except ValueError as exc:  # an unknown --config, an unsupported --headdim
        print(f"fa_cute.bench: {exc}")
        return 2
    if not all(c["ok"] for c in checks):
        return 1

    records = [time_row(dtype_name, seqlen, args.headdim,
                        {"fa_cute": picks[dtype_name, seqlen], **{k: k for k, _ in extra}},
                        sdpa, props.L2_cache_size, timer, args.rounds)
               for dtype_name, seqlen in shapes]
    fa_columns = (extra + [("fa_cute", "fa_cute")] if args.ladder
                  else [("fa_cute", "fa_cute")] + extra)
    columns = fa_columns + [(c, c) for c in sdpa]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=props.name, compute_capability=list(cc), torch=torch.__version__,
                           fa_cute=fa_cute.__version__, build_info=_C.build_info(),
                           timer=timer_name, checks=checks, columns=dict(columns),
                           rows=records), f, indent=2)
        print(f"wrote {args.json}")
    if pyplot is not None:
        plot(pyplot, records, columns, args.plot, f"{props.name}, head dim {args.headdim}, "
                                                  "non-causal forward")
        print(f"wrote {args.plot}")
    for r in records:
        for column, why in r["not_run"].items():
            print(f"{r['dtype']} N={r['seqlen']} {column}: n/a ({why})")
    for c in rungs:
        print(f"rung {c['rung']} ({c['name']}): {c['description']}")
    if args.ladder:
        print(render_ladder(records, fa_columns, sdpa))
    else:
        print(render(records, [key for key, _ in fa_columns], sdpa))
    return 0


def _num(x: Optional[float], fmt: str = ".1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ratio(r: Dict, column: str, anchor: str) -> str:
    a, b = r["tflops"][column], r["tflops"][anchor]
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def render(records: List[Dict], fa_columns: List[str], sdpa: List[str]) -> str:
    """The TFLOP/s table: one row per (dtype, seqlen), n/a where a column did not run."""
    columns = fa_columns + sdpa
    header = ["dtype", "N", "B", "H"] + columns + ["fa/FLASH", "fa/CUDNN", "fa_cute config"]
    rows = [[r["dtype"], str(r["seqlen"]), str(r["batch"]), str(r["nheads"])]
            + [_num(r["tflops"][c]) for c in columns]
            + [_ratio(r, "fa_cute", "FLASH"), _ratio(r, "fa_cute", "CUDNN")]
            + [r["config"]] for r in records]
    return f"TFLOP/s, head dim {records[0]['head_dim']}, non-causal forward\n" + \
        format_table(header, rows)


def render_ladder(records: List[Dict], fa_columns: List[Column], sdpa: List[str]) -> str:
    """--ladder's table: each rung and fa_cute as 'TFLOP/s (ratio to FLASH)', then the
    anchors' TFLOP/s."""
    def cell(r: Dict, column: str) -> str:
        t = r["tflops"][column]
        return "n/a" if t is None else f"{t:.1f} ({_ratio(r, column, 'FLASH')})"

    header = ["dtype", "N"] + [label for _, label in fa_columns] + sdpa + ["fa_cute config"]
    rows = [[r["dtype"], str(r["seqlen"])] + [cell(r, key) for key, _ in fa_columns]
            + [_num(r["tflops"][c]) for c in sdpa] + [r["config"]] for r in records]
    return (f"TFLOP/s (ratio to FLASH), head dim {records[0]['head_dim']}, non-causal forward, "
            f"B = {TOKENS} / N, H = {WIDTH} / d\n"
            + format_table(header, rows))


def plot(pyplot, records: List[Dict], columns: List[Column], path: str, title: str) -> None:
    """TFLOP/s against N, a line per column, one panel per dtype."""
    dtypes = list(dict.fromkeys(r["dtype"] for r in records))
    fig, axes = pyplot.subplots(1, len(dtypes), figsize=(7 * len(dtypes), 5), squeeze=False,
                                sharey=True)
    for ax, dtype in zip(axes[0], dtypes):
        rows = [r for r in records if r["dtype"] == dtype]
        for key, label in columns:
            points = [(r["seqlen"], r["tflops"][key]) for r in rows
                      if r["tflops"][key] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        seqlens = [r["seqlen"] for r in rows]
        ax.set_xscale("log", base=2)
        ax.set_xticks(seqlens, [str(n) for n in seqlens])
        ax.set(title=dtype, xlabel="N (seqlen)", ylabel="TFLOP/s", ylim=(0, None))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    sys.exit(main())
