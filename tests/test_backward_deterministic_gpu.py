"""deterministic=True on a GPU: two runs of `fa_cute.backward` give bitwise-equal dq, dk and
dv (dq's fp32 additions over key blocks happen in a fixed order, src/bwd_dq_order.h), the
gradients stay within FlashAttention's float64 rule (`check_grads` of
tests/test_backward_gpu.py), and the default (atomic, unordered) mode still works. Shapes
with many key blocks per query block, GQA, causal and not, seqlen_q != seqlen_k (causal
offsets of both signs: query rows that see no key, key blocks no query sees).
tests/test_backward.py tests the plumbing on CPU.
"""

import pytest
import torch

import fa_cute
from fa_cute import _C, _backward
from fa_cute._reference import attention_ref

from test_backward_gpu import BACKWARD_CONFIGS, _config_runs_here, check_grads, make, needs_head_dim

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not hasattr(_C, "backward"),
                       reason="this build of fa_cute._C has no backward kernel (_C.backward)"),
    # deterministic=True is refused there, by a ValueError naming the families that have it
    pytest.mark.skipif(not any(c["family"] in _backward.DETERMINISTIC_FAMILIES
                               for c in _backward.BACKWARD_CONFIGS.values()),
                       reason="no backward config of this build has a deterministic mode (its "
                       "FA_CUTE_CONFIGS list has no sm80 backward)"),
]

SHAPES = {
    # batch, seqlen_q, seqlen_k, nheads, nheads_k
    "mha-1024": (2, 1024, 1024, 4, 4),
    "gqa-2048": (1, 2048, 2048, 8, 2),
    "gqa-q-shorter": (2, 1000, 4224, 8, 2),   # causal: offset +3224, many keys per row
    "mqa-q-longer": (1, 4224, 1111, 6, 1),    # causal: offset -3113, rows that see no key
    "ragged": (3, 1537, 1283, 4, 2),
}


def _grads(dout, q, k, v, out, lse, causal, deterministic):
    return fa_cute.backward(dout, q, k, v, out, lse, causal=causal, deterministic=deterministic)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_two_runs_are_bitwise_equal(shape, causal, dtype) -> None:
    head_dim = 128
    needs_head_dim(head_dim, dtype)
    batch, seqlen_q, seqlen_k, nheads, nheads_k = SHAPES[shape]
    torch.manual_seed(0)
    q = make(batch, seqlen_q, nheads, head_dim, dtype, grad=False)
    k, v = (make(batch, seqlen_k, nheads_k, head_dim, dtype, grad=False) for _ in range(2))
    dout = make(batch, seqlen_q, nheads, head_dim, dtype, grad=False)
    out, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True)
    first = _grads(dout, q, k, v, out, lse, causal, True)
    for _ in range(3):
        again = _grads(dout, q, k, v, out, lse, causal, True)
        for name, a, b in zip(("dq", "dk", "dv"), first, again):
            assert torch.equal(a.view(torch.int16), b.view(torch.int16)), \
                f"{name} differs between two deterministic runs"
    check_grads(first, q, k, v, dout, head_dim ** -0.5, causal=causal)
    if causal and seqlen_q > seqlen_k:
        assert not first[0][:, :seqlen_q - seqlen_k].any(), "rows that see no key: dq must be 0"
    # The default mode: same gradients up to the order of dq's fp32 additions; with causal, dk
    # and dv bitwise the same where both modes run the same kernel (a tuned pick without a
    # deterministic mode falls back to another config). Without causal the Hopper kernel's
    # deterministic mode may walk the query blocks in the rotated order (src/bwd_dq_order.h),
    # which sums dk and dv in another order than the default's.
    default = _grads(dout, q, k, v, out, lse, causal, False)
    check_grads(default, q, k, v, dout, head_dim ** -0.5, causal=causal)
    if causal and _same_kernel(dout, q, k, v, out, lse, causal):
        for name, a, b in zip(("dk", "dv"), first[1:], default[1:]):
            assert torch.equal(a, b), f"{name} must not depend on deterministic"


def _same_kernel(dout, q, k, v, out, lse, causal) -> bool:
    configs = [_backward.validate_backward(dout, q, k, v, out, lse, causal=causal,
                                           bottom_right=True, softmax_scale=None,
                                           deterministic=d, dq=None, dk=None, dv=None).config
               for d in (False, True)]
    return configs[0] == configs[1]


@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
def test_head_dims_and_given_buffers(head_dim: int) -> None:
    """Every built head dim; the gradients written into given buffers, run after run."""
    needs_head_dim(head_dim)
    q = make(2, 777, 4, head_dim, torch.bfloat16, grad=False)
    k, v = (make(2, 2049, 2, head_dim, torch.bfloat16, grad=False) for _ in range(2))
    dout = torch.randn_like(q)
    out, lse = fa_cute.forward(q, k, v, return_lse=True)
    bufs = [torch.empty_like(t) for t in (q, k, v)]
    first = [g.clone() for g in fa_cute.backward(dout, q, k, v, out, lse, deterministic=True,
                                                 dq=bufs[0], dk=bufs[1], dv=bufs[2])]
    for _ in range(2):
        fa_cute.backward(dout, q, k, v, out, lse, deterministic=True,
                         dq=bufs[0], dk=bufs[1], dv=bufs[2])
        assert all(torch.equal(a, b) for a, b in zip(first, bufs))
    check_grads(first, q, k, v, dout, head_dim ** -0.5, causal=False)


def test_compiled_backward_takes_deterministic() -> None:
    """Under torch.compile fa_cute.backward becomes the op fa_cute::backward, which passes
    deterministic on."""
    needs_head_dim(128)
    q = make(1, 1024, 4, 128, torch.bfloat16, grad=False)
    k, v = (make(1, 1500, 2, 128, torch.bfloat16, grad=False) for _ in range(2))
    dout = torch.randn_like(q)
    out, lse = fa_cute.forward(q, k, v, causal=True, return_lse=True)

    @torch.compile(backend="aot_eager")
    def step(dout, q, k, v, out, lse):
        return fa_cute.backward(dout, q, k, v, out, lse, causal=True, deterministic=True)

    compiled = step(dout, q, k, v, out, lse)
    eager = fa_cute.backward(dout, q, k, v, out, lse, causal=True, deterministic=True)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))


# Variants whose dQ additions have no fixed order (src/sm90/bwd_launch_sm90.h refuses them).
UNORDERED_VARIANTS = ("_dqbulk", "_dqwg")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", [c["name"] for c in BACKWARD_CONFIGS
                                    if c["family"] in _backward.DETERMINISTIC_FAMILIES])
def test_each_config_named(config, causal) -> None:
    """Every config of a deterministic family, run by name: bitwise-equal reruns within the
    float64 rule, or (a variant with unordered dQ additions) a ValueError naming it."""
    cfg = next(c for c in BACKWARD_CONFIGS if c["name"] == config)
    _config_runs_here(cfg)
    dtype = torch.bfloat16 if "bf16" in cfg["dtypes"] else torch.float16
    head_dim = cfg["head_dim"]
    torch.manual_seed(1)
    q = make(2, 1111, 6, head_dim, dtype, grad=False)
    k, v = (make(2, 2345, 2, head_dim, dtype, grad=False) for _ in range(2))
    dout = make(2, 1111, 6, head_dim, dtype, grad=False)
    # out and lse from the float64 reference: a backward config is tested whether or not the
    # build has a forward of its head dim.
    out64, lse = attention_ref(q, k, v, head_dim ** -0.5, causal=causal, return_lse=True)
    out, lse = out64.to(dtype), lse.float().contiguous()
    run = lambda: fa_cute.backward(dout, q, k, v, out, lse, causal=causal,  # noqa: E731
                                   deterministic=True, config=config)
    if config.endswith(UNORDERED_VARIANTS):
        with pytest.raises(ValueError, match="no deterministic mode"):
            run()
        return
    first = run()
    for _ in range(3):
        for name, a, b in zip(("dq", "dk", "dv"), first, run()):
            assert torch.equal(a, b), f"{name} differs between two deterministic runs of {config}"
    check_grads(first, q, k, v, dout, head_dim ** -0.5, causal=causal)
