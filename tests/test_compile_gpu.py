"""Issue 14 on a GPU: torch.compile(fullgraph=True) of forward and sdpa matches eager bit for
bit; forward_timed refuses inputs that require grad (tests/test_backward_gpu.py trains through
forward and sdpa); a growing KV cache hits its launch plan and stays
correct (tests/test_compile_and_grad.py and tests/test_launch_plans.py do the rest on CPU)."""

from typing import List

import pytest
import torch

import fa_cute
from fa_cute import _cache
from fa_cute._reference import attention_ref, check_close

pytestmark = pytest.mark.cuda

BF16 = dict(device="cuda", dtype=torch.bfloat16)


def qkv(batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim=128, layout="bnhd"):
    def make(seqlen, heads):
        if layout == "bnhd":
            return torch.randn(batch, seqlen, heads, head_dim, **BF16)
        return torch.randn(batch, heads, seqlen, head_dim, **BF16).transpose(1, 2)

    return make(seqlen_q, nheads), make(seqlen_k, nheads_k), make(seqlen_k, nheads_k)


SHAPES = {
    "mha": (2, 256, 256, 8, 8),
    "gqa-ragged": (2, 100, 300, 8, 2),
    "decode-gqa": (4, 1, 1000, 32, 8),
    "chunk": (1, 5, 4100, 8, 1),
}


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_forward_is_eager_bit_for_bit(shape, return_lse, causal, layout,
                                               backend) -> None:
    torch._dynamo.reset()
    q, k, v = qkv(*SHAPES[shape], layout=layout)

    def fn(q, k, v):
        return fa_cute.forward(q, k, v, causal=causal, return_lse=return_lse)

    eager = fn(q, k, v)
    got = torch.compile(fn, fullgraph=True, backend=backend)(q, k, v)
    pairs = zip(eager, got) if return_lse else [(eager, got)]
    for a, b in pairs:
        assert a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride()
        assert torch.equal(a, b)


@pytest.mark.parametrize("return_lse", [False, True])
def test_compiled_forward_with_out(return_lse: bool) -> None:
    torch._dynamo.reset()
    q, k, v = qkv(*SHAPES["gqa-ragged"])
    out_eager, out_compiled = torch.empty_like(q), torch.empty_like(q)

    def fn(q, k, v, out):
        return fa_cute.forward(q, k, v, causal=True, return_lse=return_lse, out=out)

    eager = fn(q, k, v, out_eager)
    got = torch.compile(fn, fullgraph=True)(q, k, v, out_compiled)
    assert torch.equal(out_compiled, out_eager)
    if return_lse:
        assert torch.equal(got[0], out_eager) and torch.equal(got[1], eager[1])


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", ["mha", "gqa-ragged", "decode-gqa"])
def test_compiled_sdpa_is_eager_bit_for_bit(shape, is_causal: bool) -> None:
    torch._dynamo.reset()
    q, k, v = (t.transpose(1, 2) for t in qkv(*SHAPES[shape]))

    def fn(q, k, v):
        return fa_cute.sdpa(q, k, v, is_causal=is_causal, enable_gqa=True)

    eager = fn(q, k, v)
    got = torch.compile(fn, fullgraph=True)(q, k, v)
    # sdpa's output keeps query's order of the heads and sequence dims in memory (here a
    # transposed (batch, seqlen, nheads, headdim) buffer); the fake implementation must agree.
    assert got.stride() == eager.stride() and torch.equal(got, eager)


def test_compiled_with_dynamic_lengths() -> None:
    """dynamic=True: one graph for several KV lengths (the fake implementation's shapes are
    symbolic), each result the eager one."""
    torch._dynamo.reset()
    fn = torch.compile(lambda q, k, v: fa_cute.forward(q, k, v), fullgraph=True, dynamic=True)
    for n in (300, 301, 517):
        q, k, v = qkv(2, 1, n, 8, 2)
        assert torch.equal(fn(q, k, v), fa_cute.forward(q, k, v))


def test_forward_timed_refuses_requires_grad_on_cuda() -> None:
    q, k, v = qkv(*SHAPES["gqa-ragged"])
    k.requires_grad_()
    with pytest.raises(NotImplementedError, match=r"^k requires grad, but fa_cute\.forward_timed "
                                                  "records no gradient"):
        fa_cute.forward_timed(q, k, v)
    with torch.no_grad():
        fa_cute.forward_timed(q, k, v)


@pytest.fixture
def checks(validations: List[int]) -> List[int]:
    """The KV length of each full validation, on fresh caches (conftest's `validations`)."""
    return validations


@pytest.mark.parametrize("seqlen_q, causal", [(1, False), (1, True), (4, True)])
def test_growing_cache_hits_its_plan_and_stays_correct(checks: List[int], seqlen_q: int,
                                                       causal: bool) -> None:
    """The README's decode loop over a preallocated cache, through 500-530 keys: on an H100
    auto's pick changes at 512 (the Hopper short-query tile), which one more full
    validation handles; elsewhere one validation serves every length."""
    k_cache, v_cache = (torch.randn(4, 1024, 8, 128, **BF16) for _ in range(2))
    q = torch.randn(4, seqlen_q, 32, 128, **BF16)
    for n in range(500, 531):
        k, v = k_cache[:, :n], v_cache[:, :n]
        out = fa_cute.forward(q, k, v, causal=causal)
        ref = attention_ref(q, k, v, 128 ** -0.5, causal=causal)
        plain = attention_ref(q, k, v, 128 ** -0.5, upcast=False, causal=causal)
        check_close(out, ref, plain)
    launches = [entry[0] for entry in _cache.VALIDATED.values()]
    assert sorted(launch.seqlen_k for launch in launches) == list(range(500, 531))
    # One full validation per config auto picked over these lengths, at its first length.
    configs = {launch.config for launch in launches}
    assert len(checks) == len(configs), (checks, configs)
    assert checks[0] == 500
