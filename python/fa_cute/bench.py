"""`python -m fa_cute.bench`: check fa_cute against a float64 reference, then time it next
to PyTorch's scaled_dot_product_attention backends and print a TFLOP/s table (last).

Shapes follow FlashAttention's benchmark: batch * seqlen = 16384 tokens and
nheads * headdim = 2048, so every row moves the same number of bytes and only the
attention's quadratic part grows. FLOPs = 4 * batch * nheads * seqlen^2 * headdim (two
matrix products, non-causal). fa_cute and SDPA read the same (batch, nheads, seqlen,
headdim) tensors: fa_cute through `.transpose(1, 2)` views, without copies.
"""

import argparse
import itertools
import json
import math
import statistics
import sys
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fa_cute
from fa_cute import _C
from fa_cute._reference import attention_ref, check_close

NO_GPU = "fa_cute.bench needs a CUDA GPU; none is visible to PyTorch."
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SDPA_BACKENDS = {"FLASH": SDPBackend.FLASH_ATTENTION, "CUDNN": SDPBackend.CUDNN_ATTENTION,
                 "EFFICIENT": SDPBackend.EFFICIENT_ATTENTION}
TOKENS = 16384  # batch * seqlen
WIDTH = 2048    # nheads * headdim
CHECK_SHAPE = (2, 1024, 4)  # batch, seqlen, nheads of the correctness check

Timer = Callable[[Callable[[], object]], float]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    def ints(text: str) -> List[int]:
        return [int(x) for x in text.split(",")]

    def dtypes(text: str) -> List[str]:
        names = text.split(",")
        for name in names:
            if name not in DTYPES:
                raise argparse.ArgumentTypeError(f"dtype {name!r}: choose from bf16, fp16")
        return names

    p = argparse.ArgumentParser(prog="python -m fa_cute.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqlens", type=ints, default="1024,2048,4096,8192,16384",
                   help="comma-separated seqlens, one row each (default: %(default)s)")
    p.add_argument("--headdim", type=int, default=128, help="head dim (default: 128)")
    p.add_argument("--dtype", type=dtypes, default="bf16",
                   help="bf16, fp16 or bf16,fp16 (default: %(default)s)")
    p.add_argument("--config", help="time this config instead of the default heuristic's pick")
    p.add_argument("--all-configs", action="store_true", help="add a column per built config")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--warmup", type=float, default=25.0, help="warm-up per timing, ms")
    p.add_argument("--rep", type=float, default=100.0, help="measured time per timing, ms")
    return p.parse_args(argv)


def make_timer(warmup_ms: float, rep_ms: float) -> Tuple[str, Timer]:
    """Triton's do_bench (median of CUDA-event timings, L2 flushed between runs) when Triton
    is installed, else a CUDA-event loop of our own; both return milliseconds."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return "CUDA events (median)", lambda fn: _event_median(fn, warmup_ms, rep_ms)
    return ("triton.testing.do_bench (median)",
            lambda fn: do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def _event_median(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    """Median of per-call CUDA-event times; call counts sized from a 5-call estimate."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(max(1, int(rep_ms / estimate)))]
    for s, e in events:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def input_sets(batch: int, nheads: int, seqlen: int, head_dim: int, dtype: torch.dtype,
               l2_bytes: int) -> List[Tuple[torch.Tensor, ...]]:
    """Random (batch, nheads, seqlen, head_dim) q, k, v; several sets when one set's
    q + k + v + output fits in twice the L2 cache, so that cycling through them times
    memory rather than the cache."""
    set_bytes = 4 * batch * nheads * seqlen * head_dim * dtype.itemsize
    count = 1 if set_bytes > 2 * l2_bytes else math.ceil(4 * l2_bytes / set_bytes)
    shape = (batch, nheads, seqlen, head_dim)
    return [tuple(torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
            for _ in range(count)]


def cycling(fn: Callable[..., object], sets: List[Tuple[torch.Tensor, ...]],
            **kwargs) -> Callable[[], object]:
    """A no-argument call of fn on the next input set each time."""
    sets_iter = itertools.cycle(sets)
    return lambda: fn(*next(sets_iter), **kwargs)


def fa_cute_bhnd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """fa_cute.forward on (batch, nheads, seqlen, headdim) tensors, via transposed views."""
    return fa_cute.forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kwargs)


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


def time_fa_cute(config: Optional[str], sets, timer: Timer) -> Tuple[Optional[float], str]:
    """(ms, "") or (None, why); a config that does not take the shape is not an error."""
    fn = cycling(fa_cute_bhnd, sets, config=config)
    try:
        fn()
        return timer(fn), ""
    except ValueError as exc:
        return None, str(exc)


def check(config: str, head_dim: int) -> Dict:
    """bf16 output of `config`, written over NaN, against the float64 reference."""
    batch, seqlen, nheads = CHECK_SHAPE
    q, k, v = (torch.randn(batch, seqlen, nheads, head_dim, device="cuda").to(torch.bfloat16)
               for _ in range(3))
    scale = 1.0 / math.sqrt(head_dim)
    out = torch.full_like(q, math.nan)
    fa_cute.forward(q, k, v, config=config, out=out)
    result = {"config": config, "shape": [batch, seqlen, nheads, head_dim]}
    try:
        max_err, plain_err = check_close(out, attention_ref(q, k, v, scale),
                                         attention_ref(q, k, v, scale, upcast=False))
        result.update(ok=True, max_err=max_err, plain_err=plain_err)
    except AssertionError as exc:
        result.update(ok=False, error=str(exc))
    return result


def time_row(dtype_name: str, seqlen: int, args: argparse.Namespace, extra: List[str],
             cc: Tuple[int, int], l2_bytes: int, timer: Timer) -> Dict:
    """Time every column for one (dtype, seqlen) on shared inputs; ms and TFLOP/s per column."""
    batch, nheads = max(1, TOKENS // seqlen), max(1, WIDTH // args.headdim)
    flops = 4 * batch * nheads * seqlen * seqlen * args.headdim
    sets = input_sets(batch, nheads, seqlen, args.headdim, DTYPES[dtype_name], l2_bytes)
    config = args.config or _C.default_config(args.headdim, seqlen, seqlen, *cc)
    ms, why = {}, {}
    for column, name in [("fa_cute", config)] + [(name, name) for name in extra]:
        ms[column], why[column] = time_fa_cute(name, sets, timer)
    for column, backend in SDPA_BACKENDS.items():
        ms[column], why[column] = time_sdpa(backend, sets, timer)
    return dict(dtype=dtype_name, seqlen=seqlen, batch=batch, nheads=nheads,
                head_dim=args.headdim, flops=flops, config=config, input_sets=len(sets), ms=ms,
                tflops={c: None if t is None else flops / (t * 1e9) for c, t in ms.items()},
                not_run={c: w for c, w in why.items() if w})


def format_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU)
        return 1
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    cc = (props.major, props.minor)
    build = _C.build_info()
    timer_name, timer = make_timer(args.warmup, args.rep)
    print(f"GPU: {props.name} (compute capability {cc[0]}.{cc[1]}, "
          f"{props.multi_processor_count} SMs, L2 {props.L2_cache_size // 2**20} MiB)")
    print(f"torch {torch.__version__}; fa_cute {fa_cute.__version__} (CUTLASS "
          f"{build['cutlass_version']}, archs {build['archs']}); timing: {timer_name}")

    extra = [c["name"] for c in fa_cute.configs()
             if args.all_configs and c["head_dim"] == args.headdim]
    try:
        checked = args.config or _C.default_config(args.headdim, CHECK_SHAPE[1],
                                                   CHECK_SHAPE[1], *cc)
        checks = [check(name, args.headdim) for name in dict.fromkeys([checked] + extra)]
    except ValueError as exc:  # an unknown --config, an unsupported --headdim
        print(f"fa_cute.bench: {exc}")
        return 2
    for c in checks:
        verdict = (f"max abs error {c['max_err']:.2e} (plain bf16: {c['plain_err']:.2e}), ok"
                   if c["ok"] else f"FAILED: {c['error']}")
        print(f"check {c['config']}, bf16 {tuple(c['shape'])}: {verdict}")
    if not all(c["ok"] for c in checks):
        return 1

    records = [time_row(dtype_name, seqlen, args, extra, cc, props.L2_cache_size, timer)
               for dtype_name, seqlen in itertools.product(args.dtype, args.seqlens)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=props.name, compute_capability=list(cc), torch=torch.__version__,
                           fa_cute=fa_cute.__version__, build_info=build, timer=timer_name,
                           checks=checks, rows=records), f, indent=2)
        print(f"wrote {args.json}")
    for r in records:
        for column, why in r["not_run"].items():
            print(f"{r['dtype']} N={r['seqlen']} {column}: n/a ({why})")
    print(render(records, extra))
    return 0


def render(records: List[Dict], extra: List[str]) -> str:
    """The TFLOP/s table: one row per (dtype, seqlen), n/a where a column did not run."""
    def num(x: Optional[float], fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    def ratio(r: Dict, other: str) -> str:
        a, b = r["tflops"]["fa_cute"], r["tflops"][other]
        return "n/a" if a is None or b is None else f"{a / b:.2f}x"

    columns = ["fa_cute"] + extra + list(SDPA_BACKENDS)
    header = ["dtype", "N", "B", "H"] + columns + ["fa/FLASH", "fa/CUDNN", "fa_cute config"]
    rows = [[r["dtype"], str(r["seqlen"]), str(r["batch"]), str(r["nheads"])]
            + [num(r["tflops"][c], ".1f") for c in columns]
            + [ratio(r, "FLASH"), ratio(r, "CUDNN"), r["config"]] for r in records]
    return f"TFLOP/s, head dim {records[0]['head_dim']}, non-causal forward\n" + \
        format_table(header, rows)


if __name__ == "__main__":
    sys.exit(main())
