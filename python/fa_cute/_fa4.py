"""FlashAttention-4 (`flash-attn-4` on PyPI, written in CuTe DSL) as an anchor column of
`python -m fa_cute.bench`: found on the normal import path or in a site dir (--fa4-site,
FA_CUTE_FA4_SITE), checked against the float64 reference once per table and dtype, then
timed next to SDPA's backends.

FA4's entry point, as of flash-attn-4 4.0.0b40 (flash_attn/cute/interface.py):
`flash_attn_func(q, k, v, qv=None, gather_kv_indices=None, softmax_scale=None, causal=False,
...)` on (batch, seqlen, nheads, headdim) tensors, k and v with nheads_k heads (GQA without
copies), returning `(out, lse)` (lse None unless return_lse=True); earlier releases returned
out alone, so both are accepted. Its causal mask is bottom-right, as fa_cute.forward's.
FA4 compiles each kernel variant on its first call (seconds), which the warm-up absorbs.
"""

import math
import os
import site
from typing import Callable, Dict, List, Optional, Tuple

import torch

from fa_cute._reference import attention_ref, check_close
from fa_cute._timing import Forward, check_inputs, cycling, first_line

__all__ = ["COLUMN", "ENV", "Func", "HOW", "bhnd_forward", "call", "check", "first_line", "load",
           "time_fa4", "unsupported", "verdict", "version"]

COLUMN = "FA4"
ENV = "FA_CUTE_FA4_SITE"
#: how FA4 is brought to a machine without network (README, "Checking on a GPU machine")
HOW = "bash ../shared/tools/fa4-wheels.sh install, then --fa4-site /tmp/fa4site"

Func = Callable[..., object]


def load(site_dir: Optional[str]) -> Tuple[Optional[Func], str]:
    """(flash_attn_func, "") or (None, why not). site_dir, when given, is added with
    site.addsitedir first (it also reads the .pth files a pip --target install leaves)."""
    if site_dir:
        site.addsitedir(os.path.abspath(site_dir))
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as exc:  # not installed, or a broken install (CuTe DSL's native libs)
        return None, f"{type(exc).__name__}: {exc}"
    return flash_attn_func, ""


def unsupported(dtype_name: str, head_dim: int) -> Optional[str]:
    """Why FA4 is not called for this dtype and head dim (None: it is). FA4's Hopper rule:
    fp16/bf16 here (its fp8 needs scales), head dims 8 to 256 in multiples of 8; other GPUs'
    limits surface as exceptions, which leave the cell empty too."""
    if dtype_name not in ("bf16", "fp16"):
        return f"FA4 is not timed on {dtype_name}"
    if not (8 <= head_dim <= 256 and head_dim % 8 == 0):
        return f"FA4 takes head dims 8 to 256 in multiples of 8, not {head_dim}"
    return None


def call(func: Func, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         causal: bool = False) -> torch.Tensor:
    """FA4's output for (batch, nheads, seqlen, headdim) q, k, v, the benchmark's (SDPA's)
    layout, as a (batch, seqlen, nheads, headdim) tensor: FA4 reads `.transpose(1, 2)` views
    (head dim still contiguous, so FA4 copies nothing), the same views fa_cute reads. The
    scale is 1/sqrt(d), SDPA's and fa_cute's default, passed so that no default can differ."""
    result = func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                  softmax_scale=1.0 / math.sqrt(q.shape[-1]), causal=causal)
    return result[0] if isinstance(result, tuple) else result


def bhnd_forward(func: Func, causal: bool = False) -> Forward:
    """FA4 as a differentiable attention in the benchmark's layout, both ways (its gradients
    by autograd through FA4's own backward), for `bench --bwd` and `--fwdbwd`."""
    return lambda q, k, v: call(func, q, k, v, causal).transpose(1, 2)


def time_fa4(func: Func, sets: List[Tuple[torch.Tensor, ...]], timer: Callable,
         causal: bool = False) -> Tuple[Optional[float], str]:
    """(ms, "") or (None, why): any exception (FA4 asserts its limits, and its compiler
    raises its own types) leaves the cell empty instead of ending the run."""
    fn = cycling(lambda q, k, v: call(func, q, k, v, causal), sets)
    try:
        fn()  # compiles this variant, outside the timing
        torch.cuda.synchronize()
        return timer(fn), ""
    except Exception as exc:
        return None, first_line(exc)


def check(func: Func, head_dim: int, causal: bool, dtype_name: str,
          shape: Tuple[int, int, int, int, int], device: str = "cuda") -> Dict:
    """FA4's output against the float64 reference by fa_cute's rule (check_close), for shape
    (batch, seqlen_q, seqlen_k, nheads, nheads_k) in the benchmark's layout; a dict like
    _timing.check's: ok False with the reason where FA4 raised, and wrong True as well where
    it returned a wrong result."""
    result = {"config": COLUMN, "causal": causal, "dtype": dtype_name, "shape": [*shape, head_dim]}
    q, k, v = check_inputs(shape, head_dim, dtype_name, device)
    try:
        out = call(func, q, k, v, causal)
    except Exception as exc:
        return dict(result, ok=False, wrong=False, error=f"raised {first_line(exc)}")
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # the reference's (b, n, h, d) layout
    scale = 1.0 / math.sqrt(head_dim)
    try:
        max_err, plain_err = check_close(
            out, attention_ref(q, k, v, scale, causal=causal),
            attention_ref(q, k, v, scale, upcast=False, causal=causal))
    except AssertionError as exc:
        return dict(result, ok=False, wrong=True, error=f"wrong result: {exc}")
    return dict(result, ok=True, wrong=False, max_err=max_err, plain_err=plain_err)


def version() -> Optional[str]:
    """The installed flash-attn-4's version (its own __version__ asks for another name)."""
    from importlib import metadata

    try:
        return metadata.version("flash-attn-4")
    except metadata.PackageNotFoundError:
        return None


def verdict(c: Dict) -> str:
    """A check's line, worded as _timing.run_checks' lines for fa_cute's configs."""
    batch, seqlen_q, seqlen_k, nheads, nheads_k, d = c["shape"]
    result = (f"max abs error {c['max_err']:.2e} (plain {c['dtype']}: {c['plain_err']:.2e}), ok"
              if c["ok"] else f"FAILED: {c['error']}")
    return (f"check {COLUMN}, {c['dtype']} {'causal' if c['causal'] else 'non-causal'}, "
            f"B={batch} N_q={seqlen_q} N_k={seqlen_k} H={nheads} H_kv={nheads_k} d={d}: {result}")
