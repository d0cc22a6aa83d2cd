"""`python -m fa_cute.bench`: check fa_cute against a float64 reference, then time it next
to PyTorch's scaled_dot_product_attention backends and print a TFLOP/s table per head dim
and mask (last).

The fa_cute column runs config="auto" (the tuning cache's pick, else the built-in table's,
else the heuristic's; `python -m fa_cute.tune` fills the cache) unless --config names one.
--ladder instead times every optimisation-ladder rung that the build holds next to auto's
pick (and, where that is the Hopper kernel, the Ampere-style kernel's default), FLASH
(FlashAttention-2) and CUDNN, each with its ratio to FLASH.

Shapes follow FlashAttention's benchmark: batch * seqlen = 16384 tokens and
nheads * headdim = 2048, so every row moves the same number of bytes and only the
attention's quadratic part grows. FLOPs = 4 * batch * nheads * seqlen^2 * headdim (two
matrix products), halved when causal (FlashAttention's convention). Causal is bottom-right
for fa_cute and top-left for SDPA (is_causal=True), the same mask at seqlen_q == seqlen_k.
fa_cute and SDPA read the same (batch, nheads, seqlen, headdim) tensors: fa_cute through
`.transpose(1, 2)` views, without copies.

FlashAttention-4 (flash-attn-4, CuTe DSL) gets a column "FA4" where `flash_attn.cute`
imports, from the normal path or from --fa4-site DIR / $FA_CUTE_FA4_SITE (added with
site.addsitedir first): checked against the float64 reference once per table and dtype,
then timed on the same (batch, seqlen, nheads, headdim) views as fa_cute. A cell it cannot
run shows "-" (one stderr line says why), and "wrong" where its check failed.

--bwd times the backward alone instead: fa_cute.backward on a forward's saved output and LSE
(the forward runs once, outside the timing), SDPA's backends and FA4 by torch.autograd.grad
on a graph recorded once and retained; FLOPs 2.5x the forward's (five matrix products to its
two); with --deterministic, fa_cute's column runs fa_cute.backward(deterministic=True)
(compare with a run without it); with --config NAME, fa_cute's column checks and times the
backward config NAME (its head dim's tables only). --fwdbwd times a forward and its backward together (3.5x the forward's FLOPs), and
prints a second table per head dim and mask: each column's peak memory (MiB) in one forward
and backward, beyond its inputs (torch.cuda.max_memory_allocated over the call, less what
was allocated before it: q, k, v and dout; so the output, LSE, gradients, work buffers and
a backend's workspace count), after one warm-up call. Each column's gradients are checked against the float64 reference once per table and dtype
first. Where fa_cute has no backward (a head dim or build without one) its cells show "-".

--decode times one decode step instead (seqlen_q = 1 against a KV cache of each --seqlens
length, --batch, --nheads query and --nheads-kv key/value heads; SDPA with enable_gqa) and
reports microseconds and the memory bandwidth achieved: Q, K and V read once, O written once.
"""

import argparse
import contextlib
import functools
import itertools
import json
import os
import re
import sys
import textwrap
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fa_cute
from fa_cute import _C, _configs, _fa4, _tuned, _tuning
from fa_cute._timing import (CAUSAL_CHOICES, CHECK_SHAPE, DTYPES, TOKENS, WIDTH, Forward,
                             Timer, add_causal_arg, add_shape_args, autograd_grads, banner,
                             check_grads, config_grads, cycling, decode_bytes, fa_cute_bhnd,
                             fa_cute_grads, format_table, gbps, grad_verdict, input_sets,
                             interleaved_medians, make_timer, no_gpu, pass_flops, positive_int,
                             problem, progress, resolve, run_checks, tflops, time_fa_cute,
                             time_grad_pass, unwritable)

SDPA_BACKENDS = {"FLASH": SDPBackend.FLASH_ATTENTION, "CUDNN": SDPBackend.CUDNN_ATTENTION,
                 "EFFICIENT": SDPBackend.EFFICIENT_ATTENTION}
LADDER_SDPA = ["FLASH", "CUDNN"]  # --ladder's anchors: FlashAttention-2 and the fastest
DECODE_SDPA = ["FLASH", "CUDNN"]
#: the ratio columns, fastest peer first: cuDNN, then FA4 (where present), then FA2
RATIO_ANCHORS = ["CUDNN", _fa4.COLUMN, "FLASH"]
LADDER_BUILD = ("pip install --no-build-isolation -Ccmake.define.FA_CUTE_LADDER=ON . "
                "(add -Ccmake.define.FA_CUTE_CONFIGS=... to build fewer production configs)")
#: --decode's default shape: a serving batch of a GQA model (Llama-3-8B's heads)
DECODE_BATCH, DECODE_NHEADS, DECODE_NHEADS_KV = 16, 32, 8
#: batch, seqlen_q, seqlen_k of the correctness check before a decode table
DECODE_CHECK = (2, 1, 1000)

Column = Tuple[str, str]  # (key in the records, header in the table and the plot)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fa_cute.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, dtype_default="bf16")
    add_causal_arg(p)
    p.add_argument("--config", help="time this config in the fa_cute column instead of "
                                    "auto's pick (with --bwd: a backward config)")
    columns = p.add_mutually_exclusive_group()
    columns.add_argument("--all-configs", action="store_true",
                         help="add a column per built production config")
    columns.add_argument("--ladder", action="store_true",
                         help="a column per optimisation-ladder rung (a build with "
                              "FA_CUTE_LADDER=ON), next to fa_cute, FLASH and CUDNN, with "
                              "ratios to FLASH")
    grads = p.add_mutually_exclusive_group()
    grads.add_argument("--bwd", dest="grad_pass", action="store_const", const="bwd",
                       help="time the backward alone (on a saved forward), FLOPs 2.5x the "
                            "forward's")
    grads.add_argument("--fwdbwd", dest="grad_pass", action="store_const", const="fwdbwd",
                       help="time a forward and its backward together, FLOPs 3.5x the "
                            "forward's")
    p.add_argument("--deterministic", action="store_true",
                   help="with --bwd: fa_cute's column runs fa_cute.backward(deterministic=True) "
                        "(dq summed in a fixed order; compare with a run without it)")
    p.add_argument("--decode", action="store_true",
                   help="time a decode step (seqlen_q = 1, seqlen_k from --seqlens) in us and "
                        "GB/s, next to FLASH and CUDNN")
    p.add_argument("--batch", type=positive_int,
                   help=f"--decode's batch (default: {DECODE_BATCH})")
    p.add_argument("--nheads", type=positive_int,
                   help=f"--decode's query heads (default: {DECODE_NHEADS})")
    p.add_argument("--nheads-kv", type=positive_int,
                   help=f"--decode's key/value heads (default: {DECODE_NHEADS_KV})")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw TFLOP/s (GB/s with --decode) against N to FILE.png, a line per "
                        "column; with several head dims or masks, FILE-d64-causal.png etc.")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--fa4-site", metavar="DIR",
                   help="a site dir holding FlashAttention-4 (flash_attn/cute), added with "
                        f"site.addsitedir before importing it (default: ${_fa4.ENV}, else the "
                        "normal import path); without FA4 there is no FA4 column")
    args = p.parse_args(argv)
    option = "--fa4-site"
    if args.fa4_site is None and os.environ.get(_fa4.ENV):
        option, args.fa4_site = _fa4.ENV, os.environ[_fa4.ENV]
    if args.fa4_site is not None and not os.path.isdir(args.fa4_site):
        p.error(f"{option} {args.fa4_site}: not a directory ({_fa4.HOW})")
    decode_shape = (args.batch, args.nheads, args.nheads_kv)
    if args.grad_pass:
        given = [option for option, on in (("--decode", args.decode), ("--ladder", args.ladder),
                                           ("--all-configs", args.all_configs),
                                           ("--config", args.config and args.grad_pass != "bwd"))
                 if on]
        if given:
            p.error(f"--{args.grad_pass} times fa_cute.backward with the backward config it "
                    f"picks (`python -m fa_cute.tune --bwd` tunes it; --bwd takes --config); "
                    f"drop {given[0]}")
    if args.deterministic and args.grad_pass != "bwd":
        p.error("--deterministic times fa_cute.backward(deterministic=True): add --bwd")
    if args.decode:
        if args.causal != "false":
            p.error("--decode: one query row aligned bottom-right sees every key, so a decode "
                    "step is timed non-causal (SDPA's top-left is_causal would hide all keys "
                    "but the first); drop --causal")
        if args.ladder:
            p.error("--decode and --ladder: the ladder is timed on the forward table's shapes")
        args.batch, args.nheads, args.nheads_kv = (
            given or default for given, default
            in zip(decode_shape, (DECODE_BATCH, DECODE_NHEADS, DECODE_NHEADS_KV)))
        if args.nheads % args.nheads_kv:
            p.error(f"--nheads {args.nheads} is not a multiple of --nheads-kv "
                    f"{args.nheads_kv}")
    elif any(x is not None for x in decode_shape):
        p.error("--batch, --nheads and --nheads-kv set --decode's shape; the forward tables "
                f"use B = {TOKENS} / N and H = {WIDTH} / d")
    args.causal = CAUSAL_CHOICES[args.causal]
    # Both files are written after every table is timed: a path that cannot be written must
    # fail now, not after the run.
    outputs = [("--json", args.json)] if args.json else []
    if args.plot:
        groups = [(d, causal) for d in args.headdim for causal in args.causal]
        outputs += [("--plot", plot_path(args.plot, d, causal, len(groups) > 1))
                    for d, causal in groups]
    for option, path in outputs:
        why = unwritable(path)
        if why:
            p.error(f"{option}: cannot write {why}")
    return args


def ladder_configs(head_dim: int, cc: Tuple[int, int]) -> List[dict]:
    """The built ladder configs for head_dim that a GPU of compute capability cc runs, in
    rung order (the Hopper kernel's rungs need 9.0)."""
    return sorted((c for c in fa_cute.configs()
                   if c["rung"] is not None and c["head_dim"] == head_dim
                   and _configs.family_runs_on(c["family"], cc)),
                  key=lambda c: c["rung"])


AMPERE_COLUMN = "sm80"  # the Ampere-style kernel's default, where auto picks another kernel


def ampere_config(head_dim: int, seqlen_q: int, seqlen_k: int, causal: bool) -> str:
    """The config the dispatcher would pick on an sm80 GPU: the Ampere-style kernel."""
    return _C.default_config(head_dim, seqlen_q, seqlen_k, 8, 0, causal)


def rung_label(config: dict) -> str:
    """A ladder column's header, rung and short name: 'ladder02_swizzle_d128' -> '2 swizzle'."""
    return f"{config['rung']} " + re.sub(r"^ladder\d+_|_d\d+$", "", config["name"])


def time_sdpa(backend: SDPBackend, sets, timer: Timer, **kwargs) -> Tuple[Optional[float], str]:
    """(ms, "") or (None, why) when the backend cannot run this shape here. kwargs go to
    scaled_dot_product_attention (is_causal, enable_gqa)."""
    fn = cycling(F.scaled_dot_product_attention, sets, **kwargs)
    try:
        with warnings.catch_warnings(), sdpa_kernel(backend):
            warnings.simplefilter("ignore")
            fn()
            torch.cuda.synchronize()
            return timer(fn), ""
    except RuntimeError as exc:
        return None, str(exc).splitlines()[0]


def time_row(dtype_name: str, seqlen: int, head_dim: int, configs: Dict[str, str],
             sdpa: List[str], l2_bytes: int, timer: Timer, rounds: int,
             causal: bool = False, fa4: Optional[_fa4.Func] = None) -> Dict:
    """Time every column for one (dtype, seqlen) on shared inputs; ms and TFLOP/s per column.

    configs maps each fa_cute column to the config it runs; the "fa_cute" column's config
    is also recorded as the row's "config". fa4, when given, is FA4's flash_attn_func, timed
    as column "FA4". Columns are timed interleaved (`rounds`).
    """
    batch, nheads, flops = problem(seqlen, head_dim, causal)
    sets = input_sets(batch, nheads, seqlen, head_dim, DTYPES[dtype_name], l2_bytes)
    timings = {column: functools.partial(time_fa_cute, config, sets, timer, causal)
               for column, config in configs.items()}
    timings.update({column: functools.partial(time_sdpa, SDPA_BACKENDS[column], sets, timer,
                                              is_causal=causal)
                    for column in sdpa})
    if fa4 is not None:
        timings[_fa4.COLUMN] = functools.partial(_fa4.time_fa4, fa4, sets, timer, causal)
    ms, why = interleaved_medians(timings, rounds)
    return dict(kind="forward", dtype=dtype_name, seqlen=seqlen, batch=batch, nheads=nheads,
                head_dim=head_dim, causal=causal, flops=flops, config=configs["fa_cute"],
                input_sets=len(sets), ms=ms, tflops={c: tflops(flops, t) for c, t in ms.items()},
                not_run={c: w for c, w in why.items() if w})


def time_decode_row(dtype_name: str, seqlen_k: int, head_dim: int, batch: int, nheads: int,
                    nheads_kv: int, configs: Dict[str, str], sdpa: List[str], l2_bytes: int,
                    timer: Timer, rounds: int, fa4: Optional[_fa4.Func] = None) -> Dict:
    """Time one decode step (seqlen_q = 1) per column; ms and GB/s per column. fa4 as in
    time_row (FA4 reads K/V heads shared by query heads itself, as fa_cute does)."""
    dtype = DTYPES[dtype_name]
    nbytes = decode_bytes(batch, nheads, nheads_kv, seqlen_k, head_dim, dtype.itemsize)
    sets = input_sets(batch, nheads, 1, head_dim, dtype, l2_bytes, seqlen_k=seqlen_k,
                      nheads_k=nheads_kv)
    timings = {column: functools.partial(time_fa_cute, config, sets, timer)
               for column, config in configs.items()}
    timings.update({column: functools.partial(time_sdpa, SDPA_BACKENDS[column], sets, timer,
                                              enable_gqa=nheads != nheads_kv)
                    for column in sdpa})
    if fa4 is not None:
        timings[_fa4.COLUMN] = functools.partial(_fa4.time_fa4, fa4, sets, timer)
    ms, why = interleaved_medians(timings, rounds)
    return dict(kind="decode", dtype=dtype_name, seqlen_q=1, seqlen_k=seqlen_k, batch=batch,
                nheads=nheads, nheads_kv=nheads_kv, head_dim=head_dim, causal=False,
                bytes=nbytes, config=configs["fa_cute"], input_sets=len(sets), ms=ms,
                gbps={c: gbps(nbytes, t) for c, t in ms.items()},
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
    built = sorted({c["head_dim"] for c in fa_cute.configs() if c["rung"] is None})
    for d in args.headdim:
        if d not in built:
            print(f"fa_cute.bench: --headdim {d} is not built; built head dims: "
                  f"{', '.join(map(str, built))}")
            return 2
    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    gpu, cc = _configs.gpu_of(device)
    rungs = {d: ladder_configs(d, cc) for d in args.headdim} if args.ladder else {}
    for d, found in rungs.items():
        if not found:
            print(f"fa_cute.bench: --ladder: this build holds no ladder config for head dim "
                  f"{d}. The ladder is compiled only when asked: {LADDER_BUILD}")
            return 2
    extra = {d: ([(c["name"], rung_label(c)) for c in rungs[d]] if args.ladder else
                 [(c["name"], c["name"]) for c in fa_cute.configs() if args.all_configs
                  and c["rung"] is None and c["head_dim"] == d
                  and any(dt in c["dtypes"] for dt in args.dtype)
                  and _configs.family_runs_on(c["family"], cc)])
             for d in args.headdim}
    sdpa = LADDER_SDPA if args.ladder else DECODE_SDPA if args.decode else list(SDPA_BACKENDS)

    timer_name, timer = make_timer(args.warmup, args.rep / args.rounds)
    print(banner(props, timer_name + f", median of {args.rounds} interleaved rounds"))
    if args.grad_pass:
        return grad_main(args, props, cc, timer_name, timer, pyplot)
    print(f"config auto: {len(_tuning.cached_configs(gpu))} entries for this GPU in the tuning "
          f"cache {_tuning.cache_path()}, {len(_tuned.TABLE.get(gpu, {}))} in the built-in table")

    groups = [(d, causal) for d in args.headdim for causal in args.causal]
    shapes = list(itertools.product(args.dtype, args.seqlens))
    checks = []

    def check_configs(names: List[str], d: int) -> List[Dict]:
        """run_checks on the benchmark's own kind of problem: a decode step or a forward."""
        if args.decode:
            return run_checks(names, d, shape=(*DECODE_CHECK, args.nheads, args.nheads_kv))
        return run_checks(names, d, causal=args.causal)

    try:
        picks = {(d, causal, dtype, n): resolve(args.config or "auto", DTYPES[dtype],
                                                *row_shape(args, n, d), d, causal)
                 for (d, causal), (dtype, n) in itertools.product(groups, shapes)}
        for d in args.headdim:
            names = [p for (pd, _, _, _), p in picks.items() if pd == d]
            names += [key for key, _ in extra[d]]
            checks += check_configs(names, d)
    except ValueError as exc:  # an unknown --config, one for another head dim
        print(f"fa_cute.bench: {exc}")
        return 2
    # Where auto picks another kernel (the Hopper one), the Ampere-style kernel's default
    # gets a column of its own in the forward, decode and ladder tables.
    families = {c["name"]: c["family"] for c in fa_cute.configs()}
    ampere = {d: (not args.all_configs and any(
        families[p] != "sm80" for (pd, _, _, _), p in picks.items() if pd == d))
        for d in args.headdim}

    def ampere_pick(d: int, n: int, causal: bool) -> str:
        """The Ampere-style column's config for a row (a decode row: one query row)."""
        return ampere_config(d, 1, n, False) if args.decode else ampere_config(d, n, n, causal)

    for d in args.headdim:
        if ampere[d]:
            checks += check_configs([ampere_pick(d, n, causal) for causal in args.causal
                                     for n in args.seqlens], d)
    if not all(c["ok"] for c in checks):
        return 1
    fa4, fa4_skip, fa4_checks = find_fa4(args, groups)
    anchors = sdpa + ([_fa4.COLUMN] if fa4 else [])

    records = []
    row_keys = list(itertools.product(groups, shapes))
    for i, ((d, causal), (dtype, n)) in enumerate(row_keys, start=1):
        progress(f"[{i}/{len(row_keys)}] {dtype} "
                 + (f"decode N_k={n} d={d}" if args.decode else
                    f"N={n} d={d} {'causal' if causal else 'non-causal'}"))
        configs = {"fa_cute": picks[d, causal, dtype, n], **{k: k for k, _ in extra[d]}}
        if ampere[d]:
            configs[AMPERE_COLUMN] = ampere_pick(d, n, causal)
        fa4_why = fa4_skip.get((d, causal, dtype))
        row_fa4 = fa4 if fa4_why is None else None
        if args.decode:
            records.append(time_decode_row(dtype, n, d, args.batch, args.nheads,
                                           args.nheads_kv, configs, sdpa,
                                           props.L2_cache_size, timer, args.rounds, row_fa4))
        else:
            records.append(time_row(dtype, n, d, configs, sdpa, props.L2_cache_size, timer,
                                    args.rounds, causal, row_fa4))
        if fa4_why:
            not_timed(records[-1], _fa4.COLUMN, *fa4_why)
        elif _fa4.COLUMN in records[-1]["not_run"]:
            progress(f"{_fa4.COLUMN} {dtype} {row_label(records[-1])}: -, "
                     f"{records[-1]['not_run'][_fa4.COLUMN]}")
    ampere_column = {d: [(AMPERE_COLUMN, AMPERE_COLUMN)] if ampere[d] else [] for d in args.headdim}
    fa_columns = {d: (extra[d] + ampere_column[d] + [("fa_cute", "fa_cute")] if args.ladder
                      else [("fa_cute", "fa_cute")] + extra[d] + ampere_column[d])
                  for d in args.headdim}
    if args.json:
        columns = dict(c for d in args.headdim
                       for c in fa_columns[d] + [(a, a) for a in anchors])
        with open(args.json, "w") as f:
            json.dump(dict(gpu=props.name, compute_capability=list(cc), torch=torch.__version__,
                           fa_cute=fa_cute.__version__, build_info=_C.build_info(),
                           timer=timer_name, checks=checks, columns=columns,
                           fa4=dict(version=_fa4.version(), site=args.fa4_site,
                                    checks=fa4_checks) if fa4 else None,
                           rows=records), f, indent=2)
        print(f"wrote {args.json}")
    tables = [([r for r in records if (r["head_dim"], r["causal"]) == group], group)
              for group in groups]
    if pyplot is not None:
        for rows, (d, causal) in tables:
            path = plot_path(args.plot, d, causal, len(tables) > 1)
            metric = "gbps" if args.decode else "tflops"
            plot(pyplot, rows, fa_columns[d] + [(c, c) for c in anchors], path,
                 f"{props.name}, {table_title(rows)}", metric=metric)
            print(f"wrote {path}")
    for r in records:
        for column, why in r["not_run"].items():
            if column == _fa4.COLUMN:
                continue  # said on stderr as it happened
            print(f"{r['dtype']} {row_label(r)} {column}: n/a ({why})")
    for d in rungs:
        for c in rungs[d]:
            print(f"rung {c['rung']} ({c['name']}): {c['description']}")
    for rows, (d, _) in tables:
        if args.decode:
            print(render_decode(rows, [key for key, _ in fa_columns[d]], anchors))
        elif args.ladder:
            print(render_ladder(rows, fa_columns[d], anchors))
        else:
            print(render(rows, [key for key, _ in fa_columns[d]], anchors))
    return 0


#: the columns of --bwd and --fwdbwd: fa_cute, then SDPA's backends (each has a backward)
GRAD_SDPA = list(SDPA_BACKENDS)


def grad_forwards(causal: bool) -> Dict[str, Forward]:
    """fa_cute's and each SDPA backend's attention in the benchmark's layout, recording
    gradients; SDPA's backend is chosen by the sdpa_kernel context around each use."""
    forwards = {"fa_cute": lambda q, k, v: fa_cute_bhnd(q, k, v, causal=causal).transpose(1, 2)}
    forwards.update({c: functools.partial(F.scaled_dot_product_attention, is_causal=causal)
                     for c in GRAD_SDPA})
    return forwards


def sdpa_context(column: str):
    """The context a column's forward runs in: SDPA's backend for SDPA's columns, with its
    warnings (a backend refusing a shape) silenced, as time_sdpa does."""
    if column not in SDPA_BACKENDS:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(sdpa_kernel(SDPA_BACKENDS[column]))
    return stack


def grad_checks(d: int, causal: bool, dtype: str, fa4: Optional[_fa4.Func],
                shape: Tuple[int, int, int, int, int] = CHECK_SHAPE,
                device: str = "cuda", config: Optional[str] = None) -> List[Dict]:
    """Each column's gradients against the float64 reference, once per table and dtype:
    fa_cute.backward's (config: that backward config's), SDPA's backends' and FA4's (by
    autograd); shape as check_grads'. device: for tests."""
    fa_cute_fn = config_grads(config) if config else fa_cute_grads
    checks = [check_grads("fa_cute", fa_cute_fn, d, causal, dtype, shape, device)]
    forwards = grad_forwards(causal)
    for column in GRAD_SDPA:
        with sdpa_context(column):
            checks.append(check_grads(column, autograd_grads(forwards[column]), d, causal,
                                      dtype, shape, device))
    unsupported = _fa4.unsupported(dtype, d) if fa4 is not None else None
    if unsupported:  # not checked, and so not timed: a check that did not run
        checks.append(dict(config=_fa4.COLUMN, causal=causal, dtype=dtype, ok=False,
                           wrong=False, error=unsupported, shape=[*shape, d]))
    elif fa4 is not None:
        try:
            checks.append(check_grads(_fa4.COLUMN, autograd_grads(_fa4.bhnd_forward(fa4, causal)),
                                      d, causal, dtype, shape, device))
        except Exception as exc:  # FA4's compiler raises its own types
            checks.append(dict(config=_fa4.COLUMN, causal=causal, dtype=dtype, ok=False,
                               wrong=False, error=_fa4.first_line(exc), shape=[*shape, d]))
    for c in checks:
        print(grad_verdict(c))
    return checks


GradSkip = Dict[Tuple[int, bool, str, str], Tuple[str, bool]]


def grad_skips(checks: List[Dict]) -> Tuple[GradSkip, Optional[str]]:
    """From the gradient checks: the columns not to time per table and dtype
    ((head_dim, causal, dtype, column) -> (why, wrong result)), each said in one stderr line,
    and the first column other than FA4 whose gradients were wrong (None: none), which
    fails the run as a wrong forward does."""
    skip: GradSkip = {}
    for c in checks:
        if c["ok"]:
            continue
        if c["wrong"] and c["config"] != _fa4.COLUMN:
            return skip, c["config"]
        d, causal = c["shape"][-1], c["causal"]
        skip[d, causal, c["dtype"], c["config"]] = c["error"], c["wrong"]
        progress(f"{c['config']} {c['dtype']} d={d} {'causal' if causal else 'non-causal'}: "
                 f"not timed ({'wrong' if c['wrong'] else '-'}): {c['error']}")
    return skip, None


def time_grad_row(grad_pass: str, dtype_name: str, seqlen: int, head_dim: int, causal: bool,
                  columns: List[str], l2_bytes: int, timer: Timer, rounds: int,
                  fa4: Optional[_fa4.Func] = None, deterministic: bool = False,
                  config: Optional[str] = None) -> Dict:
    """Time grad_pass ("bwd", "fwdbwd") of every column for one (dtype, seqlen), interleaved;
    ms and TFLOP/s per column, as time_row's record with kind "backward" or "fwdbwd".
    deterministic (--bwd): fa_cute's column runs fa_cute.backward(deterministic=True);
    config (--bwd): fa_cute's column runs that backward config."""
    batch, nheads, fwd_flops = problem(seqlen, head_dim, causal)
    flops = pass_flops(fwd_flops, grad_pass)
    sets = input_sets(batch, nheads, seqlen, head_dim, DTYPES[dtype_name], l2_bytes)
    forwards = grad_forwards(causal)
    if grad_pass == "bwd":
        forwards["fa_cute"] = None  # fa_cute.backward itself, on the saved out and LSE
    timings = {c: functools.partial(time_grad_pass, forwards[c], sets, timer, causal, grad_pass,
                                    context=functools.partial(sdpa_context, c),
                                    deterministic=deterministic and c == "fa_cute",
                                    config=config if c == "fa_cute" else None)
               for c in columns if c in forwards}
    if fa4 is not None:
        timings[_fa4.COLUMN] = functools.partial(
            time_grad_pass, _fa4.bhnd_forward(fa4, causal), sets, timer, causal, grad_pass,
            errors=(Exception,))
    ms, why = interleaved_medians(timings, rounds)
    record = dict(kind="fwdbwd" if grad_pass == "fwdbwd" else "backward", dtype=dtype_name,
                  seqlen=seqlen, batch=batch, nheads=nheads, head_dim=head_dim, causal=causal,
                  flops=flops, config=config or backward_config_name(head_dim), input_sets=len(sets),
                  deterministic=deterministic, ms=ms,
                  tflops={c: tflops(flops, t) for c, t in ms.items()},
                  not_run={c: w for c, w in why.items() if w})
    if grad_pass == "fwdbwd":
        if fa4 is not None:
            forwards[_fa4.COLUMN] = _fa4.bhnd_forward(fa4, causal)
        record["peak_mib"] = {c: fwdbwd_peak_mib(forwards[c], sets[0], sdpa_context(c))
                              if ms.get(c) is not None else None
                              for c in columns if c in forwards}
    return record


def peak_memory_mib(step, cuda=torch.cuda) -> float:
    """MiB that `step()` allocates at its peak beyond what was allocated before it:
    max_memory_allocated over a second call, less memory_allocated before it (the first
    call is a warm-up: one-time workspaces, FA4's compilation). cuda: torch.cuda, or a
    stand-in with its four functions (tests)."""
    step()
    cuda.synchronize()
    cuda.reset_peak_memory_stats()
    base = cuda.memory_allocated()
    result = step()
    cuda.synchronize()
    peak = cuda.max_memory_allocated() - base
    del result
    return peak / 2**20


def fwdbwd_peak_mib(forward: Forward, inputs, context, cuda=torch.cuda) -> Optional[float]:
    """The peak memory (MiB) of one forward and backward (torch.autograd.grad of the output)
    of `forward` on inputs (q, k, v), in `context` (SDPA's backend), beyond the inputs and
    dout; None where the column raises (its timing then failed too)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    dout = torch.randn_like(leaves[0])
    try:
        with context:
            return peak_memory_mib(lambda: torch.autograd.grad(forward(*leaves), leaves, dout),
                                   cuda)
    except Exception:  # noqa: BLE001 - as the timing's errors: the cell shows n/a
        return None


def backward_config_name(head_dim: int) -> str:
    """The backward config fa_cute runs for head_dim on this GPU, "-" where there is none."""
    try:
        return _C.default_backward_config(head_dim, *_configs.gpu_of(
            torch.cuda.current_device())[1])
    except (AttributeError, ValueError):  # a build without the backward; a head dim
        return "-"


def grad_main(args: argparse.Namespace, props, cc: Tuple[int, int], timer_name: str,
              timer: Timer, pyplot) -> int:
    """--bwd and --fwdbwd: gradient checks per table and dtype, then a TFLOP/s table per head
    dim and mask. A column whose check could not run (fa_cute without a backward for the
    head dim, a backend refusing it) is not timed and shows "-"; a wrong one fails the run
    (fa_cute, SDPA) or shows "wrong" (FA4, an optional peer)."""
    func, fa4_why = _fa4.load(args.fa4_site)
    if func is None:
        progress(f"fa_cute.bench: no {_fa4.COLUMN} column: flash_attn.cute does not import "
                 f"({fa4_why}); to add it: {_fa4.HOW}")
    head_dims = args.headdim
    if args.config:
        known = {c["name"]: c["head_dim"] for c in getattr(_C, "backward_configs", list)()}
        if args.config not in known:
            print(f"fa_cute.bench: --config {args.config}: not a backward config of this build "
                  f"({', '.join(sorted(known)) or 'none'})")
            return 2
        head_dims = [d for d in head_dims if d == known[args.config]]
        if not head_dims:
            print(f"fa_cute.bench: --config {args.config} is a head dim {known[args.config]} "
                  f"backward config; add --headdim {known[args.config]}")
            return 2
    groups = [(d, causal) for d in head_dims for causal in args.causal]
    checks = [c for (d, causal), dtype in itertools.product(groups, args.dtype)
              for c in grad_checks(d, causal, dtype, func, config=args.config)]
    skip, wrong = grad_skips(checks)
    if wrong:
        print(f"fa_cute.bench: {wrong}'s gradients are wrong; nothing is timed")
        return 1
    columns = ["fa_cute"] + GRAD_SDPA + ([_fa4.COLUMN] if func is not None else [])
    records = []
    row_keys = list(itertools.product(groups, itertools.product(args.dtype, args.seqlens)))
    for i, ((d, causal), (dtype, n)) in enumerate(row_keys, start=1):
        progress(f"[{i}/{len(row_keys)}] {dtype} {args.grad_pass} N={n} d={d} "
                 f"{'causal' if causal else 'non-causal'}")
        timed = [c for c in columns if (d, causal, dtype, c) not in skip]
        row_fa4 = func if _fa4.COLUMN in timed else None
        record = time_grad_row(args.grad_pass, dtype, n, d, causal, timed, props.L2_cache_size,
                               timer, args.rounds, row_fa4, args.deterministic, args.config)
        for c in columns:
            if c not in timed:
                not_timed(record, c, *skip[d, causal, dtype, c])
        records.append(record)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=props.name, compute_capability=list(cc), torch=torch.__version__,
                           fa_cute=fa_cute.__version__, build_info=_C.build_info(),
                           timer=timer_name, grad_pass=args.grad_pass, checks=checks,
                           columns={c: c for c in columns},
                           fa4=dict(version=_fa4.version(), site=args.fa4_site)
                           if func is not None else None, rows=records), f, indent=2)
        print(f"wrote {args.json}")
    tables = [([r for r in records if (r["head_dim"], r["causal"]) == group], group)
              for group in groups]
    for rows, (d, causal) in tables:
        if pyplot is not None:
            path = plot_path(args.plot, d, causal, len(tables) > 1)
            plot(pyplot, rows, [(c, c) for c in columns], path,
                 f"{props.name}, {table_title(rows)}")
            print(f"wrote {path}")
    for r in records:
        for column, why in r["not_run"].items():
            if (r["head_dim"], r["causal"], r["dtype"], column) not in skip:
                print(f"{r['dtype']} {row_label(r)} {column}: n/a ({why})")
    for rows, _ in tables:
        print(render(rows, ["fa_cute"], columns[1:]))
        if args.grad_pass == "fwdbwd":
            print(render_memory(rows, columns))
    return 0


def render_memory(records: List[Dict], columns: List[str]) -> str:
    """--fwdbwd's peak-memory table of one head dim and mask: MiB per column (n/a where the
    column did not run), then fa_cute's memory relative to cuDNN's and FLASH's."""
    anchors = [a for a in ("CUDNN", "FLASH") if a in columns]
    header = ["dtype", "N", "B", "H"] + columns + [f"fa/{a}" for a in anchors]
    rows = [[r["dtype"], str(r["seqlen"]), str(r["batch"]), str(r["nheads"])]
            + [_cell(r, c, "peak_mib", ".0f") for c in columns]
            + [_ratio(r, "fa_cute", a, "peak_mib") for a in anchors] for r in records]
    return (f"peak memory (MiB) of one forward+backward beyond q, k, v and dout, "
            f"{table_title(records)}\n" + format_table(header, rows))


FA4Skip = Dict[Tuple[int, bool, str], Tuple[str, bool]]


def find_fa4(args: argparse.Namespace, groups: List[Tuple[int, bool]]
             ) -> Tuple[Optional[_fa4.Func], FA4Skip, List[Dict]]:
    """FA4's flash_attn_func (None where it does not import: no FA4 column), the tables and
    dtypes it is not timed on ((head_dim, causal, dtype) -> (why, wrong result)), and its
    checks. A check per table and dtype, since FA4 compiles a kernel for each, on the shape
    of fa_cute's checks, before anything is timed; FA4 failing one never fails the run."""
    func, why = _fa4.load(args.fa4_site)
    if func is None:
        progress(f"fa_cute.bench: no {_fa4.COLUMN} column: flash_attn.cute does not import "
                 f"({why}); to add it: {_fa4.HOW}")
        return None, {}, []
    where = getattr(sys.modules.get(func.__module__), "__file__", func.__module__)
    print(f"{_fa4.COLUMN}: flash-attn-4 {_fa4.version() or '(version unknown)'}, {where}")
    shape = (*DECODE_CHECK, args.nheads, args.nheads_kv) if args.decode else CHECK_SHAPE
    skip: FA4Skip = {}
    checks = []
    for (d, causal), dtype in itertools.product(groups, args.dtype):
        why, wrong = _fa4.unsupported(dtype, d), False
        if why is None:
            c = _fa4.check(func, d, causal, dtype, shape)
            print(_fa4.verdict(c))
            checks.append(c)
            why, wrong = c.get("error"), c["wrong"]
        if why:
            skip[d, causal, dtype] = why, wrong
            progress(f"{_fa4.COLUMN} {dtype} d={d} {'causal' if causal else 'non-causal'}: "
                     f"not timed ({'wrong' if wrong else '-'}): {why}")
    return func, skip, checks


def not_timed(record: Dict, column: str, why: str, wrong: bool) -> None:
    """Enter a column that was not timed for this row: None, the reason, and "wrong" as its
    cell where its result failed the check."""
    metric = "gbps" if record["kind"] == "decode" else "tflops"
    record["ms"][column] = record[metric][column] = None
    record["not_run"][column] = why
    if wrong:
        record["wrong"] = record.get("wrong", []) + [column]
    else:
        record["dash"] = record.get("dash", []) + [column]


def row_shape(args: argparse.Namespace, seqlen: int, head_dim: int
              ) -> Tuple[int, int, int, int, int]:
    """(batch, nheads, seqlen_q, nheads_k, seqlen_k) of a row: --decode's shape with a KV
    cache of seqlen, else the forward benchmark's for seqlen and head_dim."""
    if args.decode:
        return args.batch, args.nheads, 1, args.nheads_kv, seqlen
    batch, nheads, _ = problem(seqlen, head_dim)
    return batch, nheads, seqlen, nheads, seqlen


def plot_path(path: str, head_dim: int, causal: bool, several: bool) -> str:
    """path itself for a single table, else path with '-d{head_dim}-{mask}' before the
    extension, a file per table."""
    if not several:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}-d{head_dim}-{'causal' if causal else 'noncausal'}{ext or '.png'}"


def row_label(r: Dict) -> str:
    """'N=4096 d=128 causal' or 'decode N_k=4096 d=128', for the n/a lines."""
    if r.get("kind") == "decode":
        return f"decode N_k={r['seqlen_k']} d={r['head_dim']}"
    return (f"N={r['seqlen']} d={r['head_dim']} "
            f"{'causal' if r.get('causal') else 'non-causal'}")


def table_title(records: List[Dict]) -> str:
    """What a table holds: head dim, mask, and how the FLOPs or bytes are counted."""
    r = records[0]
    if r.get("kind") == "decode":
        return (f"decode (seqlen_q = 1), head dim {r['head_dim']}, B = {r['batch']}, "
                f"H = {r['nheads']}, H_kv = {r['nheads_kv']}; GB/s count Q, K, V read and "
                "O written once")
    if r.get("kind") in ("backward", "fwdbwd"):
        factor = "2.5" if r["kind"] == "backward" else "3.5"
        name = "backward" if r["kind"] == "backward" else "forward+backward"
        if r.get("causal"):
            return (f"head dim {r['head_dim']}, causal {name} (fa_cute bottom-right, SDPA "
                    f"top-left: the same mask at N_q = N_k; FLOPs {factor}x the forward's, "
                    f"halved: {factor}*2*B*H*N^2*d)")
        return (f"head dim {r['head_dim']}, non-causal {name} (FLOPs {factor}x the forward's: "
                f"{factor}*4*B*H*N^2*d)")
    if r.get("causal"):
        return (f"head dim {r['head_dim']}, causal forward (fa_cute bottom-right, SDPA "
                "top-left: the same mask at N_q = N_k; FLOPs halved: 2*B*H*N^2*d)")
    return f"head dim {r['head_dim']}, non-causal forward"


def _num(x: Optional[float], fmt: str = ".1f", missing: str = "n/a") -> str:
    return missing if x is None else format(x, fmt)


def _missing(r: Dict, column: str) -> str:
    """An empty cell: "wrong" where the column's result failed its check, "-" for FA4 (an
    optional peer), "n/a" for the others."""
    if column in r.get("wrong", ()):
        return "wrong"
    return "-" if column == _fa4.COLUMN or column in r.get("dash", ()) else "n/a"


def _cell(r: Dict, column: str, metric: str = "tflops", fmt: str = ".1f") -> str:
    return _num(r[metric].get(column), fmt, _missing(r, column))


def _ratio(r: Dict, column: str, anchor: str, metric: str = "tflops") -> str:
    a, b = r[metric].get(column), r[metric].get(anchor)
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def ratio_anchors(anchors: List[str]) -> List[str]:
    """The anchors that get a ratio column, in RATIO_ANCHORS' order (cuDNN first)."""
    return [a for a in RATIO_ANCHORS if a in anchors]


def render(records: List[Dict], fa_columns: List[str], sdpa: List[str]) -> str:
    """The TFLOP/s table of one head dim and mask: one row per (dtype, seqlen), n/a where a
    column did not run. sdpa: the anchor columns (SDPA's backends, then FA4 where present)."""
    columns = fa_columns + sdpa
    ratios = ratio_anchors(sdpa)
    header = (["dtype", "N", "B", "H"] + columns + [f"fa/{a}" for a in ratios]
              + ["fa_cute config"])
    rows = [[r["dtype"], str(r["seqlen"]), str(r["batch"]), str(r["nheads"])]
            + [_cell(r, c) for c in columns]
            + [_ratio(r, "fa_cute", a) for a in ratios]
            + [r["config"]] for r in records]
    return f"TFLOP/s, {table_title(records)}\n" + format_table(header, rows)


def render_ladder(records: List[Dict], fa_columns: List[Column], sdpa: List[str]) -> str:
    """--ladder's table: each rung and fa_cute as 'TFLOP/s (ratio to FLASH)', then the
    anchors' TFLOP/s."""
    def cell(r: Dict, column: str) -> str:
        t = r["tflops"][column]
        return "n/a" if t is None else f"{t:.1f} ({_ratio(r, column, 'FLASH')})"

    header = ["dtype", "N"] + [label for _, label in fa_columns] + sdpa + ["fa_cute config"]
    rows = [[r["dtype"], str(r["seqlen"])] + [cell(r, key) for key, _ in fa_columns]
            + [_cell(r, c) for c in sdpa] + [r["config"]] for r in records]
    return (f"TFLOP/s (ratio to FLASH), {table_title(records)}, B = {TOKENS} / N, H = {WIDTH} / d\n"
            + format_table(header, rows))


def render_decode(records: List[Dict], fa_columns: List[str], sdpa: List[str]) -> str:
    """--decode's table: microseconds per column, then GB/s per column, then fa_cute's
    speed relative to CUDNN, FA4 (where present) and FLASH."""
    columns = fa_columns + sdpa
    ratios = ratio_anchors(sdpa)
    header = (["dtype", "N_k"] + [f"{c} us" for c in columns] + [f"{c} GB/s" for c in columns]
              + [f"fa/{a}" for a in ratios] + ["fa_cute config"])
    us = [dict(r, us={c: None if t is None else t * 1e3 for c, t in r["ms"].items()})
          for r in records]
    rows = [[r["dtype"], str(r["seqlen_k"])]
            + [_cell(r, c, "us") for c in columns]
            + [_cell(r, c, "gbps", ".0f") for c in columns]
            + [_ratio(r, "fa_cute", a, "gbps") for a in ratios]
            + [r["config"]] for r in us]
    return f"us and GB/s, {table_title(records)}\n" + format_table(header, rows)


def plot(pyplot, records: List[Dict], columns: List[Column], path: str, title: str,
         metric: str = "tflops") -> None:
    """TFLOP/s (metric "tflops") or GB/s ("gbps") against N, a line per column, one panel
    per dtype."""
    xkey = "seqlen_k" if metric == "gbps" else "seqlen"
    dtypes = list(dict.fromkeys(r["dtype"] for r in records))
    fig, axes = pyplot.subplots(1, len(dtypes), figsize=(7 * len(dtypes), 5), squeeze=False,
                                sharey=True)
    for ax, dtype in zip(axes[0], dtypes):
        rows = [r for r in records if r["dtype"] == dtype]
        for key, label in columns:
            points = [(r[xkey], r[metric][key]) for r in rows if r[metric][key] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        seqlens = [r[xkey] for r in rows]
        ax.set_xscale("log", base=2)
        ax.set_xticks(seqlens, [str(n) for n in seqlens])
        ax.set(title=dtype, xlabel="N_k (KV cache length)" if metric == "gbps" else "N (seqlen)",
               ylabel="GB/s" if metric == "gbps" else "TFLOP/s", ylim=(0, None))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(textwrap.fill(title, 70 * len(dtypes)))
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    sys.exit(main())
