"""`fa_cute.combine`: the attention of queries over a union of disjoint key sets, from the
attentions over each set and their LSEs (split-KV decoding, ring attention, a KV cache in
pieces). Exact up to rounding: with m = max_i lse_i,

    lse = m + log(sum_i exp(lse_i - m)),    out = sum_i exp(lse_i - lse) * out_i

computed in float32 (float64 for float64 inputs) with PyTorch's ops, so it runs wherever
its inputs are and gradients flow through it. A key set that a row does not see (LSE -inf,
forward's convention for a row that sees no key) adds nothing, whatever that partial holds
in the row; a row that sees no key in any set gets out 0 and LSE -inf, as from
`fa_cute.forward`.

Messages follow `_validate`'s rules: TypeError for types, ValueError for the rest, each
naming the argument and what is allowed.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["combine"]

Partials = Union[torch.Tensor, Sequence[torch.Tensor]]

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
_LSE_DTYPES = (torch.float32, torch.float64)


def combine(out_partials: Partials, lse_partials: Partials, *,
            out_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge attentions of the same queries over disjoint key sets.

    out_partials: n attention outputs in `fa_cute.forward`'s layout, (batch, seqlen_q,
        nheads, headdim) each, as a sequence of tensors or one tensor with a leading dim n;
        bf16, fp16, fp32 or fp64, all one dtype.
    lse_partials: their LSEs (`return_lse=True`), (batch, nheads, seqlen_q) each, float32 or
        float64, as a sequence or one tensor with a leading dim n.
    out_dtype: the merged output's dtype (default: the partials').

    Returns (out, lse): out (batch, seqlen_q, nheads, headdim) in out_dtype, lse (batch,
    nheads, seqlen_q) in float32 (float64 where an input is float64). For sdpa's layout
    (batch, nheads, seqlen, headdim), pass each output's .transpose(1, 2) and transpose the
    merged one back.
    """
    outs = _partials("out_partials", out_partials, 4)
    lses = _partials("lse_partials", lse_partials, 3)
    if len(outs) != len(lses):
        raise ValueError(f"out_partials has {len(outs)} partial outputs but lse_partials "
                         f"{len(lses)} LSEs; pass one LSE per output")
    dtype = outs[0].dtype
    if dtype not in _OUT_DTYPES:
        raise TypeError(f"out_partials has dtype {dtype}; allowed: torch.bfloat16, torch.float16, "
                        "torch.float32 or torch.float64")
    batch, seqlen_q, nheads, _ = outs[0].shape
    for i, (o, lse) in enumerate(zip(outs, lses)):
        if o.dtype != dtype:
            raise TypeError(f"out_partials[{i}] has dtype {o.dtype}, out_partials[0] {dtype}; "
                            "pass outputs of one dtype")
        if o.shape != outs[0].shape:
            raise ValueError(f"out_partials[{i}] has shape {tuple(o.shape)}, out_partials[0] "
                             f"{tuple(outs[0].shape)}; the partials must cover the same queries")
        if lse.dtype not in _LSE_DTYPES:
            raise TypeError(f"lse_partials[{i}] has dtype {lse.dtype}; it must be torch.float32 "
                            "(forward's return_lse=True output) or torch.float64")
        if lse.shape != (batch, nheads, seqlen_q):
            raise ValueError(f"lse_partials[{i}] has shape {tuple(lse.shape)}; it must be (batch, "
                             f"nheads, seqlen_q) of out_partials: {(batch, nheads, seqlen_q)}")
    devices = {t.device for t in outs + lses}
    if len(devices) > 1:
        raise ValueError(f"out_partials and lse_partials are on several devices "
                         f"({', '.join(sorted(str(d) for d in devices))}); pass them on one")
    if out_dtype is None:
        out_dtype = dtype
    elif not isinstance(out_dtype, torch.dtype) or out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be None or one of torch.bfloat16, torch.float16, "
                        f"torch.float32, torch.float64; got {out_dtype!r}")

    wide = torch.float64 if torch.float64 in {dtype, *(lse.dtype for lse in lses)} else torch.float32
    lse = torch.stack([t.to(wide) for t in lses])                # (n, batch, nheads, seqlen_q)
    # The shift only keeps exp() in range: the result does not depend on it, so neither do
    # the gradients (detached). A row with every LSE -inf shifts by 0: all weights are 0.
    m = lse.amax(0).detach()
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    weights = torch.exp(lse - m)
    total = weights.sum(0)
    seen = total > 0
    # Where no set holds a key, a denominator of 1 over weights of 0: out 0, and gradients 0
    # rather than 0 * inf.
    total = torch.where(seen, total, torch.ones_like(total))
    lse_out = torch.where(seen, m + torch.log(total), torch.full_like(total, float("-inf")))
    scale = (weights / total).permute(0, 1, 3, 2).unsqueeze(-1)  # (n, batch, seqlen_q, nheads, 1)
    # A partial's rows that see none of its keys are not read: whatever they hold (a split
    # that stored nothing there, NaN included) adds 0.
    # (Masking the values, not the products, keeps the LSEs' gradients finite there too.)
    values = torch.stack([o.to(wide) for o in outs])
    values = torch.where(scale > 0, values, torch.zeros_like(values))
    out = (scale * values).sum(0)
    return out.to(out_dtype), lse_out


def _partials(name: str, value, rank: int) -> List[torch.Tensor]:
    """value as a non-empty list of rank-`rank` tensors: a sequence of them, or one tensor
    with a leading dim over the partials."""
    if isinstance(value, torch.Tensor):
        if value.dim() != rank + 1:
            raise ValueError(f"{name} as one tensor must be {rank + 1}-D (partials first); got "
                             f"{value.dim()}-D, shape {tuple(value.shape)}")
        parts = list(value.unbind(0))
    elif isinstance(value, (list, tuple)):
        parts = list(value)
        for i, t in enumerate(parts):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor; got {type(t).__name__}")
            if t.dim() != rank:
                raise ValueError(f"{name}[{i}] must be {rank}-D; got {t.dim()}-D, shape "
                                 f"{tuple(t.shape)}")
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a list or tuple of them; got "
                        f"{type(value).__name__}")
    if not parts:
        raise ValueError(f"{name} is empty; pass at least one partial attention")
    return parts
