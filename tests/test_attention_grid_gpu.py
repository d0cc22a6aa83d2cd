"""fa_cute.forward and fa_cute.sdpa over FlashAttention's test grid: dtypes x head dims x
(seqlen_q, seqlen_k) pairs with ragged tails on both sides x causal x GQA ratios, plus rows
that see no key, decode, torch SDPA parity, every built config, and strided views.

Every case writes into an output filled with NaN (a row the kernel skips stays NaN and
fails), checks it with the 2x rule against the float64 reference and checks the LSE.
Skipped where PyTorch sees no CUDA GPU.
"""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fa_cute
from fa_cute import _configs
from fa_cute._reference import attention_ref, check_close, check_lse

from attention_cases import (DEVICE, DTYPE_IDS, DTYPES, HEAD_DIMS, KERNEL_FAMILIES,
                             PRODUCTION_CONFIGS, check_forward, family_config, make_inputs,
                             require_head_dim)

pytestmark = pytest.mark.cuda

# q shorter, longer and as long as k; single rows and keys; lengths one past a tile
# (113, 333, 1000 and 4097 leave ragged last tiles for every block size 64 and 128).
SEQLENS = [(1, 1), (1, 4097), (17, 333), (113, 113), (113, 1000), (333, 17), (1000, 1000),
           (4097, 113), (1000, 4097), (4097, 4097)]
HEADS = [(4, 4), (8, 2), (8, 1)]  # (nheads, nheads_k): MHA, GQA, MQA
HEAD_IDS = ["mha", "gqa4", "mqa"]


def batch_for(seqlen_q: int, seqlen_k: int) -> int:
    """2 where the float64 reference is small, else 1 (a 4097 x 4097 score matrix of 8
    heads is 1 GiB in float64)."""
    return 2 if seqlen_q * seqlen_k <= 500_000 else 1


@pytest.mark.parametrize("nheads, nheads_k", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqlen_q, seqlen_k", SEQLENS, ids=[f"{q}x{k}" for q, k in SEQLENS])
@pytest.mark.parametrize("head_dim", HEAD_DIMS, ids=[f"d{d}" for d in HEAD_DIMS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_grid(family, dtype, head_dim, seqlen_q, seqlen_k, causal, nheads, nheads_k) -> None:
    """Each kernel family over the whole grid (the dispatcher's pick may be either)."""
    require_head_dim(head_dim)
    config = family_config(family, head_dim, seqlen_q, seqlen_k, causal)
    q, k, v, out = make_inputs(batch_for(seqlen_q, seqlen_k), seqlen_q, seqlen_k, nheads,
                               nheads_k, head_dim, dtype)
    check_forward(q, k, v, out, causal, config=config)


EMPTY_ROWS = [(2, 1), (129, 128), (300, 1), (333, 17), (1000, 113)]


@pytest.mark.parametrize("seqlen_q, seqlen_k", EMPTY_ROWS,
                         ids=[f"{q}x{k}" for q, k in EMPTY_ROWS])
@pytest.mark.parametrize("head_dim", [64, 128, 256], ids=["d64", "d128", "d256"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rows_that_see_no_key(dtype, head_dim, seqlen_q, seqlen_k) -> None:
    """Bottom-right causal with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k rows see
    no key and must be exactly 0 with LSE exactly -inf (never NaN, never the NaN the output
    was filled with); the first row that sees a key sees exactly one."""
    require_head_dim(head_dim)
    q, k, v, out = make_inputs(2, seqlen_q, seqlen_k, 8, 2, head_dim, dtype)
    lse = check_forward(q, k, v, out, causal=True)
    empty = seqlen_q - seqlen_k
    assert torch.equal(out[:, :empty], torch.zeros_like(out[:, :empty]))
    assert torch.isneginf(lse[:, :, :empty]).all()
    assert torch.isfinite(lse[:, :, empty:]).all()
    # Row `empty` sees key 0 alone: its output is v[0] of its K/V head, its LSE the score.
    kv_head = torch.arange(8, device=DEVICE) // 4
    torch.testing.assert_close(out[:, empty].float(), v[:, 0, kv_head].float(), rtol=0,
                               atol=0)
    score = (q[:, empty].double() * k[:, 0, kv_head].double()).sum(-1) / math.sqrt(head_dim)
    torch.testing.assert_close(lse[:, :, empty].double(), score, rtol=1e-5, atol=1e-4)


DECODE_HEADS = [(4, 4), (8, 2), (8, 1), (32, 8)]


@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
@pytest.mark.parametrize("nheads, nheads_k", DECODE_HEADS,
                         ids=["mha", "gqa4", "mqa", "gqa4-32"])
@pytest.mark.parametrize("seqlen_k", [1, 4097, 16384])
@pytest.mark.parametrize("head_dim", [64, 128, 256], ids=["d64", "d128", "d256"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_decode(family, dtype, head_dim, seqlen_k, nheads, nheads_k, layout) -> None:
    """One query row per head (a decode step) against a KV cache, the GQA heads packed as
    rows of one tile, on each kernel family's short-query config: split-KV where the
    (batch, head) tiles cannot fill the GPU (3 x 1 to 3 x 8 here), with splits that get no
    key block at 4097 keys. Bottom-right causal hides no key from the single row, so the
    API runs it as non-causal: the same bits."""
    require_head_dim(head_dim)
    config = short_query_config(family, head_dim)
    q, k, v, out = make_inputs(3, 1, seqlen_k, nheads, nheads_k, head_dim, dtype, layout)
    lse = check_forward(q, k, v, out, causal=False, config=config)
    assert lse.shape == (3, nheads, 1)
    if seqlen_k == 16384:  # the split path is what this case is for; as launched, packed
        rows, heads = (nheads // nheads_k, nheads_k) if nheads > nheads_k else (1, nheads)
        assert_splits(config, dtype, 3, rows, seqlen_k, heads, nheads_k, False)
    causal_out, causal_lse = fa_cute.forward(q, k, v, causal=True, return_lse=True, config=config)
    assert torch.equal(causal_out, out)
    assert torch.equal(causal_lse, lse)


def short_query_config(family: str, head_dim: int) -> str:
    """The family's split-KV short-query config (the heuristic's pick for seqlen_q <= 64
    against a long KV cache on a GPU of the family), run through config= at any seqlen_k:
    on 9.0 the heuristic itself sends fewer than 512 keys to the sm80 tile, but the Hopper
    short-query tile must still be right there. Skips where this build or GPU lacks it."""
    long_keys = 1 << 20
    config = family_config(family, head_dim, 1, long_keys, False)
    cc = (8, 0) if family == "sm80" else (9, 0)
    if config != fa_cute._C.default_config(head_dim, 1, long_keys, *cc, False):
        pytest.skip(f"the {family} short-query config for head dim {head_dim} is not built")
    return config


def assert_splits(config: str, dtype: torch.dtype, batch: int, seqlen_q: int, seqlen_k: int,
                  nheads: int, nheads_k: int, causal: bool) -> None:
    """The split-KV heuristic splits this launch's keys: the split path is under test."""
    splits = fa_cute._C.num_splits(config, DTYPE_IDS[DTYPES.index(dtype)], batch, seqlen_q,
                                   seqlen_k, nheads, nheads_k, causal,
                                   torch.cuda.current_device())
    assert splits > 1, f"{config} did not split the keys of {batch * nheads} query tiles"


GRAPH_CASES = [(1, 16384, 32, 8, False), (333, 1000, 8, 2, True)]


@pytest.mark.parametrize("seqlen_q, seqlen_k, nheads, nheads_k, causal", GRAPH_CASES,
                         ids=["decode-split", "prefill-causal"])
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_cuda_graph(family, seqlen_q, seqlen_k, nheads, nheads_k, causal) -> None:
    """forward captured in a CUDA graph, as serving loops run decode steps to drop the
    per-call host time: every replay reads the static inputs' current values (the split-KV
    scratch comes from the graph's pool) and matches the reference, LSE included."""
    head_dim, dtype, batch = 128, torch.bfloat16, 2
    require_head_dim(head_dim)
    if seqlen_q == 1:
        config = short_query_config(family, head_dim)
        assert_splits(config, dtype, batch, nheads // nheads_k, seqlen_k, nheads_k, nheads_k, False)
    else:
        config = family_config(family, head_dim, seqlen_q, seqlen_k, causal)
    q, k, v, _ = make_inputs(batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # first calls outside the capture: shared-memory opt-in, caches
        fa_cute.forward(q, k, v, causal=causal, return_lse=True, config=config)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True, config=config)
    scale = 1.0 / math.sqrt(head_dim)
    for _ in range(2):
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, device=DEVICE).to(dtype))
        out.fill_(math.nan)
        lse.fill_(math.nan)
        graph.replay()
        ref, ref_lse = attention_ref(q, k, v, scale, causal=causal, return_lse=True)
        plain = attention_ref(q, k, v, scale, upcast=False, causal=causal)
        check_close(out, ref, plain)
        check_lse(lse, ref_lse)


SHORT_QUERIES = [(2, 8192, 1, 4, 1), (16, 8190, 2, 4, 4), (64, 4100, 1, 8, 2), (40, 30, 2, 4, 2)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqlen_q, seqlen_k, batch, nheads, nheads_k", SHORT_QUERIES,
                         ids=[f"{q}x{k}" for q, k, *_ in SHORT_QUERIES])
@pytest.mark.parametrize("head_dim", [64, 128, 256], ids=["d64", "d128", "d256"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_short_queries_split(family, dtype, head_dim, seqlen_q, seqlen_k, batch, nheads,
                             nheads_k, causal) -> None:
    """Several query rows (speculative decode, a short chunk) on the short-query config with
    few tiles, so the keys are split: causal bottom-right puts the diagonal in the last
    split's blocks (ragged seqlen_k too); 40 x 30 causal has rows that see no key."""
    require_head_dim(head_dim)
    config = short_query_config(family, head_dim)
    q, k, v, out = make_inputs(batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype)
    if seqlen_k >= 4096:
        assert_splits(config, dtype, batch, seqlen_q, seqlen_k, nheads, nheads_k, causal)
    check_forward(q, k, v, out, causal, config=config)


def sdpa_float64(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs
                 ) -> torch.Tensor:
    """torch's own SDPA (math backend) in float64 on the GPU: the reference for `sdpa`."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(query.double(), key.double(), value.double(),
                                              **kwargs)


SDPA_SEQLENS = [(17, 333), (333, 17), (113, 1000), (1000, 113), (256, 256)]


@pytest.mark.parametrize("nheads, nheads_k", [(4, 4), (8, 2)], ids=["mha", "gqa4"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqlen_q, seqlen_k", SDPA_SEQLENS,
                         ids=[f"{q}x{k}" for q, k in SDPA_SEQLENS])
@pytest.mark.parametrize("head_dim", [64, 128], ids=["d64", "d128"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sdpa_matches_torch(dtype, head_dim, seqlen_q, seqlen_k, causal, nheads,
                            nheads_k) -> None:
    """fa_cute.sdpa against torch.nn.functional.scaled_dot_product_attention itself: same
    (batch, heads, seqlen, d) layout, top-left is_causal whatever the lengths, enable_gqa."""
    require_head_dim(head_dim)
    query = torch.randn(2, nheads, seqlen_q, head_dim, device=DEVICE).to(dtype)
    key, value = (torch.randn(2, nheads_k, seqlen_k, head_dim, device=DEVICE).to(dtype)
                  for _ in range(2))
    gqa = nheads != nheads_k
    scale = 0.6 / math.sqrt(head_dim) if causal else None
    out = fa_cute.sdpa(query, key, value, is_causal=causal, scale=scale, enable_gqa=gqa)
    assert out.shape == query.shape and out.dtype == dtype and out.is_contiguous()
    ref = sdpa_float64(query, key, value, is_causal=causal, scale=scale, enable_gqa=gqa)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    used_scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    offset = 0 if causal else None
    ours = attention_ref(q, k, v, used_scale, causal=causal, causal_offset=offset)
    # The reference the other tests use is torch's semantics, top-left included.
    torch.testing.assert_close(ours.transpose(1, 2), ref, rtol=1e-10, atol=1e-10)
    plain = attention_ref(q, k, v, used_scale, upcast=False, causal=causal,
                          causal_offset=offset)
    check_close(out, ref, plain.transpose(1, 2))


CONFIG_SHAPES = [(257, 190, True, (8, 2)), (190, 257, False, (4, 4)), (1, 700, False, (8, 1)),
                 (64, 64, True, (4, 1))]  # seqlen_q, seqlen_k, causal, (nheads, nheads_k)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", PRODUCTION_CONFIGS,
                         ids=[c["name"] for c in PRODUCTION_CONFIGS])
def test_every_config(config, dtype) -> None:
    """config= each built production config: ragged lengths both ways, causal with empty
    rows, decode and GQA. A config this GPU cannot run (compute capability, shared memory)
    must be refused with a ValueError that names it."""
    name = config["name"]
    if DTYPE_IDS[DTYPES.index(dtype)] not in config["dtypes"]:
        pytest.skip(f"{name} is built without {dtype}")
    props = torch.cuda.get_device_properties(DEVICE)
    smem_limit = getattr(props, "shared_memory_per_block_optin", None)
    too_old = not _configs.family_runs_on(config["family"], (props.major, props.minor))
    too_big = smem_limit is not None and config["smem_bytes"] > smem_limit
    for seqlen_q, seqlen_k, causal, (nheads, nheads_k) in CONFIG_SHAPES:
        q, k, v, out = make_inputs(2, seqlen_q, seqlen_k, nheads, nheads_k,
                                   config["head_dim"], dtype)
        if too_old or too_big:
            with pytest.raises(ValueError, match=re.escape(repr(name))):
                fa_cute.forward(q, k, v, causal=causal, config=name, out=out)
            continue
        check_forward(q, k, v, out, causal, config=name)


NONCONTIGUOUS = [(113, 1000, False), (1000, 113, True), (333, 333, True), (1, 4097, False)]


@pytest.mark.parametrize("seqlen_q, seqlen_k, causal", NONCONTIGUOUS,
                         ids=[f"{q}x{k}-{'causal' if c else 'full'}" for q, k, c in NONCONTIGUOUS])
@pytest.mark.parametrize("head_dim", [96, 128], ids=["d96", "d128"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bhnd_views(dtype, head_dim, seqlen_q, seqlen_k, causal) -> None:
    """q, k, v and out as .transpose(1, 2) views of (batch, heads, seqlen, d) storage, the
    way SDPA users hold them: the result must match the reference and be bit-identical to
    the same call on contiguous copies."""
    require_head_dim(head_dim)
    q, k, v, out = make_inputs(2, seqlen_q, seqlen_k, 8, 2, head_dim, dtype, layout="bhnd")
    assert not k.is_contiguous() and (seqlen_q == 1 or not out.is_contiguous())
    lse = check_forward(q, k, v, out, causal)
    dense, dense_lse = fa_cute.forward(q.contiguous(), k.contiguous(), v.contiguous(),
                                       causal=causal, return_lse=True)
    assert torch.equal(out, dense)
    assert torch.equal(lse, dense_lse)
