"""The float64 reference and the accuracy checks themselves, on the CPU (these run in CI):
every GPU test trusts them, so they are checked against torch's SDPA math, against plain
Python arithmetic and against inputs whose answer is known exactly."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fa_cute._reference import (attention_ref, bottom_right_offset, causal_mask, check_close,
                                check_lse, relative_error)


def qkv(batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype=torch.float64):
    q = torch.randn(batch, seqlen_q, nheads, head_dim).to(dtype)
    k = torch.randn(batch, seqlen_k, nheads_k, head_dim).to(dtype)
    v = torch.randn(batch, seqlen_k, nheads_k, head_dim).to(dtype)
    return q, k, v


def sdpa_math(q, k, v, scale, **kwargs):
    """torch's SDPA math backend on (batch, seqlen, nheads, d) tensors."""
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), scale=scale, **kwargs)
    return out.transpose(1, 2)


SHAPES = [(1, 1, 1, 1), (7, 7, 2, 2), (5, 13, 4, 2), (13, 5, 4, 1), (33, 64, 6, 3),
          (64, 33, 2, 2)]  # seqlen_q, seqlen_k, nheads, nheads_k


@pytest.mark.parametrize("seqlen_q, seqlen_k, nheads, nheads_k", SHAPES)
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal-top-left"])
def test_matches_sdpa_math(seqlen_q, seqlen_k, nheads, nheads_k, causal) -> None:
    """Top-left causal (offset 0) is torch's is_causal, for any seqlen_q and seqlen_k."""
    q, k, v = qkv(2, seqlen_q, seqlen_k, nheads, nheads_k, 16)
    scale = 0.3
    out = attention_ref(q, k, v, scale, causal=causal, causal_offset=0 if causal else None)
    expected = sdpa_math(q, k, v, scale, is_causal=causal, enable_gqa=nheads != nheads_k)
    assert out.dtype == torch.float64 and out.shape == q.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seqlen_q, seqlen_k, nheads, nheads_k", SHAPES)
def test_bottom_right_matches_sdpa_with_lower_right_mask(seqlen_q, seqlen_k, nheads,
                                                         nheads_k) -> None:
    """The default offset is bottom-right: SDPA with a tril(diagonal=seqlen_k - seqlen_q)
    mask on the rows that see a key (torch's own answer for the others changed between
    releases)."""
    q, k, v = qkv(2, seqlen_q, seqlen_k, nheads, nheads_k, 16)
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool).tril(seqlen_k - seqlen_q)
    out = attention_ref(q, k, v, 0.25, causal=True)
    expected = sdpa_math(q, k, v, 0.25, attn_mask=mask, enable_gqa=nheads != nheads_k)
    seen = mask.any(dim=1)
    torch.testing.assert_close(out[:, seen], expected[:, seen], rtol=1e-12, atol=1e-12)
    assert torch.equal(out[:, ~seen], torch.zeros_like(out[:, ~seen]))


@pytest.mark.parametrize("seqlen_q, seqlen_k, offset",
                         [(4, 4, 0), (3, 7, 0), (3, 7, 4), (7, 3, -4), (7, 3, 0), (5, 5, 2),
                          (5, 5, -7), (1, 9, 8), (1, 9, 0)])
def test_visible_keys_exactly(seqlen_q, seqlen_k, offset) -> None:
    """q = 0 makes every visible key weigh 1/n, and v = identity reads the weights back:
    out[r, c] must be 1/n_r where c <= r + offset and 0 elsewhere, LSE log(n_r), and a row
    with n_r = 0 gives 0 and -inf."""
    q = torch.zeros(1, seqlen_q, 1, seqlen_k, dtype=torch.float64)
    k = torch.randn(1, seqlen_k, 1, seqlen_k, dtype=torch.float64)
    v = torch.eye(seqlen_k, dtype=torch.float64)[None, :, None, :]
    out, lse = attention_ref(q, k, v, 1.0, causal=True, causal_offset=offset, return_lse=True)
    for r in range(seqlen_q):
        seen = [c for c in range(seqlen_k) if c <= r + offset]
        expected = [1.0 / len(seen) if c in seen else 0.0 for c in range(seqlen_k)]
        assert out[0, r, 0].tolist() == pytest.approx(expected, abs=1e-15), r
        if seen:
            assert lse[0, 0, r].item() == pytest.approx(math.log(len(seen)), abs=1e-15)
        else:
            assert lse[0, 0, r].item() == -math.inf
    assert torch.equal(causal_mask(seqlen_q, seqlen_k, offset), out[0, :, 0] > 0)


def test_bottom_right_offset() -> None:
    assert bottom_right_offset(3, 7) == 4
    assert bottom_right_offset(7, 3) == -4
    assert bottom_right_offset(5, 5) == 0


@pytest.mark.parametrize("nheads, nheads_k", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_head_mapping(nheads, nheads_k, causal) -> None:
    """Query head h reads K/V head h // (nheads // nheads_k): each head computed alone."""
    q, k, v = qkv(2, 9, 12, nheads, nheads_k, 8)
    out, lse = attention_ref(q, k, v, 0.5, causal=causal, return_lse=True)
    group = nheads // nheads_k
    for h in range(nheads):
        kv = slice(h // group, h // group + 1)
        one, one_lse = attention_ref(q[:, :, h:h + 1], k[:, :, kv], v[:, :, kv], 0.5,
                                     causal=causal, return_lse=True)
        torch.testing.assert_close(out[:, :, h:h + 1], one, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(lse[:, h:h + 1], one_lse, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("causal_offset", [None, 0, 2, -3])
def test_lse_matches_plain_python(causal_offset) -> None:
    """LSE is log(sum_c exp(scale * q.k)) over the visible keys, natural log, per head."""
    q, k, v = qkv(2, 6, 5, 4, 2, 3)
    scale = 0.7
    _, lse = attention_ref(q, k, v, scale, causal=True, causal_offset=causal_offset,
                           return_lse=True)
    assert lse.shape == (2, 4, 6) and lse.dtype == torch.float64
    offset = 5 - 6 if causal_offset is None else causal_offset
    for b in range(2):
        for h in range(4):
            for r in range(6):
                terms = [math.exp(scale * sum(q[b, r, h, i].item() * k[b, c, h // 2, i].item()
                                              for i in range(3)))
                         for c in range(5) if c <= r + offset]
                expected = math.log(sum(terms)) if terms else -math.inf
                assert lse[b, h, r].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_noncausal_lse_matches_logsumexp_of_all_keys() -> None:
    q, k, v = qkv(1, 4, 9, 2, 2, 5)
    _, lse = attention_ref(q, k, v, 0.4, return_lse=True)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.4
    torch.testing.assert_close(lse, scores.exp().sum(-1).log(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("upcast", [True, False], ids=["float64", "plain-bf16"])
def test_rows_that_see_no_key(upcast) -> None:
    """Bottom-right with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k rows see
    nothing; their output is 0 and their LSE -inf (softmax alone would give NaN)."""
    q, k, v = qkv(2, 7, 3, 4, 2, 8, torch.bfloat16)
    out, lse = attention_ref(q, k, v, 0.35, upcast, causal=True, return_lse=True)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    assert torch.isneginf(lse[:, :, :4]).all()
    assert torch.isfinite(lse[:, :, 4:]).all()
    assert (out[:, 4:] != 0).all()


def test_plain_stays_in_input_dtype() -> None:
    """upcast=False rounds every step to bf16: close to the reference, but not equal."""
    q, k, v = qkv(2, 64, 80, 4, 2, 32, torch.bfloat16)
    ref, ref_lse = attention_ref(q, k, v, 0.2, causal=True, return_lse=True)
    plain, plain_lse = attention_ref(q, k, v, 0.2, upcast=False, causal=True, return_lse=True)
    assert plain.dtype == torch.bfloat16 and ref.dtype == torch.float64
    assert plain_lse.dtype == torch.float64
    err = (plain.double() - ref).abs().max().item()
    assert 1e-4 < err < 0.1, err
    assert 0.0 < relative_error(plain, ref) < 0.02


def test_rejects_bad_arguments() -> None:
    q, k, v = qkv(1, 4, 4, 3, 2, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        attention_ref(q, k, v, 1.0)
    q, k, v = qkv(1, 4, 4, 2, 2, 8)
    with pytest.raises(ValueError, match="causal_offset is given but causal is False"):
        attention_ref(q, k, v, 1.0, causal_offset=0)
    with pytest.raises(ValueError, match="differ"):
        attention_ref(q, k, v[:, :3], 1.0)


def _case(dtype=torch.bfloat16, causal=True):
    q, k, v = qkv(2, 40, 24, 4, 2, 16, dtype)
    ref, lse = attention_ref(q, k, v, 0.25, causal=causal, return_lse=True)
    plain = attention_ref(q, k, v, 0.25, upcast=False, causal=causal)
    return ref, plain, lse


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_check_close_accepts_the_rounded_reference(dtype) -> None:
    ref, plain, _ = _case(dtype)
    max_err, plain_err = check_close(ref.to(dtype), ref, plain)
    assert 0.0 < max_err <= 2 * plain_err


def test_check_close_rejects() -> None:
    ref, plain, _ = _case()
    good = ref.to(torch.bfloat16)
    plain_err = (plain.double() - ref).abs().max().item()
    off = good.clone()
    off[1, 30, 2, 5] += 3 * plain_err + 0.01
    with pytest.raises(AssertionError, match="max abs error"):
        check_close(off, ref, plain)
    nan = good.clone()
    nan[0, 39, 0, 0] = math.nan
    with pytest.raises(AssertionError, match="1 NaN/inf elements"):
        check_close(nan, ref, plain)
    with pytest.raises(AssertionError, match="shape mismatch"):
        check_close(good[:, :-1], ref, plain)
    # An output off everywhere by an amount the max-abs rule lets through (with this
    # slack) is still caught by the relative bound.
    with pytest.raises(AssertionError, match="relative error"):
        check_close((ref + 0.05).to(torch.bfloat16), ref, plain, slack=1.0)


def test_check_close_on_rows_that_see_no_key() -> None:
    """Rows of reference 0 must be 0; the relative bound stays defined when all are 0."""
    ref, plain, _ = _case()
    out = ref.to(torch.bfloat16)
    assert torch.equal(ref[:, :16], torch.zeros_like(ref[:, :16]))
    out[:, 3] = 0.5
    with pytest.raises(AssertionError, match="max abs error"):
        check_close(out, ref, plain)
    zero = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    assert check_close(zero.to(torch.bfloat16), zero, zero) == (0.0, 0.0)
    assert relative_error(zero, zero) == 0.0
    assert relative_error(zero + 0.5, zero) == pytest.approx(0.5 * math.sqrt(8))


def test_check_lse() -> None:
    _, _, lse = _case()
    assert torch.isneginf(lse[:, :, :16]).all() and torch.isfinite(lse[:, :, 16:]).all()
    assert check_lse(lse.float(), lse) < 1e-6
    close = lse.clone()
    close[:, :, 16:] += 5e-5
    assert check_lse(close, lse) == pytest.approx(5e-5, rel=1e-6)
    far = lse.clone()
    far[1, 3, 20] += 1e-3
    with pytest.raises(AssertionError, match="LSE error 1.000e-03"):
        check_lse(far, lse)
    unseen = lse.clone()
    unseen[0, 1, 3] = 0.0
    with pytest.raises(AssertionError, match="finite at 1 that see none; first at .* "
                                             r"\(0, 1, 3\)"):
        check_lse(unseen, lse)
    lost = lse.clone()
    lost[1, 0, 30] = -math.inf
    with pytest.raises(AssertionError, match="-inf at 1 entries that see keys"):
        check_lse(lost, lse)
    for bad in (math.nan, math.inf):
        poisoned = lse.clone()
        poisoned[0, 0, 0] = bad
        with pytest.raises(AssertionError, match="1 NaN/\\+inf entries"):
            check_lse(poisoned, lse)
    with pytest.raises(AssertionError, match="LSE shape"):
        check_lse(lse[:, :, 1:], lse)


def test_check_lse_scales_with_large_values() -> None:
    ref = torch.tensor([[[300.0, -2.0]]], dtype=torch.float64)
    assert check_lse(ref + torch.tensor([2.5e-3, 0.0], dtype=torch.float64),
                     ref) == pytest.approx(2.5e-3)
    with pytest.raises(AssertionError, match="LSE error"):
        check_lse(ref + torch.tensor([0.0, 2.5e-3], dtype=torch.float64), ref)
