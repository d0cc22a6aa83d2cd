"""`fa_cute.varlen_forward`: attention over a batch of sequences of different lengths packed
into one tensor (what serving engines and packed-sequence training pass), without padding.

Sequence b's queries are rows cu_seqlens_q[b]:cu_seqlens_q[b + 1] of q (and of the output),
its keys and values rows cu_seqlens_k[b]:cu_seqlens_k[b + 1] of k and v. The cu_seqlens are
int32 tensors on the GPU that the host never reads: no synchronisation per call, and the
call can be captured in a CUDA graph. The caller gives the longest lengths instead
(max_seqlen_q sizes the launch). What the host cannot see, the GPU checks after the
attention kernel (src/fwd_varlen_check.h): a batch whose cu_seqlens decrease, start below 0,
end past the packed rows, hold a sequence longer than max_seqlen_q, or whose seqused_k exceeds
its keys, comes back as an output (and LSE) of NaN, never as memory read or written out of
bounds. Everything else is checked on the host, as `forward` checks its arguments:
TypeError for types, ValueError for the rest, each naming the argument.
"""

from typing import Optional, Tuple, Union

import torch

from . import _C
from ._backward import backward_config
from ._configs import AUTO, DTYPE_NAMES, packed_call_config
from ._launch import current_stream
from ._packed import check_packed_layout, check_varlen_args, packed_row_strides
from ._validate import (check_devices, check_flag, check_memory, check_tensor, grad_mode,
                        resolve_scale, softcap_arg, spans_overlap, window_arg)
from ._varlen_backward import VarlenAttention

__all__ = ["varlen_forward"]

Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                   max_seqlen_q: int, max_seqlen_k: int, *,
                   seqused_k: Optional[torch.Tensor] = None, causal: bool = False,
                   softmax_scale: Optional[float] = None,
                   window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                   return_lse: bool = False, out: Optional[torch.Tensor] = None,
                   config: Optional[str] = AUTO) -> Result:
    """Attention of each packed sequence's queries over its own keys.

    q: (total_q, nheads, headdim); k, v: (total_k, nheads_k, headdim); bf16 or fp16 CUDA
    tensors of one device, last dim contiguous, other strides multiples of 16 bytes.
    nheads must be a multiple of nheads_k (grouped-query attention).

    cu_seqlens_q, cu_seqlens_k: int32 CUDA tensors of batch + 1 offsets each (non-decreasing,
    in [0, total]); sequence b is rows [cu[b], cu[b + 1]). Lengths of 0 are allowed (a
    sequence with no query writes nothing; one with no key gets output 0 and LSE -inf).
    max_seqlen_q, max_seqlen_k: Python ints at least the longest sequence's lengths (the
    launch covers max_seqlen_q query rows per sequence).
    seqused_k: optional int32 CUDA tensor (batch,): sequence b attends to the first
    seqused_k[b] of its keys only.

    causal, window_size, softcap and softmax_scale are `forward`'s, aligned bottom-right in
    each sequence by its own lengths (query i of a sequence with lq queries and lk keys sees
    key j iff j <= i + lk - lq).

    return_lse: also return the float32 LSE, (nheads, total_q) (FlashAttention's varlen
    layout). out, if given, is a (total_q, nheads, headdim) tensor of q's dtype that receives
    the output. config: a config name whose `configs()` entry has "varlen": True, or "auto".

    Gradients: with q, k or v requiring grad in grad mode, the call is recorded
    (`varlen_backward` computes them; the LSE is then always computed, returned or not);
    out= takes no gradient and raises ValueError there.
    """
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    cap = softcap_arg(softcap)
    window_left, window_right = window_arg(window_size, causal)
    batch, max_seqlen_q, max_seqlen_k = check_varlen_args(
        q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k)
    if grad_mode() and (q.requires_grad or k.requires_grad or v.requires_grad):
        if out is not None:
            raise ValueError("out: varlen_forward records gradients here (q, k or v requires "
                             "grad), and an output written into a given tensor has none; drop "
                             "out=, or call it under torch.no_grad()")
        backward_config(q, "q")  # no backward for this head dim: fail before the forward runs
        run = lambda: _varlen_forward_launch(  # noqa: E731
            q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, batch,
            causal, softmax_scale, cap, window_left, window_right, True, None, config)
        out, lse = VarlenAttention.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k,
                                         max_seqlen_q, max_seqlen_k, bool(causal), softmax_scale,
                                         cap, (window_left, window_right), run)
        return (out, lse) if return_lse else out
    out, lse = _varlen_forward_launch(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k,
                                      max_seqlen_q, max_seqlen_k, batch, causal, softmax_scale,
                                      cap, window_left, window_right, return_lse, out, config)
    return (out, lse) if return_lse else out


def _varlen_forward_launch(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q: int,
                           max_seqlen_k: int, batch: int, causal: bool, softmax_scale,
                           cap: float, window_left: int, window_right: int, return_lse: bool,
                           out: Optional[torch.Tensor], config):
    """The rest of varlen_forward's checks (out, the config, layouts, devices), then the
    launch; (out, lse), lse None without return_lse."""
    total_q, nheads, head_dim = q.shape
    total_k, nheads_k, _ = k.shape
    if out is not None:
        check_tensor("out", out)
        if out.dtype != q.dtype or tuple(out.shape) != tuple(q.shape):
            raise ValueError(f"out must be a {q.dtype} tensor of q's shape {tuple(q.shape)}, got "
                             f"{out.dtype} {tuple(out.shape)}")
        if spans_overlap(out, k) or spans_overlap(out, v) or (
                spans_overlap(out, q) and (out.data_ptr() != q.data_ptr()
                                           or out.stride() != q.stride())):
            raise ValueError("out overlaps k or v (or is a view of q's memory other than q "
                             "itself), which the kernel reads while it writes out; pass a tensor "
                             "of its own, or q itself")
    scale = resolve_scale(softmax_scale, head_dim)
    cfg = _pick_config(config, q, head_dim, max_seqlen_q, max_seqlen_k, causal, cap)
    named = [("q", q), ("k", k), ("v", v)] + ([("out", out)] if out is not None else [])
    for name, t in named:
        check_packed_layout(name, t)
    tensors = named + [("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)]
    if seqused_k is not None:
        tensors.append(("seqused_k", seqused_k))
    check_devices(tensors, cfg, "q")
    for name, t in tensors:
        check_memory(name, t)

    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = (torch.empty((nheads, total_q), dtype=torch.float32, device=q.device)
           if return_lse else None)
    if total_q == 0:
        return out, lse
    if total_k == 0:
        # No sequence has a key: every row sees none (output 0, LSE -inf), as in `forward`.
        out.zero_()
        if lse is not None:
            lse.fill_(float("-inf"))
        return out, lse
    # The Hopper kernel's dynamic tile order claims its tiles from it (_C clears it).
    tile_counter = torch.empty(1, dtype=torch.int32, device=q.device)
    with torch.cuda.device(q.device):
        _C.varlen_forward(
            cfg["name"], DTYPE_NAMES[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(),
            out.data_ptr(), 0 if lse is None else lse.data_ptr(), cu_seqlens_q.data_ptr(),
            cu_seqlens_k.data_ptr(), 0 if seqused_k is None else seqused_k.data_ptr(), batch,
            total_q, total_k, max_seqlen_q, max_seqlen_k, nheads, nheads_k, head_dim,
            packed_row_strides(q), packed_row_strides(k), packed_row_strides(v),
            packed_row_strides(out), scale, bool(causal), cap,
            window_left, -1 if causal else window_right, q.device.index,
            current_stream(q.device.index), tile_counter.data_ptr())
    return out, lse


def _pick_config(config, q: torch.Tensor, head_dim: int, max_seqlen_q: int, max_seqlen_k: int,
                 causal: bool, cap: float) -> dict:
    """The named config (it must take varlen batches) or auto's: the heuristic's for the
    longest sequences, never a split-KV decode tile (`_C.default_varlen_config`)."""
    cfg = packed_call_config(config, q, head_dim, lambda cc: _C.default_varlen_config(
        head_dim, max_seqlen_q, max_seqlen_k, cc[0], cc[1], bool(causal)), cap)
    if not cfg.get("varlen", False):
        raise ValueError(f"config {cfg['name']!r} takes no variable-length batches (a split-KV "
                         f"decode tile); use config='auto' or one whose configs() entry has "
                         f"'varlen': True")
    return cfg
