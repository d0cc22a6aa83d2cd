"""fa_cute.combine against float64 attention over the whole key set (CPU; the same torch ops
run on a GPU): partial attentions over disjoint key sets, merged."""

import math

import pytest
import torch

import fa_cute
from fa_cute._reference import attention_ref, bottom_right_offset


def _qkv(batch=2, seqlen_q=33, seqlen_k=100, nheads=4, nheads_k=2, d=16, dtype=torch.float64,
         seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seqlen_q, nheads, d, generator=gen, dtype=torch.float64) * 2
    k, v = (torch.randn(batch, seqlen_k, nheads_k, d, generator=gen, dtype=torch.float64)
            for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _partials(q, k, v, bounds, causal, upcast=True):
    """Attention of q over each key range [bounds[i], bounds[i+1]), bottom-right causal for
    the whole key set (each range's own offset shifted by its start): (outs, lses)."""
    scale = q.shape[-1] ** -0.5
    offset = bottom_right_offset(q.shape[1], k.shape[1])
    outs, lses = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        kw = dict(causal=True, causal_offset=offset - lo) if causal else {}
        out, lse = attention_ref(q, k[:, lo:hi], v[:, lo:hi], scale, upcast, return_lse=True, **kw)
        outs.append(out.to(q.dtype))
        lses.append(lse.float() if q.dtype != torch.float64 else lse)
    return outs, lses


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bounds", [(0, 100), (0, 50, 100), (0, 1, 37, 99, 100), (0, 90, 100)])
def test_merged_equals_the_whole(bounds, causal):
    q, k, v = _qkv()
    outs, lses = _partials(q, k, v, bounds, causal)
    out, lse = fa_cute.combine(outs, lses)
    ref, ref_lse = attention_ref(q, k, v, q.shape[-1] ** -0.5, return_lse=True, causal=causal)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_rows_that_see_no_key_anywhere_get_zero_and_minus_inf():
    # causal with seqlen_q > seqlen_k: the first rows see no key at all (bottom-right)
    q, k, v = _qkv(seqlen_q=40, seqlen_k=10)
    outs, lses = _partials(q, k, v, (0, 4, 10), causal=True)
    assert torch.isneginf(lses[1]).any() and torch.isneginf(lses[0]).any()
    out, lse = fa_cute.combine(outs, lses)
    ref, ref_lse = attention_ref(q, k, v, q.shape[-1] ** -0.5, return_lse=True, causal=True)
    empty = torch.isneginf(ref_lse)
    assert empty.any() and torch.equal(torch.isneginf(lse), empty)
    assert not out.isnan().any()
    assert (out.transpose(1, 2)[empty] == 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_a_key_set_no_row_sees_adds_nothing():
    q, k, v = _qkv()
    outs, lses = _partials(q, k, v, (0, 100), causal=False)
    junk = torch.full_like(outs[0], math.nan)  # an empty key set's output is never read
    out, lse = fa_cute.combine([outs[0], junk], [lses[0], torch.full_like(lses[0], -math.inf)])
    torch.testing.assert_close(out, outs[0], rtol=0, atol=0)
    torch.testing.assert_close(lse, lses[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_partials_within_the_rule(dtype):
    """Partials rounded to dtype, merged in float32: the merged error stays within twice the
    error of the whole attention computed in dtype (FlashAttention's rule), plus a slack."""
    q, k, v = _qkv(dtype=dtype, seqlen_k=300, d=64)
    outs, lses = _partials(q, k, v, (0, 70, 200, 300), causal=True)
    out, lse = fa_cute.combine(outs, lses)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref, ref_lse = attention_ref(q, k, v, q.shape[-1] ** -0.5, return_lse=True, causal=True)
    plain = attention_ref(q, k, v, q.shape[-1] ** -0.5, upcast=False, causal=True)
    err = (out.double() - ref).abs().max().item()
    plain_err = (plain.double() - ref).abs().max().item()
    assert err <= 2 * plain_err + 1e-3, (err, plain_err)
    assert (lse.double() - ref_lse).abs().max().item() < 1e-4


def test_stacked_tensors_equal_sequences_and_out_dtype():
    q, k, v = _qkv(dtype=torch.float32)
    outs, lses = _partials(q, k, v, (0, 30, 100), causal=False)
    a = fa_cute.combine(outs, lses)
    b = fa_cute.combine(torch.stack(outs), torch.stack(lses))
    c = fa_cute.combine(tuple(outs), tuple(lses), out_dtype=torch.bfloat16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert c[0].dtype == torch.bfloat16
    torch.testing.assert_close(c[0], a[0].bfloat16(), rtol=0, atol=0)


def test_gradients_flow_and_match_finite_differences():
    q, k, v = _qkv(batch=1, seqlen_q=5, seqlen_k=12, nheads=2, nheads_k=1, d=4)
    outs, lses = _partials(q, k, v, (0, 5, 12), causal=False)
    leaves = [t.clone().requires_grad_() for t in outs + lses]
    assert torch.autograd.gradcheck(lambda *ts: fa_cute.combine(list(ts[:2]), list(ts[2:])),
                                    tuple(leaves))


def test_a_nan_partial_where_its_keys_are_unseen_leaves_gradients_finite():
    q, k, v = _qkv()
    outs, lses = _partials(q, k, v, (0, 100), causal=False)
    junk = torch.full_like(outs[0], math.nan).requires_grad_()
    lse_empty = torch.full_like(lses[0], -math.inf).requires_grad_()
    out0, lse0 = outs[0].clone().requires_grad_(), lses[0].clone().requires_grad_()
    out, lse = fa_cute.combine([out0, junk], [lse0, lse_empty])
    (out.sum() + lse.sum()).backward()
    for t in (out0, lse0, junk, lse_empty):
        assert torch.isfinite(t.grad).all()


def test_gradients_of_rows_that_see_no_key_are_finite():
    q, k, v = _qkv(seqlen_q=40, seqlen_k=10)
    outs, lses = _partials(q, k, v, (0, 4, 10), causal=True)
    leaves = [t.clone().requires_grad_() for t in outs + lses]
    out, lse = fa_cute.combine(leaves[:2], leaves[2:])
    (out.sum() + lse.masked_fill(torch.isneginf(lse), 0).sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.parametrize("call, error, match", [
    (lambda o, l: fa_cute.combine("x", l), TypeError, "out_partials must be a torch.Tensor or a list"),
    (lambda o, l: fa_cute.combine([], []), ValueError, "out_partials is empty"),
    (lambda o, l: fa_cute.combine([o[0], 3], l), TypeError, r"out_partials\[1\] must be a torch.Tensor"),
    (lambda o, l: fa_cute.combine(o, l[:1]), ValueError, "2 partial outputs but lse_partials 1"),
    (lambda o, l: fa_cute.combine([o[0], o[1].float()], l), TypeError, r"out_partials\[1\] has dtype"),
    (lambda o, l: fa_cute.combine([o[0], o[1][:, :5]], l), ValueError, r"out_partials\[1\] has shape"),
    (lambda o, l: fa_cute.combine(o, [l[0], l[1].half()]), TypeError, r"lse_partials\[1\] has dtype"),
    (lambda o, l: fa_cute.combine(o, [l[0], l[1][:, :1]]), ValueError, r"lse_partials\[1\] has shape"),
    (lambda o, l: fa_cute.combine(o[0], l), ValueError, "must be 5-D"),
    (lambda o, l: fa_cute.combine([o[0][0], o[1][0]], l), ValueError, r"out_partials\[0\] must be 4-D"),
    (lambda o, l: fa_cute.combine([t.int() for t in o], l), TypeError, "out_partials has dtype"),
    (lambda o, l: fa_cute.combine(o, l, out_dtype="bf16"), TypeError, "out_dtype must be None"),
    (lambda o, l: fa_cute.combine(o, [l[0], l[1].to("meta")]), ValueError, "several devices"),
])
def test_bad_arguments_are_refused(call, error, match):
    q, k, v = _qkv(dtype=torch.bfloat16)
    outs, lses = _partials(q, k, v, (0, 50, 100), causal=False)
    with pytest.raises(error, match=match):
        call(outs, lses)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_merges_fa_cute_forward_splits_on_the_gpu():
    """fa_cute.forward over two key halves (return_lse), merged, against the whole."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 300, 8, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(2, 1000, 2, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
            for _ in range(2))
    halves = [fa_cute.forward(q, k[:, a:b], v[:, a:b], return_lse=True) for a, b in ((0, 611), (611, 1000))]
    out, lse = fa_cute.combine([h[0] for h in halves], [h[1] for h in halves])
    ref, ref_lse = attention_ref(q, k, v, 128 ** -0.5, return_lse=True)
    plain = attention_ref(q, k, v, 128 ** -0.5, upcast=False)
    err = (out.double() - ref).abs().max().item()
    assert err <= 2 * (plain.double() - ref).abs().max().item() + 1e-3
    assert (lse.double() - ref_lse).abs().max().item() < 1e-3
