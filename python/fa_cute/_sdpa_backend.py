"""fa_cute as the kernel behind PyTorch's flash SDPA: `activate()` registers, for a dispatch
key (CUDA), kernels of the aten ops `_scaled_dot_product_flash_attention` and
`_scaled_dot_product_flash_attention_backward` that run fa_cute's forward (with the LSE) and
backward, and hand every call fa_cute does not take to the kernel registered before
(PyTorch's own, or another provider's). `deactivate()` removes them.

Why at the dispatcher: `torch.nn.functional.scaled_dot_product_attention` picks its
backend in C++ and, for the flash backend on CUDA, calls the forward op; autograd records
aten's derivative formula, which calls the backward op. Kernels registered for the CUDA key
sit below autograd and below torch.compile's tracing (which runs the ops' meta kernels), so
an unmodified model, eager or compiled, reaches fa_cute in both passes. The previous kernel
is kept with `torch.library.get_kernel` (PyTorch >= 2.9) and called, boxed, with the
dispatch key set the dispatcher hands over (`with_keyset=True`).

Where PyTorch has the flash-attention registry (`torch.nn.attention.
register_flash_attention_impl`), fa_cute is registered in it under "fa_cute", so that
`torch.nn.attention.activate_flash_attention_impl("fa_cute")` and
`restore_flash_attention_impl()` work too; nothing is activated on import.
"""

import contextlib
import inspect
from typing import Dict, Iterator, Optional

import torch
import torch.nn.attention

from ._backward import backward_config, has_backward, run_sdpa_backward
from ._cache import validate_sdpa_cached
from ._configs import CONFIGS, DTYPE_NAMES
from ._launch import launch_kernel

__all__ = ["BACKWARD_OP", "CALLS", "FORWARD_HEAD_DIMS", "FORWARD_OP", "REGISTRY_NAME",
           "activate", "activated", "backward_grads", "backward_refusal", "deactivate",
           "forward_lse", "forward_refusal", "is_active"]

FORWARD_OP = "aten::_scaled_dot_product_flash_attention"
BACKWARD_OP = "aten::_scaled_dot_product_flash_attention_backward"
REGISTRY_NAME = "fa_cute"

# How many calls of each op fa_cute ran ("forward", "backward") and handed to the previous
# kernel ("forward_fallback", "backward_fallback"), since import: the way to see that a
# model reaches fa_cute, and that deactivate() stopped it.
CALLS: Dict[str, int] = {"forward": 0, "backward": 0, "forward_fallback": 0,
                         "backward_fallback": 0}

# The head dims fa_cute's forward kernels are built for (the backward takes no other: see
# backward_refusal).
FORWARD_HEAD_DIMS = frozenset(c["head_dim"] for c in CONFIGS.values())

# Errors by which fa_cute's checks refuse inputs (strides, alignment, sizes): such a call
# goes to the previous kernel instead, as one refused by the checks below does.
_REFUSALS = (ValueError, TypeError, NotImplementedError)


class _Active:
    """The registration in force: the Library holding fa_cute's kernels and the kernels they
    replaced (None where the key had none: a CPU-only build has no CUDA kernel)."""

    def __init__(self, dispatch_key: str):
        self.dispatch_key = dispatch_key
        self.previous = {op: _kernel_or_none(op, dispatch_key) for op in (FORWARD_OP,
                                                                           BACKWARD_OP)}
        self.library = torch.library.Library("aten", "IMPL")
        try:
            for op, kernel in ((FORWARD_OP, self._forward), (BACKWARD_OP, self._backward)):
                self.library.impl(op.split("::")[1], kernel, dispatch_key, with_keyset=True,
                                  **_OVERRIDE)
        except BaseException:
            # Half registered (the backward refused): take the forward back too, so that
            # nothing of fa_cute's stays in force after activate() raised.
            self.library._destroy()
            raise

    def remove(self) -> None:
        """Unregister fa_cute's kernels: the dispatcher's table for the key is computed
        again from the registrations left, which puts the previous kernel back."""
        self.library._destroy()

    def _fallback(self, op: str, keyset, *args, **kwargs):
        previous = self.previous[op]
        if previous is None:
            raise NotImplementedError(f"{op} has no {self.dispatch_key} kernel besides "
                                      "fa_cute's, which does not take these inputs")
        CALLS["forward_fallback" if op == FORWARD_OP else "backward_fallback"] += 1
        return previous.call_boxed(keyset, *args, **kwargs)

    def _forward(self, keyset, query, key, value, dropout_p=0.0, is_causal=False,
                 return_debug_mask=False, *, scale=None):
        args = (query, key, value, dropout_p, is_causal, return_debug_mask)
        if forward_refusal(query, key, value, dropout_p, return_debug_mask,
                           is_causal=is_causal) is None:
            try:
                out, lse = forward_lse(query, key, value, is_causal, scale)
            except _REFUSALS:
                pass
            else:
                CALLS["forward"] += 1
                # The meta kernel's outputs: no cumulative lengths (dense inputs), the
                # lengths, an unused RNG state and offset (no dropout), no debug mask.
                rng_state = torch.zeros((2,), dtype=torch.uint64, device=query.device)
                offset = torch.zeros((), dtype=torch.uint64, device=query.device)
                debug_mask = query.new_empty((0,))
                return (out, lse, None, None, query.shape[2], key.shape[2], rng_state, offset,
                        debug_mask)
        return self._fallback(FORWARD_OP, keyset, *args, scale=scale)

    def _backward(self, keyset, grad_out, query, key, value, out, logsumexp, cum_seq_q,
                  cum_seq_k, max_q, max_k, dropout_p, is_causal, philox_seed, philox_offset,
                  *, scale=None):
        args = (grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q,
                max_k, dropout_p, is_causal, philox_seed, philox_offset)
        if backward_refusal(grad_out, query, key, value, out, logsumexp, dropout_p,
                            is_causal=is_causal) is None:
            try:
                grads = backward_grads(grad_out, query, key, value, out, logsumexp,
                                        is_causal, scale)
            except _REFUSALS:
                pass
            else:
                CALLS["backward"] += 1
                return grads
        return self._fallback(BACKWARD_OP, keyset, *args, scale=scale)


_ACTIVE: Optional[_Active] = None

# `Library.impl` refuses, unless told `allow_override=True`, a kernel for an op and key that
# another Python Library already overrides (PyTorch 2.9 to 2.12 default to refusing; 2.13
# defaults to allowing). fa_cute wraps the kernel it replaces (kept by `get_kernel` and
# called for the inputs fa_cute does not take), so overriding is what it means to do. A
# PyTorch whose `impl` has no such flag keeps its own behaviour.
_OVERRIDE = ({"allow_override": True}
             if "allow_override" in inspect.signature(torch.library.Library.impl).parameters
             else {})


def _kernel_or_none(op: str, dispatch_key: str):
    try:
        return torch.library.get_kernel(op, dispatch_key)
    except RuntimeError:
        return None


def activate(dispatch_key: str = "CUDA") -> None:
    """Route PyTorch's flash SDPA ops (forward and backward) on `dispatch_key` to fa_cute,
    falling back to the kernel registered before for inputs fa_cute does not take (see
    `forward_refusal`, `backward_refusal`, and any input fa_cute's checks refuse). Calling
    it again while active does nothing; the key is "CUDA" but for tests."""
    global _ACTIVE
    if _ACTIVE is not None:
        return
    if not hasattr(torch.library, "get_kernel"):
        raise RuntimeError(f"fa_cute.activate needs PyTorch >= 2.9 (torch.library.get_kernel, "
                           f"to keep PyTorch's kernel for the inputs fa_cute does not take); "
                           f"this is {torch.__version__}")
    _ACTIVE = _Active(dispatch_key)


def deactivate() -> None:
    """Give the flash SDPA ops their previous kernels back; nothing when not active."""
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.remove()
        _ACTIVE = None


def is_active() -> bool:
    """Whether `activate()` is in force."""
    return _ACTIVE is not None


@contextlib.contextmanager
def activated(dispatch_key: str = "CUDA") -> Iterator[None]:
    """`activate()` for a `with` block, restoring the state before it on exit (a block
    entered while active leaves it active)."""
    was_active = is_active()
    activate(dispatch_key)
    try:
        yield
    finally:
        if not was_active:
            deactivate()


def _causal_refusal(query, key, is_causal: bool) -> Optional[str]:
    """Causal with seqlen_q != seqlen_k: SDPA never sends it to the flash op (it refuses the
    flash backend there), and a direct call of the op would get PyTorch's flash kernel's
    alignment, which is not SDPA's top-left one that fa_cute follows here: left to PyTorch."""
    if is_causal and query.shape[2] != key.shape[2]:
        return ("causal with seqlen_q != seqlen_k: PyTorch's flash kernel defines that "
                "alignment itself")
    return None


def forward_refusal(query, key, value, dropout_p: float, return_debug_mask: bool,
                    is_causal: bool = False) -> Optional[str]:
    """Why fa_cute does not run this flash SDPA forward (None: it tries; its own checks
    may still refuse the layout). Reads dtypes, shapes and flags only."""
    refusal = _causal_refusal(query, key, is_causal)
    if refusal is not None:
        return refusal
    if dropout_p != 0:
        return "dropout_p > 0: fa_cute has no dropout"
    if return_debug_mask:
        return "return_debug_mask: fa_cute has no attention-weights output"
    return _common_refusal(query, key, value, FORWARD_HEAD_DIMS)


def backward_refusal(grad_out, query, key, value, out, logsumexp, dropout_p: float,
                     is_causal: bool = False) -> Optional[str]:
    """Why fa_cute does not run this flash SDPA backward (None: it tries). Head dims are
    those `_C.default_backward_config` takes for the tensors' GPU, and only those the
    forward takes too: a head dim without a forward kernel ran PyTorch's forward, whose
    backward then runs PyTorch's kernel as well (the two passes come from one provider)."""
    refusal = _causal_refusal(query, key, is_causal)
    if refusal is not None:
        return refusal
    if dropout_p != 0:
        return "dropout_p > 0: fa_cute has no dropout"
    if not has_backward():
        return "this build of fa_cute has no backward kernel"
    refusal = _common_refusal(query, key, value, None)
    if refusal is not None:
        return refusal
    if query.shape[3] not in FORWARD_HEAD_DIMS:
        return (f"head dim {query.shape[3]} has no fa_cute forward kernel in this build: the "
                "forward ran the previous kernel, and so does the backward")
    if grad_out.dtype != query.dtype or out.dtype != query.dtype:
        return "grad_out and out must have query's dtype"
    if logsumexp.dtype != torch.float32 or logsumexp.shape != query.shape[:3]:
        return "logsumexp is not float32 (batch, nheads, seqlen_q)"
    try:
        backward_config(query)
    except ValueError:
        return f"head dim {query.shape[-1]} has no fa_cute backward kernel on this GPU"
    return None


def _common_refusal(query, key, value, head_dims) -> Optional[str]:
    tensors = (query, key, value)
    if any(t.dim() != 4 for t in tensors):
        return "query, key and value must be 4-D (batch, nheads, seqlen, headdim)"
    if any(t.dtype not in DTYPE_NAMES or t.dtype != query.dtype for t in tensors):
        return "query, key and value must be all bfloat16 or all float16"
    if key.shape != value.shape or key.shape[3] != query.shape[3]:
        return "key and value must have one shape, and query's head dim"
    if key.shape[0] != query.shape[0] or key.shape[1] != query.shape[1]:
        # PyTorch expands GQA heads before this op; other head counts are its kernel's.
        return "key and value must have query's batch and head count"
    if head_dims is not None and query.shape[3] not in head_dims:
        return f"head dim {query.shape[3]} has no fa_cute forward kernel in this build"
    return None


def forward_lse(query, key, value, is_causal: bool, scale):
    """fa_cute's forward in SDPA's layout and top-left causal alignment: (out, lse), out laid
    out as query (as the op's meta kernel says), lse contiguous float32 (B, H, Nq)."""
    launch = validate_sdpa_cached(query, key, value, causal=is_causal, softmax_scale=scale)
    out = torch.empty_like(query)
    batch, nheads, seqlen_q, _ = query.shape
    lse = torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=query.device)
    launch_kernel(launch, query, key, value, out, lse, timed=False, sdpa_layout=True)
    return out, lse


def backward_grads(grad_out, query, key, value, out, logsumexp, is_causal: bool, scale):
    """fa_cute's backward in SDPA's layout, top-left aligned: (dq, dk, dv) laid out as query,
    key and value. A gradient in neither of the layouts the kernel reads as they come (an
    expanded one, for a loss that sums the output) is copied to a contiguous one."""
    if not (grad_out.is_contiguous() or grad_out.transpose(1, 2).is_contiguous()):
        grad_out = grad_out.contiguous()
    return run_sdpa_backward(grad_out, query, key, value, out, logsumexp.contiguous(),
                             causal=is_causal, softmax_scale=scale)


def _register_in_torch() -> None:
    """Make fa_cute known to PyTorch's flash-attention registry, where it has one: its
    activate calls `activate()`, its restore the returned handle's remove()."""
    register = getattr(torch.nn.attention, "register_flash_attention_impl", None)
    if register is None:
        return

    class _Handle:
        def remove(self) -> None:
            deactivate()

    def register_fn() -> _Handle:
        activate()
        return _Handle()

    register(REGISTRY_NAME, register_fn=register_fn)


_register_in_torch()
