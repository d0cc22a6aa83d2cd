"""forward's window_size on CPU: the argument's checks, the launch it makes (bounds,
alignment, no packed decode, bounds past every key dropped), the output against the float64
reference through the stand-in kernel, the cache keeping windows apart, and gradients
recorded (fa_cute.backward's window_size checked). The kernels: tests/test_window_gpu.py; the key-block ranges against brute
force: tests/cpp/test_launch_checks.cu."""

import pytest
import torch

import fa_cute
from fa_cute import _cache
from fa_cute._reference import attention_ref

BF16 = torch.bfloat16
D = min(c["head_dim"] for c in fa_cute.configs())  # a head dim of this build's forward


def qkv(seqlen_q=37, seqlen_k=53, nheads=4, nheads_k=2, d=D):
    torch.manual_seed(0)
    return (torch.randn(2, seqlen_q, nheads, d).to(BF16),
            torch.randn(2, seqlen_k, nheads_k, d).to(BF16),
            torch.randn(2, seqlen_k, nheads_k, d).to(BF16))


@pytest.mark.parametrize("causal, window", [(False, (5, 3)), (False, (0, 0)), (True, (7, 0)),
                                            (True, (7, -1)), (False, (-1, 4)), (False, (10, -1))])
@pytest.mark.parametrize("lengths", [(37, 53), (53, 37), (1, 40)])
def test_output_and_launch(reference_forward, causal, window, lengths) -> None:
    q, k, v = qkv(*lengths)
    out, lse = fa_cute.forward(q, k, v, causal=causal, window_size=window, return_lse=True)
    launch = reference_forward[-1]
    assert launch.causal_offset == lengths[1] - lengths[0]  # bottom-right, as causal
    assert (launch.window_left, launch.window_right) == (window[0], -1 if causal else window[1])
    assert not launch.packed
    ref, ref_lse = attention_ref(q, k, v, D ** -0.5, causal=causal, window_size=window,
                                 return_lse=True)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=0)
    assert torch.equal(lse.isinf(), ref_lse.isinf()), "rows that see no key: LSE -inf"


def test_bounds_past_every_key_are_none(reference_forward) -> None:
    q, k, v = qkv(10, 20)
    fa_cute.forward(q, k, v, window_size=(30, 30))
    assert (reference_forward[-1].window_left, reference_forward[-1].window_right) == (-1, -1)
    fa_cute.forward(q, k, v, window_size=(29, 0))
    assert (reference_forward[-1].window_left, reference_forward[-1].window_right) == (29, 0)


@pytest.mark.parametrize("bad, error", [((1,), TypeError), ((1, 2, 3), TypeError), (5, TypeError),
                                        ((1.0, 2), TypeError), ((True, 2), TypeError),
                                        (None, TypeError), ((-2, 0), ValueError),
                                        ((0, -5), ValueError)])
def test_bad_windows_are_refused(reference_forward, bad, error) -> None:
    q, k, v = qkv()
    with pytest.raises(error, match="window_size"):
        fa_cute.forward(q, k, v, window_size=bad)
    assert not reference_forward


def test_causal_takes_no_right_bound(reference_forward) -> None:
    q, k, v = qkv()
    with pytest.raises(ValueError, match="causal"):
        fa_cute.forward(q, k, v, causal=True, window_size=(4, 2))


def test_cached_launches_keep_their_window(fake_cuda, reference_forward) -> None:
    q, k, v = qkv()
    _cache.VALIDATED.clear()
    _cache.PLANS.clear()
    for window in ((-1, -1), (3, 3), (-1, -1), (3, 3), (3, 4), [3, 4]):
        fa_cute.forward(q, k, v, window_size=window)
        assert (reference_forward[-1].window_left, reference_forward[-1].window_right) == tuple(window)
    # a decode over a growing cache: each length validated (no plan for windows)
    q1, k1, v1 = qkv(seqlen_q=1, seqlen_k=60)
    for n in (20, 21, 22):
        out = fa_cute.forward(q1, k1[:, :n], v1[:, :n], window_size=(4, 0))
        ref = attention_ref(q1, k1[:, :n], v1[:, :n], D ** -0.5, window_size=(4, 0))
        torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=0)
        assert reference_forward[-1].seqlen_k == n and reference_forward[-1].causal_offset == n - 1


def test_gradients_are_recorded(reference_forward) -> None:
    q, k, v = (t.requires_grad_() for t in qkv())
    out, lse = fa_cute.forward(q, k, v, window_size=(8, 0), return_lse=True)
    assert out.grad_fn is not None and reference_forward[-1].window_left == 8
    dout = torch.ones_like(out)
    args = (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        fa_cute.backward(*args, window_size=(8, 0))
    with pytest.raises(TypeError, match="window_size must be a pair"):
        fa_cute.backward(*args, window_size=8)
    with pytest.raises(ValueError, match="right bound must be -1 or 0"):
        fa_cute.backward(*args, causal=True, window_size=(8, 3))
