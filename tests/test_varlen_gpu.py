"""varlen_forward on a GPU against the float64 reference, sequence by sequence (2x rule, LSE):
every built production config that takes varlen batches, by name (both kernel families);
random lengths including 0 and 1, GQA and MQA, causal, windows, softcap, seqused_k; the
output written over NaN (rows of no sequence must stay untouched); a bad cu_seqlens turns
the output into NaN instead of reading or writing out of bounds. tests/test_varlen.py
tests the argument checks on CPU."""

import math

import pytest
import torch

import fa_cute
from fa_cute._reference import check_close, check_lse, varlen_attention_ref

from attention_cases import (DEVICE, DTYPE_IDS, DTYPES, PRODUCTION_CONFIGS, built_dtype,
                             require_dtype, require_head_dim)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

VARLEN_CONFIGS = [c for c in PRODUCTION_CONFIGS if c.get("varlen")]


def _runs_here(cfg: dict) -> bool:
    return cfg["family"] != "sm90a" or torch.cuda.get_device_capability() == (9, 0)


def _batch(lengths_q, lengths_k, nheads, nheads_k, head_dim, dtype, generator):
    cu_q = [0]
    cu_k = [0]
    for a, b in zip(lengths_q, lengths_k):
        cu_q.append(cu_q[-1] + a)
        cu_k.append(cu_k[-1] + b)
    q = torch.randn(cu_q[-1], nheads, head_dim, generator=generator).to(DEVICE, dtype)
    k, v = (torch.randn(cu_k[-1], nheads_k, head_dim, generator=generator).to(DEVICE, dtype)
            for _ in range(2))
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.int32, device=DEVICE)  # noqa: E731
    return q, k, v, cu_q, cu_k, as_tensor(cu_q), as_tensor(cu_k)


def _check(lengths_q, lengths_k, *, head_dim=128, dtype=None, nheads=8, nheads_k=2,
           causal=False, window=(-1, -1), softcap=0.0, seqused=None, config="auto", seed=0):
    require_head_dim(head_dim)
    dtype = built_dtype(head_dim) if dtype is None else dtype
    require_dtype(head_dim, dtype)
    gen = torch.Generator().manual_seed(seed)
    q, k, v, cu_q, cu_k, cu_q_t, cu_k_t = _batch(lengths_q, lengths_k, nheads, nheads_k, head_dim,
                                                 dtype, gen)
    seqused_t = None if seqused is None else torch.tensor(seqused, dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, math.nan)
    result, lse = fa_cute.varlen_forward(
        q, k, v, cu_q_t, cu_k_t, max(lengths_q), max(max(lengths_k), 1), seqused_k=seqused_t,
        causal=causal, window_size=window, softcap=softcap, return_lse=True, out=out,
        config=config)
    assert result is out
    scale = head_dim ** -0.5
    args = dict(causal=causal, window_size=window, softcap=softcap, seqused_k=seqused)
    ref, ref_lse = varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), cu_q, cu_k, scale,
                                       return_lse=True, **args)
    plain = varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), cu_q, cu_k, scale, upcast=False, **args)
    check_close(out.cpu(), ref, plain)
    check_lse(lse.cpu(), ref_lse)


RAGGED = [([1000, 1, 0, 239, 17], [1000, 3000, 5, 113, 17]),
          ([128, 256, 64], [128, 256, 64]),
          ([799, 1024, 33], [113, 4224, 0])]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", RAGGED, ids=["mixed", "even", "keyless"])
def test_auto_config(lengths, dtype, causal) -> None:
    _check(*lengths, dtype=dtype, causal=causal)


@pytest.mark.parametrize("nheads, nheads_k", [(8, 8), (8, 1)], ids=["mha", "mqa"])
def test_heads(nheads, nheads_k) -> None:
    _check([300, 77], [500, 77], nheads=nheads, nheads_k=nheads_k, causal=True)


@pytest.mark.parametrize("window, causal", [((64, 0), True), ((17, 5), False)])
def test_window(window, causal) -> None:
    _check([700, 1, 300], [900, 50, 300], window=window, causal=causal)


def test_softcap() -> None:
    _check([700, 1, 300], [900, 50, 300], softcap=30.0, causal=True)


def test_seqused_k() -> None:
    _check([200, 64, 5], [500, 64, 300], seqused=[333, 0, 300], causal=True)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", [c["name"] for c in VARLEN_CONFIGS])
def test_each_config(config: str, causal: bool) -> None:
    cfg = next(c for c in VARLEN_CONFIGS if c["name"] == config)
    if not _runs_here(cfg):
        pytest.skip("sm90a configs run on compute capability 9.0 only")
    dtype = torch.bfloat16 if "bf16" in cfg["dtypes"] else torch.float16
    _check([513, 1, 0, 130], [700, 9, 3, 130], head_dim=cfg["head_dim"], dtype=dtype,
           causal=causal, config=config)


def _packed(total_q: int, total_k: int, nheads: int, nheads_k: int, seed: int):
    """Random packed q (total_q, nheads, 128) and k, v (total_k, nheads_k, 128) in this
    build's dtype for d=128."""
    require_head_dim(128)
    dtype = built_dtype(128)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(total_q, nheads, 128, generator=gen).to(DEVICE, dtype)
    k, v = (torch.randn(total_k, nheads_k, 128, generator=gen).to(DEVICE, dtype) for _ in range(2))
    return q, k, v


def test_rows_outside_sequences_untouched() -> None:
    """Rows of q past cu_seqlens_q[-1] belong to no sequence: the kernel must not write them."""
    q, k, v = _packed(300, 300, 4, 4, seed=1)
    cu = torch.tensor([0, 100, 250], dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, 7.0)
    fa_cute.varlen_forward(q, k, v, cu, cu, 150, 150, out=out)
    assert (out[250:] == 7.0).all().item()
    assert torch.isfinite(out[:250]).all().item()


@pytest.mark.parametrize("cu_q", [[0, 300, 200], [0, 100, 400], [0, 200, 250]],
                         ids=["decreasing", "past-total", "longer-than-max"])
def test_bad_cu_seqlens_poison(cu_q) -> None:
    """What the host cannot check without a sync comes back as NaN, never as a fault."""
    q, k, v = _packed(300, 300, 4, 4, seed=3)
    cu_q_t = torch.tensor(cu_q, dtype=torch.int32, device=DEVICE)
    cu_k_t = torch.tensor([0, 150, 300], dtype=torch.int32, device=DEVICE)
    out, lse = fa_cute.varlen_forward(q, k, v, cu_q_t, cu_k_t, 150, 150, return_lse=True)
    torch.cuda.synchronize()
    assert torch.isnan(out).all().item()
    assert torch.isnan(lse).all().item()


def test_cuda_graph_capture() -> None:
    """No host sync on cu_seqlens: the call captures, and a replay follows new lengths."""
    q, k, v = _packed(512, 512, 8, 2, seed=2)
    cu = torch.tensor([0, 256, 512], dtype=torch.int32, device=DEVICE)
    out = torch.empty_like(q)
    fa_cute.varlen_forward(q, k, v, cu, cu, 512, 512, causal=True, out=out)  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fa_cute.varlen_forward(q, k, v, cu, cu, 512, 512, causal=True, out=out)
    cu.copy_(torch.tensor([0, 100, 512], dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    ref = varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), [0, 100, 512], [0, 100, 512],
                               128 ** -0.5, causal=True)
    plain = varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), [0, 100, 512], [0, 100, 512],
                                 128 ** -0.5, upcast=False, causal=True)
    check_close(out.cpu(), ref, plain)


def test_dynamic_tile_order_over_many_tiles() -> None:
    """The persistent Hopper kernels claim a varlen batch's tiles from a counter
    (sm90/tile_scheduler_sm90.h) that each call must clear: far more tiles than CTAs, most
    of them past short sequences' ends (never handed to the consumers), every sequence
    correct on a second call into a NaN buffer and on two replays of a captured call (a
    counter left from the call before would skip tiles, leaving NaN rows)."""
    gen = torch.Generator().manual_seed(11)
    lengths = [int(x) for x in torch.randint(0, 700, (37,), generator=gen)] + [2500, 1, 0]
    q, k, v, cu_q, cu_k, cu_q_t, cu_k_t = _batch(lengths, lengths, 8, 2, 128, built_dtype(128), gen)
    ref = varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), cu_q, cu_k, 128 ** -0.5, causal=True)
    plain = varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), cu_q, cu_k, 128 ** -0.5, upcast=False,
                                 causal=True)
    out = torch.empty_like(q)
    run = lambda: fa_cute.varlen_forward(q, k, v, cu_q_t, cu_k_t, 2500, 2500, causal=True,  # noqa: E731
                                         out=out)
    for _ in range(2):
        out.fill_(math.nan)
        run()
        check_close(out.cpu(), ref, plain)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for _ in range(2):
        out.fill_(math.nan)
        graph.replay()
        torch.cuda.synchronize()
        check_close(out.cpu(), ref, plain)
