"""forward(..., softcap=) on a GPU: Gemma 2's logits softcap, softcap * tanh(s / softcap) of
each scaled score before the softmax, against the float64 reference (`attention_ref`'s
softcap) by the 2x rule, its LSE too: every built production config by name (both kernel
families), causal and not, GQA, ragged lengths, a decode that splits its keys, caps small
enough to change the answer (5) and large enough to barely matter (50). tests/test_softcap.py
tests the plumbing on CPU."""

import math

import pytest
import torch

import fa_cute
from fa_cute._reference import attention_ref, check_close, check_lse

from attention_cases import DEVICE, DTYPE_IDS, DTYPES, PRODUCTION_CONFIGS, built_dtype

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CASES = {
    # batch, seqlen_q, seqlen_k, nheads, nheads_k
    "mha-ragged": (2, 113, 239, 4, 4),
    "gqa-long": (1, 1024, 4224, 8, 2),
    "q-longer": (2, 799, 113, 6, 3),
    "decode-gqa": (4, 1, 3000, 8, 2),
}


def _check(q, k, v, causal: bool, softcap: float, config: str = "auto") -> None:
    out = torch.full_like(q, math.nan)
    result, lse = fa_cute.forward(q, k, v, causal=causal, return_lse=True, softcap=softcap,
                                  config=config, out=out)
    assert result is out
    scale = q.shape[-1] ** -0.5
    ref, ref_lse = attention_ref(q, k, v, scale, causal=causal, return_lse=True, softcap=softcap)
    plain = attention_ref(q, k, v, scale, upcast=False, causal=causal, softcap=softcap)
    check_close(out, ref, plain)
    check_lse(lse, ref_lse)


def _inputs(case: str, head_dim: int, dtype: torch.dtype, logit_scale: float = 1.0):
    batch, seqlen_q, seqlen_k, nheads, nheads_k = CASES[case]
    # logit_scale spreads the scores, so that the cap bends most of them
    q = (torch.randn(batch, seqlen_q, nheads, head_dim, device=DEVICE) * logit_scale).to(dtype)
    k, v = (torch.randn(batch, seqlen_k, nheads_k, head_dim, device=DEVICE).to(dtype)
            for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("softcap", [5.0, 50.0])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES)
def test_auto_config(case: str, dtype, causal: bool, softcap: float) -> None:
    head_dim = 128 if any(c["head_dim"] == 128 for c in PRODUCTION_CONFIGS) else \
        PRODUCTION_CONFIGS[0]["head_dim"]
    name = DTYPE_IDS[DTYPES.index(dtype)]
    if not any(c["head_dim"] == head_dim and name in c["dtypes"] for c in PRODUCTION_CONFIGS):
        pytest.skip(f"no {name} config for head dim {head_dim} in this build")
    _check(*_inputs(case, head_dim, dtype, logit_scale=4.0), causal, softcap)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", [c["name"] for c in PRODUCTION_CONFIGS])
def test_each_config(config: str, causal: bool) -> None:
    cfg = next(c for c in PRODUCTION_CONFIGS if c["name"] == config)
    major, minor = torch.cuda.get_device_capability()
    if cfg["family"] == "sm90a" and (major, minor) != (9, 0):
        pytest.skip("sm90a configs run on compute capability 9.0 only")
    dtype = torch.bfloat16 if "bf16" in cfg["dtypes"] else torch.float16
    inputs = _inputs("mha-ragged", cfg["head_dim"], dtype, logit_scale=4.0)
    if cfg["family"] == "sm90a" and cfg["head_dim"] >= 256:
        # The Hopper d=256 kernels have no softcap (src/sm90/fwd_launch_sm90.h): refused by name.
        with pytest.raises(ValueError, match="has no softcap"):
            fa_cute.forward(*inputs, causal=causal, softcap=10.0, config=config)
        return
    _check(*inputs, causal, 10.0, config=config)


def test_softcap_zero_is_the_plain_forward() -> None:
    head_dim = 128 if any(c["head_dim"] == 128 for c in PRODUCTION_CONFIGS) else \
        PRODUCTION_CONFIGS[0]["head_dim"]
    q, k, v = _inputs("gqa-long", head_dim, built_dtype(head_dim))
    assert torch.equal(fa_cute.forward(q, k, v, softcap=0.0), fa_cute.forward(q, k, v))
    # A cap far above every score leaves the output within rounding of the plain one, and
    # the two calls are not answered by one cached launch.
    capped = fa_cute.forward(q, k, v, softcap=1e4)
    assert not torch.equal(capped, fa_cute.forward(q, k, v, softcap=3.0))
    torch.testing.assert_close(capped, fa_cute.forward(q, k, v), atol=2e-2, rtol=0)
