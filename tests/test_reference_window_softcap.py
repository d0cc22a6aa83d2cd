"""`attention_ref`'s sliding windows and softcap (the serving issue's semantics, the reference
the kernels will be checked against) against a naive loop over rows and keys (CPU)."""

import math

import pytest
import torch

from fa_cute._reference import attention_ref, visible_mask


def _naive(q, k, v, scale, causal, window, softcap, offset):
    """Row by row, key by key: FlashAttention's rule for which keys a row sees."""
    batch, seqlen_q, nheads, d = q.shape
    seqlen_k, nheads_k = k.shape[1], k.shape[2]
    left, right = window
    out = torch.zeros(batch, seqlen_q, nheads, d, dtype=torch.float64)
    lse = torch.full((batch, nheads, seqlen_q), -math.inf, dtype=torch.float64)
    for b in range(batch):
        for h in range(nheads):
            hk = h // (nheads // nheads_k)
            for r in range(seqlen_q):
                keys = [c for c in range(seqlen_k)
                        if (not causal or c <= r + offset)
                        and (right < 0 or c <= r + offset + right)
                        and (left < 0 or c >= r + offset - left)]
                if not keys:
                    continue
                s = torch.stack([(q[b, r, h] * k[b, c, hk]).sum() * scale for c in keys])
                if softcap > 0:
                    s = softcap * torch.tanh(s / softcap)
                lse[b, h, r] = torch.logsumexp(s, 0)
                p = torch.softmax(s, 0)
                out[b, r, h] = sum(p[i] * v[b, c, hk] for i, c in enumerate(keys))
    return out, lse


@pytest.mark.parametrize("seqlens", [(7, 7), (5, 12), (12, 5)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (3, -1), (-1, 2), (2, 0), (0, 0), (4, 1)])
@pytest.mark.parametrize("softcap", [0.0, 1.5])
def test_matches_the_naive_rule(seqlens, causal, window, softcap):
    gen = torch.Generator().manual_seed(hash((seqlens, causal, window, softcap)) % 2**31)
    seqlen_q, seqlen_k = seqlens
    q = torch.randn(1, seqlen_q, 4, 8, generator=gen, dtype=torch.float64) * 2
    k, v = (torch.randn(1, seqlen_k, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    out, lse = attention_ref(q, k, v, 0.5, causal=causal, window_size=window, softcap=softcap,
                             return_lse=True)
    ref, ref_lse = _naive(q, k, v, 0.5, causal, window, softcap, seqlen_k - seqlen_q)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_visible_mask_is_none_without_a_bound_and_top_left_with_offset_zero():
    assert visible_mask(4, 6, 2, False) is None
    top_left = visible_mask(3, 5, 0, False, (1, 1))
    assert top_left.tolist() == [[True, True, False, False, False],
                                 [True, True, True, False, False],
                                 [False, True, True, True, False]]


def test_softcap_bounds_the_scores():
    q = torch.full((1, 1, 1, 4), 100.0, dtype=torch.float64)
    k = torch.ones(1, 3, 1, 4, dtype=torch.float64)
    v = torch.randn(1, 3, 1, 4, dtype=torch.float64)
    _, lse = attention_ref(q, k, v, 1.0, softcap=2.0, return_lse=True)
    assert lse.item() == pytest.approx(2.0 * math.tanh(200.0) + math.log(3))


def test_varlen_reference_is_the_dense_one_per_sequence():
    from fa_cute._reference import varlen_attention_ref
    gen = torch.Generator().manual_seed(1)
    lens_q, lens_k = [3, 0, 5, 1], [4, 2, 0, 9]
    cu_q = [0] + list(torch.tensor(lens_q).cumsum(0).tolist())
    cu_k = [0] + list(torch.tensor(lens_k).cumsum(0).tolist())
    q = torch.randn(cu_q[-1], 4, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(cu_k[-1], 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    out, lse = varlen_attention_ref(q, k, v, cu_q, cu_k, 0.3, causal=True, window_size=(2, -1),
                                    return_lse=True)
    assert out.shape == q.shape and lse.shape == (4, cu_q[-1])
    for i in range(4):
        rows = slice(cu_q[i], cu_q[i + 1])
        if lens_q[i] == 0:
            continue
        if lens_k[i] == 0:
            assert (out[rows] == 0).all() and torch.isneginf(lse[:, rows]).all()
            continue
        keys = slice(cu_k[i], cu_k[i + 1])
        ref, ref_lse = attention_ref(q[None, rows], k[None, keys], v[None, keys], 0.3, causal=True,
                                     window_size=(2, -1), return_lse=True)
        torch.testing.assert_close(out[rows], ref[0], rtol=0, atol=0)
        torch.testing.assert_close(lse[:, rows], ref_lse[0], rtol=0, atol=0)


def test_paged_kv_reference_reads_shuffled_pages():
    from fa_cute._reference import paged_kv_ref
    dense = torch.randn(2, 40, 2, 4, dtype=torch.float64)
    page_size, pages_per_seq = 16, 3
    order = torch.randperm(2 * pages_per_seq, generator=torch.Generator().manual_seed(0))
    cache = torch.zeros(2 * pages_per_seq, page_size, 2, 4, dtype=torch.float64)
    table = order.view(2, pages_per_seq)
    for b in range(2):
        for j in range(40):
            cache[table[b, j // page_size], j % page_size] = dense[b, j]
    got = paged_kv_ref(cache, table, [40, 17])
    torch.testing.assert_close(got[0], dense[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1, :17], dense[1, :17], rtol=0, atol=0)
    assert (got[1, 17:] == 0).all()
