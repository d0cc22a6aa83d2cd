"""fa_cute.backward(config=...): a named backward config runs as given (tests and benchmarks
of one kernel, e.g. tests/test_backward_gpu.py's matrix over `_C.backward_configs()`), "auto"
and None pick as before, and a config that does not fit the call is refused by name.
On CPU, with `_C.backward` stood in for by a recorder of the config it is handed."""

from typing import List

import pytest
import torch

import fa_cute
from fa_cute import _C, _backward
from fa_cute._reference import attention_ref

BF16 = torch.bfloat16
STAND_INS = {
    "bwd_test_d64": dict(name="bwd_test_d64", family="sm80", head_dim=64, block_m=64,
                         block_n=128, dtypes=["bf16", "fp16"]),
    "bwd_test_d128": dict(name="bwd_test_d128", family="sm80", head_dim=128, block_m=64,
                          block_n=128, dtypes=["bf16", "fp16"]),
    "bwd_test_d128_fp16": dict(name="bwd_test_d128_fp16", family="sm80", head_dim=128,
                               block_m=64, block_n=64, dtypes=["fp16"]),
}


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The configs `_C.backward` is called with (nothing runs); the device check off."""
    configs: List[str] = []
    monkeypatch.setattr(_C, "backward", lambda config, *args, **kwargs: configs.append(config),
                        raising=False)
    monkeypatch.setattr(_C, "default_backward_config",
                        lambda head_dim, major, minor: f"bwd_test_d{head_dim}", raising=False)
    monkeypatch.setattr(_backward, "BACKWARD_CONFIGS", dict(STAND_INS))
    monkeypatch.setattr(_backward, "check_devices", lambda *args, **kwargs: None)
    monkeypatch.setattr(_backward, "current_stream", lambda index: 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    return configs


def _inputs(head_dim=128, dtype=BF16):
    q = torch.randn(1, 5, 2, head_dim).to(dtype)
    k, v = (torch.randn(1, 7, 2, head_dim).to(dtype) for _ in range(2))
    out, lse = attention_ref(q, k, v, head_dim ** -0.5, return_lse=True)
    return torch.randn_like(q), q, k, v, out.to(dtype), lse.float()


@pytest.mark.parametrize("config", ["auto", None])
def test_auto_picks_the_default(launched, config) -> None:
    fa_cute.backward(*_inputs(), config=config)
    fa_cute.backward(*_inputs(head_dim=64))
    assert launched == ["bwd_test_d128", "bwd_test_d64"]


def test_named_config_is_launched(launched) -> None:
    fa_cute.backward(*_inputs(dtype=torch.float16), config="bwd_test_d128_fp16")
    fa_cute.backward(*_inputs(), causal=True, config="bwd_test_d128")
    assert launched == ["bwd_test_d128_fp16", "bwd_test_d128"]


@pytest.mark.parametrize("config, inputs, error, pattern", [
    ("bwd_nope", {}, ValueError, r"^config 'bwd_nope' is not a backward config of this build; "
                                 r"built: bwd_test_d64, bwd_test_d128, bwd_test_d128_fp16, or "
                                 r"'auto'$"),
    ("sm80_m128n64w4_d128", {}, ValueError, r"is not a backward config"),
    ("bwd_test_d64", {}, ValueError, r"^config 'bwd_test_d64' is for head_dim 64, but q has "
                                     r"headdim 128$"),
    ("bwd_test_d128_fp16", {}, ValueError, r"^config 'bwd_test_d128_fp16' supports dtypes "
                                           r"\['fp16'\], not torch.bfloat16$"),
    (128, {}, TypeError, r"^config must be a config name \(str\), 'auto' or None; got int$"),
])
def test_config_that_does_not_fit_is_refused(launched, config, inputs, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        fa_cute.backward(*_inputs(**inputs), config=config)
    assert launched == []


def test_device_is_still_checked_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_C, "backward", lambda *args, **kwargs: None, raising=False)
    monkeypatch.setattr(_backward, "BACKWARD_CONFIGS", dict(STAND_INS))
    with pytest.raises(ValueError, match=r"^q is on cpu; fa_cute runs on CUDA tensors only"):
        fa_cute.backward(*_inputs(), config="bwd_test_d128")


def test_gpu_matrix_covers_the_issue_values() -> None:
    """tests/test_backward_gpu.py's sampled matrix: for every config (of two dtypes or one)
    every dtype, causal value, head layout, memory layout and seqlen pair appears, every
    listed length on each side, the full pair list for the head-dim-128 configs."""
    from test_backward_gpu import HEAD_LAYOUTS, MEMORY_LAYOUTS, SEQLEN_PAIRS, matrix_cases

    lengths = {1, 17, 113, 239, 799, 1024, 4224}
    assert {q for q, _ in SEQLEN_PAIRS} == lengths == {k for _, k in SEQLEN_PAIRS}
    assert any(q != k for q, k in SEQLEN_PAIRS)
    configs = [dict(name=f"bwd_sm{f}_d{d}", family=f"sm{f}", head_dim=d, dtypes=dtypes)
               for f in ("80", "90a") for d in (64, 96, 128, 192, 256)
               for dtypes in (["bf16", "fp16"],)] + [
        dict(name="bwd_sm80_d128_bf16", family="sm80", head_dim=128, dtypes=["bf16"])]
    cases = [c.values for c in matrix_cases(configs)]
    assert len({c for c in cases}) == len(cases)
    for cfg in configs:
        rows = [c for c in cases if c[0] == cfg["name"]]
        assert {r[1] for r in rows} == set(cfg["dtypes"])
        assert {r[2] for r in rows} == {False, True}
        assert {r[3] for r in rows} == set(HEAD_LAYOUTS)
        assert {r[4] for r in rows} == set(MEMORY_LAYOUTS)
        assert {r[5] for r in rows} == set(SEQLEN_PAIRS)
        if cfg["head_dim"] == 128:
            sweep = {(r[2], r[5]) for r in rows if r[1] == "bf16" and r[3] == "gqa"
                     and r[4] == "contiguous"}
            assert sweep == {(c, p) for c in (False, True) for p in SEQLEN_PAIRS}
    # the combinations of everything but the lengths, in full for two-dtype configs
    two = [c for c in cases if c[0] == "bwd_sm80_d64"]
    assert len({c[1:5] for c in two}) == 2 * 2 * 3 * 2
    print(f"{len(cases)} cases for {len(configs)} configs")
