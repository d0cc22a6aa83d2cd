"""forward_with_kvcache on a GPU against the float64 reference (2x rule, LSE) and a reference
append: dense caches (with and without cache_batch_idx) and paged ones (page sizes 16, 64
and 256, shuffled pages; every d=128 config with pages of 16, 48 and its own key block),
NaN in every cache row that no sequence reaches, appends of 0, 1 and 7 tokens at random
cache_seqlens, causal and not, GQA, decode (seqlen_q = 1, split-KV) and chunked prefill; the
cache after the call holds exactly the reference append; a cache overflow comes back as NaN
and writes nothing past the capacity; the call captures in a CUDA graph.
tests/test_kvcache.py tests the argument checks on CPU."""

import math

import pytest
import torch

import fa_cute
from fa_cute._reference import attention_ref, check_close, check_lse, paged_kv_ref

from attention_cases import DEVICE, PRODUCTION_CONFIGS, built_dtype, require_head_dim

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

D = 128


def _setup(batch, seqlen_q, seqlen_new, nheads, nheads_k, capacity, page_size, seed, d=D):
    """q, the new k, v, cache_seqlens (room left for the new tokens), the cache (dense
    (batch + 2, capacity, ...) with a shuffled cache_batch_idx, or shuffled pages) and the
    page table or index."""
    require_head_dim(d)
    dtype = built_dtype(d)
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    q = rnd(batch, seqlen_q, nheads, d)
    k_new, v_new = (rnd(batch, seqlen_new, nheads_k, d) if seqlen_new else None for _ in range(2))
    lens = torch.randint(0, capacity - seqlen_new + 1, (batch,), generator=gen)
    if page_size:
        pages_per_seq = capacity // page_size
        num_pages = batch * pages_per_seq + 3
        k_cache, v_cache = (rnd(num_pages, page_size, nheads_k, d) for _ in range(2))
        perm = torch.randperm(num_pages, generator=gen)[:batch * pages_per_seq]
        table = perm.view(batch, pages_per_seq).to(torch.int32)
        return q, k_new, v_new, lens, k_cache, v_cache, table.to(DEVICE), None
    k_cache, v_cache = (rnd(batch + 2, capacity, nheads_k, d) for _ in range(2))
    index = torch.randperm(batch + 2, generator=gen)[:batch].to(torch.int32)
    return q, k_new, v_new, lens, k_cache, v_cache, None, index.to(DEVICE)


def _reference_cache(k_cache, k_new, lens, table, index):
    """The cache after a reference append, and each sequence's keys as a dense batch."""
    cache = k_cache.clone()
    batch = lens.shape[0]
    for b in range(batch):
        for j in range(0 if k_new is None else k_new.shape[1]):
            pos = int(lens[b]) + j
            if table is not None:
                page_size = cache.shape[1]
                cache[int(table[b, pos // page_size]), pos % page_size] = k_new[b, j]
            else:
                cache[int(index[b]), pos] = k_new[b, j]
    seqlens = [int(n) + (0 if k_new is None else k_new.shape[1]) for n in lens]
    if table is not None:
        dense = paged_kv_ref(cache.cpu(), table.cpu(), seqlens)
    else:
        dense = cache[index.long()].cpu()
    return cache, dense, seqlens


def _check(batch=3, seqlen_q=1, seqlen_new=1, nheads=8, nheads_k=2, capacity=512, page_size=0,
           causal=False, seed=0, num_splits=0, config="auto", d=D):
    q, k_new, v_new, lens, k_cache, v_cache, table, index = _setup(
        batch, seqlen_q, seqlen_new, nheads, nheads_k, capacity, page_size, seed, d)
    ref_k_cache, dense_k, seqlens = _reference_cache(k_cache, k_new, lens, table, index)
    ref_v_cache, dense_v, _ = _reference_cache(v_cache, v_new, lens, table, index)
    out, lse = fa_cute.forward_with_kvcache(
        q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens.to(torch.int32).to(DEVICE),
        page_table=table, cache_batch_idx=index, causal=causal, return_lse=True,
        num_splits=num_splits, config=config)
    torch.testing.assert_close(k_cache, ref_k_cache, atol=0, rtol=0)
    torch.testing.assert_close(v_cache, ref_v_cache, atol=0, rtol=0)
    scale = d ** -0.5
    for b in range(batch):
        kb, vb = dense_k[b:b + 1, :seqlens[b]], dense_v[b:b + 1, :seqlens[b]]
        qb = q[b:b + 1].cpu()
        if seqlens[b] == 0:
            assert (out[b] == 0).all().item() and torch.isneginf(lse[b]).all().item()
            continue
        ref, ref_lse = attention_ref(qb, kb, vb, scale, causal=causal, return_lse=True)
        plain = attention_ref(qb, kb, vb, scale, upcast=False, causal=causal)
        check_close(out[b:b + 1].cpu(), ref, plain)
        check_lse(lse[b:b + 1].cpu(), ref_lse)


@pytest.mark.parametrize("seqlen_new", [0, 1, 7])
@pytest.mark.parametrize("page_size", [0, 16, 64, 256], ids=["dense", "p16", "p64", "p256"])
def test_decode(page_size, seqlen_new) -> None:
    _check(seqlen_q=1, seqlen_new=seqlen_new, page_size=page_size, capacity=1024)


@pytest.mark.parametrize("page_size", [0, 16, 256], ids=["dense", "p16", "p256"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_chunked_prefill(page_size, causal) -> None:
    _check(seqlen_q=7, seqlen_new=7, page_size=page_size, causal=causal, capacity=768, seed=1)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_splits(num_splits) -> None:
    _check(batch=2, seqlen_q=1, seqlen_new=1, capacity=2048, num_splits=num_splits, seed=2)


@pytest.mark.parametrize("page_size", [16, 48], ids=["p16", "p48"])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
def test_decode_pages_at_each_head_dim(head_dim: int, page_size: int) -> None:
    """Decode over pages smaller than a key block at every head dim: on an H100 the decode
    tiles load a key block as 4 or 8 TMA boxes of 16 rows, each from its page; 48 keys a page
    puts a block's boxes in several pages, and random lengths leave ragged last blocks."""
    _check(batch=3, seqlen_q=1, seqlen_new=1, page_size=page_size, capacity=page_size * 24, seed=7,
           d=head_dim)


D128_CONFIGS = [c for c in PRODUCTION_CONFIGS if c["head_dim"] == D]


@pytest.mark.parametrize("pages", ["dense", "p16", "p48", "pblock"])
@pytest.mark.parametrize("seqlen_q, causal", [(1, False), (9, True)], ids=["decode", "prefill"])
@pytest.mark.parametrize("config", [c["name"] for c in D128_CONFIGS])
def test_each_config(config: str, seqlen_q: int, causal: bool, pages: str) -> None:
    """Every built d=128 config by name, with a dense cache and with pages of 16 and 48 keys
    and of its own key block: the Hopper ones load a block from one page by one TMA box when
    the page size is a multiple of block_n, else as 16-row boxes from several pages (48: a
    block straddles pages)."""
    cfg = next(c for c in D128_CONFIGS if c["name"] == config)
    if cfg["family"] == "sm90a" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("sm90a configs run on compute capability 9.0 only")
    if ("bf16" if built_dtype(D) == torch.bfloat16 else "fp16") not in cfg["dtypes"]:
        pytest.skip("the test runs this build's d=128 dtype")
    page_size = {"dense": 0, "p16": 16, "p48": 48, "pblock": cfg["block_n"]}[pages]
    capacity = page_size * max(4, -(-512 // page_size)) if page_size else 512
    _check(seqlen_q=seqlen_q, seqlen_new=seqlen_q, page_size=page_size, causal=causal,
           capacity=capacity, config=config, seed=5)


@pytest.mark.parametrize("page_size", [0, 16, 48, 128], ids=["dense", "p16", "p48", "p128"])
@pytest.mark.parametrize("seqlen_q", [1, 9], ids=["decode", "prefill"])
def test_rows_past_each_sequence_are_never_read(page_size: int, seqlen_q: int) -> None:
    """Cache rows past each sequence's keys, unused entries and pages outside the table hold
    NaN (a serving engine's cache may be torch.empty): the output is bitwise the output of
    the same call with finite values there. A kernel that read such a row into P V would
    turn 0 * NaN into NaN."""
    q, k_new, v_new, lens, k_cache, v_cache, table, index = _setup(3, seqlen_q, seqlen_q, 8, 2, 768, page_size, 7)
    kwargs = dict(cache_seqlens=lens.to(torch.int32).to(DEVICE), page_table=table, cache_batch_idx=index,
                  causal=seqlen_q > 1)  # table and index on the GPU
    finite = fa_cute.forward_with_kvcache(q, k_cache.clone(), v_cache.clone(), k_new, v_new, **kwargs)
    stale = torch.ones(k_cache.shape[:2], dtype=torch.bool)  # (entries or pages, rows)
    table, index = (None if t is None else t.cpu() for t in (table, index))
    for b in range(lens.shape[0]):
        for pos in range(int(lens[b]) + seqlen_q):
            if table is not None:
                stale[int(table[b, pos // page_size]), pos % page_size] = False
            else:
                stale[int(index[b]), pos] = False
    stale = stale.to(DEVICE)[:, :, None, None]
    k_poisoned, v_poisoned = (t.clone().masked_fill_(stale, float("nan")) for t in (k_cache, v_cache))
    got = fa_cute.forward_with_kvcache(q, k_poisoned, v_poisoned, k_new, v_new, **kwargs)
    assert torch.equal(got, finite)


def test_overflow_poisons_and_writes_nothing_past_capacity() -> None:
    q, k_new, v_new, lens, k_cache, v_cache, table, index = _setup(2, 1, 7, 8, 2, 256, 0, 3)
    before = k_cache.clone()
    lens = torch.tensor([100, 253], dtype=torch.int32, device=DEVICE)  # 253 + 7 > 256
    out = fa_cute.forward_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens,
                                       cache_batch_idx=index)
    torch.cuda.synchronize()
    assert torch.isnan(out).all().item()
    e = int(index[1])
    assert torch.equal(k_cache[e, :253], before[e, :253])


@pytest.mark.parametrize("cached", [-3, -7, 2**31 - 5, 2**31 - 1])
def test_bad_cache_seqlens_poison_the_output(cached: int) -> None:
    """cache_seqlens below 0, even where the 7 new tokens lift the count to 0 or more (the
    append skips positions below 0: the attention would read rows no call wrote), and counts
    whose sum with the new tokens passes INT_MAX (once an int32 add): the whole output NaN,
    nothing written outside the entries' rows."""
    q, k_new, v_new, lens, k_cache, v_cache, table, index = _setup(2, 1, 7, 8, 2, 256, 0, 3)
    before = k_cache.clone()
    lens = torch.tensor([100, cached], dtype=torch.int32, device=DEVICE)
    out = fa_cute.forward_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens,
                                       cache_batch_idx=index)
    torch.cuda.synchronize()
    assert torch.isnan(out).all().item(), cached
    e = int(index[1])
    written = slice(0, max(cached + 7, 0)) if cached < 0 else slice(0, 0)
    untouched = torch.ones(256, dtype=torch.bool, device=DEVICE)
    untouched[written] = False
    assert torch.equal(k_cache[e][untouched], before[e][untouched])


@pytest.mark.parametrize("page", ["negative", "past_the_pool"])
def test_page_outside_the_pool_poisons_the_output(page: str) -> None:
    """A page the keys lie in that is outside the pool makes the whole output and LSE NaN
    (src/fwd_varlen_check.h, which checks every page of every entry with all its threads); one
    outside the pool in a column past the entry's keys is never read and changes nothing.
    2049 pages a sequence: the long tables whose serial check once cost half a millisecond."""
    q, k_new, v_new, lens, k_cache, v_cache, table, _ = _setup(3, 1, 1, 8, 2, 16 * 2100, 16, 11)
    lens = torch.full((3,), 16 * 2048, dtype=torch.int32, device=DEVICE)  # + 1 new: 2049 pages
    num_pages = k_cache.shape[0]
    outside = -1 if page == "negative" else num_pages
    unread = table.clone()
    unread[1, 2049:] = outside
    out, lse = fa_cute.forward_with_kvcache(q, k_cache.clone(), v_cache.clone(), k_new, v_new,
                                            cache_seqlens=lens, page_table=unread, return_lse=True)
    assert torch.isfinite(out).all().item() and torch.isfinite(lse).all().item()
    for column in (0, 1500, 2048):
        bad = table.clone()
        bad[1, column] = outside
        out, lse = fa_cute.forward_with_kvcache(q, k_cache.clone(), v_cache.clone(), k_new, v_new,
                                                cache_seqlens=lens, page_table=bad,
                                                return_lse=True)
        assert torch.isnan(out).all().item() and torch.isnan(lse).all().item(), column


def test_cuda_graph_capture() -> None:
    q, k_new, v_new, lens, k_cache, v_cache, table, _ = _setup(2, 1, 1, 8, 2, 512, 64, 4)
    lens_gpu = lens.to(torch.int32).to(DEVICE)
    out = fa_cute.forward_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens_gpu,
                                       page_table=table)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fa_cute.forward_with_kvcache(q, k_cache, v_cache, k_new, v_new,
                                                cache_seqlens=lens_gpu, page_table=table)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, out, atol=0, rtol=0)
    assert math.isfinite(captured.float().abs().max().item())
