"""The validated-launch cache (`_cache.VALIDATED`): a repeated shape skips the Python checks,
but never an input that the checks would refuse, and never a stale auto pick."""

import pytest
import torch

import fa_cute
from fa_cute import _cache
from fa_cute._reference import attention_ref, check_close

pytestmark = pytest.mark.cuda


def _qkv(shape=(2, 1, 8, 128), seqlen_k=300, nheads_k=2):
    b, nq, h, d = shape
    q = torch.randn(b, nq, h, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(b, seqlen_k, nheads_k, d, device="cuda", dtype=torch.bfloat16)
            for _ in range(2))
    return q, k, v


def test_repeated_shape_hits_the_cache_and_stays_correct() -> None:
    _cache.VALIDATED.clear()
    for _ in range(3):
        q, k, v = _qkv()  # fresh inputs, same shape and strides
        out = fa_cute.forward(q, k, v)
        ref = attention_ref(q, k, v, q.shape[-1] ** -0.5)
        plain = attention_ref(q, k, v, q.shape[-1] ** -0.5, upcast=False)
        check_close(out, ref, plain)
    assert len(_cache.VALIDATED) == 1


def test_misaligned_input_of_a_cached_shape_is_still_refused() -> None:
    _cache.VALIDATED.clear()
    q, k, v = _qkv()
    fa_cute.forward(q, k, v)
    # Same shape and strides, data 2 bytes past a 16-byte boundary.
    storage = torch.empty(q.numel() + 8, device="cuda", dtype=q.dtype)
    q_off = storage[1:1 + q.numel()].view(q.shape)
    q_off.copy_(q)
    assert q_off.stride() == q.stride()
    with pytest.raises(ValueError, match="16-byte aligned"):
        fa_cute.forward(q_off, k, v)


def test_bad_flags_are_refused_even_after_a_cached_call() -> None:
    q, k, v = _qkv()
    fa_cute.forward(q, k, v, causal=False)
    with pytest.raises(TypeError, match="causal"):
        fa_cute.forward(q, k, v, causal=0)
    with pytest.raises(TypeError, match="softmax_scale"):
        fa_cute.forward(q, k, v, softmax_scale=[0.1])


def test_forget_tuning_clears_the_cache() -> None:
    q, k, v = _qkv()
    fa_cute.forward(q, k, v)
    assert _cache.VALIDATED
    _cache.forget_tuning()
    assert not _cache.VALIDATED


# The backward's cache (`_cache.BACKWARD_VALIDATED`): a training step repeats the step
# before's shapes, layer by layer.

def _backward_args(seqlen=200):
    # A head dim this build runs both ways on this GPU (64 where it can).
    from test_backward_gpu import _built
    dims = [d for d in (64, 128, 96, 192, 256) if _built(d)]
    if not dims:
        pytest.skip("no head dim with a forward and a backward config in this build")
    q, k, v = (torch.randn(2, seqlen, 4, dims[0], device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    out, lse = fa_cute.forward(q, k, v, causal=True, return_lse=True)
    return torch.randn_like(out), q, k, v, out, lse


def test_backward_repeats_hit_the_cache_and_stay_correct(monkeypatch) -> None:
    from fa_cute import _backward

    monkeypatch.setattr(_cache, "BACKWARD_VALIDATED", {})
    full = []
    validate = _backward.validate_backward
    monkeypatch.setattr(_backward, "validate_backward",
                        lambda *a, **kw: full.append(1) or validate(*a, **kw))
    first = None
    for _ in range(3):
        args = _backward_args()  # fresh tensors, same shapes and strides
        grads = fa_cute.backward(*args, causal=True)
        ref = fa_cute.backward(*args, causal=True, dq=torch.empty_like(args[1]))  # full checks
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r, rtol=0, atol=0)
        first = first or grads
    assert len(_cache.BACKWARD_VALIDATED) == 1
    assert len(full) == 1 + 3  # one miss, then only the calls given a dq buffer
    assert all(torch.isfinite(g).all() for g in first)


def test_backward_cache_still_refuses_a_freed_storage_and_bad_flags() -> None:
    dout, q, k, v, out, lse = _backward_args()
    fa_cute.backward(dout, q, k, v, out, lse, causal=True)
    with pytest.raises(TypeError, match="causal"):
        fa_cute.backward(dout, q, k, v, out, lse, causal=1)
    with pytest.raises(TypeError, match="deterministic"):
        fa_cute.backward(dout, q, k, v, out, lse, causal=True, deterministic=None)
    dout.untyped_storage().resize_(0)  # FSDP frees storages so
    with pytest.raises(ValueError, match="dout reaches byte"):
        fa_cute.backward(dout, q, k, v, out, lse, causal=True)


def test_forget_tuning_clears_the_backward_cache() -> None:
    fa_cute.backward(*_backward_args(), causal=True)
    assert _cache.BACKWARD_VALIDATED
    _cache.forget_tuning()
    assert not _cache.BACKWARD_VALIDATED
