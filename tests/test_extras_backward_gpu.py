"""Gradients with a sliding window or a logits softcap (the backward kernels' kExtras
variants) on a GPU against the float64 reference by FlashAttention's 2x rule
(check_grad_errors): every built backward config by name through fa_cute.backward, windows
bounded on the left, on the right and on both, with causal and without, softcaps that bend
most scores (5) and few (50), GQA and ragged lengths; gradients through forward's autograd
equal to the raw op's; deterministic=True with a window bitwise reproducible; varlen
batches with both. tests/test_window.py and tests/test_softcap.py test the plumbing on CPU."""

import itertools

import pytest
import torch

import fa_cute
from fa_cute._reference import attention_grads_ref, varlen_attention_grads_ref

from attention_cases import DEVICE, check_grad_errors

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not hasattr(fa_cute._C, "backward_configs"), reason="no backward in this build"),
]

BACKWARD_CONFIGS = fa_cute._C.backward_configs() if hasattr(fa_cute._C, "backward_configs") else []
FORWARD_HEAD_DIMS = {c["head_dim"] for c in fa_cute.configs()}


def _runs_here(cfg: dict) -> bool:
    return cfg["family"] != "sm90a" or torch.cuda.get_device_capability() == (9, 0)


def _dtype_of(cfg: dict) -> torch.dtype:
    return torch.bfloat16 if "bf16" in cfg["dtypes"] else torch.float16


def _config_for(head_dim: int = 128) -> dict:
    """This GPU's default backward config of head_dim, where the build has a forward too."""
    major, minor = torch.cuda.get_device_capability()
    try:
        name = fa_cute._C.default_backward_config(head_dim, major, minor)
    except ValueError:
        pytest.skip(f"no backward config for d={head_dim} here")
    if head_dim not in FORWARD_HEAD_DIMS:
        pytest.skip(f"no forward config for d={head_dim} in this build")
    return next(c for c in BACKWARD_CONFIGS if c["name"] == name)


def _inputs(batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, seed, logit_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda s, h: torch.randn(batch, s, h, head_dim, generator=gen)  # noqa: E731
    q = (rnd(seqlen_q, nheads) * logit_scale).to(DEVICE, dtype)
    k, v = rnd(seqlen_k, nheads_k).to(DEVICE, dtype), rnd(seqlen_k, nheads_k).to(DEVICE, dtype)
    dout = rnd(seqlen_q, nheads).to(DEVICE, dtype)
    return q, k, v, dout


def _check(cfg: dict, shape, *, causal=False, window=(-1, -1), softcap=0.0, seed=0,
           logit_scale=1.0, deterministic=False):
    batch, seqlen_q, seqlen_k, nheads, nheads_k = shape
    q, k, v, dout = _inputs(batch, seqlen_q, seqlen_k, nheads, nheads_k, cfg["head_dim"],
                            _dtype_of(cfg), seed, logit_scale)
    opts = dict(causal=causal, window_size=window, softcap=softcap)
    out, lse = fa_cute.forward(q, k, v, return_lse=True, **opts)
    got = fa_cute.backward(dout, q, k, v, out, lse, config=cfg["name"], deterministic=deterministic,
                           **opts)
    scale = cfg["head_dim"] ** -0.5
    ref = attention_grads_ref(q, k, v, dout, scale, **opts)
    plain = attention_grads_ref(q, k, v, dout, scale, upcast=False, **opts)
    check_grad_errors(got, ref, plain, q.dtype)
    return q, k, v, dout, got


SHAPES = {"gqa-ragged": (2, 300, 517, 8, 2), "q-longer": (1, 700, 250, 4, 4)}
WINDOWS = {"left": ((64, -1), False), "left-causal": ((100, 0), True), "right": ((-1, 33), False),
           "both": ((17, 90), False)}


@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("config", [c["name"] for c in BACKWARD_CONFIGS])
def test_window_each_config(config, shape, window) -> None:
    cfg = next(c for c in BACKWARD_CONFIGS if c["name"] == config)
    if not _runs_here(cfg) or cfg["head_dim"] not in FORWARD_HEAD_DIMS:
        pytest.skip("not runnable here (family or forward head dim)")
    _check(cfg, shape, causal=window[1], window=window[0], seed=1)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("softcap", [5.0, 50.0])
@pytest.mark.parametrize("config", [c["name"] for c in BACKWARD_CONFIGS])
def test_softcap_each_config(config, softcap, causal) -> None:
    cfg = next(c for c in BACKWARD_CONFIGS if c["name"] == config)
    if not _runs_here(cfg) or cfg["head_dim"] not in FORWARD_HEAD_DIMS:
        pytest.skip("not runnable here (family or forward head dim)")
    # Spread scores (logit_scale 4): the cap of 5 bends most of them.
    _check(cfg, SHAPES["gqa-ragged"], causal=causal, softcap=softcap, seed=2, logit_scale=4.0)


def test_window_and_softcap_together() -> None:
    _check(_config_for(), SHAPES["gqa-ragged"], causal=True, window=(80, 0), softcap=10.0, seed=3,
           logit_scale=3.0)


def test_autograd_matches_the_raw_op() -> None:
    cfg = _config_for()
    q, k, v, dout = _inputs(2, 300, 517, 8, 2, 128, _dtype_of(cfg), 4, 3.0)
    opts = dict(causal=True, window_size=(64, 0), softcap=8.0)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fa_cute.forward(*leaves, **opts)
    out.backward(dout)
    _, lse = fa_cute.forward(q, k, v, return_lse=True, **opts)
    raw = fa_cute.backward(dout, q, k, v, out.detach(), lse, **opts)
    torch.testing.assert_close(leaves[0].grad, raw[0])  # dq's fp32 additions: any order
    for leaf, g in zip(leaves[1:], raw[1:]):
        torch.testing.assert_close(leaf.grad, g, atol=0, rtol=0)


@pytest.mark.parametrize("window, causal", [((64, -1), False), ((100, 0), True), ((17, 90), False)],
                         ids=["left", "left-causal", "both"])
def test_deterministic_window(window, causal) -> None:
    cfg = _config_for()
    if cfg["family"] not in ("sm80", "sm90a"):
        pytest.skip("no deterministic mode")
    q, k, v, dout, first = _check(cfg, (2, 700, 900, 8, 2), causal=causal, window=window, seed=5,
                                  deterministic=True)
    out, lse = fa_cute.forward(q, k, v, causal=causal, window_size=window, return_lse=True)
    for _ in range(2):
        again = fa_cute.backward(dout, q, k, v, out, lse, causal=causal, window_size=window,
                                 deterministic=True, config=cfg["name"])
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_window_softcap(causal) -> None:
    cfg = _config_for()
    dtype = _dtype_of(cfg)
    lengths_q, lengths_k = [300, 1, 0, 129], [300, 40, 7, 500]
    cu_q = list(itertools.accumulate([0] + lengths_q))
    cu_k = list(itertools.accumulate([0] + lengths_k))
    gen = torch.Generator().manual_seed(6)
    rnd = lambda rows, h: torch.randn(rows, h, 128, generator=gen).to(DEVICE, dtype)  # noqa: E731
    q, k, v, dout = rnd(cu_q[-1], 8) * 3, rnd(cu_k[-1], 2), rnd(cu_k[-1], 2), rnd(cu_q[-1], 8)
    as_gpu = lambda xs: torch.tensor(xs, dtype=torch.int32, device=DEVICE)  # noqa: E731
    opts = dict(causal=causal, window_size=(50, 0 if causal else 20), softcap=6.0)
    out, lse = fa_cute.varlen_forward(q, k, v, as_gpu(cu_q), as_gpu(cu_k), 300, 500,
                                      return_lse=True, **opts)
    got = fa_cute.varlen_backward(dout, q, k, v, out, lse, as_gpu(cu_q), as_gpu(cu_k), 300, 500,
                                  **opts)
    args = (q.cpu(), k.cpu(), v.cpu(), dout.cpu(), cu_q, cu_k, 128 ** -0.5)
    ref = varlen_attention_grads_ref(*args, **opts)
    plain = varlen_attention_grads_ref(*args, upcast=False, **opts)
    check_grad_errors(got, ref, plain, dtype)
