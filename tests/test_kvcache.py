"""forward_with_kvcache's argument checks on CPU tensors (the device check comes last):
each bad argument raises TypeError or ValueError naming it."""

import pytest
import torch

import fa_cute


def _args(batch=2, nheads=4, nheads_k=2, d=128, capacity=256):
    q = torch.randn(batch, 1, nheads, d).to(torch.bfloat16)
    k_cache = torch.randn(batch, capacity, nheads_k, d).to(torch.bfloat16)
    v_cache = torch.randn(batch, capacity, nheads_k, d).to(torch.bfloat16)
    k = torch.randn(batch, 1, nheads_k, d).to(torch.bfloat16)
    v = torch.randn(batch, 1, nheads_k, d).to(torch.bfloat16)
    lens = torch.tensor([10, 20], dtype=torch.int32)
    return q, k_cache, v_cache, k, v, lens


def _raises(exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fa_cute.forward_with_kvcache(*args, **kwargs)


def test_valid_call_reaches_the_device_check() -> None:
    q, kc, vc, k, v, lens = _args()
    _raises(ValueError, "CUDA tensors only", q, kc, vc, k, v, cache_seqlens=lens)
    _raises(ValueError, "CUDA tensors only", q, kc, vc, cache_seqlens=lens)


def test_arguments() -> None:
    q, kc, vc, k, v, lens = _args()
    _raises(ValueError, "pass both", q, kc, vc, k, None, cache_seqlens=lens)
    _raises(TypeError, "cache_seqlens must have dtype torch.int32", q, kc, vc, k, v, cache_seqlens=lens.long())
    _raises(ValueError, "cache_seqlens must be a contiguous tensor of shape", q, kc, vc, k, v,
            cache_seqlens=lens[:1])
    _raises(ValueError, "v_cache must have k_cache's shape", q, kc, vc[:, :-1], k, v, cache_seqlens=lens)
    _raises(ValueError, "multiple of nheads", q[:, :, :3], kc, vc, k, v, cache_seqlens=lens)
    _raises(ValueError, "k and v must be", q, kc, vc, k[:1], v[:1], cache_seqlens=lens)
    _raises(TypeError, "k_cache has dtype", q, kc.half(), vc, k, v, cache_seqlens=lens)
    _raises(ValueError, "num_splits", q, kc, vc, k, v, cache_seqlens=lens, num_splits=-1)
    _raises(ValueError, "entries for a batch", q, kc[:1], vc[:1], k, v, cache_seqlens=lens)


def test_paged() -> None:
    q, _, _, k, v, lens = _args()
    pages = torch.randn(8, 24, 2, 128).to(torch.bfloat16)
    table = torch.zeros(2, 4, dtype=torch.int32)
    _raises(ValueError, "multiple of 16", q, pages, pages.clone(), k, v, cache_seqlens=lens, page_table=table)
    pages = torch.randn(8, 32, 2, 128).to(torch.bfloat16)
    _raises(ValueError, "at most one", q, pages, pages.clone(), k, v, cache_seqlens=lens, page_table=table,
            cache_batch_idx=torch.zeros(2, dtype=torch.int32))
    _raises(ValueError, "page_table must be", q, pages, pages.clone(), k, v, cache_seqlens=lens,
            page_table=table[:1])
    _raises(ValueError, "CUDA tensors only", q, pages, pages.clone(), k, v, cache_seqlens=lens, page_table=table)


def test_grad_refused() -> None:
    q, kc, vc, k, v, lens = _args()
    _raises(ValueError, "no backward", q.requires_grad_(), kc, vc, k, v, cache_seqlens=lens)
