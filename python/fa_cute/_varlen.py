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
from ._configs import AUTO, DTYPE_NAMES, packed_call_config
from ._launch import current_stream, row_strides
from ._validate import (ALLOWED_DTYPES, LIMITS, check_devices, check_flag, check_memory,
                        check_tensor, grad_mode, resolve_scale, softcap_arg, spans_overlap,
                        window_arg)

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

    No backward yet: with q, k or v requiring grad in grad mode, this raises ValueError.
    """
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    cap = softcap_arg(softcap)
    window_left, window_right = window_arg(window_size, causal)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t)
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name} has dtype {t.dtype}; allowed: {ALLOWED_DTYPES}")
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D (total, nheads, headdim) packed sequences, got "
                             f"shape {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if grad_mode() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise ValueError("varlen_forward has no backward yet: call it under torch.no_grad() "
                         "or on inputs that do not require grad (pass .detach()ed tensors), or "
                         "train with fa_cute.forward on padded batches")
    total_q, nheads, head_dim = q.shape
    total_k, nheads_k, head_dim_k = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if head_dim_k != head_dim:
        raise ValueError(f"k and v have headdim {head_dim_k}, q has {head_dim}: they must match")
    if nheads_k == 0 or nheads % nheads_k != 0:
        raise ValueError(f"nheads of q ({nheads}) must be a multiple of nheads of k and v "
                         f"({nheads_k})")
    batch = _check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, seqused_k)
    max_seqlen_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k)
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
        _check_packed_layout(name, t)
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
        return (out, lse) if return_lse else out
    if total_k == 0:
        # No sequence has a key: every row sees none (output 0, LSE -inf), as in `forward`.
        out.zero_()
        if lse is not None:
            lse.fill_(float("-inf"))
        return (out, lse) if return_lse else out
    with torch.cuda.device(q.device):
        _C.varlen_forward(
            cfg["name"], DTYPE_NAMES[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(),
            out.data_ptr(), 0 if lse is None else lse.data_ptr(), cu_seqlens_q.data_ptr(),
            cu_seqlens_k.data_ptr(), 0 if seqused_k is None else seqused_k.data_ptr(), batch,
            total_q, total_k, max_seqlen_q, max_seqlen_k, nheads, nheads_k, head_dim,
            _strides(q), _strides(k), _strides(v), _strides(out), scale, bool(causal), cap,
            window_left, -1 if causal else window_right, q.device.index,
            current_stream(q.device.index))
    return (out, lse) if return_lse else out


def _check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, seqused_k) -> int:
    """The batch size (len(cu_seqlens_q) - 1), once the offset tensors' types and shapes are
    checked (their values are the GPU's to check)."""
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k),
                    ("seqused_k", seqused_k)):
        if t is None and name == "seqused_k":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of int32, got {type(t).__name__}")
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must have dtype torch.int32, got {t.dtype}")
        if t.dim() != 1 or t.stride(0) != 1:
            raise ValueError(f"{name} must be a contiguous 1-D tensor, got shape {tuple(t.shape)} "
                             f"with strides {t.stride()}")
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 1:
        raise ValueError(f"cu_seqlens_q must hold batch + 1 >= 2 offsets, got {batch + 1}")
    if cu_seqlens_k.shape[0] != batch + 1:
        raise ValueError(f"cu_seqlens_k must hold as many offsets as cu_seqlens_q ({batch + 1}), "
                         f"got {cu_seqlens_k.shape[0]}")
    if seqused_k is not None and seqused_k.shape[0] != batch:
        raise ValueError(f"seqused_k must hold one length per sequence ({batch}), got "
                         f"{seqused_k.shape[0]}")
    return batch


def _check_max_seqlen(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a Python int (the host never reads cu_seqlens), got "
                        f"{type(value).__name__}")
    if not 1 <= value <= LIMITS["max_seqlen"]:
        raise ValueError(f"{name} must be in [1, {LIMITS['max_seqlen']}], got {value}")
    return value


def _check_packed_layout(name: str, t: torch.Tensor) -> None:
    """The last dim contiguous, the row and head strides 16-byte multiples (the kernels'
    16-byte vector and TMA loads), the data pointer 16-byte aligned."""
    row, head, col = t.stride()
    if t.shape[2] > 1 and col != 1:
        raise ValueError(f"{name} must be contiguous in its last (headdim) dim, got strides "
                         f"{t.stride()}: call .contiguous() on it")
    elem = t.element_size()
    for what, stride, size in (("row", row, t.shape[0]), ("head", head, t.shape[1])):
        if size > 1 and (stride <= 0 or (stride * elem) % 16 != 0):
            raise ValueError(f"{name}: its {what} stride {stride} must be a positive multiple of "
                             f"{16 // elem} elements (16 bytes); call .contiguous() on it")
    if t.data_ptr() % 16 != 0:
        raise ValueError(f"{name}: its data pointer must be 16-byte aligned; call .clone() on it")


def _strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(batch, row, head) element strides for the kernel: the packed tensor as one batch
    entry (`row_strides` gives its batch stride, and any dim of size 1, 0)."""
    return row_strides(t.unsqueeze(0))


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
