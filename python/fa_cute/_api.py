"""The user API (`forward`, `forward_timed`, `sdpa`, `resolve_config`, `configs`) and the
torch.library custom ops that torch.compile traces in their place.

A call validates its arguments (`_validate`), or finds them validated before (`_cache`),
resolving the config as it goes (`_configs`), and launches the kernel on PyTorch's current
stream (`_launch`), turning torch tensors into the integers of the `_C` contract
(docs/design.md).

Under torch.compile the entry points call registered custom ops (`fa_cute::forward`,
`fa_cute::forward_out`, `fa_cute::sdpa`, end of this file) whose real implementations are
the eager code below, so the tuning cache and `_C` are read when the compiled graph runs,
never while it is traced; eager calls skip the dispatcher.
"""

import importlib.util
import numbers
from typing import Dict, Optional, Tuple, Union

import torch

if importlib.util.find_spec(f"{__package__}._C") is None:
    raise ImportError(
        "fa_cute._C is not built (this is the source tree, or a broken install): install "
        "fa_cute from a source checkout with `pip install scikit-build-core pybind11 ninja && "
        "pip install --no-deps nvidia-cutlass==4.2.0.0 && pip install --no-build-isolation .` "
        "(see README.md)")
# The modules below import _C: after the check that explains a missing build.
from ._cache import validate_cached  # noqa: E402
from ._configs import AUTO, check_config_type, configs  # noqa: E402
from ._launch import launch_kernel  # noqa: E402
from ._validate import (FORWARD_NAMES, SDPA_NAMES, check_flag, check_memory,  # noqa: E402
                        check_no_grad, check_tensor, grad_mode, layout_hint, scale_arg,
                        validate)

__all__ = ["OPS", "configs", "forward", "forward_timed", "resolve_config", "sdpa"]

Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def resolve_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   config: Optional[str] = AUTO) -> str:
    """The name of the config that `forward(q, k, v, causal=causal, config=config)` would run.

    With "auto" (or None): the pick of the tuning cache for this GPU and shape, else of the
    built-in table, else of the heuristic. The inputs are validated as `forward` does them,
    with the same errors, and nothing runs on the GPU.
    """
    return validate(q, k, v, causal=causal, bottom_right=True, softmax_scale=None,
                    config=config, out=None).config


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
            softmax_scale: Optional[float] = None, return_lse: bool = False,
            config: Optional[str] = AUTO, out: Optional[torch.Tensor] = None) -> Result:
    """Attention forward, softmax(q k^T * softmax_scale) v.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_k, headdim);
    bf16 or fp16 CUDA tensors of one device; any strides whose last dim is contiguous and
    whose other strides are multiples of 16 bytes, so (batch, nheads, seqlen, headdim)
    storage viewed with `.transpose(1, 2)` works without a copy. seqlen_q and seqlen_k are
    independent (>= 1). nheads must be a multiple of nheads_k (grouped-query and multi-query
    attention): query head h reads K/V head h // (nheads // nheads_k), without copies.

    causal: query row i sees key j iff j <= i + seqlen_k - seqlen_q (bottom-right aligned,
    as FlashAttention >= 2.1, the KV-cache convention; torch SDPA and `sdpa` align top-left,
    which differs when seqlen_q != seqlen_k). Rows that see no key (seqlen_q > seqlen_k)
    get output 0 and LSE -inf. softmax_scale defaults to 1/sqrt(headdim).

    return_lse: also return the float32 log-sum-exp of each row's scaled scores (natural
    log), a new contiguous (batch, nheads, seqlen_q) tensor, as `(out, lse)`.

    config names a kernel config from `configs()`, or is "auto" (the default; None means the
    same): the config `python -m fa_cute.tune` measured fastest for this GPU, dtype, head
    dim, causality and seqlen_q bucket (its cache, then a built-in table), else the
    heuristic's pick; see `resolve_config`. Nothing is tuned or timed here.

    out, if given, receives the result and is returned (it may be q itself, not another
    view overlapping q, k or v); otherwise a new tensor with q's memory layout (contiguous
    if q is not dense) is returned. No tensor may be a negated view (`.resolve_neg()` it)
    or lack its memory (a storage freed with `.untyped_storage().resize_(0)`); batch,
    seqlens and head counts are bounded by `fa_cute._C.limits()`. The kernel runs on
    PyTorch's current stream of the tensors' device.

    There is no backward yet: with grad mode on, a q, k or v that requires grad raises
    NotImplementedError (run under torch.no_grad() or torch.inference_mode(), pass
    .detach()ed tensors, or train with torch's own SDPA). Under torch.compile the call
    becomes the custom op fa_cute::forward (fa_cute::forward_out with out=), which
    fullgraph=True traces; its arguments are then checked when the compiled graph runs.
    """
    if _is_compiling() and OPS:
        return _forward_traced(q, k, v, causal, softmax_scale, return_lse, config, out)
    if grad_mode():
        check_no_grad(q, k, v, FORWARD_NAMES, "forward")
    return _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                return_lse=return_lse, config=config, out=out, timed=False)[0]


def forward_timed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  softmax_scale: Optional[float] = None, return_lse: bool = False,
                  config: Optional[str] = AUTO, out: Optional[torch.Tensor] = None
                  ) -> Tuple[Result, float]:
    """Like `forward`, and also return the kernel's own time in milliseconds:
    `(result, ms)`, where result is what `forward` returns.

    The time comes from CUDA events recorded around the launch, and the call waits for the
    kernel to finish. An empty problem (batch or nheads 0) launches nothing and returns 0.0.
    Inputs that require grad are refused as in `forward`. Eager only: under torch.compile
    use `forward` (a timing that synchronizes has no place in a graph).
    """
    if grad_mode():
        check_no_grad(q, k, v, FORWARD_NAMES, "forward_timed")
    return _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                return_lse=return_lse, config=config, out=out, timed=True)


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
         attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
         is_causal: bool = False, *, scale: Optional[float] = None,
         enable_gqa: bool = False) -> torch.Tensor:
    """A drop-in for `torch.nn.functional.scaled_dot_product_attention` on 4-D
    (batch, nheads, seqlen, headdim) bf16/fp16 CUDA tensors.

    Same semantics as torch's: is_causal is top-left aligned (query row i sees key j iff
    j <= i, whatever the lengths; `forward` aligns bottom-right), scale defaults to
    1/sqrt(headdim), and query heads that differ from key/value heads need
    enable_gqa=True. What the kernel does not do is refused with a ValueError rather than
    approximated: attn_mask (other than None), dropout_p != 0, tensors that are not 4-D,
    scale <= 0. Returns a new contiguous (batch, nheads, seqlen_q, headdim) tensor. The
    other rules (dtypes, strides, one device, no inputs that require grad, the custom op
    fa_cute::sdpa under torch.compile) are `forward`'s.
    """
    if attn_mask is not None:
        raise ValueError("attn_mask must be None: fa_cute.sdpa supports no masks besides "
                         "is_causal; use torch.nn.functional.scaled_dot_product_attention "
                         "for masked attention")
    if not isinstance(dropout_p, numbers.Real) or isinstance(dropout_p, bool):
        raise TypeError(f"dropout_p must be a real number; got {type(dropout_p).__name__}")
    if dropout_p != 0:
        raise ValueError(f"dropout_p must be 0.0: fa_cute.sdpa has no dropout; got "
                         f"{dropout_p}; use torch.nn.functional.scaled_dot_product_attention "
                         "for dropout")
    check_flag("is_causal", is_causal)
    check_flag("enable_gqa", enable_gqa)
    tensors = (query, key, value)
    for name, t in zip(SDPA_NAMES[:3], tensors):
        check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, nheads, seqlen, headdim); got shape "
                             f"{tuple(t.shape)}")
    # The checks that `validate` also makes, here in sdpa's layout, so that the messages
    # show the shapes as the caller holds them.
    if key.shape != value.shape:
        raise ValueError(f"key and value must have the same shape; got key "
                         f"{tuple(key.shape)} and value {tuple(value.shape)}")
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(f"query has {query.shape[1]} heads but key and value have "
                         f"{key.shape[1]}; pass enable_gqa=True for grouped-query attention "
                         "(query heads a multiple of key/value heads)"
                         + layout_hint(SDPA_NAMES, query.shape[2], key.shape[2]))
    if _is_compiling() and OPS:
        # The checks above read flags and shapes only, which tracing turns into guards.
        return OPS["sdpa"](query, key, value, is_causal, scale_arg(scale, "scale"))
    if grad_mode():
        check_no_grad(query, key, value, SDPA_NAMES, "sdpa")
    return _sdpa_run(query, key, value, is_causal, scale)


def _sdpa_run(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, is_causal: bool,
              scale) -> torch.Tensor:
    """sdpa after its own checks: validate the transposed views, launch, return the output."""
    tensors = (query, key, value)
    try:
        q, k, v = tuple(t.transpose(1, 2) for t in tensors)
    except RuntimeError:
        # PyTorch refuses to view a tensor beyond its storage (one freed under it, as FSDP
        # does): say which argument, at no cost to calls that pass.
        for name, t in zip(SDPA_NAMES[:3], tensors):
            check_memory(name, t)
        raise
    launch = validate_cached(q, k, v, causal=is_causal, bottom_right=False,
                             softmax_scale=scale, config=AUTO, out=None, names=SDPA_NAMES)
    batch, nheads, seqlen_q, head_dim = query.shape
    out = torch.empty((batch, nheads, seqlen_q, head_dim), dtype=query.dtype,
                      device=query.device)
    launch_kernel(launch, q, k, v, out.transpose(1, 2), None, timed=False)
    return out


def _run(q, k, v, *, causal, bottom_right: bool, softmax_scale, return_lse, config, out,
         timed: bool) -> Tuple[Result, float]:
    check_flag("return_lse", return_lse)
    launch = validate_cached(q, k, v, causal=causal, bottom_right=bottom_right,
                             softmax_scale=softmax_scale, config=config, out=out)
    if out is None:
        out = torch.empty_like(q)
    lse = None
    if return_lse:
        batch, seqlen_q, nheads, _ = q.shape
        lse = torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=q.device)
    ms = launch_kernel(launch, q, k, v, out, lse, timed)
    return ((out, lse) if return_lse else out), ms


# torch.compile. Dynamo cannot trace the eager path (it opens the tuning cache and calls
# `_C`), so under compilation the entry points call custom ops: opaque to the tracer, shaped
# by their fake implementations, and run eagerly, with every check, when the graph runs.
# Eager calls do not go through them: the dispatcher would add microseconds to a decode
# step whose host time is ~22 us. A functional op returns new tensors; an op that writes
# `out` must say it mutates it, so `out=` has an op of its own. Custom ops cannot return
# None: without return_lse the LSE slot holds an empty tensor.

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _forward_traced(q, k, v, causal, softmax_scale, return_lse, config, out) -> Result:
    """forward while torch.compile traces it: the checks of plain Python values here (the
    tracer folds them), the tensor checks in the op's implementation when the graph runs."""
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    if grad_mode():
        check_no_grad(q, k, v, FORWARD_NAMES, "forward")
    scale = scale_arg(softmax_scale, "softmax_scale")
    check_config_type(config)
    if out is None:
        result, lse = OPS["forward"](q, k, v, causal, scale, return_lse, config)
    else:
        lse = OPS["forward_out"](q, k, v, out, causal, scale, return_lse, config)
        result = out
    return (result, lse) if return_lse else result


def _lse_like(q: torch.Tensor, return_lse: bool) -> torch.Tensor:
    """The LSE the ops return: (batch, nheads, seqlen_q) float32 as `_run` allocates it, or
    an empty placeholder without return_lse (or for a q that validation will refuse)."""
    if return_lse and q.dim() == 4:
        batch, seqlen_q, nheads, _ = q.shape
        return q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32)
    return q.new_empty((0,), dtype=torch.float32)


def _register_ops() -> Dict[str, object]:
    """The custom ops by name; none before PyTorch 2.4 (no torch.library.custom_op), where a
    compiled caller graph-breaks at fa_cute's call instead."""
    custom_op = getattr(torch.library, "custom_op", None)
    if custom_op is None:
        return {}
    Tensor = torch.Tensor

    @custom_op("fa_cute::forward", mutates_args=())
    def forward_op(q: Tensor, k: Tensor, v: Tensor, causal: bool,
                   softmax_scale: Optional[float], return_lse: bool,
                   config: Optional[str]) -> Tuple[Tensor, Tensor]:
        result, _ = _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                         return_lse=return_lse, config=config, out=None, timed=False)
        return result if return_lse else (result, _lse_like(q, False))

    @forward_op.register_fake
    def _(q, k, v, causal, softmax_scale, return_lse, config):
        # empty_like keeps q's layout (contiguous if q is not dense), as `_run`'s does.
        return torch.empty_like(q), _lse_like(q, return_lse)

    @custom_op("fa_cute::forward_out", mutates_args=("out",))
    def forward_out_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, causal: bool,
                       softmax_scale: Optional[float], return_lse: bool,
                       config: Optional[str]) -> Tensor:
        result, _ = _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                         return_lse=return_lse, config=config, out=out, timed=False)
        return result[1] if return_lse else _lse_like(q, False)

    @forward_out_op.register_fake
    def _(q, k, v, out, causal, softmax_scale, return_lse, config):
        return _lse_like(q, return_lse)

    @custom_op("fa_cute::sdpa", mutates_args=())
    def sdpa_op(query: Tensor, key: Tensor, value: Tensor, is_causal: bool,
                scale: Optional[float]) -> Tensor:
        return _sdpa_run(query, key, value, is_causal, scale)

    @sdpa_op.register_fake
    def _(query, key, value, is_causal, scale):
        # sdpa's output is a new contiguous (batch, nheads, seqlen_q, headdim) tensor.
        return query.new_empty(query.shape)

    return {"forward": forward_op, "forward_out": forward_out_op, "sdpa": sdpa_op}


OPS: Dict[str, object] = _register_ops()
