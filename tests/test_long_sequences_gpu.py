"""Long sequences (64k-131k keys) with large logits and attention sinks, on both kernel
families and through the split-KV path: output by FlashAttention's 2x rule and LSE against
float64, on a few rows of a few heads (the whole problem's float64 reference would not fit).

A per-key-block error in the online softmax (a rescale factor that should be exactly 1 but
is off by one rounding, issue 13) is invisible at the grid's 4k keys and compounds with the
number of key blocks: at 131k keys it moved the Hopper kernel's LSE by 2e-3 to 2e-2.
Short problems go through split-KV, whose splits are short, so the prefill cases here keep
enough query tiles (4096 rows x 2048 / d heads) that nothing splits, and the split cases
check that the heuristic does split. Skipped where PyTorch sees no CUDA GPU.
"""

import pytest
import torch

import fa_cute
from fa_cute._reference import check_rows, long_inputs

from attention_cases import (DEVICE, DTYPE_IDS, DTYPES, KERNEL_FAMILIES, family_config,
                             require_head_dim)

pytestmark = pytest.mark.cuda

KINDS = ["mag3", "mag6", "sink-first", "sink-last"]
ROWS = 64  # query rows checked at each end of the sequence


def run_and_check(family: str, dtype: torch.dtype, head_dim: int, seqlen_q: int,
                  seqlen_k: int, nheads: int, nheads_k: int, kind: str, causal: bool) -> None:
    """forward into a NaN-filled out on fresh inputs, then the first and last ROWS rows of
    the first and last heads against float64."""
    require_head_dim(head_dim)
    config = family_config(family, head_dim, seqlen_q, seqlen_k, causal)
    q, k, v = long_inputs(1, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype,
                          DEVICE, kind)
    out = torch.full_like(q, float("nan"))
    _, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True, config=config, out=out)
    assert torch.isfinite(out).all(), "a row was not written (still NaN) or overflowed"
    heads = sorted({0, nheads - 1})
    for rows in ({slice(0, ROWS), slice(-ROWS, None)} if seqlen_q > ROWS else {slice(None)}):
        check_rows(out, lse, q, k, v, rows, heads, causal=causal)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head_dim", [64, 128, 256], ids=["d64", "d128", "d256"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_131k_keys(family, dtype, head_dim, kind) -> None:
    """4096 query rows against 131,072 keys: 1024-2048 key blocks per query tile, no split."""
    run_and_check(family, dtype, head_dim, 4096, 131072, 2048 // head_dim, 2048 // head_dim,
                  kind, causal=False)


@pytest.mark.parametrize("kind", ["mag3", "sink-last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_ragged_64k_keys_gqa(family, dtype, kind) -> None:
    """65,537 keys (a ragged last block, masked, visited first) and 4 query heads per K/V
    head."""
    run_and_check(family, dtype, 128, 2048, 65537, 16, 4, kind, causal=False)


@pytest.mark.parametrize("kind", ["mag3", "sink-first"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_causal_64k(family, dtype, kind) -> None:
    """Causal 65,536 x 65,536: the last rows see every key, the first ones a few (the causal
    diagonal's masked block is the first visited)."""
    run_and_check(family, dtype, 128, 65536, 65536, 4, 4, kind, causal=True)


SPLIT_CASES = [(1, 131072, 8, 8), (1, 100003, 32, 8), (16, 65536, 4, 4)]


@pytest.mark.parametrize("kind", ["mag3", "mag6", "sink-last"])
@pytest.mark.parametrize("seqlen_q, seqlen_k, nheads, nheads_k", SPLIT_CASES,
                         ids=["decode-mha", "decode-gqa4-ragged", "16q"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_split_kv(family, dtype, seqlen_q, seqlen_k, nheads, nheads_k, kind) -> None:
    """Decode steps and a short chunk against 65k-131k keys on the short-query config, whose
    few tiles the heuristic splits over the keys: each split's LSE, and the combine's, must
    stay exact over thousands of key blocks too (every row and head checked)."""
    require_head_dim(128)
    config = family_config(family, 128, seqlen_q, 1 << 20, False)
    launch_rows, launch_heads = ((nheads // nheads_k, nheads_k) if seqlen_q == 1 and
                                 nheads > nheads_k else (seqlen_q, nheads))
    splits = fa_cute._C.num_splits(config, DTYPE_IDS[DTYPES.index(dtype)], 2, launch_rows,
                                   seqlen_k, launch_heads, nheads_k, False,
                                   torch.cuda.current_device())
    assert splits > 1, f"{config} does not split this launch: the split path is not tested"
    q, k, v = long_inputs(2, seqlen_q, seqlen_k, nheads, nheads_k, 128, dtype, DEVICE, kind)
    out = torch.full_like(q, float("nan"))
    _, lse = fa_cute.forward(q, k, v, return_lse=True, config=config, out=out)
    check_rows(out, lse, q, k, v, slice(None), range(nheads))
