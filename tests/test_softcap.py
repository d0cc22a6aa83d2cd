"""forward's softcap on CPU: the argument's checks, its way into the launch (`Launch.softcap`,
`_C.forward`'s softcap after causal_offset), the validation cache keeping launches of
different caps apart, and gradients recorded (fa_cute.backward's softcap checked). The kernels: tests/test_softcap_gpu.py."""

import math

import pytest
import torch

import fa_cute
from fa_cute import _cache, _launch
from fa_cute._reference import attention_ref

BF16 = torch.bfloat16
D = min(c["head_dim"] for c in fa_cute.configs())  # a head dim of this build's forward


def qkv(seqlen_q=7, seqlen_k=9, nheads=4, nheads_k=2, d=D):
    torch.manual_seed(0)
    return (torch.randn(2, seqlen_q, nheads, d).to(BF16) * 4,
            torch.randn(2, seqlen_k, nheads_k, d).to(BF16),
            torch.randn(2, seqlen_k, nheads_k, d).to(BF16))


@pytest.mark.parametrize("causal", [False, True])
def test_the_cap_reaches_the_kernel(reference_forward, causal: bool) -> None:
    q, k, v = qkv()
    out = fa_cute.forward(q, k, v, causal=causal, softcap=2.5)
    assert reference_forward[-1].softcap == 2.5
    ref = attention_ref(q, k, v, D ** -0.5, causal=causal, softcap=2.5)
    plain = attention_ref(q, k, v, D ** -0.5, causal=causal)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=0)
    assert (ref - plain).abs().max() > 0.1, "a cap of 2.5 must change these outputs"
    fa_cute.forward(q, k, v, causal=causal)
    assert reference_forward[-1].softcap == 0.0


def test_kernel_args_carry_the_cap(reference_forward) -> None:
    q, k, v = qkv()
    fa_cute.forward(q, k, v, softcap=7)
    launch = reference_forward[-1]
    args = _launch.kernel_args(launch, q, k, v, torch.empty_like(q), None)
    assert args[-6:] == (launch.softmax_scale, launch.is_causal, launch.causal_offset, 7.0, -1, -1)
    assert type(args[-3]) is float


@pytest.mark.parametrize("bad, error", [(True, TypeError), ("5", TypeError), (None, TypeError),
                                        (-1.0, ValueError), (math.inf, ValueError),
                                        (math.nan, ValueError), (10**400, ValueError)])
def test_bad_caps_are_refused(reference_forward, bad, error) -> None:
    q, k, v = qkv()
    with pytest.raises(error, match="softcap"):
        fa_cute.forward(q, k, v, softcap=bad)
    with pytest.raises(error, match="softcap"):
        fa_cute.forward_timed(q, k, v, softcap=bad)
    assert not reference_forward


def test_cached_launches_keep_their_cap(fake_cuda, reference_forward) -> None:
    q, k, v = qkv()
    _cache.VALIDATED.clear()
    _cache.PLANS.clear()
    for cap in (0.0, 3.0, 0.0, 3.0, 30):
        fa_cute.forward(q, k, v, softcap=cap)
        assert reference_forward[-1].softcap == cap
    # a longer K/V of the same shape family (a decode plan) keeps the cap too
    q1, k1, v1 = qkv(seqlen_q=1, seqlen_k=40)
    for n in (20, 21, 22):
        fa_cute.forward(q1, k1[:, :n], v1[:, :n], softcap=4.0)
        assert reference_forward[-1].softcap == 4.0 and reference_forward[-1].seqlen_k == n


def test_gradients_are_recorded(reference_forward) -> None:
    q, k, v = (t.requires_grad_() for t in qkv())
    out, lse = fa_cute.forward(q, k, v, softcap=30.0, return_lse=True)
    assert out.grad_fn is not None and reference_forward[-1].softcap == 30.0
    args = (torch.ones_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        fa_cute.backward(*args, softcap=30.0)
    with pytest.raises(TypeError, match="softcap must be a real number"):
        fa_cute.backward(*args, softcap="30")
    with pytest.raises(ValueError, match="softcap"):
        fa_cute.backward(*args, softcap=-1.0)
