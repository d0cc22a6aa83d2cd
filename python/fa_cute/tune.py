"""`python -m fa_cute.tune`: time every production config that can run each shape asked for,
print a table per head dim with each shape's winner marked (last), and write the winners to
the tuning cache, where `fa_cute.forward(..., config="auto")` finds them. --seqlens, --headdim
and --dtype take comma-separated lists, as in `python -m fa_cute.bench`.

Shapes are the benchmark's (B = 16384 / N, H = 2048 / d; `python -m fa_cute.bench`), timed
the same way, non-causal, causal (bottom-right, as `forward`; seqlen_q = seqlen_k = N, so
also what `sdpa` runs) or both (--causal). A winner is stored under (GPU, dtype, head dim,
causality, seqlen bucket), the bucket being the next power of two >= N clamped to
[128, 65536]; where several seqlens asked for fall in one bucket, the largest one's winner
is kept. Every config is checked against a float64 reference before it is timed. Tuning
only ever happens here: forward reads the cache and never times anything itself.

--causal true (or both) times causal attention (bottom-right, as forward runs it) and fills
the causal keys.

--bwd tunes the backward instead: every built backward config (`_C.backward_configs()`) that
runs the head dim and dtype on this GPU is checked (gradients against float64) and timed on
a forward's saved output and LSE, and each shape's winner is stored under
`backward_key(...)`, 'bwd-' + the forward's key ('bwd-bf16-d128-noncausal-n4096'), which no
forward key (they start with the dtype) can equal; --configs then names backward configs.
"""

import argparse
import functools
import sys
from typing import Dict, List, Optional, Sequence

import torch

import fa_cute
from fa_cute import _C, _cache, _configs, _tuning
from fa_cute._timing import (DTYPES, Timer, add_shape_args, banner, check_grads, config_grads,
                             format_table, grad_verdict, input_sets, interleaved_medians,
                             make_timer, no_gpu, pass_flops, problem, run_checks, tflops,
                             time_fa_cute, time_grad_pass)

BACKWARD_PREFIX = _tuning.BACKWARD_PREFIX
backward_key = _tuning.backward_key


def backward_configs() -> List[dict]:
    """The built backward configs (none in a build without the backward), shaped like
    forward configs for `_configs.tunable` (never a ladder rung)."""
    return [dict(c, rung=None) for c in getattr(_C, "backward_configs", list)()]


CAUSAL_CHOICES = {"false": (False,), "true": (True,), "both": (False, True)}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fa_cute.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, dtype_default="bf16,fp16")
    p.add_argument("--configs", type=lambda text: text.split(","), metavar="NAMES",
                   help="comma-separated production configs to choose from (default: every "
                        "built one that runs the shape)")
    p.add_argument("--causal", choices=list(CAUSAL_CHOICES), default="false",
                   help="tune non-causal attention (false), causal (true) or both "
                        "(default: %(default)s)")
    p.add_argument("--bwd", action="store_true",
                   help="tune the backward's configs (cache keys 'bwd-...') instead of the "
                        "forward's")
    p.add_argument("--dry-run", action="store_true",
                   help="time and print the table, but leave the cache as it is")
    args = p.parse_args(argv)
    args.causal = CAUSAL_CHOICES[args.causal]
    head_dims = sorted({c["head_dim"] for c in fa_cute.configs() if c["rung"] is None})
    for d in args.headdim:
        if d not in head_dims:
            p.error(f"--headdim: {d} is not a built head dim; built: "
                    f"{', '.join(map(str, head_dims))}")
    if args.bwd:
        production = {c["name"] for c in backward_configs()}
        if not production:
            p.error("--bwd: this build of fa_cute._C has no backward configs")
        for name in args.configs or []:
            if name not in production:
                p.error(f"--configs: {name!r} is not a built backward config (--bwd); built: "
                        f"{', '.join(sorted(production))}")
        return args
    production = {c["name"] for c in fa_cute.configs() if c["rung"] is None}
    for name in args.configs or []:
        if name not in production:
            p.error(f"--configs: {name!r} is not a built production config (ladder configs are "
                    f"never picked by config='auto'); built: {', '.join(sorted(production))}")
    return args


class _Counter:
    """tqdm's progress-bar calls used here, as one plain line per step on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.text = total, 0, ""

    def set_postfix_str(self, text: str) -> None:
        self.text = text

    def update(self, n: int = 1) -> None:
        self.done += n
        print(f"[{self.done}/{self.total}] {self.text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int):
    """tqdm's bar when tqdm is installed, else a counter."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _Counter(total)
    return tqdm(total=total, unit="timing", file=sys.stderr)


def tune(shapes: List[Dict], l2_bytes: int, timer: Timer, rounds: int,
         backward: bool = False) -> None:
    """Time each shape's candidate configs (interleaved rounds, medians); fill each shape's
    "ms", "not_run" and "winner". backward: the candidates are backward configs, each timed
    as the backward kernel alone on a forward's saved output and LSE."""
    bar = progress_bar(rounds * sum(len(s["candidates"]) for s in shapes))
    try:
        for s in shapes:
            sets = input_sets(s["batch"], s["nheads"], s["seqlen"], s["head_dim"],
                              DTYPES[s["dtype"]], l2_bytes)

            def step(name: str, s: Dict = s) -> None:
                bar.set_postfix_str(f"{s['dtype']} d={s['head_dim']} {mask_label(s['causal'])} "
                                    f"N={s['seqlen']} {name}")
                bar.update(1)

            if backward:
                timings = {name: functools.partial(time_grad_pass, None, sets, timer,
                                                   s["causal"], config=name)
                           for name in s["candidates"]}
            else:
                timings = {name: functools.partial(time_fa_cute, name, sets, timer,
                                                   causal=s["causal"])
                           for name in s["candidates"]}
            s["ms"], s["not_run"] = interleaved_medians(timings, rounds, step)
            timed = {n: t for n, t in s["ms"].items() if t is not None}
            s["winner"] = min(timed, key=timed.get) if timed else None
    finally:
        bar.close()


def render(shapes: List[Dict], configs: List[str], kind: str = "forward") -> str:
    """ms and TFLOP/s per config and shape, '*' on the winner, '-' where it cannot run."""
    def cell(s: Dict, name: str) -> str:
        if name not in s["candidates"]:
            return "-"
        ms = s["ms"][name]
        if ms is None:
            return "n/a"
        return f"{ms:.3f} ms {tflops(s['flops'], ms):.1f}" + (" *" if name == s["winner"] else "")

    header = ["dtype", "mask", "N", "B", "H"] + configs + ["winner"]
    rows = [[s["dtype"], mask_label(s["causal"]), str(s["seqlen"]), str(s["batch"]),
             str(s["nheads"])]
            + [cell(s, name) for name in configs] + [s["winner"] or "none"] for s in shapes]
    backward = " (FLOPs 2.5x the forward's)" if kind == "backward" else ""
    return (f"ms and TFLOP/s per config, head dim {shapes[0]['head_dim']}, {kind}{backward} "
            "(* = fastest; causal TFLOP/s count the visible half of the scores)\n"
            + format_table(header, rows))


def mask_label(causal: bool) -> str:
    return "causal" if causal else "full"


def causal_flops(flops: int, causal: bool) -> int:
    """FlashAttention's convention: a causal square problem does half the work."""
    return flops // 2 if causal else flops


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(no_gpu("fa_cute.tune"))
        return 1
    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    gpu, cc = _configs.gpu_of(device)
    smem_limit = _configs.smem_limit_of(device)
    timer_name, timer = make_timer(args.warmup, args.rep / args.rounds)
    print(banner(props, timer_name + f", median of {args.rounds} interleaved rounds"))

    kind = "backward" if args.bwd else "forward"
    production = [c for c in (backward_configs() if args.bwd else fa_cute.configs())
                  if c["rung"] is None and (args.configs is None or c["name"] in args.configs)]
    shapes = []
    for head_dim in args.headdim:
        for dtype in args.dtype:
            candidates = [c["name"] for c in production
                          if _configs.tunable(c, dtype, head_dim, cc, smem_limit)]
            for causal in args.causal:
                for seqlen in sorted(set(args.seqlens)):  # ascending: a bucket keeps its largest N
                    batch, nheads, flops = problem(seqlen, head_dim, causal)
                    key = (backward_key if args.bwd else _tuning.key)(dtype, head_dim, causal,
                                                                      seqlen)
                    shapes.append(dict(dtype=dtype, causal=causal, seqlen=seqlen, batch=batch,
                                       nheads=nheads, head_dim=head_dim,
                                       flops=pass_flops(flops, "bwd") if args.bwd else flops,
                                       candidates=candidates, key=key, ms={}, not_run={},
                                       winner=None))
    columns = {d: [c["name"] for c in production
                   if any(c["name"] in s["candidates"] for s in shapes if s["head_dim"] == d)]
               for d in args.headdim}
    for d, names in columns.items():
        if not names:
            print(f"fa_cute.tune: no config among {', '.join(c['name'] for c in production)} "
                  f"runs head dim {d} on this GPU (compute capability {cc[0]}.{cc[1]}"
                  + (f", {smem_limit} bytes of shared memory per block)" if smem_limit else ")"))
            return 2
    masks = sorted({s["causal"] for s in shapes})
    if args.bwd:
        checks = [check_grads(name, config_grads(name), d, causal, dtype)
                  for d, names in columns.items() for name in names for causal in masks
                  for dtype in args.dtype
                  if any(name in s["candidates"] for s in shapes
                         if (s["head_dim"], s["dtype"]) == (d, dtype))]
        for c in checks:
            print(grad_verdict(c))
    else:
        checks = [c for d, names in columns.items() for c in run_checks(names, d, causal=masks)]
    if not all(c["ok"] for c in checks):
        return 1

    tune(shapes, props.L2_cache_size, timer, args.rounds, backward=args.bwd)
    winners = {s["key"]: s["winner"] for s in shapes if s["winner"]}
    if args.dry_run:
        print(f"--dry-run: the cache {_tuning.cache_path()} is left as it is")
    elif winners:
        try:
            path = _tuning.write({gpu: winners})
        except OSError as exc:
            print(f"fa_cute.tune: cannot write the tuning cache: {exc}")
            return 1
        _cache.forget_tuning()
        print(f"wrote {len(winners)} winners for {gpu} to {path}")
    for s in shapes:
        where = f"{s['dtype']} d={s['head_dim']} {mask_label(s['causal'])} N={s['seqlen']}"
        for name, why in s["not_run"].items():
            if why:
                print(f"{where} {name}: n/a ({why})")
        if not s["candidates"]:
            print(f"{where}: no config to tune (none of them runs it)")
    for d, names in columns.items():
        print(render([s for s in shapes if s["head_dim"] == d], names, kind))
    return 0 if all(s["winner"] for s in shapes) else 1


if __name__ == "__main__":
    sys.exit(main())
