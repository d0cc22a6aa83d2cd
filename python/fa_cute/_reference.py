"""Reference attention and the accuracy rules shared by the tests, the benchmark and the
sanitizer case.

The output rule is FlashAttention's: a low-precision kernel is judged against the same
attention computed plainly in the input dtype, both measured against a float64 reference.
Our max abs error may be at most twice the plain computation's, plus a small absolute
slack. That rule alone is loose when the plain computation is itself poor (large-magnitude
inputs make the softmax peaky, and a bf16 softmax then errs by O(1)), so `check_close` also
bounds the relative Frobenius error by a per-dtype tolerance that real kernels meet with
margin (bf16 about 2e-3, fp16 about 3e-4 on random data).

The log-sum-exp has no such plain counterpart (a bf16 LSE is far worse than any fp32
kernel), so `check_lse` uses a fixed tolerance: the kernel computes it in fp32 from the
same bf16/fp16 inputs the float64 reference reads, which leaves only fp32 rounding.

Semantics follow docs/design.md: q (batch, seqlen_q, nheads, d), k and v
(batch, seqlen_k, nheads_k, d); query head h reads K/V head h // (nheads // nheads_k); with
causal, query row r sees key c iff c <= r + causal_offset; a row that sees no key has
output 0 and LSE -inf.
"""

import math
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch

__all__ = ["ABS_SLACK", "FP8_LSE_ATOL", "FP8_LSE_RTOL", "FP8_REL_TOL", "FP8_SLACK", "LSE_ATOL", "LSE_RTOL", "REL_TOL", "Result", "SINK_LOGIT",
           "attention_grads_ref", "attention_ref", "fp8_attention_ref", "fp8_rel_tol", "bottom_right_offset", "causal_mask", "check_close", "check_lse", "check_rows",
           "long_inputs", "paged_kv_ref", "relative_error", "row_references", "varlen_attention_grads_ref",
           "varlen_attention_ref",
           "visible_mask"]

#: Absolute slack added to twice the plain error, so that exact-zero plain errors still pass.
ABS_SLACK = 1e-5

#: Bound on ||out - ref|| / ||ref|| per input dtype (about 5x what the kernel reaches).
REL_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}

#: The FP8 forward's bound on ||out - ref|| / ||ref||: P in e4m3 (3 mantissa bits) errs by
#: up to 1/32 of each probability, about 1e-2 of the output on random data. A single query
#: row averages few such roundings: `fp8_rel_tol` allows twice the plain computation's.
FP8_REL_TOL = 4e-2
#: The FP8 forward's slack in the 2x rule: the plain computation rounds P to e4m3 after
#: normalising, the kernel before (relative to the running max), so their roundings differ
#: at the e4m3 spacing.
FP8_SLACK = 2e-3
#: The FP8 forward's LSE tolerance: its scores are exact e4m3 products summed by the tensor
#: cores, whose FP8 sums keep fewer bits than fp32.
FP8_LSE_ATOL = 2e-3
FP8_LSE_RTOL = 1e-3

#: LSE tolerance: |lse - ref| <= LSE_ATOL + LSE_RTOL * |ref|. fp32 rounding of the row max
#: and the row sum stays near 1e-5 on random data; the relative part covers the large
#: scores of large-magnitude inputs, where fp32's spacing alone is 3e-5 at |lse| = 300.
LSE_ATOL = 1e-4
LSE_RTOL = 1e-5

Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def bottom_right_offset(seqlen_q: int, seqlen_k: int) -> int:
    """fa_cute.forward's causal offset (FlashAttention >= 2.1): the last query row sees every
    key. torch SDPA's is_causal (and fa_cute.sdpa) is top-left, offset 0."""
    return seqlen_k - seqlen_q


def causal_mask(seqlen_q: int, seqlen_k: int, causal_offset: int,
                device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """(seqlen_q, seqlen_k) bool, True where query row r may see key c: c <= r + offset."""
    return visible_mask(seqlen_q, seqlen_k, causal_offset, True, device=device)


def visible_mask(seqlen_q: int, seqlen_k: int, offset: int, causal: bool,
                 window_size: Tuple[int, int] = (-1, -1),
                 device: Union[str, torch.device] = "cpu") -> Optional[torch.Tensor]:
    """(seqlen_q, seqlen_k) bool, True where query row r sees key c, or None where every row
    sees every key. FlashAttention's semantics with the rows aligned at `offset` (bottom-right:
    seqlen_k - seqlen_q): causal, c <= r + offset; window_size (left, right), each -1 for no
    bound, c in [r + offset - left, r + offset + right] (causal bounds right by 0)."""
    left, right = window_size
    if not causal and left < 0 and right < 0:
        return None
    rows = torch.arange(seqlen_q, device=device)[:, None] + offset
    cols = torch.arange(seqlen_k, device=device)[None, :]
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if causal:
        visible &= cols <= rows
    if right >= 0:
        visible &= cols <= rows + right
    if left >= 0:
        visible &= cols >= rows - left
    return visible


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float,
                  upcast: bool = True, *, causal: bool = False,
                  causal_offset: Optional[int] = None, return_lse: bool = False,
                  window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                  probs_dtype: Optional[torch.dtype] = None) -> Result:
    """softmax(q k^T * scale) v for q (batch, seqlen_q, nheads, d) and k, v
    (batch, seqlen_k, nheads_k, d), nheads a multiple of nheads_k; output shaped like q.

    upcast=True computes in float64 (the reference); upcast=False computes every step in the
    input dtype, which is the "plain" attention the 2x rule compares against. causal masks
    keys c > r + causal_offset for query row r; causal_offset defaults to bottom-right
    (seqlen_k - seqlen_q, what fa_cute.forward does); pass 0 for torch SDPA's top-left.
    With return_lse, also returns the natural-log LSE of the scaled scores over the visible
    keys, float64, shape (batch, nheads, seqlen_q); -inf for rows that see no key, whose
    output is 0. window_size (left, right) limits each row to the keys of `visible_mask`
    (aligned as causal is: bottom-right unless causal_offset says otherwise); softcap > 0
    maps the scaled scores s to softcap * tanh(s / softcap) before the softmax (the LSE is
    over the mapped scores). probs_dtype: the probabilities rounded to it before their product
    with v (the FP8 forward's plain computation: e4m3), as FlashAttention-3's reference does.
    """
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_k = k.shape[1], k.shape[2]
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if nheads % nheads_k:
        raise ValueError(f"nheads of q ({nheads}) is not a multiple of nheads of k ({nheads_k})")
    windowed = tuple(window_size) != (-1, -1)
    if causal_offset is not None and not (causal or windowed):
        raise ValueError("causal_offset is given but causal is False and there is no window")
    if upcast:
        q, k, v = (t.to(torch.float64) for t in (q, k, v))
    # Query head h = j * group + i reads K/V head j: q's heads split as (j, i) meet K/V
    # without copying K/V group times (a float64 KV cache of 16k keys is large already).
    group = nheads // nheads_k
    q = q.reshape(batch, seqlen_q, nheads_k, group, head_dim)
    scores = torch.einsum("bqjid,bkjd->bjiqk", q, k).reshape(batch, nheads, seqlen_q, seqlen_k)
    scores = scores * softmax_scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    empty_rows = None
    offset = bottom_right_offset(seqlen_q, seqlen_k) if causal_offset is None else causal_offset
    visible = visible_mask(seqlen_q, seqlen_k, offset, causal, tuple(window_size), scores.device)
    if visible is not None:
        scores = scores.masked_fill(~visible, -math.inf)
        empty_rows = ~visible.any(dim=1)
    lse_scores = scores
    if empty_rows is not None:
        # A finite row in place of all -inf, its probabilities zeroed below: the same output,
        # and a gradient of 0 for the row instead of softmax's NaN.
        scores = scores.masked_fill(empty_rows[:, None], 0.0)
    probs = torch.softmax(scores, dim=-1)
    if empty_rows is not None:
        # softmax of an all -inf row is 0/0 = NaN; the contract says such a row is 0.
        probs = probs.masked_fill(empty_rows[:, None], 0.0)
    if probs_dtype is not None:
        probs = probs.to(probs_dtype).to(scores.dtype)
    probs = probs.reshape(batch, nheads_k, group, seqlen_q, seqlen_k)
    out = torch.einsum("bjiqk,bkjd->bqjid", probs, v).reshape(batch, seqlen_q, nheads, head_dim)
    if not return_lse:
        return out
    return out, torch.logsumexp(lse_scores, dim=-1).to(torch.float64)


def varlen_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens_q: Sequence[int], cu_seqlens_k: Sequence[int],
                         softmax_scale: float, upcast: bool = True, *, causal: bool = False,
                         window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                         seqused_k: Optional[Sequence[int]] = None, return_lse: bool = False
                         ) -> Result:
    """`attention_ref` sequence by sequence over packed q (total_q, nheads, d) and k, v
    (total_k, nheads_k, d): sequence i holds rows cu_seqlens_q[i]:cu_seqlens_q[i + 1] of q
    and cu_seqlens_k[i]:cu_seqlens_k[i + 1] of k and v (of which only the first
    seqused_k[i] keys, where given), each aligned bottom-right on its own lengths. Output
    (total_q, nheads, d); with return_lse, LSE (nheads, total_q) float64 (FlashAttention's
    varlen layout). A zero-length sequence contributes nothing; a row that sees no key is 0
    with LSE -inf."""
    cu_q, cu_k = [int(x) for x in cu_seqlens_q], [int(x) for x in cu_seqlens_k]
    if len(cu_q) != len(cu_k) or len(cu_q) < 1:
        raise ValueError(f"cu_seqlens_q ({len(cu_q)}) and cu_seqlens_k ({len(cu_k)}) must have "
                         "the same length, batch + 1 >= 1")
    dtype = torch.float64 if upcast else q.dtype
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), -math.inf, dtype=torch.float64, device=q.device)
    for i in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
        if seqused_k is not None:
            k1 = k0 + int(seqused_k[i])
        if q1 == q0 or k1 == k0:
            continue  # no row, or no key: rows 0, LSE -inf
        res = attention_ref(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], softmax_scale, upcast,
                            causal=causal, window_size=window_size, softcap=softcap,
                            return_lse=True)
        out[q0:q1] = res[0][0]
        lse[:, q0:q1] = res[1][0]
    return (out, lse) if return_lse else out


def paged_kv_ref(cache: torch.Tensor, page_table: torch.Tensor, seqlens: Sequence[int]
                 ) -> torch.Tensor:
    """A paged KV cache (num_pages, page_size, nheads_k, d) read through page_table (batch,
    max_pages) as a dense (batch, max(seqlens), nheads_k, d) tensor: sequence b's key j is
    row j % page_size of page page_table[b, j // page_size]; rows past seqlens[b] are 0."""
    page_size = cache.shape[1]
    batch = page_table.shape[0]
    longest = max([int(n) for n in seqlens] + [0])
    dense = cache.new_zeros((batch, longest) + tuple(cache.shape[2:]))
    for b in range(batch):
        for j in range(int(seqlens[b])):
            dense[b, j] = cache[int(page_table[b, j // page_size]), j % page_size]
    return dense


def attention_grads_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor,
                        softmax_scale: float, upcast: bool = True, *, causal: bool = False,
                        causal_offset: Optional[int] = None,
                        window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `attention_ref` for the output gradient dout, by autograd through it:
    in float64 (upcast=True, the reference) or in the input dtype (upcast=False, the plain
    computation of the 2x rule). Rows that see no key get zero gradients; dk and dv are
    summed over the query heads of each K/V head."""
    dtype = torch.float64 if upcast else q.dtype
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    with torch.enable_grad():
        out = attention_ref(*leaves, softmax_scale, upcast=False, causal=causal,
                            causal_offset=causal_offset, window_size=window_size, softcap=softcap)
        return torch.autograd.grad(out, leaves, dout.to(dtype))


def varlen_attention_grads_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               dout: torch.Tensor, cu_seqlens_q: Sequence[int],
                               cu_seqlens_k: Sequence[int], softmax_scale: float,
                               upcast: bool = True, *, causal: bool = False,
                               seqused_k: Optional[Sequence[int]] = None,
                               window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `varlen_attention_ref` for the output gradient dout, by autograd
    through it (float64, or the input dtype with upcast=False): packed like q, k and v; rows
    outside every sequence and keys past seqused_k get zero gradients."""
    dtype = torch.float64 if upcast else q.dtype
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    with torch.enable_grad():
        out = varlen_attention_ref(*leaves, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                                   upcast=False, causal=causal, seqused_k=seqused_k,
                                   window_size=window_size, softcap=softcap)
        return torch.autograd.grad(out, leaves, dout.to(dtype), allow_unused=True,
                                   materialize_grads=True)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; ||out - ref|| itself where ref is all zeros (rows
    that see no key), so that a zero output still scores 0 and a nonzero one fails."""
    diff_norm = (out.to(device=ref.device, dtype=torch.float64) - ref).norm().item()
    ref_norm = ref.norm().item()
    return diff_norm / ref_norm if ref_norm > 0 else diff_norm


def check_close(out: torch.Tensor, ref: torch.Tensor, plain: torch.Tensor,
                slack: float = ABS_SLACK, rel_tol: Optional[float] = None) -> Tuple[float, float]:
    """Raise AssertionError unless `out` passes the accuracy rule; return (max_err, plain_err).

    out: the kernel's output (bf16/fp16); ref: attention_ref(..., upcast=True);
    plain: attention_ref(..., upcast=False); rel_tol: the relative bound (default REL_TOL of
    out's dtype; the FP8 forward's is FP8_REL_TOL). AssertionError is raised explicitly (not with
    `assert`) so that the check also runs under `python -O`.
    """
    if out.shape != ref.shape or plain.shape != ref.shape:
        raise AssertionError(f"shape mismatch: out {tuple(out.shape)}, ref {tuple(ref.shape)}, "
                             f"plain {tuple(plain.shape)}")
    if not torch.isfinite(out).all().item():
        bad = (~torch.isfinite(out)).sum().item()
        raise AssertionError(f"output has {bad} NaN/inf elements")
    out64 = out.to(device=ref.device, dtype=torch.float64)
    max_err = (out64 - ref).abs().max().item() if ref.numel() else 0.0
    plain_err = ((plain.to(device=ref.device, dtype=torch.float64) - ref).abs().max().item()
                 if ref.numel() else 0.0)
    bound = 2.0 * plain_err + slack
    if not max_err <= bound:
        raise AssertionError(f"max abs error {max_err:.3e} exceeds 2 x plain {out.dtype} error "
                             f"{plain_err:.3e} + {slack:g} = {bound:.3e}")
    rel = relative_error(out64, ref)
    rel_tol = REL_TOL[out.dtype] if rel_tol is None else rel_tol
    if not rel <= rel_tol:
        raise AssertionError(f"relative error {rel:.3e} exceeds {rel_tol:g} for {out.dtype}")
    return max_err, plain_err


def check_lse(lse: torch.Tensor, ref: torch.Tensor, atol: float = LSE_ATOL,
              rtol: float = LSE_RTOL) -> float:
    """Raise AssertionError unless `lse` matches the reference LSE; return the max abs error
    over the finite entries.

    lse: the kernel's (batch, nheads, seqlen_q) LSE; ref: attention_ref(...,
    return_lse=True)[1]. Entries must be -inf exactly where the reference is -inf (rows
    that see no key) and finite within atol + rtol * |ref| everywhere else; NaN and +inf
    always fail.
    """
    if lse.shape != ref.shape:
        raise AssertionError(f"LSE shape {tuple(lse.shape)}, expected {tuple(ref.shape)}")
    lse64 = lse.to(device=ref.device, dtype=torch.float64)
    if torch.isnan(lse64).any().item() or torch.isposinf(lse64).any().item():
        bad = (torch.isnan(lse64) | torch.isposinf(lse64)).sum().item()
        raise AssertionError(f"LSE has {bad} NaN/+inf entries")
    ref_empty = torch.isneginf(ref)
    mismatch = ref_empty != torch.isneginf(lse64)
    if mismatch.any().item():
        first = tuple(int(i) for i in mismatch.nonzero()[0])
        raise AssertionError(
            f"LSE is -inf at {int((~ref_empty & mismatch).sum())} entries that see keys and "
            f"finite at {int((ref_empty & mismatch).sum())} that see none; first at (batch, "
            f"head, row) {first}: {lse64[first].item()} vs reference {ref[first].item()}")
    finite = ~ref_empty
    if not finite.any().item():
        return 0.0
    err = (lse64[finite] - ref[finite]).abs()
    excess = err - (atol + rtol * ref[finite].abs())
    worst = int(excess.argmax())
    if excess[worst].item() > 0:
        raise AssertionError(f"LSE error {err[worst].item():.3e} at reference value "
                             f"{ref[finite][worst].item():.4f} exceeds {atol:g} + {rtol:g} x "
                             f"|reference|; max error {err.max().item():.3e}")
    return err.max().item()


#: Scaled logit of the attention-sink key of `long_inputs(kind="sink-*")`: e^12 (160k) is
#: about the total weight of 131k ordinary keys (131k x e^1 for logits ~ N(0, 2)), so the
#: sink and the rest both matter, and every key block after the sink's keeps the row max.
SINK_LOGIT = 12.0


def long_inputs(batch: int, seqlen_q: int, seqlen_k: int, nheads: int, nheads_k: int,
                head_dim: int, dtype: torch.dtype, device: Union[str, torch.device], kind: str
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v (batch, seqlen, heads, head_dim) for long-sequence accuracy checks.

    kind "magM" (e.g. "mag6"): q, k ~ N(0, 1) * M, v ~ N(0, 1): logits ~ N(0, M^4), a peaky
    softmax whose row max is found early and then rarely moves. "sink-first" and
    "sink-last": M = 1 plus a shared direction u, in q with weight sqrt(head_dim) and in
    key 0 (first) or key seqlen_k - 1 (last) with weight SINK_LOGIT, so that every query
    row gives that key a logit of about SINK_LOGIT (an attention sink). The kernels visit a
    tile's key blocks last to first, so "sink-last" sets the row max in the first block
    visited and keeps it for every later one: the case where a per-block rescale factor
    that is not exactly 1 compounds the most.
    """
    if kind.startswith("mag"):
        mag, sink = float(kind[3:]), None
    elif kind in ("sink-first", "sink-last"):
        mag, sink = 1.0, 0 if kind == "sink-first" else seqlen_k - 1
    else:
        raise ValueError(f"kind: 'magM', 'sink-first' or 'sink-last'; got {kind!r}")

    def randn(seqlen: int, heads: int, scale: float) -> torch.Tensor:
        return torch.randn(batch, seqlen, heads, head_dim, device=device) * scale

    q, k, v = randn(seqlen_q, nheads, mag), randn(seqlen_k, nheads_k, mag), randn(seqlen_k, nheads_k, 1.0)
    if sink is not None:
        u = torch.nn.functional.normalize(torch.randn(head_dim, device=device), dim=0)
        q += math.sqrt(head_dim) * u
        k[:, sink] = SINK_LOGIT * u
    return q.to(dtype), k.to(dtype), v.to(dtype)


def row_references(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: slice,
                   heads: Sequence[int], *, causal: bool = False,
                   softmax_scale: Optional[float] = None
                   ) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(head, float64 reference, plain reference, float64 LSE) of forward's result on some
    query rows of some heads only, where the reference of the whole problem would not fit
    (131k keys): each head reads its own K/V head (GQA); causal is bottom-right, as forward.
    The references are shaped (batch, rows, 1, head_dim) and (batch, 1, rows)."""
    seqlen_q, nheads, head_dim = q.shape[1], q.shape[2], q.shape[3]
    seqlen_k, group = k.shape[1], nheads // k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
    offset = seqlen_k - seqlen_q + range(seqlen_q)[rows].start if causal else None
    for h in heads:
        sub = (q[:, rows, h:h + 1], k[:, :, h // group:h // group + 1],
               v[:, :, h // group:h // group + 1])
        ref, ref_lse = attention_ref(*sub, scale, causal=causal, causal_offset=offset,
                                     return_lse=True)
        yield h, ref, attention_ref(*sub, scale, upcast=False, causal=causal,
                                    causal_offset=offset), ref_lse


def check_rows(out: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, rows: slice, heads: Sequence[int], *, causal: bool = False
               ) -> Tuple[float, float]:
    """`check_close` and `check_lse` of forward's out and LSE (default scale) on the rows
    and heads of `row_references`; returns the largest (max abs output error, max abs LSE
    error) over them."""
    out_err = lse_err = 0.0
    for h, ref, plain, ref_lse in row_references(q, k, v, rows, heads, causal=causal):
        out_err = max(out_err, check_close(out[:, rows, h:h + 1], ref, plain)[0])
        lse_err = max(lse_err, check_lse(lse[:, h:h + 1, rows], ref_lse))
    return out_err, lse_err


def fp8_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float,
                      descales: Sequence[Optional[torch.Tensor]], upcast: bool = True, *,
                      causal: bool = False, return_lse: bool = False) -> Result:
    """The FP8 forward's references: q, k, v in e4m3 (shapes as `attention_ref`'s), each
    dequantised by its (batch, nheads_k) descale factor (None: 1).

    upcast=True: attention_ref in float64 of the dequantised inputs. upcast=False: the same
    computation at the kernel's precision, as FlashAttention-3's FP8 test reference: scores and
    softmax in fp32, the probabilities rounded to e4m3 before their product with v, the output
    in bf16; the plain attention of `check_close`'s rule.
    """
    nheads, nheads_k = q.shape[2], k.shape[2]
    dtype = torch.float64 if upcast else torch.float32

    def dequantised(t: torch.Tensor, descale: Optional[torch.Tensor], heads: int) -> torch.Tensor:
        t = t.to(dtype)
        if descale is None:
            return t
        factor = descale.to(device=t.device, dtype=dtype).repeat_interleave(heads // nheads_k, dim=1)
        return t * factor[:, None, :, None]

    q, k, v = (dequantised(t, d, n) for t, d, n in zip((q, k, v), descales, (nheads, nheads_k, nheads_k)))
    if upcast:
        return attention_ref(q, k, v, softmax_scale, causal=causal, return_lse=return_lse)
    out = attention_ref(q, k, v, softmax_scale, upcast=False, causal=causal, probs_dtype=torch.float8_e4m3fn)
    return out.to(torch.bfloat16)


def fp8_rel_tol(plain: torch.Tensor, ref: torch.Tensor) -> float:
    """`check_close`'s relative bound for an FP8 output: FP8_REL_TOL, or twice the plain
    computation's relative error where that is larger (a single query row over 4224 keys
    measured 4.6e-2)."""
    return max(FP8_REL_TOL, 2 * relative_error(plain, ref))
