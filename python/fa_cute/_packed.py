"""The checks that every call on packed (variable-length) sequences shares: `varlen_forward`,
its backward `varlen_backward`. q, k, v are (total, nheads, headdim) tensors; cu_seqlens int32
offsets on the GPU, whose values the host never reads (the GPU checks them: src/fwd_varlen_check.h,
src/bwd_varlen_check.h). TypeError for types, ValueError for the rest, each naming the argument.
"""

from typing import Tuple

import torch

from ._configs import DTYPE_NAMES
from ._launch import row_strides
from ._validate import ALLOWED_DTYPES, LIMITS, check_tensor

__all__ = ["check_cu_seqlens", "check_max_seqlen", "check_packed_layout", "check_varlen_args",
           "packed_row_strides"]


def check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
                      max_seqlen_k) -> Tuple[int, int, int]:
    """q, k, v: packed tensors of one supported dtype, matching head dims, nheads a multiple
    of nheads_k; the offsets and maxima (check_cu_seqlens, check_max_seqlen). Returns
    (batch, max_seqlen_q, max_seqlen_k)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t)
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name} has dtype {t.dtype}; allowed: {ALLOWED_DTYPES}")
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D (total, nheads, headdim) packed sequences, got "
                             f"shape {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    _, nheads, head_dim = q.shape
    _, nheads_k, head_dim_k = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if head_dim_k != head_dim:
        raise ValueError(f"k and v have headdim {head_dim_k}, q has {head_dim}: they must match")
    if nheads_k == 0 or nheads % nheads_k != 0:
        raise ValueError(f"nheads of q ({nheads}) must be a multiple of nheads of k and v "
                         f"({nheads_k})")
    batch = check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, seqused_k)
    return (batch, check_max_seqlen("max_seqlen_q", max_seqlen_q),
            check_max_seqlen("max_seqlen_k", max_seqlen_k))


def check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, seqused_k) -> int:
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


def check_max_seqlen(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a Python int (the host never reads cu_seqlens), got "
                        f"{type(value).__name__}")
    if not 1 <= value <= LIMITS["max_seqlen"]:
        raise ValueError(f"{name} must be in [1, {LIMITS['max_seqlen']}], got {value}")
    return value


def check_packed_layout(name: str, t: torch.Tensor) -> None:
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


def packed_row_strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(batch, row, head) element strides for the kernel: the packed tensor as one batch
    entry (`row_strides` gives its batch stride, and any dim of size 1, 0)."""
    return row_strides(t.unsqueeze(0))
