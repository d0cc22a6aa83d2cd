"""Reference attention and the accuracy rule shared by the tests, the benchmark and the
sanitizer case.

The rule is FlashAttention's: a low-precision kernel is judged against the same attention
computed plainly in the input dtype, both measured against a float64 reference. Our max abs
error may be at most twice the plain computation's, plus a small absolute slack. That rule
alone is loose when the plain computation is itself poor (large-magnitude inputs make the
softmax peaky, and a bf16 softmax then errs by O(1)), so `check_close` also bounds the
relative Frobenius error by a per-dtype tolerance that real kernels meet with margin
(bf16 about 2e-3, fp16 about 3e-4 on random data).
"""

from typing import Tuple

import torch

#: Absolute slack added to twice the plain error, so that exact-zero plain errors still pass.
ABS_SLACK = 1e-5

#: Bound on ||out - ref|| / ||ref|| per input dtype (about 5x what the kernel reaches).
REL_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float,
                  upcast: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale) v for (batch, seqlen, nheads, headdim) tensors.

    upcast=True computes in float64 (the reference); upcast=False computes every step in the
    input dtype, which is the "plain" attention the 2x rule compares against.
    """
    if upcast:
        q, k, v = (t.to(torch.float64) for t in (q, k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * softmax_scale
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    diff = out.to(device=ref.device, dtype=torch.float64) - ref
    return (diff.norm() / ref.norm()).item()


def check_close(out: torch.Tensor, ref: torch.Tensor, plain: torch.Tensor,
                slack: float = ABS_SLACK) -> Tuple[float, float]:
    """Raise AssertionError unless `out` passes the accuracy rule; return (max_err, plain_err).

    out: the kernel's output (bf16/fp16); ref: attention_ref(..., upcast=True);
    plain: attention_ref(..., upcast=False). AssertionError is raised explicitly (not with
    `assert`) so that the check also runs under `python -O`.
    """
    if out.shape != ref.shape or plain.shape != ref.shape:
        raise AssertionError(f"shape mismatch: out {tuple(out.shape)}, ref {tuple(ref.shape)}, "
                             f"plain {tuple(plain.shape)}")
    if not torch.isfinite(out).all().item():
        bad = (~torch.isfinite(out)).sum().item()
        raise AssertionError(f"output has {bad} NaN/inf elements")
    out64 = out.to(device=ref.device, dtype=torch.float64)
    max_err = (out64 - ref).abs().max().item()
    plain_err = (plain.to(device=ref.device, dtype=torch.float64) - ref).abs().max().item()
    bound = 2.0 * plain_err + slack
    if not max_err <= bound:
        raise AssertionError(f"max abs error {max_err:.3e} exceeds 2 x plain {out.dtype} error "
                             f"{plain_err:.3e} + {slack:g} = {bound:.3e}")
    rel = relative_error(out64, ref)
    rel_tol = REL_TOL[out.dtype]
    if not rel <= rel_tol:
        raise AssertionError(f"relative error {rel:.3e} exceeds {rel_tol:g} for {out.dtype}")
    return max_err, plain_err
