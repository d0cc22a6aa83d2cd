"""The user API (`forward`, `forward_timed`, `sdpa`, `backward`, `resolve_config`, `configs`)
and the torch.library custom ops that torch.compile traces in their place.

A call validates its arguments (`_validate`), or finds them validated before (`_cache`),
resolving the config as it goes (`_configs`), and launches the kernel on PyTorch's current
stream (`_launch`), turning torch tensors into the integers of the `_C` contract
(docs/design.md).

Gradients: with grad mode on and q, k or v requiring grad, `forward` and `sdpa` run through
`_Attention` (a torch.autograd.Function): its forward also computes the LSE and saves q, k,
v, out and the LSE, its backward calls `_backward.run_recorded_backward` (the `_C.backward` kernel).
Calls that record no gradient take the path they took before, at the same host cost.

Under torch.compile the entry points call registered custom ops (`fa_cute::forward`,
`fa_cute::forward_out`, `fa_cute::sdpa`, end of this file) whose real implementations are
the eager code below, so the tuning cache and `_C` are read when the compiled graph runs,
never while it is traced; eager calls skip the dispatcher. `fa_cute::forward` and
`fa_cute::sdpa` have their autograd registered (torch.library.register_autograd), whose
backward formula calls the op `fa_cute::backward`, so a compiled training step traces with
no graph break.
"""

import importlib.util
import numbers
from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

if importlib.util.find_spec(f"{__package__}._C") is None:
    raise ImportError(
        "fa_cute._C is not built (this is the source tree, or a broken install): install "
        "fa_cute from a source checkout with `pip install scikit-build-core pybind11 ninja && "
        "pip install --no-deps nvidia-cutlass==4.2.0.0 && pip install --no-build-isolation .` "
        "(see README.md)")
# The modules below import _C: after the check that explains a missing build.
from ._backward import (check_backward_supported, kernel_ready, run_backward,  # noqa: E402
                        run_recorded_backward, saved_tensor_hooks_active)
from . import _fp8  # noqa: E402
from ._cache import validate_cached, validate_sdpa_cached  # noqa: E402
from ._configs import AUTO, check_config_type, configs  # noqa: E402
from ._launch import launch_kernel  # noqa: E402
from ._validate import (FORWARD_NAMES, SDPA_NAMES, check_flag,  # noqa: E402
                        check_no_grad, check_tensor, grad_mode, layout_hint,
                        requires_grad, scale_arg, softcap_arg, validate, window_arg)

__all__ = ["OPS", "backward", "configs", "forward", "forward_timed", "resolve_config", "sdpa"]

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
            config: Optional[str] = AUTO, out: Optional[torch.Tensor] = None,
            softcap: float = 0.0, window_size: Tuple[int, int] = (-1, -1),
            q_descale: Optional[torch.Tensor] = None, k_descale: Optional[torch.Tensor] = None,
            v_descale: Optional[torch.Tensor] = None) -> Result:
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

    softcap > 0 caps the logits as Gemma 2 does: each scaled score s = q k^T * softmax_scale
    becomes softcap * tanh(s / softcap) before the softmax (and the LSE is of those); 0.0
    (the default) leaves them as they are. Differentiable (the backward scales each score's
    gradient by the tanh's derivative).

    window_size=(left, right): a sliding window (FlashAttention's semantics, aligned as the
    causal mask, bottom-right): query row i sees key j iff i + seqlen_k - seqlen_q - left <=
    j <= i + seqlen_k - seqlen_q + right; -1 leaves a side unbounded ((-1, -1), the default:
    no window). With causal=True the right bound is the diagonal (right must be -1 or 0).
    Key blocks outside every row's window are skipped. Rows that see no key get output 0
    and LSE -inf. Differentiable (the backward skips the query blocks outside a key
    block's window alike).

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

    FP8 (Hopper, compute capability 9.0): q, k and v all torch.float8_e4m3fn run the FP8
    kernel, which returns out in torch.bfloat16 (an `out` must be bf16). q_descale, k_descale
    and v_descale (optional float32 (batch, nheads_k) tensors, each factor 1 when not given)
    dequantise them: scores are (q k^T) * q_descale * k_descale * softmax_scale, and the
    output is softmax(scores) (v * v_descale), per batch entry and K/V head (a query head
    takes its K/V head's factors). P is rounded to e4m3 for its product with v (as
    FlashAttention-3's FP8 forward). Descale factors must be finite, q_descale * k_descale
    >= 0: a negative or non-finite product makes that head's output and LSE NaN (the factors
    stay on the GPU; checking them would cost a sync). Dense attention only: no softcap,
    window, gradient or torch.compile tracing (a ValueError while compiling); the LSE is
    returned as for bf16. V is re-laid out on every call (a pass over its bytes:
    docs/design.md, FP8 forward).

    Gradients: with grad mode on and q, k or v requiring grad, the output has a grad_fn
    whose backward is `backward` (the LSE is computed and saved for it; a returned LSE is
    not differentiable). Where this build or GPU has no backward kernel for the head dim,
    such a call raises before the forward runs; `out=` is refused with them (autograd
    cannot record into a given tensor). Under torch.compile the call becomes the custom op
    fa_cute::forward (fa_cute::forward_out with out=), which fullgraph=True traces, a
    training step included; its arguments are then checked when the compiled graph runs.
    """
    if (getattr(q, "dtype", None) is _fp8.DTYPE or q_descale is not None or k_descale is not None
            or v_descale is not None):
        if getattr(q, "dtype", None) is not _fp8.DTYPE:
            raise ValueError("q_descale, k_descale, v_descale: only the FP8 forward (q, k and v in "
                             f"{_fp8.DTYPE}) takes descale factors; q has dtype "
                             f"{getattr(q, 'dtype', type(q).__name__)}")
        if _is_compiling():
            raise ValueError("q: the FP8 forward (e4m3 inputs) is eager only: torch.compile cannot trace it; "
                             "call it outside the compiled region (e.g. from a torch.compiler.disable'd "
                             "function)")
        return _fp8.forward(q, k, v, causal=causal, softmax_scale=softmax_scale, return_lse=return_lse,
                            config=config, out=out, softcap=softcap, window_size=window_size,
                            q_descale=q_descale, k_descale=k_descale, v_descale=v_descale)
    if _is_compiling() and OPS:
        return _forward_traced(q, k, v, causal, softmax_scale, return_lse, config, out, softcap,
                               window_size)
    if grad_mode() and requires_grad(q, k, v):
        return _forward_with_grad(q, k, v, causal, softmax_scale, return_lse, config, out,
                                  softcap_arg(softcap), window_arg(window_size, causal))
    return _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                return_lse=return_lse, config=config, out=out, timed=False, softcap=softcap,
                window_size=window_size)[0]


def forward_timed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  softmax_scale: Optional[float] = None, return_lse: bool = False,
                  config: Optional[str] = AUTO, out: Optional[torch.Tensor] = None,
                  softcap: float = 0.0, window_size: Tuple[int, int] = (-1, -1)
                  ) -> Tuple[Result, float]:
    """Like `forward`, and also return the kernel's own time in milliseconds:
    `(result, ms)`, where result is what `forward` returns.

    The time comes from CUDA events recorded around the launch, and the call waits for the
    kernel to finish. An empty problem (batch or nheads 0) launches nothing and returns 0.0.
    It records no gradient: with grad mode on, inputs that require grad raise
    NotImplementedError (train with `forward`). Eager only: under torch.compile use
    `forward` (a timing that synchronizes has no place in a graph).
    """
    if grad_mode():
        check_no_grad(q, k, v, FORWARD_NAMES, "forward_timed")
    return _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                return_lse=return_lse, config=config, out=out, timed=True, softcap=softcap,
                window_size=window_size)


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
    scale <= 0. Returns a new (batch, nheads, seqlen_q, headdim) tensor, stored as a
    transposed (batch, seqlen_q, nheads, headdim) buffer where query's heads are inner in
    memory (as PyTorch's FLASH and cuDNN backends return it), else contiguous. The
    other rules (dtypes, strides, one device, gradients, the custom op fa_cute::sdpa under
    torch.compile) are `forward`'s; the backward keeps sdpa's top-left alignment.
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
        # The checks above read flags and shapes only, which tracing turns into guards. With
        # gradients the op also returns the LSE, which its backward needs.
        needs_grad = grad_mode() and requires_grad(query, key, value)
        return OPS["sdpa"](query, key, value, is_causal, scale_arg(scale, "scale"),
                           needs_grad)[0]
    if grad_mode() and requires_grad(query, key, value):
        check_backward_supported(query, key, value, SDPA_NAMES)
        return _Attention.apply(query, key, value, _Spec(is_causal, scale, None, True))
    return _sdpa_run(query, key, value, is_causal, scale)[0]


def backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             out: torch.Tensor, lse: torch.Tensor, *, causal: bool = False,
             softmax_scale: Optional[float] = None, deterministic: bool = False,
             dq: Optional[torch.Tensor] = None, dk: Optional[torch.Tensor] = None,
             dv: Optional[torch.Tensor] = None, config: Optional[str] = AUTO,
             softcap: float = 0.0, window_size: Tuple[int, int] = (-1, -1)
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention backward: the gradients (dq, dk, dv) of `forward(q, k, v, causal=causal,
    softmax_scale=softmax_scale, softcap=softcap, window_size=window_size)` for the output
    gradient dout.

    q, k, v, causal, softmax_scale, softcap and window_size as `forward` (layouts, GQA/MQA,
    bottom-right alignment); out and dout are q's dtype and shape, lse the float32 contiguous
    (batch, nheads, seqlen_q) natural-log LSE (`forward(..., return_lse=True)`). Nothing
    requires out and lse to come from one forward call: the LSE and output merged from
    several partial attentions (split keys) work, as the kernel only reads them. dk and dv
    are summed over the query heads that share each K/V head. Rows that see no key get
    zero gradients.

    The backward kernels take head dims 64, 96, 128, 192 and 256
    (`fa_cute._C.default_backward_config` says what this build and GPU take); other head
    dims raise ValueError. dq is summed over
    key blocks with fp32 atomic (or bulk reduce) adds, whose order varies between runs (the
    last bits of dq may differ); deterministic=True fixes that order (for every query block,
    key block 0 first, or the last first when causal: src/bwd_dq_order.h), so that two runs
    on the same inputs and GPU give bitwise-equal dq, dk and dv (dk and dv are deterministic
    either way), at a speed cost (docs/perf-notes.md, Backward, has it measured): each key block's
    CTA waits for the one before it at each query block, and the call allocates batch *
    nheads * ceil(seqlen_q / block_m) int32 counters more. dq, dk, dv, if given, receive the
    gradients and are returned (each of its input's
    dtype and shape, aliasing no other tensor); otherwise new tensors laid out like q, k and
    v are. The kernel runs on PyTorch's current stream. Under torch.compile the call becomes
    the custom op fa_cute::backward (given dq, dk, dv receive a copy of its results).

    config names a backward config of this build (`fa_cute._C.backward_configs()`: name,
    family, head_dim, dtypes) to run, for tests and benchmarks of one kernel; "auto" (the
    default; None means the same) picks as gradients through `forward` do. A config for
    another head dim or dtype, or one q's GPU does not run, raises ValueError; under
    torch.compile only "auto" is taken.
    """
    if _is_compiling() and OPS:
        check_config_type(config)
        if config not in (None, AUTO):
            raise ValueError(f"config {config!r}: under torch.compile fa_cute.backward takes "
                             "config='auto' only; name a config in eager mode")
        check_flag("causal", causal)
        check_flag("deterministic", deterministic)
        left, right = window_arg(window_size, causal)
        grads = OPS["backward"](dout, q, k, v, out, lse, causal,
                                scale_arg(softmax_scale, "softmax_scale"), deterministic, True,
                                softcap_arg(softcap), left, right)
        return tuple(g if buf is None else buf.copy_(g) for g, buf in zip(grads, (dq, dk, dv)))
    return run_backward(dout, q, k, v, out, lse, causal=causal, bottom_right=True,
                        softmax_scale=softmax_scale, deterministic=deterministic, dq=dq, dk=dk,
                        dv=dv, config=config, softcap=softcap, window_size=window_size)


def _sdpa_run(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, is_causal: bool,
              scale, return_lse: bool = False, with_launch: bool = False) -> tuple:
    """sdpa after its own checks: validate (`validate_sdpa_cached`), launch; return the output
    and, with return_lse, the LSE (else None), and with with_launch the validated launch."""
    launch = validate_sdpa_cached(query, key, value, causal=is_causal, softmax_scale=scale)
    batch, nheads, seqlen_q, _ = query.shape
    out = _sdpa_output_like(query)
    lse = None
    if return_lse:
        lse = torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=query.device)
    launch_kernel(launch, query, key, value, out, lse, timed=False, sdpa_layout=True)
    return (out, lse, launch) if with_launch else (out, lse)


def _sdpa_output_like(query: torch.Tensor) -> torch.Tensor:
    """sdpa's new output, (batch, nheads, seqlen_q, headdim) in query's order of the heads and
    sequence dims in memory: a (batch, seqlen_q, nheads, headdim) buffer viewed with
    .transpose(1, 2) where query's heads are inner (query a transposed view of forward's
    layout, as models make it), else contiguous. A model's `out.transpose(1, 2).reshape(...)`
    is then a view, as with PyTorch's FLASH and cuDNN backends, not a copy."""
    batch, nheads, seqlen_q, head_dim = query.shape
    if query.stride(1) < query.stride(2):
        # One op, not new_empty and transpose: this runs on every call.
        return query.new_empty_strided((batch, nheads, seqlen_q, head_dim),
                                       (seqlen_q * nheads * head_dim, head_dim, nheads * head_dim, 1))
    return query.new_empty((batch, nheads, seqlen_q, head_dim))


def _run(q, k, v, *, causal, bottom_right: bool, softmax_scale, return_lse, config, out,
         timed: bool, softcap=0.0, window_size=(-1, -1), with_launch: bool = False) -> tuple:
    """The checked forward: (result, ms), and with with_launch the validated launch too."""
    check_flag("return_lse", return_lse)
    launch = validate_cached(q, k, v, causal=causal, bottom_right=bottom_right,
                             softmax_scale=softmax_scale, config=config, out=out, softcap=softcap,
                             window_size=window_size)
    if out is None:
        out = torch.empty_like(q)
    lse = None
    if return_lse:
        batch, seqlen_q, nheads, _ = q.shape
        lse = torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=q.device)
    ms = launch_kernel(launch, q, k, v, out, lse, timed)
    result = (out, lse) if return_lse else out
    return (result, ms, launch) if with_launch else (result, ms)


# Gradients ----------------------------------------------------------------------------------

class _Spec(NamedTuple):
    """What a recorded attention call's backward needs besides its tensors."""

    causal: bool
    softmax_scale: Optional[float]
    config: Optional[str]
    sdpa: bool  # sdpa's (batch, nheads, seqlen, headdim) layout and top-left alignment
    softcap: float = 0.0  # forward's logits softcap (0: none)
    window: Tuple[int, int] = (-1, -1)  # forward's window_size (left, right)
    # Whether the recorded call returns the LSE (forward's return_lse): an autograd.Function
    # with a second output costs more host time a call than the LSE saved as an intermediate.
    returns_lse: bool = False


_OUT_WITH_GRAD = ("out must be None when q, k or v requires grad in grad mode: autograd "
                  "records the output the call allocates, not one written into a given "
                  "tensor; drop out=, or call under torch.no_grad()")


def _forward_with_grad(q, k, v, causal, softmax_scale, return_lse, config, out, softcap: float,
                       window: Tuple[int, int]) -> Result:
    """forward when it records gradients: the backward's support is checked first, so that
    a call whose gradients could not be computed fails before the forward runs."""
    check_flag("return_lse", return_lse)
    if out is not None:
        raise ValueError(_OUT_WITH_GRAD)
    check_backward_supported(q, k, v, FORWARD_NAMES)
    return _Attention.apply(q, k, v, _Spec(causal, softmax_scale, config, False, softcap, window,
                                           return_lse))


class _Attention(torch.autograd.Function):
    """Eager attention that records its backward: the forward saves what the backward kernel
    reads, the LSE among them, and returns out, or (out, lse) where the caller asked for the
    LSE (spec.returns_lse; not differentiable). One output where it can: each output of an
    autograd.Function costs host time in the forward and in the engine's backward (a second
    one ~12 us of the ~40 a minimal Function's fwd+bwd costs on the build machine's CPU,
    benchmarks/autograd_host_cpu.py)."""

    @staticmethod
    def forward(ctx, q, k, v, spec: _Spec):
        if spec.sdpa:
            out, lse, launch = _sdpa_run(q, k, v, spec.causal, spec.softmax_scale,
                                         return_lse=True, with_launch=True)
        else:
            (out, lse), _, launch = _run(q, k, v, causal=spec.causal, bottom_right=True,
                                         softmax_scale=spec.softmax_scale, return_lse=True,
                                         config=spec.config, out=None, timed=False,
                                         softcap=spec.softcap, window_size=spec.window,
                                         with_launch=True)
        # q, k and v saved as the caller passed them (sdpa's layout too: the backward reads
        # their strides permuted, `_backward.sdpa_row_strides`, and allocates each gradient
        # like its input), so that the backward makes no view of them: each view op is host
        # time on the host-bound path of a training step.
        ctx.save_for_backward(q, k, v, out, lse)
        # The backward's launch by this key after the first call (`run_recorded_backward`);
        # a grouped-query decode's packed launch is another shape's, so it is not a key.
        ctx.recorded = None if launch.packed else (launch, q.device, spec)
        # The LSE's gradient stays None rather than a materialised zero tensor (an allocation
        # and a fill kernel a call on the host-bound path of a training step); so may out's,
        # when the loss does not use it.
        ctx.set_materialize_grads(False)
        ctx.spec = spec
        # Whether the backward's plan must compare what it unpacks with what it was made for.
        ctx.hooked = saved_tensor_hooks_active()
        if not spec.returns_lse:
            return out
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, *_dlse):
        # Grad mode is on in a backward only with create_graph=True. The gradients are not
        # differentiable in turn: a backward through them then raises (once_differentiable)
        # rather than dropping attention's second-order term in silence. Only then, since
        # the wrapper costs ~3 us of host time a call.
        if torch.is_grad_enabled():
            return _recorded_grads_once(ctx, dout)
        return _recorded_grads(ctx, dout)


def _recorded_grads(ctx, dout) -> Tuple[Optional[torch.Tensor], ...]:
    """`_Attention.backward`'s gradients (q, k, v, spec)."""
    if dout is None:
        return None, None, None, None
    spec = ctx.spec
    dq, dk, dv = run_recorded_backward(kernel_ready(dout), *ctx.saved_tensors,
                                       causal=spec.causal, softmax_scale=spec.softmax_scale,
                                       softcap=spec.softcap, window_size=spec.window,
                                       recorded=ctx.recorded, sdpa=spec.sdpa, hooked=ctx.hooked)
    needs = ctx.needs_input_grad
    return dq if needs[0] else None, dk if needs[1] else None, dv if needs[2] else None, None


_recorded_grads_once = once_differentiable(_recorded_grads)


def _grads(dout, q, k, v, out, lse, spec: "_Spec", needs_input_grad,
           run) -> Tuple[Optional[torch.Tensor], ...]:
    """(dq, dk, dv) of a call recorded under torch.compile through `run` (the op
    fa_cute::backward), None for an input that needs none.

    sdpa's tensors are viewed in forward's layout (the kernel's) and its gradients viewed
    back; its alignment is top-left. The op makes dout fit the kernel
    (`_backward.kernel_ready`), where it holds real tensors.
    """
    if lse.dim() != 3:
        raise RuntimeError("the backward needs the forward's LSE: the custom op was called "
                           "with return_lse=False on inputs that require grad; pass True "
                           "(fa_cute.forward and fa_cute.sdpa do)")
    sdpa = spec.sdpa
    if sdpa:
        dout, q, k, v, out = (t.transpose(1, 2) for t in (dout, q, k, v, out))
    grads = run(dout, q, k, v, out, lse, spec, not sdpa, SDPA_NAMES if sdpa else FORWARD_NAMES)
    if sdpa:
        grads = tuple(g.transpose(1, 2) for g in grads)
    return tuple(g if needed else None for g, needed in zip(grads, needs_input_grad))


# torch.compile. Dynamo cannot trace the eager path (it opens the tuning cache and calls
# `_C`), so under compilation the entry points call custom ops: opaque to the tracer, shaped
# by their fake implementations, and run eagerly, with every check, when the graph runs.
# Eager calls do not go through them: the dispatcher would add microseconds to a decode
# step whose host time is ~22 us. A functional op returns new tensors; an op that writes
# `out` must say it mutates it, so `out=` has an op of its own. Custom ops cannot return
# None: without return_lse the LSE slot holds an empty tensor.

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _forward_traced(q, k, v, causal, softmax_scale, return_lse, config, out, softcap,
                    window_size) -> Result:
    """forward while torch.compile traces it: the checks of plain Python values here (the
    tracer folds them), the tensor checks in the op's implementation when the graph runs."""
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    needs_grad = grad_mode() and requires_grad(q, k, v)
    scale = scale_arg(softmax_scale, "softmax_scale")
    cap = softcap_arg(softcap)
    left, right = window_arg(window_size, causal)
    check_config_type(config)
    if out is None:
        # With gradients the op computes the LSE its backward needs, returned or not.
        result, lse = OPS["forward"](q, k, v, causal, scale, return_lse or needs_grad, config, cap,
                                     left, right)
    elif needs_grad:
        raise ValueError(_OUT_WITH_GRAD)
    else:
        lse = OPS["forward_out"](q, k, v, out, causal, scale, return_lse, config, cap, left, right)
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
                   config: Optional[str], softcap: float = 0.0, window_left: int = -1,
                   window_right: int = -1) -> Tuple[Tensor, Tensor]:
        result, _ = _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                         return_lse=return_lse, config=config, out=None, timed=False,
                         softcap=softcap, window_size=(window_left, window_right))
        return result if return_lse else (result, _lse_like(q, False))

    @forward_op.register_fake
    def _(q, k, v, causal, softmax_scale, return_lse, config, softcap=0.0, window_left=-1,
          window_right=-1):
        # empty_like keeps q's layout (contiguous if q is not dense), as `_run`'s does.
        return torch.empty_like(q), _lse_like(q, return_lse)

    @custom_op("fa_cute::forward_out", mutates_args=("out",))
    def forward_out_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, causal: bool,
                       softmax_scale: Optional[float], return_lse: bool,
                       config: Optional[str], softcap: float = 0.0, window_left: int = -1,
                       window_right: int = -1) -> Tensor:
        result, _ = _run(q, k, v, causal=causal, bottom_right=True, softmax_scale=softmax_scale,
                         return_lse=return_lse, config=config, out=out, timed=False,
                         softcap=softcap, window_size=(window_left, window_right))
        return result[1] if return_lse else _lse_like(q, False)

    @forward_out_op.register_fake
    def _(q, k, v, out, causal, softmax_scale, return_lse, config, softcap=0.0, window_left=-1,
          window_right=-1):
        return _lse_like(q, return_lse)

    @custom_op("fa_cute::sdpa", mutates_args=())
    def sdpa_op(query: Tensor, key: Tensor, value: Tensor, is_causal: bool,
                scale: Optional[float], return_lse: bool) -> Tuple[Tensor, Tensor]:
        out, lse = _sdpa_run(query, key, value, is_causal, scale, return_lse)
        return out, (lse if return_lse else _lse_like(query, False))

    @sdpa_op.register_fake
    def _(query, key, value, is_causal, scale, return_lse):
        # sdpa's output as _sdpa_run allocates it; its LSE is (batch, nheads, seqlen_q),
        # which is _lse_like's shape of the transposed q.
        if query.dim() != 4:
            return query.new_empty(query.shape), _lse_like(query, return_lse)
        return _sdpa_output_like(query), _lse_like(query.transpose(1, 2), return_lse)

    @custom_op("fa_cute::backward", mutates_args=())
    def backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                    causal: bool, softmax_scale: Optional[float], deterministic: bool,
                    bottom_right: bool, softcap: float = 0.0, window_left: int = -1,
                    window_right: int = -1) -> Tuple[Tensor, Tensor, Tensor]:
        # dout as autograd hands it over (the op is the backward formula's under
        # torch.compile): made to fit the kernel here, where the tensors are real.
        return run_backward(kernel_ready(dout), q, k, v, out, lse, causal=causal, bottom_right=bottom_right,
                            softmax_scale=softmax_scale, deterministic=deterministic,
                            dq=None, dk=None, dv=None, softcap=softcap,
                            window_size=(window_left, window_right))

    @backward_op.register_fake
    def _(dout, q, k, v, out, lse, causal, softmax_scale, deterministic, bottom_right, softcap=0.0,
          window_left=-1, window_right=-1):
        # run_backward allocates each gradient with torch.empty_like of its input.
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def traced_backward(dout, q, k, v, out, lse, spec, bottom_right, names):
        return backward_op(dout, q, k, v, out, lse, spec.causal, spec.softmax_scale, False,
                           bottom_right, spec.softcap, *spec.window)

    def setup_context(ctx, inputs, output, sdpa: bool) -> None:
        q, k, v, causal, softmax_scale = inputs[:5]
        # Here, not in the traced entry points: Dynamo cannot trace a call into _C, while
        # this runs as plain Python (when AOTAutograd traces the graph, or per eager call).
        check_backward_supported(q, k, v, SDPA_NAMES if sdpa else FORWARD_NAMES)
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        # forward_op's inputs end with softcap, window_left, window_right; sdpa_op has none.
        softcap, left, right = inputs[7:10] if len(inputs) >= 10 else (0.0, -1, -1)
        ctx.spec = _Spec(causal, softmax_scale, None, sdpa, softcap, (left, right))

    def grads(ctx, dout, _dlse):
        return (*_grads(dout, *ctx.saved_tensors, ctx.spec, ctx.needs_input_grad[:3],
                        traced_backward),
                *(None,) * (len(ctx.needs_input_grad) - 3))

    forward_op.register_autograd(
        grads, setup_context=lambda ctx, inputs, output: setup_context(ctx, inputs, output,
                                                                         False))
    sdpa_op.register_autograd(
        grads, setup_context=lambda ctx, inputs, output: setup_context(ctx, inputs, output,
                                                                         True))
    return {"forward": forward_op, "forward_out": forward_out_op, "sdpa": sdpa_op,
            "backward": backward_op}


OPS: Dict[str, object] = _register_ops()
