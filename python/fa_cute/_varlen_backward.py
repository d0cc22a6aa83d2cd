"""The backward of `fa_cute.varlen_forward`: `varlen_backward` (the raw op, as `fa_cute.backward`
is `forward`'s) and `VarlenAttention`, the torch.autograd.Function through which
`varlen_forward` records gradients.

The kernels are the dense backward's (`_C.varlen_backward`: each CTA reads its sequence's
lengths and first rows from cu_seqlens on the GPU, src/block_info.h BwdSeqlens), so no host
sync happens here either. What the host cannot see is checked on the GPU after the backward
(src/bwd_varlen_check.h): a bad batch's dq, dk and dv come back NaN. Packed rows outside
every sequence (before cu_seqlens[0], from cu_seqlens[batch] on) get gradient 0; so do a
sequence's keys past seqused_k.
"""

from typing import Optional, Tuple

import torch

from . import _C
from ._backward import (BACKWARD_CONFIGS, DETERMINISTIC_FAMILIES, backward_config,
                        backward_options, check_like, deterministic_config,
                        named_backward_config, semaphore_arg)
from ._configs import AUTO, DTYPE_NAMES
from ._launch import current_stream
from ._packed import check_packed_layout, check_varlen_args, packed_row_strides
from ._validate import (LIMITS, check_devices, check_flag, check_memory,
                        check_tensor, overlaps_itself, resolve_scale, spans_overlap)

__all__ = ["VarlenAttention", "varlen_backward"]


def varlen_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                    cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                    seqused_k: Optional[torch.Tensor] = None, causal: bool = False,
                    softmax_scale: Optional[float] = None, deterministic: bool = False,
                    dq: Optional[torch.Tensor] = None, dk: Optional[torch.Tensor] = None,
                    dv: Optional[torch.Tensor] = None, config: Optional[str] = AUTO,
                    softcap: float = 0.0, window_size: Tuple[int, int] = (-1, -1)
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of `varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
    max_seqlen_k, seqused_k=seqused_k, causal=causal, softmax_scale=softmax_scale,
    softcap=softcap, window_size=window_size)`, from its output `out`, its LSE `lse`
    ((nheads, total_q) float32: return_lse=True) and the output's gradient `dout` (like q).

    deterministic=True: bitwise-reproducible dq (a fixed order of its additions). dq, dk,
    dv: optional tensors like q, k, v that receive the gradients. config: a backward config
    (`fa_cute.backward`'s), or "auto".
    """
    check_flag("causal", causal)
    check_flag("deterministic", deterministic)
    options = backward_options(softcap, window_size, bool(causal))
    batch, max_seqlen_q, max_seqlen_k = check_varlen_args(
        q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k)
    total_q, nheads, head_dim = q.shape
    total_k, nheads_k, _ = k.shape
    for name, t in (("out", out), ("dout", dout)):
        check_like(name, t, q, "q")
    check_tensor("lse", lse)
    if lse.dtype != torch.float32:
        raise TypeError(f"lse has dtype {lse.dtype}; it must be torch.float32 (varlen_forward's "
                        "return_lse=True output)")
    if tuple(lse.shape) != (nheads, total_q) or not lse.is_contiguous():
        raise ValueError(f"lse must be a contiguous (nheads, total_q) = {(nheads, total_q)} "
                         f"tensor (varlen_forward's LSE), got shape {tuple(lse.shape)} with "
                         f"strides {lse.stride()}")
    auto = config is None or config == AUTO
    if auto:
        config = backward_config(q, "q")
        if deterministic:
            config = deterministic_config(config, q, "q")
    else:
        config = named_backward_config(config, q, "q")
        if deterministic and BACKWARD_CONFIGS[config]["family"] not in DETERMINISTIC_FAMILIES:
            raise ValueError(f"config {config!r} has no deterministic mode (families with one: "
                             f"{', '.join(DETERMINISTIC_FAMILIES)}); pass deterministic=False "
                             "or another config")
    scale = resolve_scale(softmax_scale, head_dim)
    tensors = [("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)]
    for name, t in tensors:
        check_packed_layout(name, t)
    tensors.append(("lse", lse))
    given = []
    for name, t, like in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        if t is None:
            continue
        check_like(name, t, like, name[1:])
        check_packed_layout(name, t)
        if overlaps_itself(t):
            raise ValueError(f"{name} has elements that share memory (e.g. an expanded tensor); "
                             "pass a tensor with one memory location per element")
        for other, u in tensors + given:
            if spans_overlap(t, u):
                raise ValueError(f"{name} overlaps the memory of {other}; pass a separate tensor")
        given.append((name, t))
    ints = [("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)]
    if seqused_k is not None:
        ints.append(("seqused_k", seqused_k))
    check_devices(tensors + given + ints, BACKWARD_CONFIGS[config], "q")
    for name, t in ints:
        check_memory(name, t)

    dq = torch.empty_like(q) if dq is None else dq
    # Keys past seqused_k: no kernel writes them (their gradient is 0).
    new_kv = torch.zeros_like if seqused_k is not None else torch.empty_like
    dk = new_kv(k) if dk is None else (dk.zero_() if seqused_k is not None else dk)
    dv = new_kv(v) if dv is None else (dv.zero_() if seqused_k is not None else dv)
    if total_q == 0 or total_k == 0:
        # No sequence has a query or a key: every gradient is 0.
        for g in (dq, dk, dv):
            g.zero_()
        return dq, dk, dv
    block_m = BACKWARD_CONFIGS[config]["block_m"]
    align = LIMITS["dq_accum_row_align"]
    accum_rows = -(-(total_q + batch * align) // align) * align
    accum = nheads * accum_rows * head_dim
    d_rows = nheads * total_q
    counters = batch * nheads * -(-max_seqlen_q // block_m) if deterministic else 0
    with torch.cuda.device(q.device):
        work = torch.empty(accum + d_rows + counters, dtype=torch.float32, device=q.device)
        semaphore = work[accum + d_rows:].view(torch.int32) if deterministic else None
        strides = packed_row_strides
        _C.varlen_backward(
            config, DTYPE_NAMES[q.dtype], dout.data_ptr(), q.data_ptr(), k.data_ptr(),
            v.data_ptr(), out.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(),
            dv.data_ptr(), work.data_ptr(), work[accum:].data_ptr(), cu_seqlens_q.data_ptr(),
            cu_seqlens_k.data_ptr(), 0 if seqused_k is None else seqused_k.data_ptr(), batch,
            total_q, total_k, max_seqlen_q, max_seqlen_k, nheads, nheads_k, head_dim,
            strides(q), strides(k), strides(v), strides(out), strides(dout), strides(dq),
            strides(dk), strides(dv), scale, bool(causal), q.device.index,
            current_stream(q.device.index), **semaphore_arg(semaphore), **options)
    return dq, dk, dv


def _kernel_ready(dout: torch.Tensor) -> torch.Tensor:
    """The gradient autograd hands over (laid out in any way: an expanded tensor, for a loss
    that sums the output) as it is where check_packed_layout takes it, else contiguous."""
    try:
        check_packed_layout("dout", dout)
        return dout
    except ValueError:
        return dout.contiguous()


class VarlenAttention(torch.autograd.Function):
    """varlen_forward with gradients: the forward runs `run_forward` (varlen_forward's launch,
    with the LSE), saves q, k, v, the output and the LSE; the backward runs `varlen_backward`
    (non-deterministic, as `forward`'s autograd). The int32 offsets get no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
                causal, softmax_scale, softcap, window_size, run_forward):
        out, lse = run_forward()
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                              seqused_k if seqused_k is not None else torch.empty(0))
        ctx.has_seqused = seqused_k is not None
        ctx.spec = (max_seqlen_q, max_seqlen_k, causal, softmax_scale, softcap, window_size)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, cu_q, cu_k, seqused = ctx.saved_tensors
        max_q, max_k, causal, scale, softcap, window_size = ctx.spec
        dout = _kernel_ready(dout)
        dq, dk, dv = varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k,
                                     seqused_k=seqused if ctx.has_seqused else None,
                                     causal=causal, softmax_scale=scale, softcap=softcap,
                                     window_size=window_size)
        needs = ctx.needs_input_grad
        return (dq if needs[0] else None, dk if needs[1] else None, dv if needs[2] else None,
                *(None,) * 10)
