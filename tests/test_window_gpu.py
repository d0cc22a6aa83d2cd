"""forward(..., window_size=) on a GPU against the float64 reference (2x rule, LSE): every
built production config by name (both kernel families), windows narrower and wider than a
key block, causal and not, ragged lengths both ways (rows that see no key), GQA, a decode
that splits its keys; tests/test_window.py tests the plumbing on CPU."""

import math

import pytest
import torch

import fa_cute
from fa_cute._reference import attention_ref, check_close, check_lse

from attention_cases import DEVICE, DTYPE_IDS, DTYPES, PRODUCTION_CONFIGS, require_dtype

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LENGTHS = [(113, 239), (1024, 4224), (799, 113), (1, 3000)]
WINDOWS = [((0, 0), False), ((17, 5), False), ((200, -1), False), ((-1, 130), False),
           ((64, 0), True), ((1000, 0), True)]


def _check(q, k, v, causal: bool, window, config: str = "auto") -> None:
    out = torch.full_like(q, math.nan)
    result, lse = fa_cute.forward(q, k, v, causal=causal, window_size=window, return_lse=True,
                                  config=config, out=out)
    assert result is out
    scale = q.shape[-1] ** -0.5
    ref, ref_lse = attention_ref(q, k, v, scale, causal=causal, window_size=window,
                                 return_lse=True)
    plain = attention_ref(q, k, v, scale, upcast=False, causal=causal, window_size=window)
    check_close(out, ref, plain)
    check_lse(lse, ref_lse)


def _inputs(lengths, head_dim, dtype, nheads=8, nheads_k=2):
    seqlen_q, seqlen_k = lengths
    batch = 2 if max(lengths) <= 1024 else 1
    return (torch.randn(batch, seqlen_q, nheads, head_dim, device=DEVICE).to(dtype),
            *(torch.randn(batch, seqlen_k, nheads_k, head_dim, device=DEVICE).to(dtype)
              for _ in range(2)))


def _head_dim() -> int:
    return 128 if any(c["head_dim"] == 128 for c in PRODUCTION_CONFIGS) else \
        PRODUCTION_CONFIGS[0]["head_dim"]


@pytest.mark.parametrize("window, causal", WINDOWS, ids=[f"{w}{'-causal' if c else ''}" for w, c in WINDOWS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", LENGTHS, ids=[f"{a}x{b}" for a, b in LENGTHS])
def test_auto_config(lengths, dtype, window, causal) -> None:
    require_dtype(_head_dim(), dtype)
    _check(*_inputs(lengths, _head_dim(), dtype), causal, window)


@pytest.mark.parametrize("window, causal", [((17, 5), False), ((64, 0), True)])
@pytest.mark.parametrize("config", [c["name"] for c in PRODUCTION_CONFIGS])
def test_each_config(config: str, window, causal) -> None:
    cfg = next(c for c in PRODUCTION_CONFIGS if c["name"] == config)
    major, minor = torch.cuda.get_device_capability()
    if cfg["family"] == "sm90a" and (major, minor) != (9, 0):
        pytest.skip("sm90a configs run on compute capability 9.0 only")
    dtype = torch.bfloat16 if "bf16" in cfg["dtypes"] else torch.float16
    _check(*_inputs((239, 1024), cfg["head_dim"], dtype), causal, window, config=config)
