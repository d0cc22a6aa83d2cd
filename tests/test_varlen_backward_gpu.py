"""varlen_backward and varlen_forward's gradients on a GPU against the float64 reference,
sequence by sequence (FlashAttention's 2x rule, check_grad_errors): random lengths including
0 and 1 and sequences without keys, MHA/GQA/MQA, causal (bottom-right per sequence),
seqused_k, every built backward config by name; autograd through varlen_forward equal to the
raw op; rows outside every sequence get zero gradients; NaN in the key rows past seqused_k
changes nothing; deterministic=True is bitwise
reproducible; a bad cu_seqlens comes back as NaN gradients; the step captures in a CUDA
graph. tests/test_varlen.py tests the argument checks on CPU."""

import itertools

import pytest
import torch

import fa_cute
from fa_cute._reference import varlen_attention_grads_ref, varlen_attention_ref

from attention_cases import DEVICE, check_grad_errors

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not hasattr(fa_cute._C, "varlen_backward"), reason="no backward in this build"),
]

BACKWARD_CONFIGS = fa_cute._C.backward_configs() if hasattr(fa_cute._C, "backward_configs") else []


def _runs_here(cfg: dict) -> bool:
    return cfg["family"] != "sm90a" or torch.cuda.get_device_capability() == (9, 0)


def _needs(head_dim: int, dtype: torch.dtype) -> None:
    """A forward varlen config and a backward config of head_dim in dtype that run here."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if not any(c["head_dim"] == head_dim and name in c["dtypes"] and c.get("varlen")
               and _runs_here(c) for c in fa_cute.configs()):
        pytest.skip(f"no varlen forward config for d={head_dim} {name} here")
    if not any(c["head_dim"] == head_dim and name in c["dtypes"] and _runs_here(c)
               for c in BACKWARD_CONFIGS):
        pytest.skip(f"no backward config for d={head_dim} {name} here")


def _dtype_of(head_dim: int) -> torch.dtype:
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        if any(c["head_dim"] == head_dim and name in c["dtypes"] for c in BACKWARD_CONFIGS):
            return dtype
    pytest.skip(f"no backward config for d={head_dim}")


def _packed(lengths_q, lengths_k, nheads, nheads_k, head_dim, dtype, seed, pad=(0, 0)):
    """q, k, v, dout packed from the lengths (with pad = (rows before, rows after) outside
    every sequence in q and k), the offsets as lists and as int32 GPU tensors."""
    gen = torch.Generator().manual_seed(seed)
    before, after = pad
    cu_q = [before + x for x in itertools.accumulate([0] + list(lengths_q))]
    cu_k = [before + x for x in itertools.accumulate([0] + list(lengths_k))]
    rnd = lambda rows, heads: torch.randn(rows, heads, head_dim, generator=gen).to(DEVICE, dtype)  # noqa: E731
    q = rnd(cu_q[-1] + after, nheads)
    k, v = rnd(cu_k[-1] + after, nheads_k), rnd(cu_k[-1] + after, nheads_k)
    dout = rnd(q.shape[0], nheads)
    as_gpu = lambda xs: torch.tensor(xs, dtype=torch.int32, device=DEVICE)  # noqa: E731
    return q, k, v, dout, cu_q, cu_k, as_gpu(cu_q), as_gpu(cu_k)


def _check(lengths_q, lengths_k, *, head_dim=128, dtype=None, nheads=8, nheads_k=2, causal=False,
           seqused=None, config="auto", seed=0, pad=(0, 0)):
    dtype = _dtype_of(head_dim) if dtype is None else dtype
    _needs(head_dim, dtype)
    q, k, v, dout, cu_q, cu_k, cu_q_t, cu_k_t = _packed(lengths_q, lengths_k, nheads, nheads_k,
                                                        head_dim, dtype, seed, pad)
    seqused_t = None if seqused is None else torch.tensor(seqused, dtype=torch.int32, device=DEVICE)
    max_q, max_k = max(max(lengths_q), 1), max(max(lengths_k), 1)
    out, lse = fa_cute.varlen_forward(q, k, v, cu_q_t, cu_k_t, max_q, max_k, seqused_k=seqused_t,
                                      causal=causal, return_lse=True)
    grads = [torch.full_like(t, float("nan")) for t in (q, k, v)]  # every element must be written
    got = fa_cute.varlen_backward(dout, q, k, v, out, lse, cu_q_t, cu_k_t, max_q, max_k,
                                  seqused_k=seqused_t, causal=causal, dq=grads[0], dk=grads[1],
                                  dv=grads[2], config=config)
    assert all(g is h for g, h in zip(got, grads))
    scale = head_dim ** -0.5
    args = dict(causal=causal, seqused_k=seqused)
    ref = varlen_attention_grads_ref(q.cpu(), k.cpu(), v.cpu(), dout.cpu(), cu_q, cu_k, scale, **args)
    plain = varlen_attention_grads_ref(q.cpu(), k.cpu(), v.cpu(), dout.cpu(), cu_q, cu_k, scale,
                                       upcast=False, **args)
    check_grad_errors(got, ref, plain, dtype)
    return q, k, v, dout, cu_q_t, cu_k_t, max_q, max_k, seqused_t, got


RAGGED = {
    "mixed": ([1000, 1, 0, 239, 17], [1000, 3000, 5, 113, 17]),
    "even": ([128, 256, 64], [128, 256, 64]),
    "keyless": ([799, 1024, 33], [113, 4224, 0]),
}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", RAGGED.values(), ids=RAGGED.keys())
def test_gradients(lengths, causal) -> None:
    _check(*lengths, causal=causal)


@pytest.mark.parametrize("nheads, nheads_k", [(8, 8), (8, 1)], ids=["mha", "mqa"])
def test_heads(nheads, nheads_k) -> None:
    _check([300, 17, 129], [300, 400, 1], nheads=nheads, nheads_k=nheads_k, causal=True, seed=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
def test_head_dims(head_dim, dtype) -> None:
    _check([200, 1, 77], [150, 9, 300], head_dim=head_dim, dtype=dtype, causal=True, seed=2)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", [c["name"] for c in BACKWARD_CONFIGS])
def test_each_config(config, causal) -> None:
    cfg = next(c for c in BACKWARD_CONFIGS if c["name"] == config)
    if not _runs_here(cfg):
        pytest.skip("sm90a configs run on compute capability 9.0 only")
    dtype = torch.bfloat16 if "bf16" in cfg["dtypes"] else torch.float16
    _check([513, 1, 0, 130], [700, 9, 3, 130], head_dim=cfg["head_dim"], dtype=dtype,
           causal=causal, config=config, seed=3)


def test_seqused_k() -> None:
    _check([100, 50, 7], [300, 80, 20], seqused=[250, 0, 20], causal=True, seed=4)


def test_unused_keys_are_never_read() -> None:
    """seqused_k with NaN in every key and value row a sequence does not use (a KV cache's
    unwritten tail): the output, the LSE, dq and the used keys' dk and dv are bitwise those
    of the same call with finite rows there. 0 * NaN is NaN: a kernel that read such a row into P V,
    dP = dO V^T or dQ = dS K would let it through (FlashAttention-3's issue #2374)."""
    lengths_q, lengths_k, seqused = [100, 50, 7], [300, 80, 20], [250, 33, 20]
    dtype = _dtype_of(128)
    _needs(128, dtype)
    q, k, v, dout, cu_q, cu_k, cu_q_t, cu_k_t = _packed(lengths_q, lengths_k, 8, 2, 128, dtype, 6, (0, 0))
    unused = torch.zeros(k.shape[0], dtype=torch.bool)
    for b, used in enumerate(seqused):
        unused[cu_k[b] + used:cu_k[b + 1]] = True
    unused = unused.to(DEVICE)[:, None, None]
    seqused_t = torch.tensor(seqused, dtype=torch.int32, device=DEVICE)
    results = []
    for kk, vv in ((k, v), (k.masked_fill(unused, float("nan")), v.masked_fill(unused, float("nan")))):
        out, lse = fa_cute.varlen_forward(q, kk, vv, cu_q_t, cu_k_t, max(lengths_q), max(lengths_k),
                                          seqused_k=seqused_t, causal=True, return_lse=True)
        grads = fa_cute.varlen_backward(dout, q, kk, vv, out, lse, cu_q_t, cu_k_t, max(lengths_q),
                                        max(lengths_k), seqused_k=seqused_t, causal=True)
        results.append((out, lse) + tuple(grads))
    used = ~unused[:, 0, 0]
    for name, finite, poisoned in zip(("out", "lse", "dq", "dk", "dv"), *results):
        if name in ("dk", "dv"):  # the unused keys' own gradients are not compared
            finite, poisoned = finite[used], poisoned[used]
        assert torch.equal(poisoned, finite), name


def test_rows_outside_sequences_get_zero() -> None:
    q, k, v, dout, *_, (dq, dk, dv) = _check([100, 30], [120, 64], pad=(5, 11), seed=5)
    for g, rows in ((dq, q.shape[0]), (dk, k.shape[0]), (dv, v.shape[0])):
        assert (g[:5] == 0).all() and (g[rows - 11:] == 0).all()


def test_autograd_matches_the_raw_op() -> None:
    dtype = _dtype_of(128)
    _needs(128, dtype)
    q, k, v, dout, cu_q, cu_k, cu_q_t, cu_k_t = _packed([300, 5, 64], [200, 40, 64], 8, 2, 128,
                                                        dtype, 6)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fa_cute.varlen_forward(*leaves, cu_q_t, cu_k_t, 300, 200, causal=True)
    out.backward(dout)
    _, lse = fa_cute.varlen_forward(q, k, v, cu_q_t, cu_k_t, 300, 200, causal=True, return_lse=True)
    raw = fa_cute.varlen_backward(dout, q, k, v, out.detach(), lse, cu_q_t, cu_k_t, 300, 200,
                                  causal=True)
    # dk and dv are each CTA's own sums; dq's fp32 additions come in any order.
    torch.testing.assert_close(leaves[0].grad, raw[0])
    for leaf, g in zip(leaves[1:], raw[1:]):
        torch.testing.assert_close(leaf.grad, g, atol=0, rtol=0)
    # A loss that reads part of the output (autograd's dout is then strided or expanded).
    leaves2 = [t.clone().requires_grad_() for t in (q, k, v)]
    fa_cute.varlen_forward(*leaves2, cu_q_t, cu_k_t, 300, 200, causal=True).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves2)


def test_deterministic_is_bitwise_reproducible() -> None:
    dtype = _dtype_of(128)
    _needs(128, dtype)
    q, k, v, dout, _, _, cu_q_t, cu_k_t = _packed([700, 129, 1000], [700, 400, 1000], 8, 2, 128,
                                                  dtype, 7)
    out, lse = fa_cute.varlen_forward(q, k, v, cu_q_t, cu_k_t, 1000, 1000, causal=True,
                                      return_lse=True)
    runs = [fa_cute.varlen_backward(dout, q, k, v, out, lse, cu_q_t, cu_k_t, 1000, 1000,
                                    causal=True, deterministic=True) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("cu_q", [[0, 300, 200], [0, 100, 400], [0, 250, 300]],
                         ids=["decreasing", "past-the-rows", "longer-than-max"])
def test_bad_cu_seqlens_poison(cu_q) -> None:
    dtype = _dtype_of(128)
    _needs(128, dtype)
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(300, 4, 128, generator=gen).to(DEVICE, dtype)
    k, v = (torch.randn(300, 4, 128, generator=gen).to(DEVICE, dtype) for _ in range(2))
    good = torch.tensor([0, 100, 300], dtype=torch.int32, device=DEVICE)
    out, lse = fa_cute.varlen_forward(q, k, v, good, good, 200, 200, return_lse=True)
    bad = torch.tensor(cu_q, dtype=torch.int32, device=DEVICE)
    # max_seqlen_q 200: the third case's first sequence (250 rows) is longer.
    grads = fa_cute.varlen_backward(torch.ones_like(q), q, k, v, out, lse, bad, good, 200, 200)
    torch.cuda.synchronize()
    assert all(torch.isnan(g).all() for g in grads)
    # A key sequence longer than max_seqlen_k: the backward's grid would miss its last keys.
    grads = fa_cute.varlen_backward(torch.ones_like(q), q, k, v, out, lse, good, good, 200, 150)
    assert all(torch.isnan(g).all() for g in grads)


def test_cuda_graph_capture() -> None:
    dtype = _dtype_of(128)
    _needs(128, dtype)
    q, k, v, dout, cu_q, cu_k, cu_q_t, cu_k_t = _packed([300, 64], [300, 64], 8, 2, 128, dtype, 9)
    out, lse = fa_cute.varlen_forward(q, k, v, cu_q_t, cu_k_t, 300, 300, return_lse=True)
    eager = fa_cute.varlen_backward(dout, q, k, v, out, lse, cu_q_t, cu_k_t, 300, 300)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture wants
        fa_cute.varlen_backward(dout, q, k, v, out, lse, cu_q_t, cu_k_t, 300, 300)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fa_cute.varlen_backward(dout, q, k, v, out, lse, cu_q_t, cu_k_t, 300, 300)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, captured):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_forward_reference_still_holds_with_grad() -> None:
    """The recorded forward (which always computes the LSE) gives the same output as the
    reference."""
    dtype = _dtype_of(128)
    _needs(128, dtype)
    q, k, v, _, cu_q, cu_k, cu_q_t, cu_k_t = _packed([257, 3], [100, 3], 8, 2, 128, dtype, 10)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fa_cute.varlen_forward(*leaves, cu_q_t, cu_k_t, 257, 100, causal=True)
    assert out.grad_fn is not None
    ref = varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), cu_q, cu_k, 128 ** -0.5, causal=True)
    assert (out.detach().double().cpu() - ref).abs().max().item() < 2e-2
