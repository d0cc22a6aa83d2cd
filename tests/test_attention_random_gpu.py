"""fa_cute.forward on shapes hypothesis draws: dtype, head dim, seqlen_q and seqlen_k in
1..2000, causal, GQA ratio, batch and layout, each checked like the grid
(tests/attention_cases.py): NaN-filled output, 2x rule, LSE. A module of its own so that
a machine without hypothesis skips these cases alone. Skipped where PyTorch sees no CUDA
GPU."""

import zlib

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from attention_cases import BUILT_HEAD_DIMS, DTYPES, check_forward, make_inputs  # noqa: E402

pytestmark = pytest.mark.cuda

# (nheads, nheads_k): MHA, GQA 2/4/8 and MQA
HEADS = [(1, 1), (3, 3), (4, 2), (8, 2), (16, 2), (6, 1)]


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(DTYPES),
       head_dim=st.sampled_from(BUILT_HEAD_DIMS),
       seqlen_q=st.integers(1, 2000), seqlen_k=st.integers(1, 2000), causal=st.booleans(),
       heads=st.sampled_from(HEADS), batch=st.integers(1, 2),
       layout=st.sampled_from(["bnhd", "bhnd"]))
def test_random_shapes(dtype, head_dim, seqlen_q, seqlen_k, causal, heads, batch,
                       layout) -> None:
    # The autouse seed runs once per test function, not per example: seed each example.
    torch.manual_seed(zlib.crc32(repr((dtype, head_dim, seqlen_q, seqlen_k, causal, heads,
                                       batch, layout)).encode()))
    q, k, v, out = make_inputs(batch, seqlen_q, seqlen_k, *heads, head_dim, dtype, layout)
    check_forward(q, k, v, out, causal)
