"""What `python -m fa_cute.bench` and `python -m fa_cute.tune` share, so that a tuned winner
and a benchmark row are measured the same way: the problem shapes, the command-line options
for them, random inputs that defeat the L2 cache, the timer, the correctness check a config
passes before it is timed, and the table format.

Shapes follow FlashAttention's benchmark: batch * seqlen = 16384 tokens and
nheads * headdim = 2048, so every seqlen moves the same number of bytes and only the
attention's quadratic part grows. FLOPs = 4 * batch * nheads * seqlen_q * seqlen_k * headdim
(two matrix products), halved when causal: FlashAttention's convention, which for
seqlen_q == seqlen_k counts N^2 / 2 of the N (N + 1) / 2 visible scores. A decode step
(one query row) is memory-bound and is measured in bytes instead: Q, K and V read once and
O written once. Inputs are (batch, nheads, seqlen, headdim) tensors, SDPA's layout; fa_cute
reads them through `.transpose(1, 2)` views, without copies.
"""

import argparse
import contextlib
import itertools
import math
import os
import random
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import fa_cute
from fa_cute._backward import (backward_kernel_args, backward_work_buffers, semaphore_arg,
                               validate_backward)
from fa_cute._launch import current_stream
from fa_cute._reference import attention_grads_ref, attention_ref, check_close

__all__ = ["CAUSAL_CHOICES", "CHECK_SHAPE", "DTYPES", "GRAD_PASSES", "Forward", "GradFn",
           "InputSet", "TOKENS", "Timer", "Timing", "WIDTH", "add_causal_arg", "add_shape_args",
           "attention_flops", "autograd_grads", "banner", "check", "check_grads",
           "check_inputs",
           "config_grads", "cycling", "decode_bytes", "fa_cute_bhnd", "fa_cute_grads",
           "first_line", "format_table", "gbps", "grad_verdict", "input_sets",
           "interleaved_medians", "ints", "make_timer", "no_gpu", "pass_flops", "positive_int",
           "problem", "progress", "resolve", "run_checks", "tflops", "time_fa_cute",
           "time_grad_pass", "unwritable"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOKENS = 16384  # batch * seqlen
WIDTH = 2048    # nheads * headdim
#: batch, seqlen_q, seqlen_k, nheads, nheads_k of the correctness check
CHECK_SHAPE = (2, 1024, 1024, 4, 4)
#: --causal's choices: which masks to run
CAUSAL_CHOICES = {"false": (False,), "true": (True,), "both": (False, True)}

Timer = Callable[[Callable[[], object]], float]
InputSet = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def no_gpu(prog: str) -> str:
    return f"{prog} needs a CUDA GPU; none is visible to PyTorch."


def banner(props, timer_name: str) -> str:
    """Two lines naming the GPU, the software and the timer, for the top of a report."""
    build = fa_cute._C.build_info()
    return (f"GPU: {props.name} (compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} SMs, L2 {props.L2_cache_size // 2**20} MiB)\n"
            f"torch {torch.__version__}; fa_cute {fa_cute.__version__} (CUTLASS "
            f"{build['cutlass_version']}, archs {build['archs']}); timing: {timer_name}")


def ints(text: str) -> List[int]:
    """A comma-separated list of positive integers, for argparse."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 1024,2048")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1")
    return values


def add_shape_args(p: argparse.ArgumentParser, dtype_default: str) -> None:
    """--seqlens, --headdim and --dtype (each a comma-separated list), --warmup, --rep and
    --rounds: the same options, parsed the same way, for bench and tune."""
    def dtypes(text: str) -> List[str]:
        names = text.split(",")
        for name in names:
            if name not in DTYPES:
                raise argparse.ArgumentTypeError(f"dtype {name!r}: choose from bf16, fp16")
        return names

    p.add_argument("--seqlens", type=ints, default="1024,2048,4096,8192,16384",
                   help="comma-separated seqlens, one row each (default: %(default)s)")
    p.add_argument("--headdim", type=ints, default="128",
                   help="comma-separated head dims, a table each (default: %(default)s)")
    p.add_argument("--dtype", type=dtypes, default=dtype_default,
                   help=f"bf16, fp16 or bf16,fp16 (default: {dtype_default})")
    p.add_argument("--warmup", type=float, default=25.0, help="warm-up per timing, ms")
    p.add_argument("--rep", type=float, default=100.0,
                   help="measured time per column and shape, ms, split among the rounds")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="time all columns this many times over, interleaved, and report each "
                        "column's median (default: %(default)s)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def unwritable(path: str) -> Optional[str]:
    """Why path cannot be written (None if it can), found before a run that writes it only at
    its end: opened for appending, which creates it, and removed again if it was new, so an
    existing file keeps its contents until the run replaces them."""
    existed = os.path.lexists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if not existed:
        os.remove(path)
    return None


def progress(text: str) -> None:
    """One line on stderr, so that stdout keeps only the report."""
    print(text, file=sys.stderr, flush=True)


Timing = Callable[[], Tuple[Optional[float], str]]


def interleaved_medians(timings: Dict[str, Timing], rounds: int,
                        on_step: Callable[[str], None] = lambda column: None
                        ) -> Tuple[Dict[str, Optional[float]], Dict[str, str]]:
    """Time every column in turn, `rounds` times over; (median ms per column, why not run).

    On the H100 the same kernel measured up to 15% apart when its columns were timed a
    minute apart (clock drift under sustained load); interleaving exposes every column to
    the same drift, so ratios between columns stay honest. A column that cannot run (None,
    why) is not retried. on_step(column) is called after each timing, for progress bars.
    """
    samples: Dict[str, List[float]] = {c: [] for c in timings}
    why: Dict[str, str] = {}
    order = list(timings)
    shuffle = random.Random(0).shuffle
    for r in range(rounds):
        # Rounds after the first run the columns in a new (seeded) order: in the ladder runs
        # the column timed right after cuDNN read 1-5% low even though it ran the same kernel
        # as another column (suspected: clocks lowered by cuDNN's power draw), so no column
        # should hold one place in every round; the median then drops an unlucky round.
        if r:
            shuffle(order)
        for column in order:
            if column not in why:
                ms, reason = timings[column]()
                if ms is None:
                    why[column] = reason
                else:
                    samples[column].append(ms)
            on_step(column)
    return ({c: statistics.median(v) if v and c not in why else None for c, v in samples.items()},
            why)


def add_causal_arg(p: argparse.ArgumentParser) -> None:
    """--causal false|true|both; the parsed value is a string, CAUSAL_CHOICES maps it."""
    p.add_argument("--causal", choices=list(CAUSAL_CHOICES), default="false",
                   help="non-causal (false), causal (true) or both, a table each; causal is "
                        "bottom-right for fa_cute and top-left for SDPA, the same mask where "
                        "seqlen_q == seqlen_k (default: %(default)s)")


def attention_flops(batch: int, nheads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    causal: bool = False) -> int:
    """4 * B * H * seqlen_q * seqlen_k * d (QK^T and PV), halved when causal."""
    flops = 4 * batch * nheads * seqlen_q * seqlen_k * head_dim
    return flops // 2 if causal else flops


def problem(seqlen: int, head_dim: int, causal: bool = False) -> Tuple[int, int, int]:
    """(batch, nheads, FLOPs) of the benchmark shape for seqlen and head_dim; FLOPs halved
    when causal."""
    batch, nheads = max(1, TOKENS // seqlen), max(1, WIDTH // head_dim)
    return batch, nheads, attention_flops(batch, nheads, seqlen, seqlen, head_dim, causal)


def decode_bytes(batch: int, nheads: int, nheads_k: int, seqlen_k: int, head_dim: int,
                 itemsize: int) -> int:
    """What one decode step must move at least: its query row and K/V cache read, its output
    row written (K/V heads read once, however many query heads share them)."""
    return (2 * batch * nheads * head_dim + 2 * batch * nheads_k * seqlen_k * head_dim) * itemsize


def tflops(flops: int, ms: Optional[float]) -> Optional[float]:
    return None if ms is None else flops / (ms * 1e9)


def gbps(nbytes: int, ms: Optional[float]) -> Optional[float]:
    return None if ms is None else nbytes / (ms * 1e6)


def make_timer(warmup_ms: float, rep_ms: float) -> Tuple[str, Timer]:
    """Triton's do_bench (median of CUDA-event timings, L2 flushed between runs) when Triton
    is installed, else a CUDA-event loop of our own; both return milliseconds."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return "CUDA events (median)", lambda fn: _event_median(fn, warmup_ms, rep_ms)
    return ("triton.testing.do_bench (median)",
            lambda fn: do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


#: GPU cycles of the spin before each timed call of the fallback timer (about 100 us), longer
#: than fa_cute.forward's host-side validation and launch.
_HOST_LEAD_CYCLES = 200_000


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
        # A busy GPU lets the host queue fn before its start event runs; otherwise a kernel
        # of a few microseconds (a decode step) would be timed with the host's launch
        # overhead. Triton's do_bench gets the same from its L2 flush.
        torch.cuda._sleep(_HOST_LEAD_CYCLES)
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def input_sets(batch: int, nheads: int, seqlen: int, head_dim: int, dtype: torch.dtype,
               l2_bytes: int, *, seqlen_k: Optional[int] = None,
               nheads_k: Optional[int] = None) -> List[InputSet]:
    """Random (batch, nheads, seqlen, head_dim) q and (batch, nheads_k, seqlen_k, head_dim)
    k, v (by default as q); several sets when one set's q + k + v + output fits in twice
    the L2 cache, so that cycling through them times memory rather than the cache."""
    seqlen_k = seqlen if seqlen_k is None else seqlen_k
    nheads_k = nheads if nheads_k is None else nheads_k
    q_shape, kv_shape = (batch, nheads, seqlen, head_dim), (batch, nheads_k, seqlen_k, head_dim)
    set_bytes = 2 * (math.prod(q_shape) + math.prod(kv_shape)) * dtype.itemsize
    count = 1 if set_bytes > 2 * l2_bytes else math.ceil(4 * l2_bytes / set_bytes)
    return [tuple(torch.randn(shape, device="cuda", dtype=dtype)
                  for shape in (q_shape, kv_shape, kv_shape))
            for _ in range(count)]


def cycling(fn: Callable[..., object], sets: List[InputSet], **kwargs) -> Callable[[], object]:
    """A no-argument call of fn on the next input set each time."""
    sets_iter = itertools.cycle(sets)
    return lambda: fn(*next(sets_iter), **kwargs)


def fa_cute_bhnd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """fa_cute.forward on (batch, nheads, seqlen, headdim) tensors, via transposed views."""
    return fa_cute.forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kwargs)


def resolve(config: str, dtype: torch.dtype, batch: int, nheads: int, seqlen_q: int,
            nheads_k: int, seqlen_k: int, head_dim: int, causal: bool) -> str:
    """The config fa_cute.forward(..., config=config) runs for this shape on the current GPU
    (auto's pick, or config itself); ValueError for a config it cannot run. Asked about
    dense tensors of the benchmark's layout: auto's pick depends on strides (an expanded
    tensor, stride 0, cannot take the Hopper kernel's TMA loads), so broadcast views of one
    row would not do. Nothing is written; K and V share one allocation."""
    q = torch.empty(batch, nheads, seqlen_q, head_dim, device="cuda", dtype=dtype).transpose(1, 2)
    kv = torch.empty(batch, nheads_k, seqlen_k, head_dim, device="cuda", dtype=dtype).transpose(1, 2)
    return fa_cute.resolve_config(q, kv, kv, causal=causal, config=config)


def time_fa_cute(config: str, sets: List[InputSet], timer: Timer,
                 causal: bool = False) -> Tuple[Optional[float], str]:
    """(ms, "") or (None, why); a config that does not take the shape is not an error.
    causal is bottom-right (fa_cute.forward's)."""
    fn = cycling(fa_cute_bhnd, sets, config=config, causal=causal)
    try:
        fn()
        return timer(fn), ""
    except ValueError as exc:
        return None, str(exc)


def check(config: str, head_dim: int, causal: bool = False,
          shape: Tuple[int, int, int, int, int] = CHECK_SHAPE) -> Dict:
    """bf16 output of `config`, written over NaN, against the float64 reference; shape is
    (batch, seqlen_q, seqlen_k, nheads, nheads_k), causal bottom-right as forward's."""
    batch, seqlen_q, seqlen_k, nheads, nheads_k = shape
    q = torch.randn(batch, seqlen_q, nheads, head_dim, device="cuda").to(torch.bfloat16)
    k, v = (torch.randn(batch, seqlen_k, nheads_k, head_dim, device="cuda").to(torch.bfloat16)
            for _ in range(2))
    scale = 1.0 / math.sqrt(head_dim)
    out = torch.full_like(q, math.nan)
    fa_cute.forward(q, k, v, causal=causal, config=config, out=out)
    result = {"config": config, "causal": causal, "shape": [*shape, head_dim]}
    try:
        max_err, plain_err = check_close(
            out, attention_ref(q, k, v, scale, causal=causal),
            attention_ref(q, k, v, scale, upcast=False, causal=causal))
        result.update(ok=True, max_err=max_err, plain_err=plain_err)
    except AssertionError as exc:
        result.update(ok=False, error=str(exc))
    return result


def run_checks(configs: Sequence[str], head_dim: int, causal: Sequence[bool] = (False,),
               shape: Tuple[int, int, int, int, int] = CHECK_SHAPE) -> List[Dict]:
    """`check` each config with each causal flag and print its verdict; raises ValueError
    for a config that cannot run the check (an unknown name, another head dim)."""
    checks = [check(name, head_dim, c, shape) for name in dict.fromkeys(configs)
              for c in causal]
    for c in checks:
        verdict = (f"max abs error {c['max_err']:.2e} (plain bf16: {c['plain_err']:.2e}), ok"
                   if c["ok"] else f"FAILED: {c['error']}")
        batch, seqlen_q, seqlen_k, nheads, nheads_k, d = c["shape"]
        print(f"check {c['config']}, bf16 {'causal' if c['causal'] else 'non-causal'}, "
              f"B={batch} N_q={seqlen_q} N_k={seqlen_k} H={nheads} H_kv={nheads_k} d={d}: "
              f"{verdict}")
    return checks


def format_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# The backward and forward+backward passes (`bench --bwd`, `--fwdbwd`, `tune --bwd`).

#: FLOPs of each timed pass per forward FLOP. The backward runs five matrix products of the
#: forward's size (QK^T recomputed, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q) against
#: the forward's two: 2.5x, FlashAttention's convention; forward + backward: 3.5x.
GRAD_PASSES = {"bwd": (5, 2), "fwdbwd": (7, 2)}

#: attention on (batch, nheads, seqlen, headdim) q, k, v, returning that layout too
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: (dq, dk, dv) for (batch, nheads, seqlen, headdim) q, k, v and dout, in that layout
GradFn = Callable[..., Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def pass_flops(flops: int, grad_pass: str) -> int:
    """The FLOPs of grad_pass ("bwd" or "fwdbwd") for a forward of `flops` FLOPs."""
    num, den = GRAD_PASSES[grad_pass]
    return flops * num // den


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _bnhd(*tensors: torch.Tensor) -> List[torch.Tensor]:
    """fa_cute's (batch, seqlen, nheads, headdim) views of SDPA-layout tensors, and back."""
    return [t.transpose(1, 2) for t in tensors]


def fa_cute_grads(q, k, v, dout, causal: bool = False):
    """fa_cute.backward's gradients, after one forward for the out and LSE it reads."""
    out, lse = fa_cute_bhnd(q, k, v, causal=causal, return_lse=True)
    return _bnhd(*fa_cute.backward(*_bnhd(dout, q, k, v), out, lse, causal=causal))


def _backward_launch(config: str, q, k, v, dout, causal: bool, deterministic: bool = False):
    """A no-argument call of the backward kernel `config` on one forward's out and LSE: the
    raw `_C.backward` with fa_cute.backward's validation and work buffers
    (`backward_work_buffers`, sized for `config`), the config swapped in, since
    fa_cute.backward has no config argument (tune times every one)."""
    q, k, v, dout = _bnhd(q, k, v, dout)
    out, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True)
    launch = validate_backward(dout, q, k, v, out, lse, causal=causal, bottom_right=True,
                               softmax_scale=None, deterministic=deterministic, dq=None,
                               dk=None, dv=None)
    grads = [torch.empty_like(t) for t in (q, k, v)]
    dq_accum, softmax_d, dq_semaphore = backward_work_buffers(launch, q.device, deterministic,
                                                              config=config)
    args = backward_kernel_args(launch, dout, q, k, v, out, lse, *grads, dq_accum, softmax_d)
    args = (config,) + args[1:]
    stream = current_stream(q.device.index)
    semaphore = semaphore_arg(dq_semaphore)

    def run():
        fa_cute._C.backward(*args, q.device.index, stream, **semaphore)
        return grads
    return run


def config_grads(config: str) -> GradFn:
    """The gradients of backward config `config` (SDPA layout), for its check."""
    def grads(q, k, v, dout, causal: bool = False):
        return _bnhd(*_backward_launch(config, q, k, v, dout, causal)())
    return grads


def autograd_grads(forward: Forward) -> GradFn:
    """The gradients of `forward` by autograd, for a check."""
    def grads(q, k, v, dout, causal: bool = False):
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        return torch.autograd.grad(forward(*leaves), leaves, dout)
    return grads


def check_inputs(shape: Tuple[int, int, int, int, int], head_dim: int, dtype_name: str,
                 device: str = "cuda") -> List[torch.Tensor]:
    """Random q, k, v of a check in the benchmark's layout, for shape (batch, seqlen_q,
    seqlen_k, nheads, nheads_k): drawn in float32 and rounded, as the forward's check does."""
    batch, seqlen_q, seqlen_k, nheads, nheads_k = shape
    dtype = DTYPES[dtype_name]
    return [torch.randn(batch, heads, seqlen, head_dim, device=device).to(dtype)
            for heads, seqlen in ((nheads, seqlen_q), (nheads_k, seqlen_k), (nheads_k, seqlen_k))]


def check_grads(name: str, grad_fn: GradFn, head_dim: int, causal: bool = False,
                dtype_name: str = "bf16",
                shape: Tuple[int, int, int, int, int] = CHECK_SHAPE,
                device: str = "cuda") -> Dict:
    """dq, dk, dv of grad_fn against the float64 reference by the forward's rule
    (check_close: at most twice the plain computation's error, plus slack); shape is
    (batch, seqlen_q, seqlen_k, nheads, nheads_k), causal bottom-right. ok False with the
    reason where a gradient is wrong (wrong True) or grad_fn raised ValueError,
    NotImplementedError or RuntimeError (wrong False: it cannot run, e.g. no backward for
    this head dim)."""
    result = {"config": name, "causal": causal, "dtype": dtype_name, "shape": [*shape, head_dim]}
    q, k, v = check_inputs(shape, head_dim, dtype_name, device)
    dout = torch.randn_like(q)
    try:
        got = grad_fn(q, k, v, dout, causal=causal)
    except (ValueError, NotImplementedError, RuntimeError) as exc:
        return dict(result, ok=False, wrong=False, error=first_line(exc))
    ref_args = (*_bnhd(q, k, v, dout), 1.0 / math.sqrt(head_dim))
    ref = attention_grads_ref(*ref_args, causal=causal)
    plain = attention_grads_ref(*ref_args, upcast=False, causal=causal)
    errors = []
    for grad, g, r, p in zip(("dq", "dk", "dv"), _bnhd(*got), ref, plain):
        try:
            errors.append(check_close(g, r, p))
        except AssertionError as exc:
            return dict(result, ok=False, wrong=True, error=f"{grad}: {exc}")
    return dict(result, ok=True, wrong=False, max_err=max(e for e, _ in errors),
                plain_err=max(p for _, p in errors))


def grad_verdict(c: Dict) -> str:
    """A gradient check's line, worded as run_checks' lines."""
    batch, seqlen_q, seqlen_k, nheads, nheads_k, d = c["shape"]
    result = (f"max abs error {c['max_err']:.2e} (plain {c['dtype']}: {c['plain_err']:.2e}), ok"
              if c["ok"] else f"FAILED: {c['error']}")
    return (f"check gradients {c['config']}, {c['dtype']} "
            f"{'causal' if c['causal'] else 'non-causal'}, B={batch} N_q={seqlen_q} "
            f"N_k={seqlen_k} H={nheads} H_kv={nheads_k} d={d}: {result}")


def _grad_step(forward: Optional[Forward], q, k, v, causal: bool, grad_pass: str,
               config: Optional[str], deterministic: bool = False) -> Callable[[], object]:
    """One timed call on one input set. The backward alone: fa_cute's kernel on a forward's
    saved out and LSE (forward None: fa_cute.backward, with `deterministic`; config: that
    backward config), or autograd.grad through a graph recorded once and retained, so that
    only the backward's kernels run in the timed call. Forward + backward: a recorded
    forward and its grad."""
    dout = torch.randn_like(q)
    if forward is None:
        if config is not None:
            return _backward_launch(config, q, k, v, dout, causal, deterministic)
        out, lse = fa_cute_bhnd(q, k, v, causal=causal, return_lse=True)
        args = (*_bnhd(dout, q, k, v), out, lse)
        return lambda: fa_cute.backward(*args, causal=causal, deterministic=deterministic)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    if grad_pass == "fwdbwd":
        return lambda: torch.autograd.grad(forward(*leaves), leaves, dout)
    out = forward(*leaves)
    return lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True)


def time_grad_pass(forward: Optional[Forward], sets: List[InputSet], timer: Timer,
                   causal: bool = False, grad_pass: str = "bwd", config: Optional[str] = None,
                   context: Callable[[], contextlib.AbstractContextManager] =
                   contextlib.nullcontext,
                   errors: Tuple[type, ...] = (ValueError, NotImplementedError, RuntimeError),
                   deterministic: bool = False) -> Tuple[Optional[float], str]:
    """(ms, "") or (None, why) of grad_pass ("bwd", "fwdbwd") cycling over the input sets;
    see _grad_step for forward, config and deterministic. context wraps the whole (SDPA's
    backend choice); an exception of `errors` leaves the cell empty (FA4's column passes
    Exception)."""
    try:
        with context():
            steps = itertools.cycle([_grad_step(forward, q, k, v, causal, grad_pass, config,
                                                deterministic)
                                     for q, k, v in sets])
            fn = lambda: next(steps)()  # noqa: E731
            fn()  # first call outside the timing: FA4 compiles, autograd warms up
            torch.cuda.synchronize()
            return timer(fn), ""
    except errors as exc:
        return None, first_line(exc)
